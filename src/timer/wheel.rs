//! A hierarchical hashed timing wheel: the data structure behind the crate's
//! global timer thread.
//!
//! The wheel is a pure, single-threaded structure (no threads, locks, atomics
//! or `unsafe`); the timer thread keeps it behind a mutex. It stores values of
//! any type `T` and hands them back once their deadline has passed.
//!
//! # Time
//!
//! Time is measured in *ticks* of 1 ms counted from the `origin` given to
//! [`Wheel::new`]. A deadline `when` is converted to the tick
//! `ceil((when - origin) / 1 ms)` (saturating at 0 for instants before the
//! origin), so it is never moved earlier. A `now` passed to
//! [`Wheel::poll_expired`] is converted with `floor`. An entry fires when its
//! tick is `<=` the tick of `now`, which implies `when <= origin + tick ms <=
//! now`: **entries are never returned early**. They are returned at most one
//! tick (1 ms) late: exactly the entries with `when <= origin + floor(now)`
//! fire, so whole-millisecond deadlines fire exactly when `when <= now`.
//!
//! A deadline so far away that its tick does not fit below `u64::MAX` ms
//! (about 584 million years after the origin) is kept in a *never* list: it
//! stays armed, counts in [`Wheel::len`] and can be removed, but it never
//! fires and is ignored by [`Wheel::next_expiry`].
//!
//! # Structure
//!
//! * A slab (`Vec<Entry<T>>`) owns every entry. Free slots form a singly
//!   linked free list, so the slab only grows when more entries are live than
//!   ever before. A [`TimerId`] is the slab index plus the slot's generation,
//!   which is bumped whenever the slot is freed, so stale ids are detected.
//! * `LEVELS` (6) levels of `SLOTS_PER_LEVEL` (64) slots. A slot at level `L`
//!   covers `64^L` ticks, so level 0 slots are 1 ms wide and the six levels
//!   together span `2^36` ms (about 2.2 years). Each slot is an intrusive
//!   doubly linked list threaded through the slab by `u32` indices, and each
//!   level has a 64-bit occupancy bitmap.
//! * Three extra lists: *due* (deadline tick already reached by the latest
//!   poll when inserted, fires at the next poll), *overflow* (deadline in a later `2^36`-tick epoch than
//!   the current tick) and *never* (see above).
//!
//! An entry's level is chosen like tokio's wheel: the highest bit in which its
//! tick differs from the current tick (`elapsed`) selects the level, and the
//! tick's 6-bit digit at that level selects the slot. When `elapsed` reaches
//! the start of an occupied slot, the slot's entries are re-inserted
//! ("cascaded"): each one either fires or lands in a strictly lower level.
//! When `elapsed` reaches the epoch of the earliest overflow entry, the
//! overflow list is re-inserted the same way.
//!
//! # Complexity
//!
//! * [`Wheel::insert`] is O(1), with no allocation unless the slab must grow.
//! * [`Wheel::remove`] is O(1).
//! * [`Wheel::poll_expired`] is O(levels) per call plus amortized O(1) per
//!   entry: an entry is cascaded at most once per level before firing. (Each
//!   overflow re-examination walks the whole overflow list, but happens only
//!   when elapsed time reaches the `2^36` ms epoch of the earliest overflow
//!   deadline, so it is irrelevant in practice.) A call whose `now` is not
//!   later than the previous one's costs O(levels), plus at most one walk of
//!   the due list per distinct stale `now` (see [`Wheel::poll_expired`]).
//! * [`Wheel::next_expiry`] is O(levels).
//!
//! # Invariants
//!
//! Numbered W1–W6: the wheel's own, apart from the crate's invariants in
//! `docs/DESIGN.md`. The code relies on these; `Wheel::check_invariants`
//! (test-only) verifies them after every operation in the property test.
//!
//! - W1. **Slab.** Every slab slot is either *armed* (`value` is `Some`) or
//!   *free* (`value` is `None`). Free slots form the free list, linked by
//!   `next` from `free_head`. Armed slots are in exactly one list, the one
//!   named by `entry.list`, doubly linked by `prev`/`next` with `NIL` ends,
//!   `heads[list]` being the first. `len` is the number of armed slots. No
//!   slot has index `NIL` (`u32::MAX`), and every link or head other than
//!   `NIL` is a valid slab index: the code indexes the slab with `[]` on
//!   that basis (ids from callers are bounds-checked instead).
//! - W2. **Placement.** Every armed entry is in `list_for(entry.tick)` computed
//!   with the *current* `elapsed`. For a level `L` slot `d` this means the
//!   tick is `> elapsed`, shares all bits above level `L` with `elapsed`,
//!   and has digit `d > digit_L(elapsed)` at level `L`; hence the slot's
//!   start `S` (elapsed's higher bits, digit `d`, zeros below) satisfies
//!   `elapsed < S <= tick`. `elapsed` only ever advances to a value `<=` the
//!   start of every unprocessed slot, which keeps this invariant true without
//!   touching the entries.
//! - W3. **Occupancy.** Bit `d` of `occupied[L]` is set iff the list of level
//!   `L`, slot `d` is non-empty.
//! - W4. **Due.** Due entries have `due_min <= tick <= due_max <= elapsed`
//!   (`due_min` and `due_max` are bounds: removals do not tighten them).
//! - W5. **Overflow.** `overflow_min` is a lower bound of the ticks in the
//!   overflow list (removals do not raise it), and its epoch start
//!   (`overflow_min` with the low 36 bits cleared) is `> elapsed`, because
//!   reaching it re-inserts the whole list and recomputes the bound.
//! - W6. **Clock.** `elapsed` is the largest `now` tick ever polled (initially
//!   0) and is at most `MAX_NOW_TICK`; every slot or overflow event at or
//!   before it has been processed. Wheel and overflow ticks are
//!   `< NEVER_TICK`.

