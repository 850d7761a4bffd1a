//! The crate-global timer service: one thread named `ctxtree-timer`,
//! started by the first entry that needs it and never otherwise, sleeping on
//! a condition variable until the wheel's next expiry.
//!
//! The service is generic over what it arms ([`Expiry`]) and knows nothing
//! of the context tree: the deadline glue (`node::timer_glue`) owns the one
//! [`Timer`] instance and implements [`Expiry`] for deadline nodes. The
//! edge runs one way, from the node layer to this module.
//!
//! Arm and disarm are O(1) wheel operations under one mutex. This mutex is
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

/// What a [`Timer`] arms, and what its thread does when an entry expires.
pub(crate) trait Expiry: Sized + Send + 'static {
    /// What [`expired`](Expiry::expired) hands to [`fire`](Expiry::fire).
    type Fired;

    /// An entry the wheel has just given back, its deadline passed.
    ///
    /// # Safety
    /// Called by the timer thread with the timer lock held, once per entry
    /// that was armed until this poll (never disarmed: a disarm removes the
    /// entry under the same lock).
    unsafe fn expired(self) -> Option<Self::Fired>;

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
            st.wheel.poll_expired(Instant::now(), &mut due);
            for entry in due.drain(..) {
                // SAFETY: under the lock, and the wheel has just given the
                // entry back: it was armed until this poll.
                if let Some(fired) = unsafe { entry.expired() } {
                    fire.push(fired);
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
