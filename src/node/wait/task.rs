//! Waiting as a task: the state of a pending `Done` future, and the guard
//! it registers in place of the task's waker.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Wake, Waker};

use super::waiters::listen;
use super::wake_list::Wakeup;
use crate::error::Error;
use crate::node::raw::RawContext;
use crate::sync::{EventListener, UserArc};

/// The waker a `Done` registers with event-listener in place of the task's:
/// woken inside `Event::notify`, it only records the wake-up, which the
/// notifying thread performs once it holds nothing internal (see
/// `wake_list`). Made on the first pending poll, kept by the `Done` and
/// made again only when the task's waker changes (`!will_wake`).
pub(crate) struct TaskGuard(Waker);

impl TaskGuard {
    pub(crate) fn new(task: Waker) -> Self {
        TaskGuard(task)
    }

    /// Wakes the task (user code: may panic, may re-enter the crate).
    pub(crate) fn wake_task(&self) {
        self.0.wake_by_ref();
    }
}

impl Wake for TaskGuard {
    fn wake(self: UserArc<Self>) {
        Wakeup::Task(self).defer();
    }

    fn wake_by_ref(self: &UserArc<Self>) {
        Wakeup::Task(self.clone()).defer();
    }
}

/// What a pending `Done` keeps between polls: its listener on the scope's
/// event and the guard of the task waker it last registered.
pub(crate) struct TaskWait {
    listener: Option<EventListener>,
    /// The guard of the task waker last registered, while pending.
    guard: Option<UserArc<TaskGuard>>,
}

impl TaskWait {
    /// Nothing registered yet.
    pub(crate) fn new() -> TaskWait {
        TaskWait {
            listener: None,
            guard: None,
        }
    }

    /// Polls for `ctx` being done: check → listen → re-check
    /// (invariant 12), then wait for the listener's notification.
    pub(crate) fn poll(&mut self, ctx: &RawContext, cx: &mut TaskContext<'_>) -> Poll<Error> {
        loop {
            if let Err(err) = ctx.err() {
                // Dropped at once: nothing keeps the task's waker alive.
                self.listener = None;
                self.guard = None;
                return Poll::Ready(err);
            }
            let Some(scope) = ctx.scope_ref() else {
                // Never done: nothing will ever wake us, and nothing needs to.
                return Poll::Pending;
            };
            let Some(listener) = &mut self.listener else {
                self.listener = Some(listen(scope));
                continue;
            };
            let guard = match &self.guard {
                Some(guard) if guard.0.will_wake(cx.waker()) => guard.clone(),
                _ => self
                    .guard
                    .insert(UserArc::new(TaskGuard::new(cx.waker().clone())))
                    .clone(),
            };
            // event-listener keeps a clone only if it holds none that
            // `will_wake` the same (then it drops the old one).
            let guard = Waker::from(guard);
            match Pin::new(listener).poll(&mut TaskContext::from_waker(&guard)) {
                Poll::Ready(()) => self.listener = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
