//! The crate-global timer: one thread named `ctxtree-timer`, started by the
//! first deadline that needs it and never otherwise, sleeping on a condition
//! variable until the wheel's next expiry.
//!
//! Arm and disarm are O(1) wheel operations under one mutex. This mutex is
//! the crate's only lock: it is taken by deadline nodes (arm at creation,
//! disarm when cancelled or dropped) and the timer thread, never by
//! deriving, cancelling or dropping nodes without a deadline, and never
//! while user code runs. Firing is a cancellation with `DeadlineExceeded`,
//! run after the lock is released; a panic in a callback or waker it runs is
//! reported on stderr and the thread keeps serving.

mod wheel;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use self::wheel::{TimerId, Wheel};
use crate::node::timer_glue::{self, NONE};
use crate::node::{DeadlineNode, NodeRef};
use crate::sync::Ordering;

/// A node pointer stored in the wheel.
struct Entry(NonNull<DeadlineNode>);
// SAFETY: only dereferenced under the wheel lock while the node is armed
// (invariant 10), or after acquiring it.
unsafe impl Send for Entry {}

struct State {
    wheel: Wheel<Entry>,
    /// `Some(t)`: the thread sleeps until `t`; `None` while it runs (then it
    /// re-reads the wheel before sleeping, so no wake-up is needed).
    sleeping_until: Option<Option<Instant>>,
    /// Whether the thread was started.
    started: bool,
}

struct Timer {
    state: Mutex<State>,
    wake: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<Timer> = OnceLock::new();
    TIMER.get_or_init(|| Timer {
        state: Mutex::new(State {
            wheel: Wheel::new(Instant::now()),
            sleeping_until: None,
            started: false,
        }),
        wake: Condvar::new(),
    })
}

fn lock(t: &Timer) -> MutexGuard<'_, State> {
    // No user code runs under this lock, so poisoning can only come from a
    // bug in the wheel; keep serving rather than panic in every deadline.
    t.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Arms `node` at its deadline.
pub(crate) fn arm(node: &DeadlineNode) {
    let t = timer();
    let mut st = lock(t);
    if !st.started {
        let spawned = std::thread::Builder::new()
            .name("ctxtree-timer".into())
            .spawn(run);
        match spawned {
            Ok(_) => st.started = true,
            Err(e) => {
                // Out of threads: the deadline cannot fire now. Keep the entry;
                // the next arm tries again.
                eprintln!("ctxtree: cannot start the timer thread: {e}");
            }
        }
    }
    let id = st.wheel.insert(node.deadline, Entry(NonNull::from(node)));
    // Relaxed: written and read under the lock (the unlocked read in
    // `timer_glue::disarm` is a hint only).
    node.timer.store(id.to_bits(), Ordering::Relaxed);
    if let Some(sleep) = st.sleeping_until {
        if sleep.is_none_or(|s| node.deadline < s) {
            t.wake.notify_one();
        }
    }
}

/// Removes `node`'s entry if it is still armed.
pub(crate) fn disarm(node: &DeadlineNode) {
    let mut st = lock(timer());
    // Relaxed: under the lock.
    let bits = node.timer.swap(NONE, Ordering::Relaxed);
    if let Some(id) = TimerId::from_bits(bits) {
        let _ = st.wheel.remove(id);
    }
}

/// Number of armed entries (for tests and benchmarks).
pub(crate) fn armed() -> usize {
    lock(timer()).wheel.len()
}

/// The timer thread.
fn run() {
    let t = timer();
    let mut due: Vec<Entry> = Vec::new();
    let mut fire: Vec<(NonNull<DeadlineNode>, NodeRef)> = Vec::new();
    loop {
        let mut st = lock(t);
        st.sleeping_until = None;
        st.wheel.poll_expired(Instant::now(), &mut due);
        for Entry(node) in due.drain(..) {
            // The entry was armed until this poll and its `timer` field
            // still holds the id, so a dying node takes the lock in
            // `disarm` before it can be freed (invariant 10).
            // SAFETY: valid while we hold the lock and until we store NONE.
            let d = unsafe { node.as_ref() };
            // SAFETY: valid, as above. A dead node is skipped.
            if let Some(held) = unsafe { NodeRef::try_acquire(node.cast()) } {
                fire.push((node, held));
            }
            // Release, and last: a dying thread whose Acquire hint read sees
            // NONE skips the lock and may free the node, so every access we
            // make without a reference happens before this store.
            d.timer.store(NONE, Ordering::Release);
        }
        if !fire.is_empty() {
            drop(st);
            for (node, held) in fire.drain(..) {
                // SAFETY: `held` keeps the node alive.
                let result =
                    catch_unwind(AssertUnwindSafe(|| unsafe { timer_glue::fire(node, held) }));
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
            None => t.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                t.wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        });
    }
}
