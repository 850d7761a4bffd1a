//! Wake-ups deferred until nothing internal is held.
//!
//! event-listener wakes a registered waker inside `Event::notify`, while it
//! holds that event's list lock, and the crate calls `notify` from inside a
//! cancellation walk, pinned to the epoch and counted as a walk in flight.
//! A waker run there that re-enters the crate (cancels the context it waits
//! on or its parent, polls or drops a `Done` on it, waits on it) reaches the
//! same event and takes the same lock again: a deadlock. A blocked thread
//! unparked there wakes up only to block on that lock.
//!
//! So the crate never lets event-listener run a wake-up. Each waker it
//! registers (a task's guard, `task::TaskGuard`; a blocked thread's
//! `park::Unparker`) only *records* itself when woken on a thread that has a
//! [`WakeScope`] open, and the scope performs the recorded wake-ups when it
//! closes, after every internal lock, pin and walk count is released. A
//! cancellation walk opens one scope for the whole walk (closed after its
//! pin is dropped, see `cancel::walk`); a notify outside a walk opens one
//! around the `notify` (`WaitersNode::notify_all`). Scopes do not nest: an
//! inner `open` on a thread whose scope is already open is inert, and the
//! open one performs the inner wake-ups too. A scope closes before running
//! anything, so a wake-up that cancels opens a fresh scope of its own.
//! (The same "wake after unlock" as tokio's `WakeList`.)
//!
//! Without an open scope (event-listener passing a notification on when a
//! notified listener is dropped, which never reaches a registered crate
//! waker, see `Done`; or a thread whose thread-locals are already destroyed)
//! a wake-up runs at once, a task waker's panic caught and dropped (after
//! the panic hook has reported it): nothing may unwind through
//! event-listener, which is not unwind-safe inside `notify`.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::park::Unparker;
use super::task::TaskGuard;
use crate::sync::UserArc;

/// A wake-up recorded inside a notify, to be performed outside it.
pub(crate) enum Wakeup {
    /// Unpark a thread blocked in `wait_until`.
    Thread(UserArc<Unparker>),
    /// Wake the task behind a `Done`'s guard.
    Task(UserArc<TaskGuard>),
}

impl Wakeup {
    /// Performs the wake-up: may run user code, which may panic.
    fn run(self) {
        match self {
            Wakeup::Thread(unparker) => unparker.unpark(),
            Wakeup::Task(guard) => guard.wake_task(),
        }
    }

    /// Performs the wake-up at once, where no scope can take it (possibly
    /// inside event-listener): a panic is caught and dropped.
    pub(crate) fn run_now(self) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.run()));
    }

    /// Records `self` in this thread's open scope, or performs it at once if
    /// there is none.
    pub(crate) fn defer(self) {
        let mut wakeup = Some(self);
        // `try_with`: a wake from a thread-local destructor runs at once.
        let _ = SCOPE.try_with(|s| {
            if s.open.get() {
                // Fails only if this is the push below re-entering (a
                // global allocator that cancels): that wake-up runs now.
                if let Ok(mut list) = s.list.try_borrow_mut() {
                    list.extend(wakeup.take());
                }
            }
        });
        if let Some(wakeup) = wakeup {
            wakeup.run_now();
        }
    }
}

/// A thread's deferral scope.
struct Scope {
    /// Whether a [`WakeScope`] is open on this thread.
    open: Cell<bool>,
    /// The wake-ups recorded while it is.
    list: RefCell<Vec<Wakeup>>,
}

#[cfg(not(loom))]
std::thread_local! {
    static SCOPE: Scope = const {
        Scope {
            open: Cell::new(false),
            list: RefCell::new(Vec::new()),
        }
    };
}

// Under loom, thread-locals must be loom's (a model's threads share one OS
// thread).
#[cfg(loom)]
loom::thread_local! {
    static SCOPE: Scope = Scope {
        open: Cell::new(false),
        list: RefCell::new(Vec::new()),
    };
}

/// Defers the wake-ups of this thread while it lives (see the module
/// documentation). Close it with [`WakeScope::close`]; dropped unclosed
/// (unwinding), it still performs them.
pub(crate) struct WakeScope {
    /// False for an inert scope (another one is open on this thread, or its
    /// thread-locals are gone) and once closed.
    outermost: bool,
}

impl WakeScope {
    /// Opens this thread's scope, or an inert one if it is already open.
    #[inline]
    pub(crate) fn open() -> WakeScope {
        let outermost = SCOPE.try_with(|s| !s.open.replace(true)).unwrap_or(false);
        WakeScope { outermost }
    }

    /// Closes the scope and performs the recorded wake-ups, each under
    /// `catch_unwind`. Returns the first panic, for the caller to resume
    /// once it has finished its own work.
    pub(crate) fn close(mut self) -> Option<Box<dyn Any + Send>> {
        self.flush()
    }

    fn flush(&mut self) -> Option<Box<dyn Any + Send>> {
        if !std::mem::replace(&mut self.outermost, false) {
            return None;
        }
        // Closed before anything runs: a wake-up that re-enters the crate
        // opens a scope of its own.
        let Ok(list) = SCOPE.try_with(|s| {
            s.open.set(false);
            s.list.try_borrow_mut().map(|mut l| std::mem::take(&mut *l))
        }) else {
            return None;
        };
        // Never borrowed here: only `defer`'s push borrows the list, and a
        // scope opened inside that push (by an allocator) is inert.
        let Ok(mut list) = list else {
            return None;
        };
        let mut first = None;
        for wakeup in list.drain(..) {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| wakeup.run())) {
                first.get_or_insert(payload);
            }
        }
        // Keep a small buffer for the next scope, not a huge one (nor one
        // that a wake-up's own scope left behind meanwhile).
        if list.capacity() <= 64 {
            let _ = SCOPE.try_with(|s| {
                if let Ok(mut current) = s.list.try_borrow_mut() {
                    if current.capacity() == 0 {
                        *current = list;
                    }
                }
            });
        }
        first
    }
}

impl Drop for WakeScope {
    fn drop(&mut self) {
        // Unwinding out of the scope's owner: the wake-ups must still
        // happen; their panics are dropped (one is already unwinding).
        drop(self.flush());
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Panicking;

    impl Wake for Panicking {
        fn wake(self: Arc<Self>) {
            panic!("deliberate waker panic");
        }
    }

    #[test]
    fn wakeups_in_an_open_scope_run_when_it_closes() {
        let count = Arc::new(Counting(AtomicUsize::new(0)));
        let guard = || UserArc::new(TaskGuard::new(Waker::from(count.clone())));
        let scope = WakeScope::open();
        let inner = WakeScope::open();
        Waker::from(guard()).wake();
        Waker::from(guard()).wake_by_ref();
        assert!(inner.close().is_none(), "inert");
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "deferred");
        assert!(scope.close().is_none());
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        // No scope: at once.
        Waker::from(guard()).wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_panicking_wakeup_does_not_stop_the_others_and_is_returned() {
        let count = Arc::new(Counting(AtomicUsize::new(0)));
        let scope = WakeScope::open();
        Waker::from(UserArc::new(TaskGuard::new(Waker::from(Arc::new(
            Panicking,
        )))))
        .wake();
        Waker::from(UserArc::new(TaskGuard::new(Waker::from(count.clone())))).wake();
        let payload = scope.close().expect("the panic is returned");
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"deliberate waker panic")
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Without a scope the panic is caught (and dropped) all the same.
        Waker::from(UserArc::new(TaskGuard::new(Waker::from(Arc::new(
            Panicking,
        )))))
        .wake();
    }
}
