//! The crate-global timer service: one thread named `ctxtree-timer`,
//! started by the first entry that needs it and never otherwise, sleeping on
//! a condition variable until the wheel's next expiry, and the firing pool
//! (`ctxtree-fire` threads, [`firing`]) that runs what expires.
//!
//! The service is generic over what it arms ([`Expiry`]) and knows nothing
//! of the context tree: the deadline glue (`node::timer_glue`) owns the one
//! [`Timer`] instance and implements [`Expiry`] for deadline nodes. The
//! edge runs one way, from the node layer to this module.
//!
//! Arm, disarm and re-arm (a deadline moved earlier, or found later than
//! its entry when popped: [`Claim::Rearm`]) are O(1) wheel operations under
//! one mutex, taken by deadline nodes (arm at creation, disarm when
//! cancelled or dropped, re-arm when moved earlier) and the timer thread,
//! never by deriving, cancelling or dropping nodes without a deadline, and
//! never while user code runs. The timer thread only pops expired entries
//! and hands them to the firing pool: the cancellations they start (and
//! the `after_func` callbacks and wakers those run) execute on
//! `ctxtree-fire` threads, so a slow or blocking callback can delay neither
//! the timer nor an unrelated deadline (the pool's stall rule starts another
//! worker when the ones it has are stuck). The timer lock and the pool's
//! queue lock are never held together.

pub(crate) mod firing;
mod wheel;

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use self::firing::{Firing, Job, STALL_US};
use self::wheel::{TimerId, Wheel};

/// The id bits [`Timer::arm`] never records: "no entry armed".
pub(crate) const NONE_BITS: u64 = TimerId::NONE_BITS;

/// What an [`Expiry::claim`] decided for an entry the wheel gave back.
pub(crate) enum Claim<E, F> {
    /// Fire it: handed to the firing pool (after the lock is released).
    Fire(F),
    /// Its deadline moved later: insert the entry again at this instant
    /// (under the same lock), then tell it its new id
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
    /// Called by the timer thread with the timer lock held, once per entry
    /// that was armed until this poll (never disarmed: a disarm removes the
    /// entry under the same lock).
    unsafe fn claim(self, now: Instant) -> Claim<Self, Self::Fired>;

    /// The entry was re-armed (after [`Claim::Rearm`] or by
    /// [`Timer::rearm`]) under id bits `bits`; called with the lock held.
    ///
    /// # Safety
    /// As for [`claim`](Expiry::claim): the entry is armed, under the lock.
    unsafe fn rearmed(self, bits: u64);
}

struct State<E> {
    wheel: Wheel<E>,
    /// `Some(t)`: the thread sleeps until `t`; `None` while it runs (then it
    /// re-reads the wheel before sleeping, so no wake-up is needed).
    sleeping_until: Option<Option<Instant>>,
    /// Whether the thread was started.
    started: bool,
}

/// A timer wheel behind the lock, and the thread that serves it.
pub(crate) struct Timer<E: Expiry> {
    state: Mutex<State<E>>,
    wake: Condvar,
    /// Runs what expires (`ctxtree-fire` threads).
    firing: Firing<E::Fired>,
    /// The origin of the firing pool's microsecond clock.
    base: Instant,
}

impl<E: Expiry> Timer<E> {
    /// An empty timer; its thread starts with the first [`arm`](Self::arm).
    pub(crate) fn new() -> Self {
        Timer {
            state: Mutex::new(State {
                wheel: Wheel::new(Instant::now()),
                sleeping_until: None,
                started: false,
            }),
            wake: Condvar::new(),
            firing: Firing::new(),
            base: Instant::now(),
        }
    }