use std::time::{Duration, Instant};

/// Bits of a tick consumed by one level.
const LEVEL_BITS: u32 = 6;
/// Slots per level (64).
const SLOTS_PER_LEVEL: usize = 1 << LEVEL_BITS;
/// Mask of the slot digit within a level.
const SLOT_MASK: u64 = SLOTS_PER_LEVEL as u64 - 1;
/// Number of levels in the wheel proper.
const LEVELS: usize = 6;
/// Number of tick bits covered by all levels together (36): one epoch.
const WHEEL_BITS: u32 = LEVEL_BITS * LEVELS as u32;
/// Mask of the tick bits inside one epoch.
const EPOCH_MASK: u64 = (1 << WHEEL_BITS) - 1;
/// List index of the due list (entries to fire at the next poll).
const DUE_LIST: usize = LEVELS * SLOTS_PER_LEVEL;
/// List index of the overflow list (entries in a later epoch).
const OVERFLOW_LIST: usize = DUE_LIST + 1;
/// List index of the never list (entries whose tick saturated).
const NEVER_LIST: usize = DUE_LIST + 2;
/// Total number of lists: one per slot plus due, overflow and never.
const LIST_COUNT: usize = DUE_LIST + 3;
/// Null link, and the one slab index that is never used (invariant W1).
const NIL: u32 = u32::MAX;
/// Tick of deadlines that saturated the tick counter: they never fire.
const NEVER_TICK: u64 = u64::MAX;
/// Largest tick a `now` is converted to, so that `NEVER_TICK` is never reached.
const MAX_NOW_TICK: u64 = NEVER_TICK - 1;
/// Nanoseconds per tick.
const NANOS_PER_TICK: u32 = 1_000_000;
/// Bits of a slot's generation in a [`TimerId`] (above the 32 index bits):
/// the id's top byte stays zero.
pub(crate) const GENERATION_BITS: u32 = 24;
/// Mask of a generation (it wraps at `2^GENERATION_BITS`).
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

// `Entry::list` is a `u16`.
const _: () = assert!(LIST_COUNT <= u16::MAX as usize);

/// Opaque handle of an armed entry, returned by [`Wheel::insert`].
///
/// It packs the slab index (low 32 bits) and the slot's generation (the
/// next [`GENERATION_BITS`] bits); the top byte is always zero, free for the
/// timer's shard number (`super::shards`). A handle stays valid until its
/// entry fires or is removed; after that, [`Wheel::remove`] with it returns
/// `None` even if the slot was reused (unless the slot was reused exactly
/// `2^24` times in between, when the generation wraps).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TimerId(u64);

impl TimerId {
    /// The value [`TimerId::to_bits`] never returns, usable as "no timer" in
    /// an `AtomicU64`.
    pub(crate) const NONE_BITS: u64 = u64::MAX;

    /// Builds the id of slab slot `index` at `generation` (below
    /// `2^GENERATION_BITS`, see [`Wheel::release`]).
    fn new(index: u32, generation: u32) -> Self {
        debug_assert!(generation < 1 << GENERATION_BITS);
        TimerId((u64::from(generation) << 32) | u64::from(index))
    }

    /// The slab index part.
    fn index(self) -> u32 {
        // Truncation intended: the low 32 bits are the index.
        self.0 as u32
    }

    /// The generation part.
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Packs the id into a `u64` that is never equal to
    /// [`TimerId::NONE_BITS`]: ids made by the wheel have an index below
    /// `NIL` (invariant W1), and [`TimerId::from_bits`] refuses `NONE_BITS`.
    pub(crate) fn to_bits(self) -> u64 {
        self.0
    }

