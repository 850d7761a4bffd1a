//! The timer's wheels, one per shard, each behind its own lock: a thread
//! arms in the shard of the CPU it runs on (`sync::thread_shard`), so two
//! cores arming and disarming deadlines take different locks on different
//! cache lines.
//!
//! An armed entry's id carries its shard in the top byte (the wheel leaves
//! it zero, `wheel::GENERATION_BITS`), so a disarm or a move goes to the
//! shard that holds the entry whichever thread makes it. An entry never
//! changes shard: a re-arm (a moved deadline) inserts it again in the same
//! one.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::wheel::{TimerId, Wheel};

/// At most this many shards (the shard number fits in the id's top byte,
/// and `0xFF` stays free for the "no entry" id).
pub(crate) const MAX_SHARDS: usize = 64;

/// Bit position of the shard number in an id.
const SHARD_SHIFT: u32 = 56;

/// One shard's wheel, alone on its cache lines.
#[repr(align(128))]
struct Shard<T>(Mutex<Wheel<T>>);

/// The wheels of every shard.
pub(crate) struct Shards<T> {
    shards: Box<[Shard<T>]>,
}

/// A locked shard: the wheel operations, with ids that name the shard.
pub(crate) struct Locked<'a, T> {
    shard: usize,
    wheel: MutexGuard<'a, Wheel<T>>,
}

impl<T> Shards<T> {
    /// `count` (1..=`MAX_SHARDS`, clamped) empty wheels sharing one origin,
    /// so they round time alike.
    pub(crate) fn new(count: usize, origin: Instant) -> Self {
        let count = count.clamp(1, MAX_SHARDS);
        Shards {
            shards: (0..count)
                .map(|_| Shard(Mutex::new(Wheel::new(origin))))
                .collect(),
        }
    }

    /// One shard per available core, up to `MAX_SHARDS`.
    pub(crate) fn per_core(origin: Instant) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, origin)
    }

    /// The number of shards.
    pub(crate) fn count(&self) -> usize {
        self.shards.len()
    }

    /// Locks shard `shard` (below [`count`](Self::count)).
    pub(crate) fn lock(&self, shard: usize) -> Locked<'_, T> {
        Locked {
            shard,
            // No user code runs under a shard lock, so poisoning could only
            // come from a bug in the wheel: keep serving rather than panic
            // in every deadline.
            wheel: self.shards[shard]
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Locks the calling thread's shard (given on its first call, round
    /// robin over the threads).
    pub(crate) fn lock_local(&self) -> Locked<'_, T> {
        self.lock(crate::sync::thread_shard(self.count()))
    }

    /// Locks the shard named by the id bits `bits`; `None` for the "no
    /// entry" bits (or bits no shard made).
    pub(crate) fn lock_of(&self, bits: u64) -> Option<Locked<'_, T>> {
        let shard = (bits >> SHARD_SHIFT) as usize;
        (bits != TimerId::NONE_BITS && shard < self.count()).then(|| self.lock(shard))
    }
}

impl<T> Shards<T> {
    /// Checks every wheel's invariants (W1-W6); the entries armed.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> usize {
        (0..self.count())
            .map(|i| {
                let locked = self.lock(i);
                locked.wheel.check_invariants();
                locked.wheel.len()
            })
            .sum()
    }
}

impl<T> Locked<'_, T> {
    /// Arms `value` at `when` in this shard; returns its id bits (never
    /// [`TimerId::NONE_BITS`]: the shard is below `0xFF`).
    pub(crate) fn insert(&mut self, when: Instant, value: T) -> u64 {
        let id = self.wheel.insert(when, value).to_bits();
        debug_assert_eq!(id >> SHARD_SHIFT, 0, "the wheel leaves the top byte zero");
        id | (self.shard as u64) << SHARD_SHIFT
    }

    /// Disarms the entry `bits` if this shard holds it, armed; `None` for a
    /// stale id, another shard's id or the "no entry" bits.
    pub(crate) fn remove(&mut self, bits: u64) -> Option<T> {
        if bits == TimerId::NONE_BITS || (bits >> SHARD_SHIFT) as usize != self.shard {
            return None;
        }
        let id = TimerId::from_bits(bits & ((1 << SHARD_SHIFT) - 1))?;
        self.wheel.remove(id)
    }

    /// Moves the armed entry `bits` to `when`: its new id bits, with the
    /// value (removed and inserted again, in this shard); `None` if it is
    /// not armed here.
    pub(crate) fn rearm(&mut self, bits: u64, when: Instant) -> Option<(u64, T)>
    where
        T: Copy,
    {
        let value = self.remove(bits)?;
        Some((self.insert(when, value), value))
    }

    /// Moves this shard's expired entries (as of `now`) into `out`.
    pub(crate) fn poll_expired(&mut self, now: Instant, out: &mut Vec<T>) {
        self.wheel.poll_expired(now, out);
    }

    /// This shard's earliest expiry, `None` if nothing can fire.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        if self.wheel.is_empty() {
            None
        } else {
            self.wheel.next_expiry()
        }
    }

    /// Lets this shard hold `n` entries without allocating.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.wheel.reserve(n);
    }

    /// Entries armed in this shard.
    pub(crate) fn len(&self) -> usize {
        self.wheel.len()
    }
}
