//! The crate-global timer service: one wheel per shard ([`shards`], one
//! shard per core), one thread named `ctxtree-timer` that serves them all,
//! started by the first entry that needs it and never otherwise, and the
//! firing pool (`ctxtree-fire` threads, [`firing`]) that runs what expires.
//!
//! The service is generic over what it arms ([`Expiry`]) and knows nothing
//! of the context tree: the deadline glue (`node::timer_glue`) owns the one
//! [`Timer`] instance and implements [`Expiry`] for deadline nodes. The
//! edge runs one way, from the node layer to this module.
//!
//! Arm, disarm and re-arm (a deadline moved earlier, or found later than
//! its entry when popped: [`Claim::Rearm`]) are O(1) wheel operations under
//! one shard's mutex: an arm takes the calling thread's shard, a disarm or
//! re-arm the shard named in the entry's id, so cores arming and disarming
//! their own deadlines take different locks. They are taken by deadline
//! nodes (arm at creation, disarm when cancelled or dropped, re-arm when
//! moved earlier) and the timer thread, never by deriving, cancelling or
//! dropping nodes without a deadline, and never while user code runs.
//!
//! The thread scans the shards one lock at a time, then sleeps (parks)
//! until the earliest expiry; an arm earlier than that wakes it through the
//! sleep word ([`sleep`], invariant 10s), with no lock shared by all
//! cores. It only pops expired entries and hands them to the firing pool:
//! the cancellations they start (and the `after_func` callbacks and wakers
//! those run) execute on `ctxtree-fire` threads, so a slow or blocking
//! callback can delay neither the timer nor an unrelated deadline (the
//! pool's stall rule starts another worker when the ones it has are
//! stuck). A shard lock and the pool's queue lock are never held together.

pub(crate) mod firing;
#[cfg(test)]
mod reference_model;
mod shards;
pub(crate) mod sleep;
mod wheel;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use self::firing::{Firing, Job, STALL_US};
use self::shards::Shards;
use self::sleep::Sleeper;
use self::wheel::TimerId;

/// The id bits [`Timer::arm`] never records: "no entry armed".
pub(crate) const NONE_BITS: u64 = TimerId::NONE_BITS;

/// What an [`Expiry::claim`] decided for an entry the wheel gave back.
pub(crate) enum Claim<E, F> {
    /// Fire it: handed to the firing pool (after the lock is released).
    Fire(F),
    /// Its deadline moved later: insert the entry again at this instant
    /// (under the same shard lock), then tell it its new id
    /// ([`Expiry::rearmed`]).
    Rearm(Instant, E),
    /// Nothing to do (the entry's target is gone).
    Skip,
}

/// What a [`Timer`] arms, and what its thread does when an entry expires.
/// `Copy`: a re-armed entry is told its new id after the wheel took it.
pub(crate) trait Expiry: Copy + Send + 'static {
    /// What [`claim`](Expiry::claim) hands to the firing pool, which
    /// [`run`](Job::run)s it on a `ctxtree-fire` thread.
    type Fired: Job;

    /// An entry the wheel has just given back at `now`, its armed time
    /// passed: fire it, re-arm it later, or skip it.
    ///
    /// # Safety
    /// Called by the timer thread with the entry's shard locked, once per entry
    /// that was armed until this poll (never disarmed: a disarm removes the
    /// entry under the same lock).
    unsafe fn claim(self, now: Instant) -> Claim<Self, Self::Fired>;

    /// The entry was re-armed (after [`Claim::Rearm`] or by
    /// [`Timer::rearm`]) under id bits `bits`; called with its shard locked.
    ///
    /// # Safety
    /// As for [`claim`](Expiry::claim): the entry is armed, under the lock.
    unsafe fn rearmed(self, bits: u64);
}

/// The wheels (one per shard), the thread that serves them, and the pool
/// that runs what expires.
pub(crate) struct Timer<E: Expiry> {
    shards: Shards<E>,
    /// What the thread is doing: scanning, or sleeping until when.
    sleep: Sleeper,
    /// The thread, set by itself before its first scan (so any arm that
    /// must wake it finds it: the sleep target it read came later).
    thread: OnceLock<Thread>,
    /// Whether the thread was spawned (spawning takes `starting`).
    started: AtomicBool,
    starting: Mutex<()>,
    /// Runs what expires (`ctxtree-fire` threads).
    firing: Firing<E::Fired>,
    /// The origin of the wheels and of the microsecond clock of the sleep
    /// word and the firing pool.
    base: Instant,
}

impl<E: Expiry> Timer<E> {
    /// An empty timer, one shard per core; its thread starts with the first
    /// [`arm`](Self::arm).
    pub(crate) fn new() -> Self {
        let base = Instant::now();
        Timer {
            shards: Shards::per_core(base),
            sleep: Sleeper::new(),
            thread: OnceLock::new(),
            started: AtomicBool::new(false),
            starting: Mutex::new(()),
            firing: Firing::new(),
            base,
        }
    }

