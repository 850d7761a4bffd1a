//! The children list: a lock-free singly linked list of the entries that a
//! cancellable node must reach when it is cancelled (child nodes, merge
//! forwarders, `after_func` callbacks and the waiter event).
//!
//! Harris–Michael list with epoch reclamation:
//! - **push** at the head with one compare-exchange, refused once the head
//!   carries `SEALED` (invariant 3);
//! - **remove** in two steps: *mark* the entry's own `next` pointer
//!   (logical deletion, `MARK` bit; an entry is marked at most once and its
//!   `next` never changes afterwards, invariant 4), then *unlink* it by a
//!   compare-exchange on its predecessor's pointer. Whoever unlinks an entry
//!   releases the list's claim on it and the memory is freed through the
//!   epoch once no claim is left (invariant 5);
//! - **seal** sets `SEALED` on the head: from then on no entry is added and
//!   the canceller walks a list that can only shrink.
//!
//! Unlinking is O(1) when the entry is at the head (the common
//! derive-then-drop case). Otherwise the entry stays marked and counts as
//! garbage; the removal that brings the garbage count to the sweep threshold
//! sweeps the whole list, and the next threshold is half the number of live
//! entries it saw (at least [`MIN_SWEEP`]). So the number of dead entries in
//! an open list is at most `max(MIN_SWEEP, live entries at the last sweep / 2)`
//! and removal is amortised O(1) (invariant 6). A sealed list is never swept:
//! it cannot grow, and its owner unlinks whatever is left when it dies.
//!
//! One sweep at a time runs on an open list, announced by the `SWEEPING` tag
//! on the head. The announcement lives in the head word itself so that the
//! O(1) head unlink learns "no sweep can hold this entry" from the very
//! compare-exchange that unlinks it, with no second atomic (invariant 5).

use std::ptr::{self, NonNull};

use super::claims::no_walk_in_flight;
use super::{Header, Unlinked};
use crate::sync::{sc_handshake, spin_hint, AtomicPtr, AtomicU64, Guard, LazyGuard, Ordering};

/// Tag bit on a list head: the list is closed to new entries.
const SEALED: usize = 0b01;
/// Tag bit on a sealed list head: the walk that sealed it has finished, so
/// the owner's whole subtree is done (invariant 9).
const COMPLETE: usize = 0b10;
/// Tag bit on an open list head: a sweep is traversing the list. Every write
/// to the head keeps it except the sweep's own final one, and the O(1) head
/// unlink is only attempted on a head with no tag at all (invariant 5).
const SWEEPING: usize = 0b100;
/// Tag bit on an entry's `next` pointer: the entry is logically deleted.
const MARK: usize = 0b1;
/// Tag bit on a marked entry's `next` pointer, set by the thread that
/// unlinked the entry at the head while it was unreachable for everyone
/// else: the list's claim was handed back to the entry's owner, who releases
/// it together with its own (see `Link::set_claim_returned`).
const RETURNED: usize = 0b10;
/// The smallest garbage count that triggers a sweep. 1 under loom, so that
/// the models, which have a handful of entries, exercise sweeps.
pub(crate) const MIN_SWEEP: u32 = if cfg!(loom) { 1 } else { 64 };
/// `garbage` low 32 bits: marked entries not yet unlinked.
const DEAD_MASK: u64 = u32::MAX as u64;

#[inline]
fn untag(p: *mut Header) -> *mut Header {
    p.map_addr(|a| a & !0b111)
}

/// The `next` link every list entry embeds (in its header).
pub(crate) struct Link(AtomicPtr<Header>);

impl Link {
    pub(crate) fn new() -> Self {
        Link(AtomicPtr::new(ptr::null_mut()))
    }

