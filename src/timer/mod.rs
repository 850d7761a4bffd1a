//! The crate-global timer service: one thread named `ctxtree-timer`,
//! started by the first entry that needs it and never otherwise, sleeping on
//! a condition variable until the wheel's next expiry.
//!
//! The service is generic over what it arms ([`Expiry`]) and knows nothing
//! of the context tree: the deadline glue (`node::timer_glue`) owns the one
//! [`Timer`] instance and implements [`Expiry`] for deadline nodes. The
//! edge runs one way, from the node layer to this module.
//!
//! Arm, disarm and re-arm (a deadline moved earlier, or found later than
//! its entry when popped: [`Claim::Rearm`]) are O(1) wheel operations under
//! one mutex. This mutex is
//! the crate's only lock: it is taken by deadline nodes (arm at creation,
//! disarm when cancelled or dropped) and the timer thread, never by
//! deriving, cancelling or dropping nodes without a deadline, and never
//! while user code runs. Firing runs after the lock is released; a panic in
//! it (a callback or waker that a deadline cancellation runs) is reported on
//! stderr and the thread keeps serving.

mod wheel;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use self::wheel::{TimerId, Wheel};

/// The id bits [`Timer::arm`] never records: "no entry armed".
pub(crate) const NONE_BITS: u64 = TimerId::NONE_BITS;

/// What an [`Expiry::claim`] decided for an entry the wheel gave back.
pub(crate) enum Claim<E, F> {
    /// Fire it (after the lock is released).
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
    /// What [`claim`](Expiry::claim) hands to [`fire`](Expiry::fire).
    type Fired;

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

    /// Fires an expired entry, with no lock held. A panic is reported on
    /// stderr; the timer keeps serving.
    fn fire(fired: Self::Fired);
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
pub(crate) struct Timer<E> {
    state: Mutex<State<E>>,
    wake: Condvar,
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
        }
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

    /// The timer thread.
    fn run(&'static self) {
        let mut due: Vec<E> = Vec::new();
        let mut fire: Vec<E::Fired> = Vec::new();
        loop {
            let mut st = self.lock();
            st.sleeping_until = None;
            let now = Instant::now();
            st.wheel.poll_expired(now, &mut due);
            for entry in due.drain(..) {
                // SAFETY: under the lock, and the wheel has just given the
                // entry back: it was armed until this poll.
                match unsafe { entry.claim(now) } {
                    Claim::Fire(fired) => fire.push(fired),
                    Claim::Rearm(when, entry) => {
                        let id = st.wheel.insert(when, entry);
                        // SAFETY: armed just now, under the lock.
                        unsafe { entry.rearmed(id.to_bits()) };
                    }
                    Claim::Skip => {}
                }
            }
            if !fire.is_empty() {
                drop(st);
                for fired in fire.drain(..) {
                    let result = catch_unwind(AssertUnwindSafe(|| E::fire(fired)));
                    if let Err(panic) = result {
                        let msg = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "<non-string panic>".into());
                        eprintln!(
                            "ctxtree-timer: a callback or waker panicked during a deadline \
                             cancellation (the cancellation completed): {msg}"
                        );
                    }
                }
                continue;
            }
            let next = if st.wheel.is_empty() {
                None
            } else {
                st.wheel.next_expiry()
            };
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
