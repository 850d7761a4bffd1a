//! The timer thread's sleep word: how an arm on one shard tells the timer
//! thread, which scans every shard under each shard's own lock, that it
//! must look again, without a lock shared by all cores (invariant 10s in
//! docs/DESIGN.md).
//!
//! One atomic word holds what the thread is doing:
//!
//! - [`NOTIFIED`]: an arm asked for a new scan (the thread will not sleep
//!   before it rescans);
//! - [`SCANNING`]: the thread is reading the shards' next expiries;
//! - a target, `µs + 2` on the timer's clock: the thread sleeps (or is
//!   about to) until then; [`NEVER`]: until woken.
//!
//! The thread swaps in `SCANNING` before it locks the first shard and, once
//! it has the earliest expiry, CASes `SCANNING` to its target; a failed
//! CAS means an arm notified it meanwhile, and it scans again. An arm
//! inserts under its shard's lock and then reads the word: `NOTIFIED`
//! needs nothing; `SCANNING` is CASed to `NOTIFIED` (the scan in flight may
//! have passed the shard already); a target later than the new entry is
//! swapped to `NOTIFIED` and the caller unparks the thread; an earlier
//! target needs nothing (the thread wakes by then and rescans).
//!
//! Why no arm is missed: if the thread's scan locked the arm's shard
//! before the arm did, the thread's `SCANNING` store happens before the
//! arm's read of the word (through the shard's lock), so the arm reads
//! `SCANNING` or a later value: a target computed without its entry, or
//! `NOTIFIED`. Otherwise the scan sees the entry. A `NOTIFIED` written by
//! an arm (Release) and read by the thread's failing CAS (Acquire) orders
//! the arm's insert before the rescan's lock of the shard. The unpark
//! after the swap leaves a token if the thread has not parked yet.
//!
//! `loom-tests/tests/loom_timer_sleep.rs` models the protocol.

use crate::sync::{AtomicU64, Ordering};

/// An arm asked for a rescan.
const NOTIFIED: u64 = 0;
/// The thread is scanning the shards.
const SCANNING: u64 = 1;
/// The thread sleeps until woken (no entry armed).
const NEVER: u64 = u64::MAX;

/// The target word for a sleep until `us` (µs on the timer's clock;
/// `None`: until woken). Never `NOTIFIED` or `SCANNING`.
fn target(us: Option<u64>) -> u64 {
    us.map_or(NEVER, |us| us.saturating_add(2).min(NEVER - 1))
}

/// The timer thread's sleep word (see the module documentation).
pub(crate) struct Sleeper {
    word: AtomicU64,
}

impl Sleeper {
    /// A thread that has not scanned yet: the first arm finds `SCANNING`
    /// and leaves `NOTIFIED`, which the thread's first scan overwrites.
    pub(crate) fn new() -> Self {
        Sleeper {
            word: AtomicU64::new(SCANNING),
        }
    }

    /// The thread, before it locks the first shard of a scan.
    pub(crate) fn begin_scan(&self) {
        // An RMW (AcqRel, though nothing more than coherence is needed): an
        // arm whose shard lock follows this thread's (its scan of that
        // shard) must read this value or a later one, which the lock's
        // happens-before gives even to a Relaxed store. loom 0.7.3 does not
        // honour that for a plain store (its model explored an arm reading
        // the `NOTIFIED` from before the previous scan, cf.
        // tokio-rs/loom#282), but does for a swap; one RMW per timer turn,
        // on the timer thread only, buys a model of the code we ship.
        self.word.swap(SCANNING, Ordering::AcqRel);
    }

    /// The thread, after the scan found its earliest expiry `us` (`None`:
    /// nothing armed): true if it may sleep until then, false if an arm
    /// notified it during the scan (scan again).
    pub(crate) fn finish_scan(&self, us: Option<u64>) -> bool {
        // Acquire on failure: pairs with the notifying arm's Release, so
        // its insert happens before the rescan locks its shard. Release on
        // success: an arm whose CAS replaces this target (and then unparks)
        // synchronises with it, so it sees what the thread did before,
        // its `Thread` handle included (`Timer::thread` relies on it).
        self.word
            .compare_exchange(SCANNING, target(us), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// An arm, after inserting at `us` (computed lazily, only when the
    /// thread sleeps) under its shard's lock: true if the caller must
    /// unpark the thread (it sleeps past the new entry).
    pub(crate) fn notify(&self, us: impl FnOnce() -> u64) -> bool {
        let mut us = Some(us);
        let mut entry = 0;
        // Relaxed: what the protocol needs of this read is coherence (a
        // scan that passed our shard before our insert stored SCANNING,
        // which happens before this read through the shard's lock); the
        // CAS below publishes.
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            let wake = match cur {
                NOTIFIED => return false,
                SCANNING => false,
                t => {
                    if let Some(f) = us.take() {
                        entry = target(Some(f()));
                    }
                    if entry >= t {
                        // The thread wakes by `t` and rescans.
                        return false;
                    }
                    true
                }
            };
            // Release: pairs with the thread's Acquire failure in
            // `finish_scan` (or its next scan's lock, if it is asleep), so
            // the insert before is seen by its rescan.
            match self
                .word
                .compare_exchange(cur, NOTIFIED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return wake,
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let s = Sleeper::new();
        // Before the first scan: a notify leaves NOTIFIED, no unpark.
        assert!(!s.notify(|| 5));
        // The scan sees it and must scan again.
        assert!(!s.finish_scan(Some(100)));
        s.begin_scan();
        assert!(s.finish_scan(Some(100)));
        // Later than the target: nothing; earlier: unpark, once.
        assert!(!s.notify(|| 100));
        assert!(!s.notify(|| 200));
        assert!(s.notify(|| 99));
        assert!(!s.notify(|| 10));
        s.begin_scan();
        assert!(s.finish_scan(None));
        assert!(s.notify(|| u64::MAX));
        s.begin_scan();
        assert!(s.finish_scan(Some(u64::MAX)));
        assert!(!s.notify(|| u64::MAX));
    }
}
