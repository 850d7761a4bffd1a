//! The `Done` future, and the guard it registers in place of the task's
//! waker.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Wake, Waker};

use super::waiters::listen;
use super::wake_list::Wakeup;
use crate::context::Context;
use crate::error::Error;
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

/// Completes with the context's [`Error`] once it is done.
///
/// Returned by [`Context::done`]. It is `Send + Sync + Unpin + 'static`,
/// owns a clone of the context, and can be polled by any executor. Dropping
/// a pending `Done` removes its registration at once.
///
/// Go equivalent: `<-ctx.Done()` followed by `ctx.Err()`.
///
/// ```
/// # futures::executor::block_on(async {
/// use ctxtree::{Context, Error};
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let done = ctx.done();
/// std::thread::spawn(move || cancel.cancel());
/// assert_eq!(done.await, Error::Canceled);
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Done {
    ctx: Context,
    listener: Option<EventListener>,
    /// The guard of the task waker last registered, while pending.
    guard: Option<UserArc<TaskGuard>>,
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Done")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl Done {
    pub(crate) fn new(ctx: Context) -> Done {
        Done {
            ctx,
            listener: None,
            guard: None,
        }
    }
}

impl Future for Done {
    type Output = Error;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Error> {
        let this = &mut *self;
        loop {
            if let Err(err) = this.ctx.err() {
                // Dropped at once: nothing keeps the task's waker alive.
                this.listener = None;
                this.guard = None;
                return Poll::Ready(err);
            }
            let Some(scope) = this.ctx.scope_ref() else {
                // Never done: nothing will ever wake us, and nothing needs to.
                return Poll::Pending;
            };
            let Some(listener) = &mut this.listener else {
                this.listener = Some(listen(scope));
                continue;
            };
            let guard = match &this.guard {
                Some(guard) if guard.0.will_wake(cx.waker()) => guard.clone(),
                _ => this
                    .guard
                    .insert(UserArc::new(TaskGuard::new(cx.waker().clone())))
                    .clone(),
            };
            // event-listener keeps a clone only if it holds none that
            // `will_wake` the same (then it drops the old one).
            let guard = Waker::from(guard);
            match Pin::new(listener).poll(&mut TaskContext::from_waker(&guard)) {
                Poll::Ready(()) => this.listener = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