    /// `now` on the firing pool's clock (µs since the timer was made).
    fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, State<E>> {
        // No user code runs under this lock, so poisoning can only come from
        // a bug in the wheel; keep serving rather than panic in every
        // deadline.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms `entry` at `when`. `record` receives the entry's id bits while
    /// the lock is held (what [`disarm`](Self::disarm)'s `take` returns).
    pub(crate) fn arm(&'static self, when: Instant, entry: E, record: impl FnOnce(u64)) {
        let mut st = self.lock();
        if !st.started {
            let spawned = std::thread::Builder::new()
                .name("ctxtree-timer".into())
                .spawn(move || self.run());
            match spawned {
                Ok(_) => st.started = true,
                Err(e) => {
                    // Out of threads: the deadline cannot fire now. Keep the entry;
                    // the next arm tries again.
                    eprintln!("ctxtree: cannot start the timer thread: {e}");
                }
            }
        }
        let id = st.wheel.insert(when, entry);
        record(id.to_bits());
        if let Some(sleep) = st.sleeping_until {
            if sleep.is_none_or(|s| when < s) {
                self.wake.notify_one();
            }
        }
    }

    /// Removes the entry whose id bits `take` returns (taking them under the
    /// lock), if it is still armed; [`NONE_BITS`] or a stale id do nothing.
    pub(crate) fn disarm(&self, take: impl FnOnce() -> u64) {
        let mut st = self.lock();
        if let Some(id) = TimerId::from_bits(take()) {
            let _ = st.wheel.remove(id);
        }
    }

    /// Moves an armed entry to `when`, O(1): under the lock, `take`
    /// returns the entry's id bits and its new instant, or `None` (not
    /// armed: nothing happens); the entry is removed and inserted again, and
    /// told its new id ([`Expiry::rearmed`]). Wakes the thread if `when` is
    /// earlier than its sleep target.
    pub(crate) fn rearm(&self, take: impl FnOnce() -> Option<(u64, Instant)>) {
        let mut st = self.lock();
        let Some((bits, when)) = take() else { return };
        let Some(entry) = TimerId::from_bits(bits).and_then(|id| st.wheel.remove(id)) else {
            return;
        };
        let id = st.wheel.insert(when, entry);
        // SAFETY: armed just now, under the lock.
        unsafe { entry.rearmed(id.to_bits()) };
        if let Some(sleep) = st.sleeping_until {
            if sleep.is_none_or(|s| when < s) {
                self.wake.notify_one();
            }
        }
    }

    /// Number of armed entries (for tests and benchmarks).
    pub(crate) fn armed(&self) -> usize {
        self.lock().wheel.len()
    }

    /// The timer thread: pops expired entries, hands them to the firing
    /// pool, and applies the pool's stall rule; it never runs them itself.
    fn run(&'static self) {
        let mut due: Vec<E> = Vec::new();
        let mut fired: Vec<E::Fired> = Vec::new();
        loop {
            let now = Instant::now();
            // Before taking the timer lock: the two locks are never nested.
            let pending = self.firing.check_stall(self.micros(now));
            let mut st = self.lock();
            st.sleeping_until = None;
            st.wheel.poll_expired(now, &mut due);
            for entry in due.drain(..) {
                // SAFETY: under the lock, and the wheel has just given the
                // entry back: it was armed until this poll.
                match unsafe { entry.claim(now) } {
                    Claim::Fire(f) => fired.push(f),
                    Claim::Rearm(when, entry) => {
                        let id = st.wheel.insert(when, entry);
                        // SAFETY: armed just now, under the lock.
                        unsafe { entry.rearmed(id.to_bits()) };
                    }
                    Claim::Skip => {}
                }
            }
            if !fired.is_empty() {
                drop(st);
                self.firing.submit(self.micros(now), fired.drain(..));
                continue;
            }
            let mut next = if st.wheel.is_empty() {
                None
            } else {
                st.wheel.next_expiry()
            };
            if pending {
                // Queued jobs not yet taken: look again within a stall period.
                let check = now + Duration::from_micros(STALL_US);
                next = Some(next.map_or(check, |n| n.min(check)));
            }
            st.sleeping_until = Some(next);
            drop(match next {
                None => self.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    self.wake
                        .wait_timeout(st, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            });
        }
    }
}
