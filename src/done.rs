//! [`Done`]: the future returned by [`Context::done`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::context::Context;
use crate::error::Error;
use crate::node::wait::TaskWait;

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
    /// The listener and waker guard while pending (`node::wait::task`).
    wait: TaskWait,
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
            wait: TaskWait::new(),
        }
    }
}

impl Future for Done {
    type Output = Error;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Error> {
        let this = &mut *self;
        this.wait.poll(this.ctx.raw(), cx)
    }
}
