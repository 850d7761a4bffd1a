//! [`ShutdownHandle`]: graceful shutdown that drains in-flight requests
//! (Go's `Server.Shutdown(ctx)`, tokio-util's `TaskTracker`).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::integrations::outcome::Shutdown;
use crate::{CancelHandle, Context};

/// The closed bit of [`Tracker::state`]; the in-flight count is `state >> 1`.
const CLOSED: usize = 1;
/// One request in `Tracker::state`.
const ONE: usize = 2;

/// Counts a server's in-flight requests and tells when none is left after
/// it was closed (tokio-util's `TaskTracker`, as one atomic word).
///
/// State word: `count << 1 | CLOSED`. Transitions, each one RMW:
/// - `enter`: `+ONE`; if the old word had `CLOSED`, the request is
///   rejected and undone with `leave`;
/// - `leave`: `-ONE`; the `leave` that takes the word from `CLOSED | ONE`
///   to `CLOSED` fires `drained`;
/// - `close`: `|CLOSED`; the `close` that sets it on a zero count fires
///   `drained`.
///
/// No lost "drained": the word has one modification order, so exactly one
/// RMW moves it to `CLOSED` with a zero count (later transient
/// enter/leave pairs of rejected requests may fire it again, harmlessly:
/// the first cancellation wins).
pub(crate) struct Tracker {
    state: AtomicUsize,
    drained: Context,
    drained_handle: CancelHandle,
}

impl Tracker {
    fn new() -> Tracker {
        let (drained, drained_handle) = Context::background().with_cancel();
        Tracker {
            state: AtomicUsize::new(0),
            drained,
            drained_handle,
        }
    }

