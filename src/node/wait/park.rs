//! Blocking waits.
//!
//! A blocked thread does not use event-listener's `wait()`: that one parks
//! until notified, and once unparked it must take the event's list lock to
//! learn that it was notified and to remove its entry. But `notify` unparks
//! it while holding that very lock, so the woken thread often finds the lock
//! taken and blocks on it (when the notifier and the waiter share a core,
//! the woken waiter preempts the notifier and always does), and the wake-up
//! costs three more futex calls and two more context switches than a bare
//! park/unpark (W7 on one core: 3.5× its latency).
//!
//! Instead, the thread polls its listener (event-listener's task interface,
//! the one `Done` uses) with a waker that unparks it, `Unparker`, and parks
//! itself. The notifier does not unpark it from inside `Event::notify`: the
//! `Unparker` records the unpark in the notifying thread's `WakeScope`,
//! which performs it once the notify (or the cancellation walk around it) is
//! over and the list lock released. Once unparked, the thread checks the
//! context's state word (done was published before the notify, and an
//! unpark synchronizes with the park it ends), and returns; dropping its
//! listener takes the list lock, which is free by then.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Wake, Waker};
use std::time::Instant;

use super::waiters::listen;
use super::wake_list::Wakeup;
use crate::error::Error;
use crate::node::raw::RawContext;
use crate::sync::{thread, EventListener, Listener, UserArc};

/// The waker of a thread blocked in `wait_until`: waking it unparks the
/// thread, deferred to the end of the notifying thread's `WakeScope` (see
/// above). Unparking a thread that has already stopped waiting is harmless:
/// its `park` loop tolerates spurious returns, and so does any later `park`.
pub(crate) struct Unparker(thread::Thread);

impl Unparker {
    pub(crate) fn unpark(&self) {
        self.0.unpark();
    }
}

impl Wake for Unparker {
    fn wake(self: UserArc<Self>) {
        Wakeup::Thread(self).defer();
    }

    fn wake_by_ref(self: &UserArc<Self>) {
        Wakeup::Thread(self.clone()).defer();
    }
}

#[cfg(not(loom))]
std::thread_local! {
    /// This thread's `Unparker` waker, made once: a blocking wait hands a
    /// clone of it to event-listener (a reference count, no allocation).
    static THREAD_WAKER: Waker = Waker::from(UserArc::new(Unparker(thread::current())));
}

// Under loom, thread-locals must be loom's (a model's threads share one OS
// thread).
#[cfg(loom)]
loom::thread_local! {
    static THREAD_WAKER: Waker = Waker::from(UserArc::new(Unparker(thread::current())));
}

/// Blocks until `ctx` is done or `deadline` passes (`None`: no deadline).
pub(crate) fn wait_until(ctx: &RawContext, deadline: Option<Instant>) -> Option<Error> {
    loop {
        if let Err(err) = ctx.err() {
            return Some(err);
        }
        let Some(scope) = ctx.scope_ref() else {
            // Never done (Go: receiving from a nil channel blocks forever).
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    std::thread::park_timeout(d - now);
                }
            }
            continue;
        };
        let listener = listen(scope);
        if let Err(err) = ctx.err() {
            return Some(err);
        }
        if let Some(outcome) = block_on(ctx, listener, deadline) {
            return outcome;
        }
    }
}

/// Parks this thread for at most `timeout`.
#[cfg(not(loom))]
fn park_timeout(timeout: std::time::Duration) {
    thread::park_timeout(timeout);
}

/// Loom has no `park_timeout`, and `block_on` hands deadline waits to
/// event-listener under loom, so this is never called there; a plain park
/// would be a correct (spurious-tolerant) stand-in if it were.
#[cfg(loom)]
fn park_timeout(_timeout: std::time::Duration) {
    thread::park();
}

/// Blocks on `listener` (registered on `ctx`'s scope, which was live after
/// the registration) until `ctx` is done or `deadline` passes. `Some` is
/// `wait_until`'s answer; `None`: the listener was notified, check again.
fn block_on(
    ctx: &RawContext,
    mut listener: EventListener,
    deadline: Option<Instant>,
) -> Option<Option<Error>> {
    // Under loom there is no `park_timeout`: a deadline wait keeps
    // event-listener's own (which does not support deadlines under loom
    // either; no model waits with a deadline).
    #[cfg(loom)]
    if let Some(d) = deadline {
        return match listener.wait_deadline(d) {
            Some(()) => None,
            None => Some(ctx.err().err()),
        };
    }
    let Ok(waker) = THREAD_WAKER.try_with(Waker::clone) else {
        // A wait in a thread-local destructor, after ours is gone:
        // event-listener's own wait (it makes a parker when its own
        // thread-local is gone too).
        return match deadline {
            None => {
                listener.wait();
                None
            }
            Some(d) => match listener.wait_deadline(d) {
                Some(()) => None,
                None => Some(ctx.err().err()),
            },
        };
    };
    let mut cx = TaskContext::from_waker(&waker);
    if Pin::new(&mut listener).poll(&mut cx).is_ready() {
        // Notified before the waker was registered.
        return None;
    }
    loop {
        match deadline {
            None => thread::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Some(ctx.err().err());
                }
                park_timeout(d - now);
            }
        }
        // One atomic load decides, without the list lock: a notify is only
        // ever sent once the scope is done, and its unpark synchronizes
        // with this park's return, so after a real wake-up this sees done.
        // The listener is dropped on the way out, after the notifier has
        // released the list lock.
        if let Err(err) = ctx.err() {
            return Some(Some(err));
        }
        // A spurious (or stale) unpark: ask the listener, under its lock,
        // whether it was notified all the same, and park again if not.
        if Pin::new(&mut listener).poll(&mut cx).is_ready() {
            return None;
        }
    }
}