    /// Marks the entry deleted. Returns `true` for the one call that marked
    /// it (invariant 4). The pointer part never changes after this; only
    /// the `RETURNED` tag may still be added, once the entry is unreachable.
    ///
    /// AcqRel: Release orders everything the remover did to the entry before
    /// the mark, so the thread that unlinks and frees it sees those writes;
    /// Acquire so a failed marker sees the winner's writes.
    pub(crate) fn mark(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if cur.addr() & MARK != 0 {
                return false;
            }
            match self.0.compare_exchange_weak(
                cur,
                cur.map_addr(|a| a | MARK),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => {
                    cur = actual;
                    spin_hint();
                }
            }
        }
    }

    /// Acquire: pairs with the Release of the push or unlink that stored
    /// the pointer, so the entry it points at is fully initialised.
    #[inline]
    fn load(&self) -> *mut Header {
        self.0.load(Ordering::Acquire)
    }

    /// Records that the list's claim on this (marked, unlinked) entry was
    /// handed back to the entry's owner instead of being released.
    ///
    /// Relaxed: the entry was unlinked at the head with no sweep running, so
    /// no other thread reads this word any more except the entry's dying
    /// thread, which is ordered after us by the reference count (we hold a
    /// reference, released with Release after this store).
    ///
    /// # Safety
    /// `remove_marked(.., HeadClaim::HandBack)` returned
    /// [`ListClaim::HandedBack`] for this entry.
    pub(crate) unsafe fn set_claim_returned(&self) {
        let next = self.0.load(Ordering::Relaxed);
        self.0
            .store(next.map_addr(|a| a | RETURNED), Ordering::Relaxed);
    }

    /// True if `set_claim_returned` was called: the entry's owner holds the
    /// list's claim. Read by the entry's dying thread (ordered after the
    /// store by the reference count, see above).
    pub(crate) fn claim_returned(&self) -> bool {
        self.0.load(Ordering::Relaxed).addr() & RETURNED != 0
    }
}

/// What a remover does with the list's claim on an entry it unlinks
/// cleanly at the head (no sweep running, invariant 5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum HeadClaim {
    /// Release it at once.
    Release,
    /// Hand it back to the caller (the entry's owner, which releases it
    /// with its own claim: one atomic operation fewer).
    HandBack,
}

/// Whether the list's claim on a removed entry is now the caller's.
#[must_use]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ListClaim {
    /// Not the caller's: released at once, left with the entry for whoever
    /// unlinks it (a sweep or the owner's drain), or nothing was removed.
    NotOurs,
    /// Handed back ([`HeadClaim::HandBack`] and a clean head unlink): the
    /// caller owns the list's claim on the entry.
    HandedBack,
}

/// How a successful [`ChildList::push`] went.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Pushed {
    /// At the first attempt.
    Alone,
    /// After another thread changed the head (or a spurious failure of the
    /// weak compare-exchange): the owner may be contended.
    Contended,
}

/// A node's list of entries (see the module docs).
pub(crate) struct ChildList {
    head: AtomicPtr<Header>,
    /// Low 32 bits (`DEAD_MASK`): marked entries not yet unlinked
    /// (approximate, see invariant 6). High 32 bits: the dead count that
    /// triggers the next sweep (0: `MIN_SWEEP`). A sweep in progress is
    /// announced on the head (`SWEEPING`), not here.
    garbage: AtomicU64,
}

/// A sealed list, ready to be walked: its first entry.
pub(crate) struct Sealed(*mut Header);

impl ChildList {
    pub(crate) fn new() -> Self {
        ChildList {
            head: AtomicPtr::new(ptr::null_mut()),
            garbage: AtomicU64::new(0),
        }
    }

    /// A list that is sealed from the start (its owner is done on creation).
    pub(crate) fn new_sealed() -> Self {
        ChildList {
            head: AtomicPtr::new(ptr::without_provenance_mut(SEALED | COMPLETE)),
            garbage: AtomicU64::new(0),
        }
    }

    /// Pushes `entry`. `Err(())` if the list is sealed: the owner is done,
    /// and its state word is visible to the caller. `Ok` says whether
    /// another thread changed the head under us ([`Pushed::Contended`]: the
    /// first compare-exchange failed), the signal for a contended parent's
    /// proxies (`node::proxy`).
    ///
    /// `Ok(())` does not mean the owner is live: a walker that found the
    /// list empty does not seal it (see `is_empty_after_finish`). The
    /// caller completes the handshake with `StateWord::load_after_push`, and finishes the entry itself if the
    /// owner turns out to be done: either the walker's SeqCst load of the
    /// head sees our push, or our SeqCst load of the state sees its cancel
    /// (invariant 3).
    ///
    /// # Safety
    /// `entry` is a valid, unpublished entry whose claims include one for
    /// this list.
    pub(crate) unsafe fn push(&self, entry: NonNull<Header>) -> Result<Pushed, ()> {
        // Acquire (here and on failure): if we see SEALED we also see the
        // owner's state word, stored before the Release of `seal`.
        let mut head = self.head.load(Ordering::Acquire);
        let mut pushed = Pushed::Alone;
        loop {
            if head.addr() & SEALED != 0 {
                return Err(());
            }
            // Relaxed: published by the compare-exchange below.
            // SAFETY: the caller owns the unpublished entry.
            unsafe { entry.as_ref() }
                .next
                .0
                .store(untag(head), Ordering::Relaxed);
            // SeqCst: Release publishes the entry's initialisation to
            // walkers that Acquire the head; SeqCst for the handshake above.
            // This CAS is the linearisation point of a derive (invariant
            // 3). A running sweep's tag stays on the head.
            match self.head.compare_exchange_weak(
                head,
                entry.as_ptr().map_addr(|a| a | (head.addr() & SWEEPING)),
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(pushed),
                Err(actual) => {
                    head = actual;
                    pushed = Pushed::Contended;
                    spin_hint();
                }
            }
        }
    }