    /// Counts a new request; `None` if the tracker is closed.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<Token> {
        // Relaxed: the count orders nothing by itself; the `drained`
        // context (its own Release/Acquire) publishes the end to waiters.
        let prev = self.state.fetch_add(ONE, Ordering::Relaxed);
        if prev & CLOSED != 0 {
            self.leave();
            return None;
        }
        Some(Token(Arc::clone(self)))
    }

    fn leave(&self) {
        // AcqRel: the request's effects happen before the drained signal
        // fired by whichever RMW ends the count.
        let prev = self.state.fetch_sub(ONE, Ordering::AcqRel);
        if prev == CLOSED | ONE {
            self.drained_handle.cancel();
        }
    }

    fn close(&self) {
        // AcqRel: as in `leave`.
        let prev = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        if prev == 0 {
            self.drained_handle.cancel();
        }
    }

    fn in_flight(&self) -> usize {
        // Relaxed: a statistics read.
        self.state.load(Ordering::Relaxed) >> 1
    }

    fn is_closed(&self) -> bool {
        // Relaxed: a statistics read.
        self.state.load(Ordering::Relaxed) & CLOSED != 0
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// One in-flight request; dropping it ends the request for the tracker.
pub(crate) struct Token(Arc<Tracker>);

impl Drop for Token {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// What [`ShutdownHandle::shutdown`] did.
///
/// ```
/// use std::time::Duration;
/// use ctxtree::{Context, integrations::ShutdownHandle};
/// let shutdown = ShutdownHandle::new(&Context::background());
/// let report = shutdown.shutdown_blocking(Duration::from_secs(1));
/// assert!(!report.forced); // nothing was in flight
/// assert_eq!(report.still_running, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether the grace period ended with requests still in flight, so
    /// that the root had to be cancelled (with [`Shutdown`]).
    pub forced: bool,
    /// Requests in flight when the grace period ended (0 if not forced).
    pub in_flight_at_grace_end: usize,
    /// Requests still in flight when `shutdown` returned: handlers that
    /// ignored their cancelled context for another grace period.
    pub still_running: usize,
}

/// Graceful shutdown of the servers whose [`ServerLayer`](crate::integrations::ServerLayer) it
/// [tracks](crate::integrations::ServerLayer::graceful): counts their
/// in-flight requests, and [`shutdown`](Self::shutdown) stops new ones,
/// lets the running ones finish for a grace period, then cancels the root
/// with [`Shutdown`] and waits for them to end.
///
/// It owns the server's root context ([`root`](Self::root)), a child of the
/// context you give it: background work of the server can derive from it
/// too, and ends with the requests.
///
/// Clone it freely (every clone is the same handle). Runtime-agnostic: the
/// grace period uses the crate's timer; [`shutdown`](Self::shutdown) is a
/// `Send` future for any executor, and
/// [`shutdown_blocking`](Self::shutdown_blocking) blocks a thread.
///
/// Go equivalent: `srv.Shutdown(ctx)` followed by cancelling
/// `BaseContext` for what is left; tokio-util: `TaskTracker::close` +
/// `wait`, then `CancellationToken::cancel`.
///
/// ```
/// use std::{convert::Infallible, time::Duration};
/// use ctxtree::{Context, integrations::{Outcome, ServerLayer}};
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (layer, shutdown) = ServerLayer::with_shutdown(&Context::background());
/// let mut svc = layer.layer(tower::service_fn(|req: http::Request<String>| async move {
///     let ctx = req.extensions().get::<Context>().unwrap().clone();
///     ctx.done().await; // a handler that runs until it is told to stop
///     Ok::<_, Infallible>(http::Response::new(Outcome::of(&ctx).to_string()))
/// }));
/// let call = svc.call(http::Request::new(String::new()));
/// // A request is in flight until its response body has been sent (here: taken).
/// let running = tokio::spawn(async move { call.await.unwrap().into_body().into_inner() });
/// tokio::task::yield_now().await;
/// assert_eq!(shutdown.in_flight(), 1);
///
/// let report = shutdown.shutdown(Duration::from_millis(20)).await;
/// assert!(report.forced); // the handler outlived the grace period
/// assert_eq!(report.in_flight_at_grace_end, 1);
/// assert_eq!(report.still_running, 0); // then it saw the cancellation
/// assert_eq!(running.await.unwrap().unwrap(), "server shutting down");
///
/// // New requests are refused with 503 once shutdown has begun.
/// let resp = svc.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(resp.status(), 503);
/// # }
/// ```
#[derive(Clone)]
pub struct ShutdownHandle {
    tracker: Arc<Tracker>,
    root: Context,
    cancel_root: CancelHandle,
}

impl ShutdownHandle {
    /// A handle whose root is a new child of `parent`. Give it to
    /// [`ServerLayer::graceful`](crate::integrations::ServerLayer::graceful),
    /// or use [`ServerLayer::with_shutdown`](crate::integrations::ServerLayer::with_shutdown)
    /// for both at once.
    ///
    /// ```
    /// use ctxtree::{Context, integrations::{ServerLayer, ShutdownHandle}};
    /// let shutdown = ShutdownHandle::new(&Context::background());
    /// // Two servers (say HTTP and gRPC) drained together:
    /// let http = ServerLayer::new(shutdown.root().clone()).graceful(&shutdown);
    /// let grpc = ServerLayer::new(shutdown.root().clone()).graceful(&shutdown);
    /// # let _ = (http, grpc);
    /// assert_eq!(shutdown.in_flight(), 0);
    /// ```
    pub fn new(parent: &Context) -> ShutdownHandle {
        let (root, cancel_root) = parent.with_cancel();
        ShutdownHandle {
            tracker: Arc::new(Tracker::new()),
            root,
            cancel_root,
        }
    }

    pub(crate) fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// The server's root context: every tracked request's context derives
    /// from it (when the layer was built on it), and it is cancelled with
    /// [`Shutdown`] when the grace period runs out.
    ///
    /// ```
    /// let shutdown = ctxtree::integrations::ShutdownHandle::new(&ctxtree::Context::background());
    /// assert!(!shutdown.root().is_done());
    /// shutdown.shutdown_now();
    /// assert!(shutdown.root().is_done());
    /// ```
    pub fn root(&self) -> &Context {
        &self.root
    }

    /// Requests currently in flight (from the layer's `call` until the
    /// response body has been sent or dropped), over every tracked layer.
    ///
    /// ```
    /// let shutdown = ctxtree::integrations::ShutdownHandle::new(&ctxtree::Context::background());
    /// assert_eq!(shutdown.in_flight(), 0);
    /// ```
    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    /// Stops new work: from now on the tracked layers answer new requests
    /// with `503 Service Unavailable` and `connection: close` (gRPC:
    /// status 14 `UNAVAILABLE`) without calling the handler. Requests in
    /// flight continue. Idempotent.
    ///
    /// Go equivalent: the first step of `srv.Shutdown`, closing the
    /// listeners; tokio-util: `TaskTracker::close`.
    ///
    /// ```
    /// let shutdown = ctxtree::integrations::ShutdownHandle::new(&ctxtree::Context::background());
    /// shutdown.close();
    /// assert!(shutdown.is_closed());
    /// assert!(shutdown.drained().is_done()); // nothing was in flight
    /// ```
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Whether [`close`](Self::close) (or a shutdown) has begun.
    ///
    /// ```
    /// let shutdown = ctxtree::integrations::ShutdownHandle::new(&ctxtree::Context::background());
    /// assert!(!shutdown.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.tracker.is_closed()
    }

    /// A context that is done once the handle is closed and no request is
    /// in flight: wait on it (`drained().done().await`, `drained().wait()`)
    /// to learn when the server is idle.
    ///
    /// tokio-util equivalent: `TaskTracker::wait`.
    ///
    /// ```
    /// let shutdown = ctxtree::integrations::ShutdownHandle::new(&ctxtree::Context::background());
    /// assert!(!shutdown.drained().is_done()); // still open
    /// shutdown.close();
    /// shutdown.drained().wait();
    /// ```
    pub fn drained(&self) -> Context {
        self.tracker.drained.clone()
    }

    /// Closes and cancels the root with [`Shutdown`] at once, without a
    /// grace period: every in-flight request's context ends now.
    ///
    /// ```
    /// use ctxtree::integrations::{Outcome, ShutdownHandle};
    /// let shutdown = ShutdownHandle::new(&ctxtree::Context::background());
    /// shutdown.shutdown_now();
    /// assert_eq!(Outcome::of(shutdown.root()), Outcome::Shutdown);
    /// ```
    pub fn shutdown_now(&self) {
        self.close();
        self.cancel_root.cancel_with_cause(Shutdown);
    }

    /// Graceful shutdown: [`close`](Self::close); wait until no request is
    /// in flight or `grace` has passed; if requests remain, cancel the
    /// root with [`Shutdown`] (their contexts end with it) and wait up to
    /// `grace` again for them to end. The root is cancelled in every case
    /// before this returns (background work derived from it stops).
    ///
    /// The returned future is owned (`Send + 'static`) and needs no
    /// particular runtime; dropping it stops waiting (the handle stays
    /// closed).
    ///
    /// Go equivalent: `srv.Shutdown(ctx)` with a `grace` timeout, then
    /// cancelling the base context.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxtree::{Context, integrations::ShutdownHandle};
    /// # futures::executor::block_on(async {
    /// let shutdown = ShutdownHandle::new(&Context::background());
    /// let report = shutdown.shutdown(Duration::from_secs(10)).await;
    /// assert!(!report.forced);
    /// # });
    /// ```
    pub fn shutdown(
        &self,
        grace: Duration,
    ) -> impl Future<Output = ShutdownReport> + Send + 'static {
        let this = self.clone();
        async move {
            this.close();
            let (waiting, _timer) = this.grace_period(grace);
            waiting.done().await;
            let (forced, at_grace_end) = this.end_grace();
            if forced {
                let (waiting, _timer) = this.grace_period(grace);
                waiting.done().await;
            }
            this.report(forced, at_grace_end)
        }
    }

    /// [`shutdown`](Self::shutdown) for threads: blocks until it is over.
    ///
    /// ```
    /// use std::time::Duration;
    /// let shutdown = ctxtree::integrations::ShutdownHandle::new(&ctxtree::Context::background());
    /// let report = shutdown.shutdown_blocking(Duration::from_secs(10));
    /// assert!(!report.forced && shutdown.root().is_done());
    /// ```
    pub fn shutdown_blocking(&self, grace: Duration) -> ShutdownReport {
        self.close();
        let (waiting, _timer) = self.grace_period(grace);
        waiting.wait();
        let (forced, at_grace_end) = self.end_grace();
        if forced {
            let (waiting, _timer) = self.grace_period(grace);
            waiting.wait();
        }
        self.report(forced, at_grace_end)
    }

    /// A context done when the tracker drains or `grace` passes.
    fn grace_period(&self, grace: Duration) -> (Context, CancelHandle) {
        // `with_timeout(Duration::MAX)` never fires and never panics.
        let (timer, timer_handle) = Context::background().with_timeout(grace);
        let (both, _) = self.tracker.drained.merge(&timer);
        // Dropping `timer_handle` would not cancel; returning it lets the
        // caller's drop free the timer entry early (contract: unobservable
        // nodes are freed with their timer).
        (both, timer_handle)
    }

    /// The grace period is over: cancels the root with [`Shutdown`];
    /// returns whether requests were left, and how many.
    fn end_grace(&self) -> (bool, usize) {
        let forced = !self.tracker.drained.is_done();
        let at_grace_end = self.in_flight();
        self.cancel_root.cancel_with_cause(Shutdown);
        (forced, at_grace_end)
    }

    fn report(&self, forced: bool, at_grace_end: usize) -> ShutdownReport {
        ShutdownReport {
            forced,
            in_flight_at_grace_end: if forced { at_grace_end } else { 0 },
            still_running: self.in_flight(),
        }
    }
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .field("root", &self.root)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_fires_only_once_closed_and_empty() {
        let tracker = Arc::new(Tracker::new());
        let a = tracker.enter().unwrap();
        let b = tracker.enter().unwrap();
        drop(a);
        assert!(!tracker.drained.is_done(), "open: never drained");
        tracker.close();
        assert!(tracker.enter().is_none(), "closed: refuses");
        assert_eq!(tracker.in_flight(), 1, "a refused request is not counted");
        assert!(!tracker.drained.is_done());
        drop(b);
        assert!(tracker.drained.is_done());
    }

    #[test]
    fn racing_enters_and_close_never_drain_early() {
        for _ in 0..50 {
            let tracker = Arc::new(Tracker::new());
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let tracker = Arc::clone(&tracker);
                    std::thread::spawn(move || {
                        let mut held = Vec::new();
                        for _ in 0..200 {
                            match tracker.enter() {
                                // While a token is held, drained must not fire.
                                Some(t) => {
                                    assert!(!tracker.drained.is_done());
                                    held.push(t);
                                }
                                None => break,
                            }
                            if held.len() > 3 {
                                held.remove(0);
                            }
                        }
                        held
                    })
                })
                .collect();
            tracker.close();
            let held: Vec<Vec<Token>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let left: usize = held.iter().map(Vec::len).sum();
            assert_eq!(tracker.in_flight(), left);
            assert_eq!(tracker.drained.is_done(), left == 0);
            drop(held);
            assert!(tracker.drained.is_done());
        }
    }
}
