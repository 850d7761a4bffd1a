//! [`Context`]: the public handle to one node of the tree.

use std::any::Any;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::after_func::AfterFunc;
use crate::done::Done;
use crate::error::{into_cause, Cause, Error};
use crate::handle::CancelHandle;
use crate::node::raw::RawContext;

/// A handle to one node of the context tree: cancellation, a deadline, a
/// cause and request-scoped values, shared across threads and async tasks.
///
/// Cheap to clone (one atomic increment); every clone observes the same
/// node. `Send + Sync + 'static`. [`Default`] is [`Context::background`].
///
/// Go equivalent: `context.Context`.
///
/// ```
/// use std::time::Duration;
/// use ctxtree::{Context, Error};
///
/// #[derive(Debug, PartialEq)]
/// struct RequestId(u64);
///
/// let root = Context::background().with_value(RequestId(7));
/// let (ctx, cancel) = root.with_timeout(Duration::from_secs(30));
/// assert_eq!(ctx.value::<RequestId>(), Some(&RequestId(7)));
/// assert!(!ctx.is_done());
/// cancel.cancel();
/// assert_eq!(ctx.err(), Err(Error::Canceled));
/// ```
pub struct Context {
    /// The node layer's handle; every method delegates to it.
    raw: RawContext,
}

impl Context {
    #[inline]
    fn from_raw(raw: RawContext) -> Context {
        Context { raw }
    }

    /// The node layer's handle (for the crate's other public handles).
    #[inline]
    pub(crate) fn raw(&self) -> &RawContext {
        &self.raw
    }

    // ---- roots ------------------------------------------------------

    /// The root context: never done, no deadline, no values. Makes no
    /// allocation.
    ///
    /// Go equivalent: `context.Background()`.
    ///
    /// ```
    /// let ctx = ctxtree::Context::background();
    /// assert!(!ctx.is_done());
    /// assert_eq!(format!("{ctx:?}"), "context.Background");
    /// ```
    #[inline]
    pub fn background() -> Context {
        Context::from_raw(RawContext::root(false))
    }

    /// Like [`background`](Context::background), for code that does not
    /// know yet which context to use; only its Debug text differs.
    ///
    /// Go equivalent: `context.TODO()`.
    ///
    /// ```
    /// assert_eq!(format!("{:?}", ctxtree::Context::todo()), "context.TODO");
    /// ```
    #[inline]
    pub fn todo() -> Context {
        Context::from_raw(RawContext::root(true))
    }

    // ---- derivation -------------------------------------------------

    /// A child that is done when this context is, or when the returned
    /// handle is cancelled. One allocation and one compare-exchange on the
    /// parent's list; no lock.
    ///
    /// Go equivalent: `context.WithCancel(parent)`.
    ///
    /// ```
    /// let parent = ctxtree::Context::background();
    /// let (ctx, cancel) = parent.with_cancel();
    /// cancel.cancel();
    /// assert!(ctx.is_done());
    /// assert!(!parent.is_done());
    /// ```
    pub fn with_cancel(&self) -> (Context, CancelHandle) {
        let (raw, node) = self.raw.with_cancel();
        (Context::from_raw(raw), CancelHandle::new(node))
    }

    /// A child that is done at `deadline` at the latest
    /// ([`Error::DeadlineExceeded`]). If this context's deadline is earlier,
    /// the child just inherits it (and its Debug text says `.WithCancel`,
    /// as in Go); if `deadline` has passed, the child is done on creation.
    ///
    /// Go equivalent: `context.WithDeadline(parent, d)`.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let d = Instant::now() + Duration::from_secs(60);
    /// let (ctx, _cancel) = ctxtree::Context::background().with_deadline(d);
    /// assert_eq!(ctx.deadline(), Some(d));
    /// ```
    pub fn with_deadline(&self, deadline: Instant) -> (Context, CancelHandle) {
        self.deadline_child(Some(deadline), None)
    }

    /// `with_deadline(Instant::now() + timeout)`. A timeout too large to
    /// represent (`Duration::MAX`) means "no deadline": it never fires and
    /// never panics.
    ///
    /// Go equivalent: `context.WithTimeout(parent, timeout)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxtree::Error;
    /// let (ctx, _cancel) = ctxtree::Context::background().with_timeout(Duration::ZERO);
    /// assert_eq!(ctx.err(), Err(Error::DeadlineExceeded));
    /// ```
    pub fn with_timeout(&self, timeout: Duration) -> (Context, CancelHandle) {
        self.deadline_child(Instant::now().checked_add(timeout), None)
    }