    /// Unpacks a value made by [`TimerId::to_bits`]; `None` for
    /// [`TimerId::NONE_BITS`]. Any other value gives an id that is at worst
    /// stale, which [`Wheel::remove`] handles.
    pub(crate) fn from_bits(bits: u64) -> Option<TimerId> {
        (bits != Self::NONE_BITS).then_some(TimerId(bits))
    }
}

/// One slab slot: an armed entry or a free slot (see invariant W1).
struct Entry<T> {
    /// The stored value; `None` iff the slot is free.
    value: Option<T>,
    /// Bumped (wrapping at `2^GENERATION_BITS`) every time the slot is freed.
    generation: u32,
    /// Deadline tick (`ceil` of the deadline), `NEVER_TICK` if saturated.
    tick: u64,
    /// Previous entry in the same list, or `NIL`.
    prev: u32,
    /// Next entry in the same list (or in the free list), or `NIL`.
    next: u32,
    /// Index of the list holding the entry (meaningless while free).
    list: u16,
}

/// A hierarchical hashed timing wheel with 1 ms resolution; see the module
/// documentation for the structure, costs and invariants.
pub(crate) struct Wheel<T> {
    /// Time zero.
    origin: Instant,
    /// The current tick: the largest `now` tick polled so far (invariant W6).
    elapsed: u64,
    /// Storage of all entries, armed and free (invariant W1).
    slab: Vec<Entry<T>>,
    /// First free slab slot, or `NIL`.
    free_head: u32,
    /// First entry of each of the `LIST_COUNT` lists, or `NIL`.
    heads: Box<[u32]>,
    /// Per-level occupancy bitmaps (invariant W3).
    occupied: [u64; LEVELS],
    /// Lower bound of the due list's ticks (invariant W4).
    due_min: u64,
    /// Upper bound of the due list's ticks, `<= elapsed` (invariant W4).
    due_max: u64,
    /// Lower bound of the overflow list's ticks (invariant W5).
    overflow_min: u64,
    /// Number of armed entries.
    len: usize,
}

impl<T> Wheel<T> {
    /// Creates an empty wheel whose tick 0 is `origin`; the resolution is
    /// 1 ms ticks counted from it.
    pub(crate) fn new(origin: Instant) -> Self {
        Wheel {
            origin,
            elapsed: 0,
            slab: Vec::new(),
            free_head: NIL,
            heads: vec![NIL; LIST_COUNT].into_boxed_slice(),
            occupied: [0; LEVELS],
            due_min: NEVER_TICK,
            due_max: 0,
            overflow_min: NEVER_TICK,
            len: 0,
        }
    }

    /// Arms `value` to expire at `when` and returns its handle. O(1).
    ///
    /// `when` is rounded up to the next whole tick, so the value is never
    /// returned before `when`. A `when` that is already past (or before the
    /// origin) fires at the next poll. Far deadlines are fine: beyond the
    /// levels they wait in the overflow list, and beyond `u64::MAX` ms they
    /// never fire (see the module documentation).
    ///
    /// Allocates only when more entries are armed than ever before.
    ///
    /// # Panics
    ///
    /// Only if `u32::MAX` entries would be armed at once (the slab index space
    /// is exhausted); memory would normally run out long before that.
    pub(crate) fn insert(&mut self, when: Instant, value: T) -> TimerId {
        let tick = self.ceil_tick(when);
        let index = self.alloc(tick, value);
        self.link(index);
        self.len += 1;
        TimerId::new(index, self.slab[index as usize].generation)
    }

