//! [`CancelHandle`] and [`CancelGuard`].

use std::fmt;

use crate::error::{into_cause, Error};
use crate::node::{as_cancel, cancel, NodeRef};

/// Cancels one context (and every descendant). Cheap to clone; `Send +
/// Sync`. Dropping it does **not** cancel (see [`drop_guard`](Self::drop_guard)
/// for that). Holding it keeps its node observable, like a `Context` clone.
///
/// Go equivalent: `context.CancelFunc` / `CancelCauseFunc`.
///
/// ```
/// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
/// let also = cancel.clone();
/// also.cancel();
/// cancel.cancel(); // later cancellations change nothing
/// assert_eq!(ctx.err(), Err(ctxtree::Error::Canceled));
/// ```
#[must_use = "dropping a CancelHandle does not cancel; call cancel() or drop_guard()"]
#[derive(Clone)]
pub struct CancelHandle {
    node: NodeRef,
}

impl CancelHandle {
    pub(crate) fn new(node: NodeRef) -> CancelHandle {
        CancelHandle { node }
    }

    fn cancel_inner(&self, err: Error, cause: Option<crate::Cause>) {
        if let Some(node) = as_cancel(self.node.ptr()) {
            // SAFETY: `self.node` holds the node.
            unsafe { cancel::cancel(node, err, cause) };
        }
    }

    /// Cancels the context with [`Error::Canceled`] (cause: `Arc::new(Canceled)`).
    /// Every descendant is done before this returns, with the same err and
    /// cause. The first cancellation wins; later calls change nothing.
    ///
    /// ```
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// let (child, _c) = ctx.with_cancel();
    /// cancel.cancel();
    /// assert!(child.is_done());
    /// ```
    pub fn cancel(&self) {
        self.cancel_inner(Error::Canceled, None);
    }

    /// Cancels with [`Error::Canceled`] and `cause` (what
    /// [`Context::cause`](crate::Context::cause) returns).
    ///
    /// Go equivalent: the `CancelCauseFunc` of `context.WithCancelCause`.
    ///
    /// ```
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// cancel.cancel_with_cause("client went away");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "client went away");
    /// ```
    pub fn cancel_with_cause<E>(&self, cause: E)
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        self.cancel_inner(Error::Canceled, Some(into_cause(cause)));
    }

    /// Cancels with [`Error::Canceled`] and a prebuilt, shared `cause`:
    /// no allocation, and [`Context::cause`](crate::Context::cause) returns
    /// this very `Arc` (`Arc::ptr_eq` holds). For a cause used over and
    /// over (one per request in a server layer, one per shutdown), build it
    /// once and clone the `Arc` (one atomic increment) instead of calling
    /// [`cancel_with_cause`](Self::cancel_with_cause), which boxes its
    /// argument each time.
    ///
    /// Go equivalent: `cancel(errShared)` on a `CancelCauseFunc`, with a
    /// package-level error value.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use ctxtree::{Cause, Context};
    ///
    /// #[derive(Debug)]
    /// struct Evicted;
    /// impl std::fmt::Display for Evicted {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("evicted")
    ///     }
    /// }
    /// impl std::error::Error for Evicted {}
    ///
    /// let evicted: Cause = Arc::new(Evicted); // built once
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// cancel.cancel_with_shared_cause(evicted.clone());
    /// assert!(Arc::ptr_eq(&ctx.cause().unwrap(), &evicted));
    /// ```
    pub fn cancel_with_shared_cause(&self, cause: crate::Cause) {
        self.cancel_inner(Error::Canceled, Some(cause));
    }

    /// Turns the handle into a guard that cancels when dropped.
    ///
    /// Go equivalent: `defer cancel()`.
    ///
    /// ```
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// {
    ///     let _guard = cancel.drop_guard();
    /// }
    /// assert!(ctx.is_done());
    /// ```
    pub fn drop_guard(self) -> CancelGuard {
        CancelGuard { handle: Some(self) }
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle").finish_non_exhaustive()
    }
}

/// Cancels its context ([`Error::Canceled`]) when dropped.
///
/// ```
/// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
/// let guard = cancel.drop_guard();
/// let cancel = guard.disarm(); // give the handle back without cancelling
/// assert!(!ctx.is_done());
/// # drop(cancel);
/// ```
#[must_use = "a CancelGuard cancels as soon as it is dropped"]
pub struct CancelGuard {
    handle: Option<CancelHandle>,
}

impl CancelGuard {
    /// Gives the handle back without cancelling.
    ///
    /// ```
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// drop(cancel.drop_guard().disarm());
    /// assert!(!ctx.is_done());
    /// ```
    pub fn disarm(mut self) -> CancelHandle {
        match self.handle.take() {
            Some(handle) => handle,
            // `handle` is only taken here and in Drop, and `self` is consumed.
            None => unreachable!("CancelGuard always holds its handle until disarmed"),
        }
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.cancel();
        }
    }
}

impl fmt::Debug for CancelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelGuard").finish_non_exhaustive()
    }
}
