//! [`CancelHandle`] and [`CancelGuard`].

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::{into_cause, Error};
use crate::node::{as_cancel, cancel, timer_glue, Header, NodeRef};

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

    /// Moves this context's deadline to `deadline`, later or earlier:
    /// the context is then done with [`Error::DeadlineExceeded`] when the
    /// new deadline passes (within the timer's resolution, a few ms), and
    /// never because the old one did. Returns `true` if the deadline
    /// moved.
    ///
    /// Returns `false` and changes nothing when:
    /// - the context has **no deadline of its own**: it came from
    ///   [`with_cancel`](crate::Context::with_cancel) or
    ///   [`merge`](crate::Context::merge), or from a
    ///   [`with_deadline`](crate::Context::with_deadline) /
    ///   [`with_timeout`](crate::Context::with_timeout) whose deadline was
    ///   not earlier than the parent's (or was `Duration::MAX`): Go's rule
    ///   then makes a plain cancellable child that follows the parent's
    ///   deadline, and there is nothing of its own to move;
    /// - the context is already done, or its deadline has just expired: a
    ///   move racing the expiry either wins, and the context fires at the
    ///   new deadline (never before it), or loses and returns `false` (the
    ///   timer has claimed the deadline; the context is done as soon as
    ///   the firing's cancellation completes, moments later).
    ///
    /// Deadlines so far ahead that they cannot be represented (about 258
    /// years after the process's first deadline use, or `Duration::MAX`
    /// in [`set_timeout`](Self::set_timeout)) mean "never": the context
    /// then reports no deadline of its own and does not fire until moved
    /// again.
    ///
    /// Moving later is one atomic compare-and-swap (no lock); moving
    /// earlier also re-arms the timer entry (O(1), under its timer shard's lock).
    /// Cheap enough to call on every read of a connection (an idle
    /// timeout).
    ///
    /// What [`Context::deadline`](crate::Context::deadline) reports: on
    /// this context, the new deadline at once. On descendants (derived
    /// before or after the move), the earliest deadline on their way up to
    /// the first `merge` or `without_cancel`: a plain child sees the move;
    /// a descendant with an earlier deadline of its own keeps it. A
    /// descendant's own deadline keeps firing at its own time even if this
    /// one moves later past it (it is its own deadline); moving this one
    /// earlier cancels the whole subtree at the new time. A `merge` made
    /// before the move keeps the minimum it computed at its creation.
    ///
    /// Go equivalent: none (Go users wrap `WithTimeout` in a goroutine or
    /// a `time.Timer` they reset). tokio: `Sleep::reset`; .NET:
    /// `CancellationTokenSource.CancelAfter`.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use ctxtree::Context;
    ///
    /// let (ctx, handle) = Context::background().with_timeout(Duration::from_secs(30));
    /// let later = Instant::now() + Duration::from_secs(60);
    /// assert!(handle.set_deadline(later));
    /// assert_eq!(ctx.deadline(), Some(later));
    ///
    /// // Earlier: fires at the new time.
    /// assert!(handle.set_deadline(Instant::now()));
    /// ctx.wait();
    /// assert!(!handle.set_deadline(later)); // done: nothing moves
    ///
    /// // No deadline of its own: nothing to move.
    /// let (_plain, cancel) = Context::background().with_cancel();
    /// assert!(!cancel.set_deadline(later));
    /// ```
    pub fn set_deadline(&self, deadline: Instant) -> bool {
        self.move_deadline(Some(deadline))
    }

    /// `set_deadline(Instant::now() + timeout)`; a timeout too large to
    /// represent (`Duration::MAX`) means "never": the context then never
    /// fires by its deadline (until moved again). Same return value and
    /// rules as [`set_deadline`](Self::set_deadline).
    ///
    /// An idle timeout: push the deadline on every read.
    ///
    /// Go equivalent: none (see [`set_deadline`](Self::set_deadline));
    /// tokio: `Sleep::reset(Instant::now() + timeout)`; .NET:
    /// `CancellationTokenSource.CancelAfter(timeout)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxtree::Context;
    ///
    /// let idle = Duration::from_secs(30);
    /// let (conn, handle) = Context::background().with_timeout(idle);
    /// for _chunk in 0..3 {
    ///     // ... a read returned data: the connection is not idle ...
    ///     assert!(handle.set_timeout(idle));
    /// }
    /// assert!(!conn.is_done());
    /// assert!(handle.set_timeout(Duration::MAX)); // never, for now
    /// assert_eq!(conn.deadline(), None);
    /// ```
    pub fn set_timeout(&self, timeout: Duration) -> bool {
        self.move_deadline(Instant::now().checked_add(timeout))
    }

    fn move_deadline(&self, deadline: Option<Instant>) -> bool {
        // SAFETY: `self.node` holds the node.
        match unsafe { Header::as_deadline(self.node.ptr()) } {
            Some(d) => timer_glue::set_deadline(d, deadline),
            None => false,
        }
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