    /// Grows the slab (if needed) so that `n` entries can be armed at once
    /// without allocating.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.slab.reserve(n.saturating_sub(self.slab.len()));
    }

    /// Disarms the entry `id` and returns its value. O(1).
    ///
    /// Returns `None`, changing nothing, if the entry already fired or was
    /// removed, or if `id` is stale (its slot was reused for another entry).
    pub(crate) fn remove(&mut self, id: TimerId) -> Option<T> {
        let index = id.index();
        let entry = self.slab.get(index as usize)?;
        if entry.generation != id.generation() || entry.value.is_none() {
            return None;
        }
        self.unlink(index);
        self.release(index)
    }

    /// Moves every entry whose deadline tick is `<=` the tick of `now` into
    /// `out` (in no particular order) and disarms it.
    ///
    /// These are exactly the entries with
    /// `when <= origin + floor((now - origin) / 1 ms)`: none is returned
    /// early, and every entry with `when <= now` is returned at most 1 ms
    /// late (exactly on time for whole-millisecond deadlines). This also holds
    /// for a `now` earlier than a previous call's.
    ///
    /// Cost: O(levels) plus amortized O(1) per entry moved or cascaded. A call
    /// whose `now` is earlier than a previous call's costs O(levels), except
    /// that it walks the list of entries armed with an already-past deadline
    /// if the earliest of them is due at `now` (never twice for the same
    /// `now`).
    pub(crate) fn poll_expired(&mut self, now: Instant, out: &mut Vec<T>) {
        let now_tick = self.floor_tick(now);
        if self.heads[DUE_LIST] != NIL && now_tick >= self.due_min {
            // Usually `now_tick >= elapsed >= due_max` and every due entry
            // fires; only a stale `now` fires part of the list (re-linking the
            // rest, which recomputes the bounds so a repeat is O(1)).
            self.process_list(DUE_LIST, now_tick, out);
        }
        while let Some((tick, list)) = self.next_event() {
            if tick > now_tick {
                break;
            }
            // The event is the earliest one and `tick <= now_tick`: advancing
            // `elapsed` to it keeps invariant W2 for every other list.
            self.elapsed = self.elapsed.max(tick);
            self.process_list(list, self.elapsed, out);
        }
        // No event is left at or before `now_tick`, so invariant W2 holds.
        self.elapsed = self.elapsed.max(now_tick);
    }

    /// The earliest instant at which [`Wheel::poll_expired`] could return
    /// something, or `None` when no armed entry can ever fire (the wheel is
    /// empty, or holds only never-firing entries).
    ///
    /// It is never later than the earliest deadline rounded up to its tick,
    /// but may be earlier: it can be the start of a higher-level slot or of an
    /// overflow epoch whose entries must be cascaded first, where a poll moves
    /// them down and returns nothing yet. It always makes progress: after a
    /// poll at `now`, it is `> now` unless an entry is already due (one was
    /// inserted with a past deadline), in which case it is `<= now` and the
    /// next poll returns that entry. A poll at exactly the returned instant
    /// either returns something or moves `next_expiry` strictly later (it
    /// cascades the slot, or tightens a bound left loose by removals), so a
    /// timer thread sleeping until it never spins.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let tick = if self.heads[DUE_LIST] != NIL {
            // due_min <= elapsed < every event (invariants W2, W4, W5).
            self.due_min
        } else {
            self.next_event()?.0
        };
        Some(self.tick_to_instant(tick))
    }

    /// Number of armed entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is armed.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Deadline tick of `when`: rounded up, `NEVER_TICK` if it saturates.
    fn ceil_tick(&self, when: Instant) -> u64 {
        let since = when.saturating_duration_since(self.origin);
        // u64 arithmetic (not `as_millis`'s u128): this runs on every arm.
        let millis = whole_millis(since).and_then(|m| {
            if since.subsec_nanos() % NANOS_PER_TICK != 0 {
                m.checked_add(1)
            } else {
                Some(m)
            }
        });
        millis.unwrap_or(NEVER_TICK)
    }

    /// Tick of `now`: rounded down, at most `MAX_NOW_TICK`.
    fn floor_tick(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        whole_millis(since)
            .unwrap_or(MAX_NOW_TICK)
            .min(MAX_NOW_TICK)
    }

    /// The instant of `tick`, `origin + tick ms`.
    ///
    /// Only called with ticks `<=` the tick of some entry's representable
    /// deadline `when`, and `when > origin + (tick - 1) ms` by the rounding,
    /// so if `origin + tick ms` does not fit in an `Instant` (only within 1 ms
    /// of its maximum), `origin + (tick - 1) ms` does. The final fallback to
    /// `origin` is unreachable and errs on the early side.
    fn tick_to_instant(&self, tick: u64) -> Instant {
        self.origin
            .checked_add(Duration::from_millis(tick))
            .or_else(|| {
                self.origin
                    .checked_add(Duration::from_millis(tick.saturating_sub(1)))
            })
            .unwrap_or(self.origin)
    }

    /// The list an entry with deadline `tick` belongs in, given the current
    /// `elapsed` (invariant W2).
    fn list_for(&self, tick: u64) -> usize {
        if tick == NEVER_TICK {
            return NEVER_LIST;
        }
        if tick <= self.elapsed {
            return DUE_LIST;
        }
        // `| SLOT_MASK` makes the value non-zero and puts ticks differing only
        // in the lowest digit at level 0.
        let masked = (self.elapsed ^ tick) | SLOT_MASK;
        let significant = u64::BITS - 1 - masked.leading_zeros();
        let level = (significant / LEVEL_BITS) as usize;
        if level >= LEVELS {
            return OVERFLOW_LIST;
        }
        let slot = (tick >> (level as u32 * LEVEL_BITS)) & SLOT_MASK;
        level * SLOTS_PER_LEVEL + slot as usize
    }

    /// The earliest pending slot or overflow event: its tick and list.
    ///
    /// By invariant W2, the lowest occupied slot of a level is its next one,
    /// and the lowest non-empty level always has the earliest start; the
    /// minimum over all levels is taken anyway, which costs 6 steps.
    fn next_event(&self) -> Option<(u64, usize)> {
        let mut best: Option<(u64, usize)> = None;
        for (level, &bits) in self.occupied.iter().enumerate() {
            if bits == 0 {
                continue;
            }
            let slot = u64::from(bits.trailing_zeros());
            let shift = level as u32 * LEVEL_BITS;
            let span_mask = (1u64 << (shift + LEVEL_BITS)) - 1;
            let start = (self.elapsed & !span_mask) | (slot << shift);
            if best.is_none_or(|(tick, _)| start < tick) {
                best = Some((start, level * SLOTS_PER_LEVEL + slot as usize));
            }
        }
        if self.heads[OVERFLOW_LIST] != NIL {
            let start = self.overflow_min & !EPOCH_MASK;
            if best.is_none_or(|(tick, _)| start < tick) {
                best = Some((start, OVERFLOW_LIST));
            }
        }
        best
    }

    /// Takes a free slot (or grows the slab) and fills it; not yet linked.
    fn alloc(&mut self, tick: u64, value: T) -> u32 {
        if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.slab[index as usize];
            self.free_head = entry.next;
            entry.value = Some(value);
            entry.tick = tick;
            entry.prev = NIL;
            entry.next = NIL;
            return index;
        }
        let index = match u32::try_from(self.slab.len()) {
            Ok(index) if index != NIL => index,
            _ => panic!("timer wheel: more than u32::MAX - 1 timers armed at once"),
        };
        self.slab.push(Entry {
            value: Some(value),
            generation: 0,
            tick,
            prev: NIL,
            next: NIL,
            list: 0,
        });
        index
    }

    /// Pushes the armed, unlinked entry `index` onto the front of the list
    /// its tick belongs in, maintaining invariants W3 to W5.
    fn link(&mut self, index: u32) {
        let tick = self.slab[index as usize].tick;
        let list = self.list_for(tick);
        let head = self.heads[list];
        if head != NIL {
            self.slab[head as usize].prev = index;
        }
        let entry = &mut self.slab[index as usize];
        entry.prev = NIL;
        entry.next = head;
        // LIST_COUNT fits in u16 (checked at compile time above).
        entry.list = list as u16;
        self.heads[list] = index;
        match list {
            DUE_LIST => {
                self.due_min = self.due_min.min(tick);
                self.due_max = self.due_max.max(tick);
            }
            OVERFLOW_LIST => self.overflow_min = self.overflow_min.min(tick),
            NEVER_LIST => {}
            _ => {
                self.occupied[list / SLOTS_PER_LEVEL] |= 1 << (list % SLOTS_PER_LEVEL);
            }
        }
    }

    /// Unlinks the armed entry `index` from its list.
    fn unlink(&mut self, index: u32) {
        let entry = &self.slab[index as usize];
        let (prev, next, list) = (entry.prev, entry.next, usize::from(entry.list));
        if next != NIL {
            self.slab[next as usize].prev = prev;
        }
        if prev != NIL {
            self.slab[prev as usize].next = next;
        } else {
            self.heads[list] = next;
            if next == NIL {
                self.mark_empty(list);
            }
        }
    }

    /// Empties list `list` and returns its former first entry; the detached
    /// chain keeps its `next` links.
    fn take_list(&mut self, list: usize) -> u32 {
        let head = self.heads[list];
        self.heads[list] = NIL;
        self.mark_empty(list);
        head
    }

    /// Updates the per-list bookkeeping of a list that just became empty.
    fn mark_empty(&mut self, list: usize) {
        match list {
            DUE_LIST => {
                self.due_min = NEVER_TICK;
                self.due_max = 0;
            }
            OVERFLOW_LIST => self.overflow_min = NEVER_TICK,
            NEVER_LIST => {}
            _ => self.occupied[list / SLOTS_PER_LEVEL] &= !(1 << (list % SLOTS_PER_LEVEL)),
        }
    }

    /// Frees the armed, unlinked entry `index` and returns its value.
    fn release(&mut self, index: u32) -> Option<T> {
        let entry = &mut self.slab[index as usize];
        let value = entry.value.take();
        // Wraps at 2^GENERATION_BITS: ids keep their top byte zero.
        entry.generation = (entry.generation + 1) & GENERATION_MASK;
        entry.next = self.free_head;
        entry.prev = NIL;
        self.free_head = index;
        if value.is_some() {
            self.len -= 1;
        }
        value
    }

    /// Empties list `list`: entries whose tick is `<= limit` fire into `out`,
    /// the others are re-inserted. For a slot or the overflow list, `limit` is
    /// `elapsed` (the event's tick) and re-inserting cascades the entry into a
    /// strictly later event (invariant W2); for the due list, `limit` may be
    /// lower and the rest goes back to the due list.
    fn process_list(&mut self, list: usize, limit: u64, out: &mut Vec<T>) {
        let mut index = self.take_list(list);
        while index != NIL {
            let entry = &self.slab[index as usize];
            let next = entry.next;
            if entry.tick <= limit {
                if let Some(value) = self.release(index) {
                    out.push(value);
                }
            } else {
                self.link(index);
            }
            index = next;
        }
    }

    /// Checks invariants W1 to W6, panicking with a description on violation.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut armed = 0;
        for (list, &head) in self.heads.iter().enumerate() {
            let mut prev = NIL;
            let mut index = head;
            while index != NIL {
                let entry = &self.slab[index as usize];
                assert!(entry.value.is_some(), "free entry {index} in list {list}");
                assert_eq!(usize::from(entry.list), list, "entry {index} list tag");
                assert_eq!(entry.prev, prev, "entry {index} prev link");
                assert_eq!(self.list_for(entry.tick), list, "entry {index} placement");
                match list {
                    DUE_LIST => assert!((self.due_min..=self.due_max).contains(&entry.tick)),
                    OVERFLOW_LIST => assert!(entry.tick >= self.overflow_min),
                    _ => {}
                }
                armed += 1;
                prev = index;
                index = entry.next;
            }
            if list < DUE_LIST {
                let bit = self.occupied[list / SLOTS_PER_LEVEL] >> (list % SLOTS_PER_LEVEL) & 1;
                assert_eq!(bit == 1, head != NIL, "occupancy of list {list}");
            }
        }
        assert_eq!(armed, self.len, "len");
        assert!(self.due_max <= self.elapsed, "due_max");
        if self.heads[OVERFLOW_LIST] != NIL {
            assert!(
                self.overflow_min & !EPOCH_MASK > self.elapsed,
                "overflow_min"
            );
        }
        assert!(self.elapsed <= MAX_NOW_TICK);
        let mut free = 0;
        let mut index = self.free_head;
        while index != NIL {
            assert!(
                self.slab[index as usize].value.is_none(),
                "armed entry in free list"
            );
            free += 1;
            index = self.slab[index as usize].next;
        }
        assert_eq!(free + armed, self.slab.len(), "every slot is armed or free");
    }
}