    /// `now` on the timer's clock (µs since the timer was made). Seconds
    /// times a million plus the sub-second µs: no 128-bit division (every
    /// arm computes it while the thread sleeps with a target).
    fn micros(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.base);
        since
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(since.subsec_micros()))
    }

    /// Spawns the thread unless it was; a failure (out of threads) is
    /// reported and retried by the next arm, the entry staying armed.
    fn start(&'static self) {
        // Acquire: pairs with the Release store below (only to skip the
        // lock; the spawn itself is under it).
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let _spawning = self.starting.lock().unwrap_or_else(PoisonError::into_inner);
        // Relaxed: under the lock that every store of `started` holds.
        if self.started.load(Ordering::Relaxed) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("ctxtree-timer".into())
            .spawn(move || self.run());
        match spawned {
            // Release: see the Acquire above.
            Ok(_) => self.started.store(true, Ordering::Release),
            Err(e) => eprintln!("ctxtree: cannot start the timer thread: {e}"),
        }
    }

    /// After an insert at `when`: wakes the thread if it sleeps past it
    /// (the sleep word's protocol, [`sleep`]).
    fn notify(&self, when: Instant) {
        if self.sleep.notify(|| self.micros(when)) {
            // Set: the thread stored it before the sleep target this
            // notify replaced.
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// Arms `entry` at `when` in the calling thread's shard. `record`
    /// receives the entry's id bits while the shard is locked (what
    /// [`disarm`](Self::disarm)'s `take` returns; they name the shard).
    pub(crate) fn arm(&'static self, when: Instant, entry: E, record: impl FnOnce(u64)) {
        self.start();
        {
            let mut shard = self.shards.lock_local();
            record(shard.insert(when, entry));
        }
        self.notify(when);
    }

    /// Removes the entry whose id bits `take` returns (taking them under the
    /// lock of the shard that `hint`, an earlier read of them, names), if it
    /// is still armed. An entry never changes shard, so `hint` names the
    /// right one; [`NONE_BITS`] or a stale id do nothing.
    pub(crate) fn disarm(&self, hint: u64, take: impl FnOnce() -> u64) {
        if let Some(mut shard) = self.shards.lock_of(hint) {
            let _ = shard.remove(take());
        }
    }

    /// Moves an armed entry, O(1), in its shard (named by `hint`, as for
    /// [`disarm`](Self::disarm)): under the shard's lock, `take` returns the
    /// entry's id bits and its new instant, or `None` (not armed: nothing
    /// happens); the entry is removed and inserted again, and told its new
    /// id ([`Expiry::rearmed`]). Wakes the thread if it sleeps past `when`.
    pub(crate) fn rearm(&self, hint: u64, take: impl FnOnce() -> Option<(u64, Instant)>) {
        let when = {
            let Some(mut shard) = self.shards.lock_of(hint) else {
                return;
            };
            let Some((bits, when)) = take() else { return };
            let Some((bits, entry)) = shard.rearm(bits, when) else {
                return;
            };
            // SAFETY: armed just now, under the shard's lock.
            unsafe { entry.rearmed(bits) };
            when
        };
        self.notify(when);
    }

    /// Lets every shard hold `n` entries without allocating (for tests
    /// that count allocations, whichever shard their threads arm in).
    pub(crate) fn reserve(&self, n: usize) {
        for i in 0..self.shards.count() {
            self.shards.lock(i).reserve(n);
        }
    }

    /// Number of armed entries, over all shards (for tests and benchmarks).
    pub(crate) fn armed(&self) -> usize {
        (0..self.shards.count())
            .map(|i| self.shards.lock(i).len())
            .sum()
    }

    /// The timer thread: scans every shard, popping expired entries (handed
    /// to the firing pool) and finding the earliest expiry, applies the
    /// pool's stall rule, and sleeps until the earliest expiry or an arm's
    /// notification. It never runs what expires.
    fn run(&'static self) {
        // Before the first scan: see `thread`.
        let _ = self.thread.set(std::thread::current());
        let mut due: Vec<E> = Vec::new();
        let mut fired: Vec<E::Fired> = Vec::new();
        loop {
            let now = Instant::now();
            // Before taking a shard lock: the pool's lock is never nested
            // in one.
            let pending = self.firing.check_stall(self.micros(now));
            self.sleep.begin_scan();
            let mut next: Option<Instant> = None;
            for i in 0..self.shards.count() {
                let mut shard = self.shards.lock(i);
                shard.poll_expired(now, &mut due);
                for entry in due.drain(..) {
                    // SAFETY: under the shard's lock, and the wheel has just
                    // given the entry back: it was armed until this poll.
                    match unsafe { entry.claim(now) } {
                        Claim::Fire(f) => fired.push(f),
                        Claim::Rearm(when, entry) => {
                            let bits = shard.insert(when, entry);
                            // SAFETY: armed just now, under the shard's lock.
                            unsafe { entry.rearmed(bits) };
                        }
                        Claim::Skip => {}
                    }
                }
                next = earliest(next, shard.next_expiry());
            }
            if !fired.is_empty() {
                self.firing.submit(self.micros(now), fired.drain(..));
                continue;
            }
            if pending {
                // Queued jobs not yet taken: look again within a stall period.
                next = earliest(next, Some(now + Duration::from_micros(STALL_US)));
            }
            if !self.sleep.finish_scan(next.map(|at| self.micros(at))) {
                // An arm notified us during the scan: scan again.
                continue;
            }
            match next {
                None => std::thread::park(),
                Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
            }
        }
    }
}

/// The earlier of two optional instants (`None`: never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