    /// [`with_deadline`](Context::with_deadline), with the cause reported by
    /// [`cause`](Context::cause) when the deadline fires.
    ///
    /// Go equivalent: `context.WithDeadlineCause(parent, d, cause)`.
    ///
    /// ```
    /// use std::time::Instant;
    /// let (ctx, _c) = ctxtree::Context::background()
    ///     .with_deadline_cause(Instant::now(), "upstream too slow");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "upstream too slow");
    /// ```
    pub fn with_deadline_cause<E>(&self, deadline: Instant, cause: E) -> (Context, CancelHandle)
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        self.deadline_child(Some(deadline), Some(into_cause(cause)))
    }

    /// [`with_timeout`](Context::with_timeout), with a cause.
    ///
    /// Go equivalent: `context.WithTimeoutCause(parent, timeout, cause)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let (ctx, _c) = ctxtree::Context::background()
    ///     .with_timeout_cause(Duration::ZERO, "budget spent");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "budget spent");
    /// ```
    pub fn with_timeout_cause<E>(&self, timeout: Duration, cause: E) -> (Context, CancelHandle)
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        self.deadline_child(Instant::now().checked_add(timeout), Some(into_cause(cause)))
    }

    fn deadline_child(
        &self,
        deadline: Option<Instant>,
        cause: Option<Cause>,
    ) -> (Context, CancelHandle) {
        match deadline {
            Some(d) if self.deadline().is_none_or(|parent| d < parent) => {
                let (raw, node) = self.raw.with_deadline(d, cause);
                (Context::from_raw(raw), CancelHandle::new(node))
            }
            // Unrepresentable, or no earlier than the parent's: Go's rule is
            // a plain cancellable child.
            _ => self.with_cancel(),
        }
    }

    /// A child carrying `value`, keyed by its type `T` (use newtypes as
    /// keys). It is done exactly when this context is.
    ///
    /// Go equivalent: `context.WithValue(parent, key, val)`.
    ///
    /// ```
    /// struct User(&'static str);
    /// let ctx = ctxtree::Context::background().with_value(User("ada"));
    /// assert_eq!(ctx.value::<User>().map(|u| u.0), Some("ada"));
    /// ```
    pub fn with_value<T: Any + Send + Sync>(&self, value: T) -> Context {
        Context::from_raw(self.raw.with_value(value))
    }

    /// A child that keeps this context's values and nothing else: never
    /// done, no deadline. Its own descendants are cancellable as usual.
    ///
    /// Go equivalent: `context.WithoutCancel(parent)`.
    ///
    /// ```
    /// let (ctx, cancel) = ctxtree::Context::background().with_value(5u8).with_cancel();
    /// let detached = ctx.without_cancel();
    /// cancel.cancel();
    /// assert!(!detached.is_done());
    /// assert_eq!(detached.value::<u8>(), Some(&5));
    /// ```
    pub fn without_cancel(&self) -> Context {
        Context::from_raw(self.raw.without_cancel())
    }

    /// A context done as soon as either `self` or `other` is (with the err
    /// and cause of whichever finished first; `self`'s if both already are),
    /// or its own handle is cancelled. Its deadline is the earlier of the
    /// two; values are looked up in `self`'s chain, then `other`'s. No
    /// thread or goroutine is needed, and once done or dropped it leaves
    /// both parents' lists.
    ///
    /// Go equivalent: none in the standard library (proposal #36503).
    ///
    /// ```
    /// let (a, cancel_a) = ctxtree::Context::background().with_cancel();
    /// let (b, _cancel_b) = ctxtree::Context::background().with_cancel();
    /// let (both, _cancel) = a.merge(&b);
    /// cancel_a.cancel();
    /// assert!(both.is_done());
    /// ```
    pub fn merge(&self, other: &Context) -> (Context, CancelHandle) {
        let (raw, node) = self.raw.merge(&other.raw);
        (Context::from_raw(raw), CancelHandle::new(node))
    }

    /// Runs `f` once, after this context is done, unless
    /// [`AfterFunc::stop`] wins first. If the context is already done, `f`
    /// runs at once on this thread; otherwise on the thread that completes
    /// the cancellation, synchronously, with nothing internal held. For a
    /// deadline expiry that is a `ctxtree-fire` thread of the crate's
    /// firing pool (never the timer thread, so a slow callback delays no
    /// other deadline).
    ///
    /// Go equivalent: `context.AfterFunc(ctx, f)` (which runs `f` in a new
    /// goroutine).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// let ran = Arc::new(AtomicBool::new(false));
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// let r = ran.clone();
    /// let _af = ctx.after_func(move || r.store(true, Ordering::SeqCst));
    /// cancel.cancel();
    /// assert!(ran.load(Ordering::SeqCst));
    /// ```
    pub fn after_func<F: FnOnce() + Send + 'static>(&self, f: F) -> AfterFunc {
        AfterFunc::register(self, Box::new(f))
    }

    // ---- observation ------------------------------------------------

    /// Whether the context is done. One Acquire load; never blocks.
    ///
    /// Go equivalent: `ctx.Err() != nil`.
    ///
    /// ```
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// assert!(!ctx.is_done());
    /// cancel.cancel();
    /// assert!(ctx.is_done());
    /// ```
    #[inline]
    pub fn is_done(&self) -> bool {
        self.raw.is_done()
    }

    /// `Ok(())` while not done; then why it is done. Consistent with
    /// [`cause`](Context::cause) and [`is_done`](Context::is_done) at every
    /// instant, even while a cancellation races with the read.
    ///
    /// Go equivalent: `ctx.Err()`.
    ///
    /// ```
    /// use ctxtree::Error;
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// assert_eq!(ctx.err(), Ok(()));
    /// cancel.cancel();
    /// assert_eq!(ctx.err(), Err(Error::Canceled));
    /// ```
    #[inline]
    pub fn err(&self) -> Result<(), Error> {
        self.raw.err()
    }

    /// `None` while not done; then the cause given to
    /// [`CancelHandle::cancel_with_cause`] or a `with_*_cause` constructor,
    /// or `Arc::new(err)` when none was given. Every descendant cancelled by
    /// the same cancellation returns the same `Arc`.
    ///
    /// Go equivalent: `context.Cause(ctx)`.
    ///
    /// ```
    /// use ctxtree::Error;
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// cancel.cancel();
    /// let cause = ctx.cause().unwrap();
    /// assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
    /// ```
    pub fn cause(&self) -> Option<Cause> {
        self.raw.cause()
    }

    /// The deadline in force, if any.
    ///
    /// Go equivalent: `ctx.Deadline()`.
    ///
    /// ```
    /// assert_eq!(ctxtree::Context::background().deadline(), None);
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.raw.deadline()
    }

    /// The nearest value of type `T` in this context or its ancestors.
    /// Costs O(number of value and merge layers), independent of the number
    /// of cancel and deadline layers in between.
    ///
    /// Go equivalent: `ctx.Value(key)`.
    ///
    /// ```
    /// #[derive(Debug, PartialEq)]
    /// struct TraceId(u32);
    /// let ctx = ctxtree::Context::background().with_value(TraceId(1)).with_value(TraceId(2));
    /// assert_eq!(ctx.value::<TraceId>(), Some(&TraceId(2)));
    /// assert_eq!(ctx.value::<String>(), None);
    /// ```
    pub fn value<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.raw.value::<T>()
    }

    // ---- waiting ----------------------------------------------------

    /// A future that completes with the context's [`Error`] once it is
    /// done. Owned, `Unpin` and `'static`: store it, move it to another task,
    /// poll it on any executor.
    ///
    /// Go equivalent: `<-ctx.Done()`.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// cancel.cancel();
    /// assert_eq!(ctx.done().await, ctxtree::Error::Canceled);
    /// # });
    /// ```
    pub fn done(&self) -> Done {
        Done::new(self.clone())
    }

    /// Blocks the thread (parked, no spinning) until the context is done.
    /// On a context that can never be done this blocks forever, like
    /// receiving from Go's nil `Done()` channel.
    ///
    /// Go equivalent: `<-ctx.Done(); return ctx.Err()`.
    ///
    /// ```
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// std::thread::spawn(move || cancel.cancel());
    /// assert_eq!(ctx.wait(), ctxtree::Error::Canceled);
    /// ```
    pub fn wait(&self) -> Error {
        loop {
            if let Some(err) = self.raw.wait_until(None) {
                return err;
            }
        }
    }

    /// Blocks until the context is done (`Some(err)`) or `timeout` passes
    /// (`None`).
    ///
    /// Go equivalent: `select { case <-ctx.Done(): case <-time.After(t): }`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let (ctx, _cancel) = ctxtree::Context::background().with_cancel();
    /// assert_eq!(ctx.wait_timeout(Duration::from_millis(1)), None);
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Error> {
        self.raw.wait_until(Instant::now().checked_add(timeout))
    }

    /// Blocks until the context is done (`Some(err)`) or `deadline` passes
    /// (`None`).
    ///
    /// ```
    /// use std::time::Instant;
    /// let (ctx, _cancel) = ctxtree::Context::background().with_cancel();
    /// assert_eq!(ctx.wait_deadline(Instant::now()), None);
    /// ```
    pub fn wait_deadline(&self, deadline: Instant) -> Option<Error> {
        self.raw.wait_until(Some(deadline))
    }

    /// Runs `fut` until it completes (`Ok`) or the context is done (`Err`).
    /// If the context is done at the first poll, `fut` is never polled;
    /// after that `fut` is polled first on each wake-up, so a future that
    /// completes in the same poll as the cancellation returns `Ok`. The
    /// returned future is `Send` when `fut` is.
    ///
    /// Go equivalent: `select { case r := <-work: case <-ctx.Done(): }`.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let ctx = ctxtree::Context::background();
    /// assert_eq!(ctx.run_until_done(async { 42 }).await, Ok(42));
    /// # });
    /// ```
    pub async fn run_until_done<F: Future>(&self, fut: F) -> Result<F::Output, Error> {
        self.err()?;
        let mut fut = pin!(fut);
        let mut done = self.done();
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            match Pin::new(&mut done).poll(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// [`run_until_done`](Self::run_until_done) on an owned context: the
    /// returned future borrows nothing, so it can be passed to
    /// `tokio::spawn` (which needs `'static`) or stored. Same rules: `Ok`
    /// when `fut` completes, `Err` once the context is done, `fut` polled
    /// first on each wake-up.
    ///
    /// Go equivalent: `go func() { select { case r := <-work: case <-ctx.Done(): } }()`;
    /// tokio-util: `CancellationToken::run_until_cancelled_owned`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxtree::{Context, Error};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let task = tokio::spawn(ctx.clone().run_until_done_owned(async {
    ///     tokio::time::sleep(Duration::from_secs(3600)).await;
    /// }));
    /// cancel.cancel();
    /// assert_eq!(task.await.unwrap(), Err(Error::Canceled));
    /// # }
    /// ```
    pub async fn run_until_done_owned<F: Future>(self, fut: F) -> Result<F::Output, Error> {
        self.run_until_done(fut).await
    }

    /// A future that completes with `()` once the context is done (for
    /// APIs that want a shutdown signal of type `Future<Output = ()>`, such
    /// as axum's `with_graceful_shutdown` or hyper-util's graceful
    /// watcher). Like [`done`](Self::done) it holds its own clone of the
    /// context: it is `Send + 'static`, no `_owned` variant is needed.
    /// Use [`done`](Self::done) to learn *why* the context ended.
    ///
    /// Go equivalent: `<-ctx.Done()`; tokio-util:
    /// `CancellationToken::cancelled` / `cancelled_owned`.
    ///
    /// ```
    /// use ctxtree::Context;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (root, shutdown) = Context::background().with_cancel();
    /// // axum::serve(listener, app).with_graceful_shutdown(root.cancelled())
    /// let signal = tokio::spawn(root.cancelled());
    /// shutdown.cancel();
    /// signal.await.unwrap(); // ()
    /// # }
    /// ```
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        let done = self.done();
        async move {
            done.await;
        }
    }
}

impl Clone for Context {
    #[inline]
    fn clone(&self) -> Self {
        Context::from_raw(self.raw.clone())
    }
}

impl Default for Context {
    /// [`Context::background`].
    fn default() -> Self {
        Context::background()
    }
}

impl fmt::Debug for Context {
    /// Go's `String()`: `context.Background.WithValue(my_app::RequestId).WithCancel`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.raw, f)
    }
}