    /// The walker's half of the push/cancel handshake, after the owner's
    /// state was made done by a SeqCst compare-exchange (`try_finish`) and
    /// `sc_handshake`: true if the list has no entry. Such a list is left
    /// unsealed: a pusher that our SeqCst load does not see will see the
    /// owner done and finish its entry itself (see `push`). Saves the seal's
    /// read-modify-write on every leaf.
    #[inline]
    pub(crate) fn is_empty_after_finish(&self) -> bool {
        sc_handshake();
        untag(self.head.load(Ordering::SeqCst)).is_null()
    }

    /// Closes the list to new entries and returns it for walking.
    ///
    /// AcqRel: Release so a pusher that sees SEALED sees the state word the
    /// canceller stored before sealing; Acquire so the walker sees every
    /// entry pushed before the seal.
    pub(crate) fn seal(&self) -> Sealed {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            if head.addr() & SEALED != 0 {
                // Already sealed (by a canceller we are helping, or at
                // creation): the Acquire load above is enough.
                return Sealed(untag(head));
            }
            // An empty list is complete as soon as it is sealed: nothing
            // below it to walk (saves `mark_complete` on leaf nodes).
            let bits = if untag(head).is_null() {
                SEALED | COMPLETE
            } else {
                SEALED
            };
            match self.head.compare_exchange_weak(
                head,
                head.map_addr(|a| a | bits),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Sealed(untag(head)),
                Err(actual) => {
                    head = actual;
                    spin_hint();
                }
            }
        }
    }

    /// Records that the walk of the owner's subtree has finished.
    ///
    /// Release: whoever sees COMPLETE (Acquire in `is_complete`) also sees
    /// every state word the walk published.
    pub(crate) fn mark_complete(&self) {
        let mut head = self.head.load(Ordering::Relaxed);
        // An open list was empty when walked and stays open (see
        // `is_empty_after_finish`): nothing to record.
        while head.addr() & (SEALED | COMPLETE) == SEALED {
            match self.head.compare_exchange_weak(
                head,
                head.map_addr(|a| a | COMPLETE),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => {
                    head = actual;
                    spin_hint();
                }
            }
        }
    }

    /// True once a walk of the owner's subtree has finished: every
    /// descendant is done and stays done (invariant 9).
    pub(crate) fn is_complete(&self) -> bool {
        // Acquire: pairs with `mark_complete`.
        self.head.load(Ordering::Acquire).addr() & COMPLETE != 0
    }

    /// Removes an entry that the caller has just marked.
    ///
    /// O(1) at the head; otherwise counted as garbage and swept in bulk
    /// (invariant 6). Nothing is done on a sealed list: its owner drains it.
    ///
    /// The list's claim on an entry unlinked here at the head is released
    /// at once (or handed back to the caller, see `head_claim`): the unlink
    /// is only attempted on a head word with no tag, so it is ordered with
    /// every sweep's announcement on the same word. A sweep that announced
    /// itself later starts from a head that no longer leads to the entry; one
    /// that finished earlier cleared its tag with Release, which our Acquire
    /// compare-exchange reads (through the head's release sequence, every
    /// write to the head being a read-modify-write). Walkers only walk sealed
    /// lists, and the owner's dying thread cannot run while the caller holds
    /// the owner (invariant 5).
    ///
    /// With [`HeadClaim::HandBack`], a clean unlink hands the list's claim
    /// back to the caller ([`ListClaim::HandedBack`]) instead of releasing
    /// it.
    ///
    /// # Safety
    /// `entry` is in this list, marked, and the caller keeps the list's owner
    /// alive for the duration of the call.
    pub(crate) unsafe fn remove_marked(
        &self,
        entry: NonNull<Header>,
        guard: &mut LazyGuard,
        head_claim: HeadClaim,
    ) -> ListClaim {
        let head = self.head.load(Ordering::Acquire);
        if head.addr() & SEALED != 0 {
            return ListClaim::NotOurs;
        }
        if head == entry.as_ptr() {
            // SAFETY: the caller keeps `entry` valid; it is marked, so its
            // `next` is final (invariant 4).
            let next = untag(unsafe { entry.as_ref() }.next.load());
            // AcqRel: Release keeps the chain of Acquire/Release edges for
            // later walkers; Acquire reads a finished sweep's Release (see
            // above). Fails if anything changed the head, tags included.
            if self
                .head
                .compare_exchange(head, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if head_claim == HeadClaim::HandBack {
                    return ListClaim::HandedBack;
                }
                // SAFETY: we unlinked it and nobody else can reach it.
                unsafe { super::release_claims(entry, 1) };
                return ListClaim::NotOurs;
            }
        }
        // Relaxed: the counter only schedules sweeps; the list itself is
        // synchronised by the pointers.
        let before = self.garbage.fetch_add(1, Ordering::Relaxed);
        let dead = ((before & DEAD_MASK) as u32).wrapping_add(1);
        let threshold = ((before >> 32) as u32).max(MIN_SWEEP);
        if dead == threshold {
            // Half the live entries: removals that happen at the head are
            // not counted, so a threshold of `live` could be missed forever
            // when every live entry goes away (e.g. a FIFO drop of a large
            // fan-out). With `live / 2` the dead entries left behind are at
            // most max(MIN_SWEEP, live at the last sweep / 2) and each sweep
            // is still paid for by as many removals as it costs (amortised
            // O(1), invariant 6). If another sweep is running (or the list
            // was sealed), `sweep` returns `None` and the next removal
            // retries.
            // SAFETY: forwarded from our caller.
            let (unlinked, wanted) = unsafe { self.sweep(guard) }
                .map_or((0, 0), |(unlinked, live)| {
                    (unlinked, (live / 2).max(MIN_SWEEP))
                });
            // Relaxed: see above. Keep the threshold above the count so the
            // equality test fires again (invariant 6).
            let _ = self
                .garbage
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |g| {
                    let d = ((g & DEAD_MASK) as u32).saturating_sub(unlinked);
                    let t = wanted.max(d.saturating_add(1));
                    Some(u64::from(d) | (u64::from(t) << 32))
                });
        }
        ListClaim::NotOurs
    }

    /// Unlinks every marked entry of an open list, unless another sweep is
    /// running or the list is sealed (`None`). Returns (entries unlinked,
    /// live entries seen). The list's claim on each entry unlinked here is
    /// released through the epoch: other walkers may still be looking at it
    /// (invariant 5).
    ///
    /// # Safety
    /// The caller keeps the owner alive.
    unsafe fn sweep(&self, guard: &mut LazyGuard) -> Option<(u32, u32)> {
        // Announce: set SWEEPING on a non-empty, open, unannounced head.
        // Acquire: we see every entry pushed before; Release pairs with
        // nothing in particular but keeps the head's release sequence.
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            if head.addr() & (SEALED | SWEEPING) != 0 || untag(head).is_null() {
                return None;
            }
            match self.head.compare_exchange_weak(
                head,
                head.map_addr(|a| a | SWEEPING),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => {
                    head = actual;
                    spin_hint();
                }
            }
        }
        // SAFETY: forwarded; pinned.
        let result = unsafe { self.sweep_pinned(guard.get()) };
        // Withdraw the announcement. Release: our traversal happens before
        // any free by a head unlinker that reads this (or a later) value.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            match self.head.compare_exchange_weak(
                head,
                head.map_addr(|a| a & !SWEEPING),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(result),
                Err(actual) => {
                    head = actual;
                    spin_hint();
                }
            }
        }
    }

    /// Unlinks everything left in the list of a node that is dying. No
    /// announcement: nobody else removes entries from this list any more
    /// (every remover holds the owner, invariant 5), and no pin for our own
    /// traversal (the list's claims keep the entries valid until we release
    /// them). Only a cancellation walk could still be inside the list: if
    /// none is in flight, the list's claims are released at once, without
    /// even unlinking the entries; else they are unlinked and their claims
    /// released through the epoch.
    ///
    /// # Safety
    /// The caller is the owner's dying thread, and has marked the owner in
    /// its parent's list (if it was linked) before this call.
    #[inline]
    pub(crate) unsafe fn drain(&self, guard: &mut LazyGuard) {
        let curr = untag(self.head.load(Ordering::Acquire));
        if !curr.is_null() {
            // SAFETY: forwarded.
            unsafe { self.drain_from(curr, guard) };
        }
    }

    /// # Safety
    /// As for `drain`; `curr` is the first entry.
    #[inline(never)]
    unsafe fn drain_from(&self, mut curr: *mut Header, guard: &mut LazyGuard) {
        if no_walk_in_flight() {
            // Nobody can traverse this list any more: release the list's
            // claim on each entry without unlinking it.
            while let Some(entry) = NonNull::new(curr) {
                // SAFETY: the list's claim keeps the entry valid until we
                // release it below.
                let next = unsafe { entry.as_ref() }.next.load();
                debug_assert!(next.addr() & MARK != 0, "a live entry in a dead list");
                curr = untag(next);
                // SAFETY: the list's claim, and no traverser relies on it
                // (see above; invariant 5).
                unsafe { super::release_claims(entry, 1) };
            }
            return;
        }
        let mut retired = Unlinked::None;
        // SAFETY: the dying owner's thread; see above.
        unsafe { self.unlink_marked(&mut retired) };
        // SAFETY: we unlinked them, each with the list's claim.
        unsafe { super::release_claims_later(retired, guard.get()) };
    }

    /// Lock-free: a failed compare-exchange means another thread made
    /// progress on the same list, and we restart from the head.
    ///
    /// # Safety
    /// As for `sweep` or `drain`, and pinned by `guard`.
    unsafe fn sweep_pinned(&self, guard: &Guard) -> (u32, u32) {
        let mut retired = Unlinked::None;
        // SAFETY: forwarded.
        let counts = unsafe { self.unlink_marked(&mut retired) };
        // SAFETY: we unlinked them, each with the list's claim.
        unsafe { super::release_claims_later(retired, guard) };
        counts
    }

    /// The traversal of `sweep_pinned`: unlinks every marked entry and
    /// collects it in `retired`.
    ///
    /// # Safety
    /// As for `sweep_pinned`.
    unsafe fn unlink_marked(&self, retired: &mut Unlinked) -> (u32, u32) {
        let mut unlinked = 0u32;
        'restart: loop {
            let mut live = 0u32;
            let mut pred: &AtomicPtr<Header> = &self.head;
            let mut curr = pred.load(Ordering::Acquire);
            loop {
                let entry = untag(curr);
                let Some(entry) = NonNull::new(entry) else {
                    return (unlinked, live);
                };
                // SAFETY: reached through the list while pinned: not freed
                // before the guard is dropped (invariant 5).
                let e = unsafe { entry.as_ref() };
                let next = e.next.load();
                // After the load: the read above must not have been of a
                // freed entry (loom can schedule a free just before it).
                e.assert_not_freed();
                if next.addr() & MARK != 0 {
                    // Keep the predecessor's own tag (SEALED on the head).
                    let tags = curr.addr() & 0b111;
                    let replacement = untag(next).map_addr(|a| a | tags);
                    // AcqRel: see `remove_marked`.
                    match pred.compare_exchange(
                        curr,
                        replacement,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            unlinked += 1;
                            // Others may still traverse it: its list claim
                            // is released through the epoch, below.
                            retired.push(entry);
                            curr = replacement;
                        }
                        Err(_) => {
                            spin_hint();
                            continue 'restart;
                        }
                    }
                } else {
                    live += 1;
                    pred = &e.next.0;
                    curr = next;
                }
            }
        }
    }
}

impl Sealed {
    /// True if the list had no entries when sealed.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_null()
    }

    /// Calls `f` on every entry not marked when visited. Entries marked
    /// while we walk may or may not be visited; entries are never added
    /// (invariant 3).
    ///
    /// # Safety
    /// The caller was pinned by `_guard`, and counted as a walk in flight
    /// (`WalkGuard::traverse`), before the head was read, and stays so for
    /// the whole walk: an entry unlinked under us (by a sweep announced
    /// before the seal, or by the dying owner's drain, which sees the walk
    /// counted) is released through the epoch, after we unpin (invariant 5).
    pub(crate) unsafe fn for_each(&self, _guard: &Guard, mut f: impl FnMut(NonNull<Header>)) {
        let mut curr = self.0;
        while let Some(entry) = NonNull::new(untag(curr)) {
            // SAFETY: see the contract.
            let e = unsafe { entry.as_ref() };
            let next = e.next.load();
            // After the load, as in `sweep_pinned`.
            e.assert_not_freed();
            if next.addr() & MARK == 0 {
                f(entry);
            }
            curr = next;
        }
    }
}