/// `d` in whole milliseconds, `None` if that does not fit in a `u64`.
fn whole_millis(d: Duration) -> Option<u64> {
    d.as_secs()
        .checked_mul(1000)?
        .checked_add(u64::from(d.subsec_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Shorthand for a whole number of milliseconds.
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Polls and returns the fired values, sorted.
    fn poll<T: Ord>(wheel: &mut Wheel<T>, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        wheel.poll_expired(now, &mut out);
        out.sort();
        out
    }

    /// A tiny deterministic generator (no `rand` dependency).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
    }

    /// An instant within a second of the largest one this platform can
    /// represent.
    fn far_instant(base: Instant) -> Instant {
        let mut far = base;
        for shift in (0..64).rev() {
            if let Some(later) = far.checked_add(Duration::from_secs(1 << shift)) {
                far = later;
            }
        }
        far
    }

    #[test]
    fn insert_remove_poll_basics() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);

        let a = wheel.insert(origin + ms(10), 'a');
        let b = wheel.insert(origin + ms(20), 'b');
        let c = wheel.insert(origin + ms(5_000), 'c');
        assert_eq!(wheel.len(), 3);
        assert_ne!(a, b);
        assert_eq!(wheel.next_expiry(), Some(origin + ms(10)));

        assert_eq!(wheel.remove(b), Some('b'));
        assert_eq!(wheel.remove(b), None);
        assert_eq!(wheel.len(), 2);

        assert_eq!(poll(&mut wheel, origin + ms(9)), Vec::<char>::new());
        assert_eq!(poll(&mut wheel, origin + ms(10)), vec!['a']);
        assert_eq!(wheel.remove(a), None, "fired entries cannot be removed");
        let next = wheel.next_expiry().expect("c is armed");
        assert!(next > origin + ms(10) && next <= origin + ms(5_000));

        assert_eq!(poll(&mut wheel, origin + ms(4_999)), Vec::<char>::new());
        assert_eq!(poll(&mut wheel, origin + ms(5_000)), vec!['c']);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);
        assert_eq!(wheel.remove(c), None);
        wheel.check_invariants();
    }

    #[test]
    fn past_deadlines_fire_at_next_poll() {
        let base = Instant::now();
        let origin = base + ms(1_000);
        let mut wheel = Wheel::new(origin);
        wheel.insert(base, 1); // before the origin
        wheel.insert(origin, 2); // exactly the origin
        assert_eq!(wheel.next_expiry(), Some(origin));
        assert_eq!(poll(&mut wheel, origin), vec![1, 2]);

        assert_eq!(poll(&mut wheel, origin + ms(100)), Vec::<i32>::new());
        wheel.insert(origin + ms(50), 3); // already past at tick 100
        let next = wheel.next_expiry().expect("3 is due");
        assert!(next <= origin + ms(100));
        assert_eq!(poll(&mut wheel, origin + ms(100)), vec![3]);
        wheel.check_invariants();
    }

    #[test]
    fn never_early_with_sub_millisecond_deadlines() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin);
        let when = origin + Duration::from_micros(2_500); // rounds up to tick 3
        wheel.insert(when, ());
        let mut out = Vec::new();
        wheel.poll_expired(origin + ms(2), &mut out);
        assert!(out.is_empty());
        wheel.poll_expired(when - Duration::from_nanos(1), &mut out);
        assert!(out.is_empty());
        // At `when` the tick is still 2: held back, at most 1 ms late.
        wheel.poll_expired(when, &mut out);
        assert!(out.is_empty());
        assert_eq!(wheel.next_expiry(), Some(origin + ms(3)));
        wheel.poll_expired(origin + ms(3), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn never_early_across_levels() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin);
        let offsets = [
            1,
            63,
            64,
            65,
            4_095,
            4_096,
            262_143,
            262_145,
            1 << 30,
            (1 << 36) + 7,
        ];
        for (i, &offset) in offsets.iter().enumerate() {
            wheel.insert(origin + ms(offset), i);
        }
        for (i, &offset) in offsets.iter().enumerate() {
            assert_eq!(
                poll(&mut wheel, origin + ms(offset - 1)),
                Vec::<usize>::new()
            );
            assert_eq!(poll(&mut wheel, origin + ms(offset)), vec![i]);
            wheel.check_invariants();
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn stale_id_after_reuse_removes_nothing() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin);
        let a = wheel.insert(origin + ms(10), "a");
        assert_eq!(wheel.remove(a), Some("a"));
        let b = wheel.insert(origin + ms(10), "b");
        assert_eq!(a.index(), b.index(), "the slot is reused");
        assert_ne!(a, b);
        assert_eq!(wheel.remove(a), None);
        assert_eq!(wheel.len(), 1);

        // Stale after firing, and after the slot is reused again.
        assert_eq!(poll(&mut wheel, origin + ms(10)), vec!["b"]);
        let c = wheel.insert(origin + ms(20), "c");
        assert_eq!(wheel.remove(b), None);
        assert_eq!(wheel.remove(a), None);
        assert_eq!(wheel.len(), 1);

        // Ids that were never issued.
        assert_eq!(TimerId::from_bits(TimerId::NONE_BITS), None);
        for bits in [0x1234_0000_0000u64, 0xffff_fffe, 0x7fff_ffff_ffff_ffff] {
            let id = TimerId::from_bits(bits).expect("not NONE_BITS");
            assert_eq!(id.to_bits(), bits);
            assert_eq!(wheel.remove(id), None);
        }
        assert_eq!(wheel.len(), 1);
        assert_eq!(TimerId::from_bits(c.to_bits()), Some(c));
        assert_ne!(c.to_bits(), TimerId::NONE_BITS);
        assert_eq!(wheel.remove(c), Some("c"));
        wheel.check_invariants();
    }

    #[test]
    fn huge_deadlines_do_not_panic() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin);
        let when = origin + Duration::from_secs(u64::from(u32::MAX));
        let id = wheel.insert(when, 1);
        wheel.insert(when + Duration::from_nanos(1), 2);
        let next = wheel.next_expiry().expect("armed");
        assert!(next > origin && next <= when);

        // A timer thread sleeping until next_expiry reaches it in few steps.
        let mut now = origin;
        let mut fired = Vec::new();
        let mut steps = 0;
        while let Some(next) = wheel.next_expiry() {
            assert!(next > now, "progress");
            now = next;
            wheel.poll_expired(now, &mut fired);
            for &v in &fired {
                assert!(now >= if v == 1 { when } else { when + ms(1) });
            }
            steps += 1;
            assert!(steps < 20, "too many wake-ups");
        }
        fired.sort_unstable();
        assert_eq!(fired, vec![1, 2]);
        assert_eq!(wheel.remove(id), None);

        // Deadlines near the limits of `Instant`.
        let far = far_instant(origin);
        let far_id = wheel.insert(far, 3);
        let near_far = wheel.insert(far - Duration::from_secs(1), 4);
        wheel.insert(origin + ms(5), 5);
        let _ = wheel.next_expiry();
        wheel.check_invariants();
        let mut out = Vec::new();
        wheel.poll_expired(far - Duration::from_secs(2), &mut out);
        assert_eq!(out, vec![5]);
        wheel.check_invariants();
        wheel.poll_expired(far, &mut out);
        let _ = wheel.next_expiry();
        // Whatever fired was due; a far deadline may stay armed forever.
        assert!(out.iter().all(|&v| v == 5 || v == 4 || v == 3));
        wheel.check_invariants();
        let _ = wheel.remove(far_id);
        let _ = wheel.remove(near_far);
        assert!(wheel.is_empty());

        // A clock far beyond everything, then ordinary inserts.
        wheel.insert(origin + ms(1), 6);
        wheel.poll_expired(far, &mut out);
        assert!(out.contains(&6));
        wheel.insert(origin + ms(2), 7);
        let next = wheel.next_expiry().expect("due");
        assert!(next <= far);
        out.clear();
        wheel.poll_expired(far, &mut out);
        assert_eq!(out, vec![7]);
        wheel.check_invariants();
    }

    #[test]
    fn saturated_deadline_never_fires_but_can_be_removed() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin);
        let far = far_instant(origin);
        // Only meaningful where `Instant` reaches past u64::MAX ms (e.g. Linux).
        if wheel.ceil_tick(far) != NEVER_TICK {
            return;
        }
        let id = wheel.insert(far, ());
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.next_expiry(), None);
        let mut out = Vec::new();
        wheel.poll_expired(far, &mut out);
        assert!(out.is_empty());
        assert_eq!(wheel.remove(id), Some(()));
        assert!(wheel.is_empty());
    }

    #[test]
    fn timer_thread_loop_fires_everything_on_time_without_spinning() {
        let n: u64 = if cfg!(miri) { 200 } else { 5_000 };
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin);
        let mut rng = Lcg(7);
        let mut deadline = HashMap::new();
        for i in 0..n {
            let offset = match rng.next() % 4 {
                0 => rng.next() % 64,
                1 => rng.next() % 10_000,
                2 => rng.next() % (1 << 30),
                _ => rng.next() % (1 << 40),
            };
            let when = origin + ms(offset) + Duration::from_nanos(rng.next() % 2_000_000);
            wheel.insert(when, i);
            deadline.insert(i, when);
        }
        let mut now = origin;
        let mut wakeups = 0u64;
        let mut out = Vec::new();
        while let Some(next) = wheel.next_expiry() {
            assert!(next > now || wakeups == 0, "next_expiry must make progress");
            now = now.max(next);
            out.clear();
            wheel.poll_expired(now, &mut out);
            for v in &out {
                let when = deadline.remove(v).expect("fired once");
                assert!(when <= now, "fired early");
                assert!(now - when < ms(1), "fired late");
            }
            wakeups += 1;
        }
        assert!(deadline.is_empty());
        assert!(wheel.is_empty());
        assert!(wakeups <= n * (LEVELS as u64 + 2), "{wakeups} wake-ups");
    }

    #[test]
    fn many_inserts_and_removes_reuse_the_slab() {
        let n: u64 = if cfg!(miri) { 1_000 } else { 100_000 };
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin);
        let mut rng = Lcg(1);
        let mut ids = Vec::with_capacity(n as usize);
        let mut round = |wheel: &mut Wheel<u64>, ids: &mut Vec<TimerId>| {
            for i in 0..n {
                let offset = rng.next() % (1 << (rng.next() % 40));
                ids.push(wheel.insert(origin + ms(offset), i));
            }
            assert_eq!(wheel.len(), n as usize);
            for (i, id) in ids.drain(..).enumerate() {
                assert_eq!(wheel.remove(id), Some(i as u64));
            }
            assert_eq!(wheel.len(), 0);
            assert_eq!(wheel.next_expiry(), None);
        };
        round(&mut wheel, &mut ids);
        let (len, capacity) = (wheel.slab.len(), wheel.slab.capacity());
        assert_eq!(len, n as usize);
        round(&mut wheel, &mut ids);
        assert_eq!((wheel.slab.len(), wheel.slab.capacity()), (len, capacity));
        wheel.check_invariants();
        let mut out = Vec::new();
        wheel.poll_expired(origin + ms(1 << 41), &mut out);
        assert!(out.is_empty());
    }
}
