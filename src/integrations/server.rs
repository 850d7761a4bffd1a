//! [`ServerLayer`]: one request context per request, the way Go's net/http
//! and grpc-go do it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::integrations::body::{ContextBody, RequestGuard};
use crate::integrations::deadline_header::{self, DeadlineHeader};
use crate::integrations::error_response::{is_grpc, ErrorResponse};
use crate::integrations::hook::{OnEnd, PendingReport, RequestEnd};
use crate::integrations::shutdown::{ShutdownHandle, Tracker};
use crate::{Context, Done, Error};

/// A [`tower::Layer`](tower_layer::Layer) that gives every request a
/// [`Context`], derived from a server-wide root.
///
/// For each request the wrapped service sees:
///
/// - a child of the root in the request's extensions (read it with
///   `req.extensions().get::<Context>()`, the axum extractor, or
///   `tonic::request_context`);
///   cancelling the root (graceful shutdown, ideally with
///   [`Shutdown`](crate::integrations::Shutdown) as the cause) cancels every
///   in-flight request;
/// - a deadline: the earliest of the server's cap ([`max_timeout`](Self::max_timeout))
///   and the request's `grpc-timeout` header, or of every
///   [`DeadlineHeader`] chosen with [`deadline_header`](Self::deadline_header)
///   (Connect's `Connect-Timeout-Ms`, Envoy's
///   `x-envoy-expected-rq-timeout-ms`, …); malformed values are ignored
///   and [counted](Self::malformed_deadline_headers);
/// - an end: the context is cancelled with
///   [`RequestFinished`](crate::integrations::RequestFinished) when the
///   handler returns (for a streaming body: when the body ends), and with
///   [`ClientDisconnected`](crate::integrations::ClientDisconnected) if the
///   response future or body is dropped first (client disconnect, HTTP/2
///   reset, an outer timeout).
///
/// Inside another layer (the request already carries a [`Context`]), the
/// request's context derives from that one too, keeping the values and
/// deadline outer middleware attached; [`ServerLayer::nested`] and
/// [`ServerLayer::timeout`] make per-route layers with no root of their
/// own.
///
/// On expiry the default is Go's: the handler observes its context and
/// decides what to answer. With [`abort_on_deadline`](Self::abort_on_deadline)
/// the layer instead drops the handler and answers `504 Gateway Timeout`
/// (or, for gRPC requests, status 4 `DEADLINE_EXCEEDED`).
///
/// Cost per request: one child context (a timer entry only when there is a
/// deadline), the extension insert, and no spawned task.
///
/// Go equivalent: the `r.Context()` of net/http (cancelled when the client
/// disconnects or `ServeHTTP` returns, with `Server.BaseContext` as root) and
/// the context grpc-go gives each handler (deadline from `grpc-timeout`).
///
/// ```
/// use std::{convert::Infallible, time::Duration};
/// use ctxtree::{Context, integrations::{ServerLayer, Shutdown}};
/// use tower::{Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (root, shutdown) = Context::background().with_cancel();
/// let layer = ServerLayer::new(root).max_timeout(Duration::from_secs(30));
///
/// let svc = layer.layer(tower::service_fn(|req: http::Request<String>| async move {
///     let ctx = req.extensions().get::<Context>().unwrap().clone();
///     // The deadline is the earlier of the cap and the grpc-timeout header.
///     let left = ctx.deadline().unwrap() - std::time::Instant::now();
///     assert!(left <= Duration::from_millis(250));
///     Ok::<_, Infallible>(http::Response::new(String::from("ok")))
/// }));
/// let req = http::Request::builder().header("grpc-timeout", "250m")
///     .body(String::new()).unwrap();
/// let resp = svc.oneshot(req).await.unwrap();
/// assert_eq!(resp.status(), 200);
/// shutdown.cancel_with_cause(Shutdown); // graceful shutdown: ends every request
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ServerLayer {
    /// `None` for a [`nested`](ServerLayer::nested) layer.
    root: Option<Context>,
    max_timeout: Option<Duration>,
    abort: bool,
    stats: Arc<Stats>,
    tracker: Option<Arc<Tracker>>,
    deadline_headers: Arc<[DeadlineHeader]>,
    on_end: Option<OnEnd>,
    /// The deadline parents of [`max_timeout`](Self::max_timeout), shared
    /// by the requests of one millisecond.
    cap_cache: Arc<CapCache>,
}

/// Requests whose deadline is the layer's cap derive from a shared child
/// of the root whose deadline is `arrival + cap` rounded down to the
/// millisecond: one timer entry per millisecond of traffic instead of one
/// per request (the crate's timer has 1 ms ticks: it fires at the same
/// tick). Only the newest such parent is kept here; older ones live while
/// their requests do.
#[derive(Debug)]
struct CapCache {
    origin: Instant,
    /// The newest parent and its deadline, in ms after `origin`.
    slot: std::sync::Mutex<Option<(u64, Context)>>,
}

impl CapCache {
    fn new() -> Arc<CapCache> {
        Arc::new(CapCache {
            origin: Instant::now(),
            slot: std::sync::Mutex::new(None),
        })
    }

    /// The shared parent for a request arriving at `now`, or `None` (the
    /// caller then derives its own deadline): when another thread holds
    /// the slot (never wait), or the numbers do not fit.
    fn parent(&self, root: &Context, now: Instant, cap: Duration) -> Option<Context> {
        let since = now.checked_add(cap)?.checked_duration_since(self.origin)?;
        let tick = u64::try_from(since.as_millis()).ok()?;
        let mut slot = self.slot.try_lock().ok()?;
        if let Some((t, parent)) = &*slot {
            if *t == tick {
                return Some(parent.clone());
            }
        }
        let deadline = self.origin.checked_add(Duration::from_millis(tick))?;
        // The handle is not needed: the parent ends with its deadline or
        // the root, and is freed with its timer once unobservable.
        let (parent, _handle) = root.with_deadline(deadline);
        let old = slot.replace((tick, parent.clone()));
        drop(slot);
        drop(old);
        Some(parent)
    }
}

/// Below this cap, requests get an exact deadline of their own.
const CAP_SHARING_MIN: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Stats {
    /// Requests with a malformed `grpc-timeout`.
    malformed: AtomicU64,
    /// Malformed deadline headers, of every configured kind.
    malformed_any: AtomicU64,
}

impl ServerLayer {
    /// A layer deriving request contexts from `root`, with no deadline cap
    /// and Go's expiry behaviour (the handler decides).
    ///
    /// ```
    /// let (root, _shutdown) = ctxtree::Context::background().with_cancel();
    /// let layer = ctxtree::integrations::ServerLayer::new(root);
    /// assert_eq!(layer.malformed_grpc_timeouts(), 0);
    /// ```
    pub fn new(root: Context) -> ServerLayer {
        ServerLayer::with_parts(Some(root), deadline_header::default_set())
    }

    /// A layer with this root and these deadline headers, everything else
    /// at its default.
    fn with_parts(root: Option<Context>, deadline_headers: Arc<[DeadlineHeader]>) -> ServerLayer {
        ServerLayer {
            root,
            max_timeout: None,
            abort: false,
            stats: Arc::default(),
            tracker: None,
            deadline_headers,
            on_end: None,
            cap_cache: CapCache::new(),
        }
    }

    /// Calls `f` once per request, when the request has ended — the
    /// handler returned and its body was sent, the client went away, the
    /// deadline passed with [`abort_on_deadline`](Self::abort_on_deadline),
    /// … — with its [`RequestEnd`]: the [`Outcome`](crate::integrations::Outcome),
    /// the time it took, the cause, the method and URI and the context (for
    /// the values middleware attached). One place to log or trace "client
    /// disconnected / deadline exceeded / finished", disconnects included.
    ///
    /// `f` runs on the thread that ends the request (inside a poll or a
    /// drop): keep it short. A panic in `f` is reported on stderr and
    /// ignored. A [`graceful`](Self::graceful) shutdown waits for it. Not
    /// called for requests refused during shutdown (no context was made).
    ///
    /// Go equivalent: a deferred log line in a net/http middleware, plus
    /// `context.AfterFunc(r.Context(), …)` for disconnects.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxtree::{Context, integrations::{Outcome, ServerLayer}};
    /// let layer = ServerLayer::new(Context::background())
    ///     .max_timeout(Duration::from_secs(30))
    ///     .on_request_end(|end| match end.outcome() {
    ///         Outcome::Finished => {}
    ///         other => eprintln!("{} {}: {other} after {:?}", end.method(), end.uri(), end.elapsed()),
    ///     });
    /// # let _ = layer;
    /// ```
    pub fn on_request_end<F>(mut self, f: F) -> ServerLayer
    where
        F: Fn(&RequestEnd) + Send + Sync + 'static,
    {
        self.on_end = Some(OnEnd(Arc::new(f)));
        self
    }

    /// Also reads `header` as a deadline (in addition to `grpc-timeout`
    /// and any added before; a header of the same name is replaced). The
    /// request's deadline is the earliest of every header and the cap;
    /// malformed values are ignored and
    /// [counted](Self::malformed_deadline_headers).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use ctxtree::{Context, integrations::{DeadlineHeader, ServerLayer}};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Behind Envoy, speaking Connect as well as gRPC:
    /// let layer = ServerLayer::new(Context::background())
    ///     .deadline_header(DeadlineHeader::connect())
    ///     .deadline_header(DeadlineHeader::envoy());
    /// let svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
    ///     let ctx = req.extensions().get::<Context>().unwrap();
    ///     let left = ctx.deadline().unwrap() - std::time::Instant::now();
    ///     Ok::<_, Infallible>(http::Response::new(left.as_millis().to_string()))
    /// }));
    /// let req = http::Request::builder()
    ///     .header("connect-timeout-ms", "5000")
    ///     .header("x-envoy-expected-rq-timeout-ms", "200") // the earliest wins
    ///     .body(()).unwrap();
    /// let left = svc.oneshot(req).await.unwrap().into_body().into_inner().unwrap();
    /// assert!(left.parse::<u64>().unwrap() <= 200);
    /// # }
    /// ```
    pub fn deadline_header(mut self, header: DeadlineHeader) -> ServerLayer {
        self.deadline_headers = deadline_header::with_header(&self.deadline_headers, header);
        self
    }

    /// Reads exactly these deadline headers (replacing the default
    /// `grpc-timeout`; an empty set reads none).
    ///
    /// ```
    /// use ctxtree::{Context, integrations::{DeadlineHeader, ServerLayer}};
    /// // A Connect-only server: grpc-timeout is not trusted.
    /// let layer = ServerLayer::new(Context::background())
    ///     .deadline_headers([DeadlineHeader::connect()]);
    /// # let _ = layer;
    /// ```
    pub fn deadline_headers<I>(mut self, headers: I) -> ServerLayer
    where
        I: IntoIterator<Item = DeadlineHeader>,
    {
        self.deadline_headers = headers.into_iter().collect();
        self
    }

    /// How many deadline header values so far did not parse (and were
    /// ignored), of every configured header, over every service made by
    /// this layer and its clones.
    ///
    /// ```
    /// # use ctxtree::integrations::ServerLayer;
    /// let layer = ServerLayer::new(ctxtree::Context::background());
    /// assert_eq!(layer.malformed_deadline_headers(), 0);
    /// ```
    pub fn malformed_deadline_headers(&self) -> u64 {
        self.stats.malformed_any.load(Ordering::Relaxed)
    }

    /// A layer for inside another one (per route, per router): it has no
    /// root of its own and derives each request's context from the one the
    /// outer layer gave the request (keeping its values, deadline and
    /// cancellation), or from `Context::background()` when there is none.
    /// It reads no deadline header (the outer layer did); give it a
    /// [`max_timeout`](Self::max_timeout) to *tighten* the deadline for
    /// its routes — a deadline can only get earlier down the tree — and
    /// [`abort_on_deadline`](Self::abort_on_deadline) to answer 504 there.
    ///
    /// [`ServerLayer::timeout`] is the common case in one call.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{routing::get, Router};
    /// use ctxtree::{Context, integrations::ServerLayer};
    /// # #[derive(Clone)] struct Tenant(&'static str);
    ///
    /// let (root, _shutdown) = Context::background().with_cancel();
    /// let reports = Router::new()
    ///     .route("/reports", get(|ctx: Context| async move { format!("{:?}", ctx.deadline()) }))
    ///     .layer(ServerLayer::nested().max_timeout(Duration::from_secs(60)));
    /// let app: Router = Router::new()
    ///     .route("/", get(|| async { "fast" }))
    ///     .merge(reports)
    ///     .layer(ServerLayer::new(root).max_timeout(Duration::from_secs(5)));
    /// // /reports keeps the outer 5 s: a nested timeout only tightens.
    /// # let _ = app;
    /// ```
    pub fn nested() -> ServerLayer {
        ServerLayer::with_parts(None, Arc::from([]))
    }

    /// A per-route timeout: [`nested`](Self::nested) with
    /// [`max_timeout`](Self::max_timeout)`(timeout)`. The route's context
    /// is a child of the request's context whose deadline is the earlier
    /// of the two, so it keeps every value outer middleware attached.
    /// Add [`abort_on_deadline`](Self::abort_on_deadline) to answer 504
    /// instead of letting the handler decide.
    ///
    /// Go equivalent: `context.WithTimeout(r.Context(), d)` at the top of
    /// the handler, or `http.TimeoutHandler` (with `abort_on_deadline`);
    /// tower: `TimeoutLayer`, which passes no budget downstream.
    ///
    /// ```
    /// use std::{convert::Infallible, time::{Duration, Instant}};
    /// use ctxtree::{Context, integrations::ServerLayer};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// #[derive(Debug)] struct UserId(u32);
    /// let handler = tower::service_fn(|req: http::Request<()>| async move {
    ///     let ctx = req.extensions().get::<Context>().unwrap();
    ///     let left = ctx.deadline().unwrap() - Instant::now();
    ///     Ok::<_, Infallible>(http::Response::new(format!("{} {}", ctx.value::<UserId>().unwrap().0, left.as_secs())))
    /// });
    /// let route = ServerLayer::timeout(Duration::from_secs(2)).layer(handler);
    /// // What an outer ServerLayer and an auth middleware would have left:
    /// let (outer, _c) = Context::background().with_value(UserId(7)).with_timeout(Duration::from_secs(30));
    /// let req = http::Request::builder().extension(outer).body(()).unwrap();
    /// let body = route.oneshot(req).await.unwrap().into_body().into_inner().unwrap();
    /// assert_eq!(body, "7 1"); // the value is kept, the deadline tightened to 2 s
    /// # }
    /// ```
    pub fn timeout(timeout: Duration) -> ServerLayer {
        ServerLayer::nested().max_timeout(timeout)
    }

    /// A layer whose root is a new child of `parent`, and the
    /// [`ShutdownHandle`] that drains it: [`ServerLayer::new`] on
    /// [`ShutdownHandle::root`], then [`graceful`](Self::graceful).
    ///
    /// Go equivalent: an `http.Server` (whose `Shutdown` drains it) with
    /// `BaseContext` returning the root.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxtree::{Context, integrations::ServerLayer};
    /// let (layer, shutdown) = ServerLayer::with_shutdown(&Context::background());
    /// let layer = layer.max_timeout(Duration::from_secs(30));
    /// // ... serve with `layer`; on SIGTERM:
    /// let report = shutdown.shutdown_blocking(Duration::from_secs(10));
    /// assert!(!report.forced);
    /// # let _ = layer;
    /// ```
    pub fn with_shutdown(parent: &Context) -> (ServerLayer, ShutdownHandle) {
        let shutdown = ShutdownHandle::new(parent);
        let layer = ServerLayer::new(shutdown.root().clone()).graceful(&shutdown);
        (layer, shutdown)
    }

    /// Counts this layer's in-flight requests in `shutdown`, and refuses
    /// new requests once it is closed (`503 Service Unavailable` with
    /// `connection: close`; gRPC: status 14 `UNAVAILABLE`), without
    /// calling the handler. Several layers may share one handle. Build the
    /// layer on [`shutdown.root()`](ShutdownHandle::root) (or a descendant)
    /// for the forced phase of the shutdown to reach its requests.
    ///
    /// ```
    /// use ctxtree::{Context, integrations::{ServerLayer, ShutdownHandle}};
    /// let shutdown = ShutdownHandle::new(&Context::background());
    /// let layer = ServerLayer::new(shutdown.root().clone()).graceful(&shutdown);
    /// # let _ = layer;
    /// ```
    pub fn graceful(mut self, shutdown: &ShutdownHandle) -> ServerLayer {
        self.tracker = Some(Arc::clone(shutdown.tracker()));
        self
    }

    /// Caps every request's time: its deadline is at most `timeout` after
    /// the request arrives, whatever its `grpc-timeout` header says.
    ///
    /// Requests whose deadline is the cap (no deadline header asks for
    /// less) share one timer entry per millisecond of arrivals: their
    /// deadline is `arrival + timeout` rounded down to the millisecond
    /// (the crate's timer fires on 1 ms ticks anyway), so it may read up
    /// to 1 ms earlier than `arrival + timeout`, never later. Caps under
    /// 50 ms are exact.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = ctxtree::integrations::ServerLayer::new(ctxtree::Context::background())
    ///     .max_timeout(Duration::from_secs(10));
    /// # let _ = layer;
    /// ```
    pub fn max_timeout(mut self, timeout: Duration) -> ServerLayer {
        self.max_timeout = Some(timeout);
        self.cap_cache = CapCache::new();
        self
    }

    /// When a request's deadline passes before its handler returns, drop
    /// the handler and answer `504 Gateway Timeout` with an empty body; for
    /// gRPC requests (`content-type: application/grpc…`), a trailers-only
    /// response with `grpc-status: 4` (`DEADLINE_EXCEEDED`). The default is
    /// Go's: the handler observes the expiry through its context and
    /// answers what it likes.
    ///
    /// Go equivalent: wrapping the handler in `http.TimeoutHandler`.
    ///
    /// ```
    /// let layer = ctxtree::integrations::ServerLayer::new(ctxtree::Context::background())
    ///     .abort_on_deadline();
    /// # let _ = layer;
    /// ```
    pub fn abort_on_deadline(mut self) -> ServerLayer {
        self.abort = true;
        self
    }

    /// How many requests so far carried a `grpc-timeout` header that did
    /// not parse (it was ignored), over every service made by this layer
    /// and its clones.
    ///
    /// ```
    /// # use ctxtree::integrations::ServerLayer;
    /// let layer = ServerLayer::new(ctxtree::Context::background());
    /// assert_eq!(layer.malformed_grpc_timeouts(), 0);
    /// ```
    pub fn malformed_grpc_timeouts(&self) -> u64 {
        self.stats.malformed.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ServerService<S>;

    fn layer(&self, inner: S) -> ServerService<S> {
        ServerService {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// The service made by [`ServerLayer`]: see there.
///
/// ```
/// use ctxtree::integrations::{ServerLayer, ServerService};
/// use tower::Layer;
/// let svc: ServerService<_> = ServerLayer::new(ctxtree::Context::background())
///     .layer(tower::service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     }));
/// assert_eq!(svc.malformed_grpc_timeouts(), 0);
/// ```
#[derive(Clone, Debug)]
pub struct ServerService<S> {
    inner: S,
    /// Behind one `Arc`: a clone of the service per request (what axum
    /// does) is one reference count, not one per setting.
    layer: Arc<ServerLayer>,
}

impl<S> ServerService<S> {
    /// See [`ServerLayer::malformed_grpc_timeouts`].
    ///
    /// ```
    /// # use ctxtree::integrations::ServerLayer; use tower::Layer;
    /// let svc = ServerLayer::new(ctxtree::Context::background()).layer(());
    /// assert_eq!(svc.malformed_grpc_timeouts(), 0);
    /// ```
    pub fn malformed_grpc_timeouts(&self) -> u64 {
        self.layer.malformed_grpc_timeouts()
    }

    /// The wrapped service.
    ///
    /// ```
    /// # use ctxtree::integrations::ServerLayer; use tower::Layer;
    /// let svc = ServerLayer::new(ctxtree::Context::background()).layer(7);
    /// assert_eq!(*svc.get_ref(), 7);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The request context for a request with these headers: a child of
    /// the root and of the context an outer layer gave the request, if
    /// any, with the deadline the layer would give it.
    fn derive(
        &self,
        headers: &http::HeaderMap,
        outer: Option<&Context>,
    ) -> (Context, crate::CancelHandle) {
        let read = deadline_header::read_all(&self.layer.deadline_headers, headers);
        if read.malformed > 0 {
            let stats = &self.layer.stats;
            // Relaxed: statistics counters, ordered with nothing.
            stats
                .malformed_any
                .fetch_add(u64::from(read.malformed), Ordering::Relaxed);
            if read.grpc_malformed {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let timeout = match (read.timeout, self.layer.max_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The clock is read only for a request with a deadline.
        let now = timeout.map(|_| Instant::now());
        if let (Some(root), None, Some(cap), Some(now)) =
            (&self.layer.root, outer, self.layer.max_timeout, now)
        {
            if cap >= CAP_SHARING_MIN && read.timeout.is_none_or(|t| t >= cap) {
                if let Some(parent) = self.layer.cap_cache.parent(root, now, cap) {
                    return parent.with_cancel();
                }
            }
        }
        // A timeout too long for `Instant` (e.g. 99999999H) means no deadline.
        let deadline = timeout.zip(now).and_then(|(t, now)| now.checked_add(t));
        let derive = |parent: &Context| match deadline {
            Some(deadline) => parent.with_deadline(deadline),
            None => parent.with_cancel(),
        };
        match (&self.layer.root, outer) {
            (Some(root), None) => derive(root),
            (None, Some(outer)) => derive(outer),
            (None, None) => derive(&Context::background()),
            // Inside another layer: keep the outer request context (its
            // values first) and still end with this layer's root.
            (Some(root), Some(outer)) => {
                let (both, handle) = outer.merge(root);
                match deadline {
                    // The merge node ends when the request's child is
                    // dropped (nothing else can observe it).
                    Some(deadline) => both.with_deadline(deadline),
                    None => (both, handle),
                }
            }
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ServerService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<ContextBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> ResponseFuture<S::Future> {
        let token = match &self.layer.tracker {
            None => None,
            Some(tracker) => match tracker.enter() {
                Some(token) => Some(token),
                None => return ResponseFuture::refused(is_grpc(&req)),
            },
        };
        let (ctx, handle) = self.derive(req.headers(), req.extensions().get::<Context>());
        let deadline = if self.layer.abort && ctx.deadline().is_some() {
            Some(ctx.done())
        } else {
            None
        };
        let grpc = deadline.is_some() && is_grpc(&req);
        let report = self
            .layer
            .on_end
            .as_ref()
            .map(|hook| Box::new(PendingReport::new(&hook.0, &req, &ctx)));
        req.extensions_mut().insert(ctx);
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            guard: Some(RequestGuard::new(handle, token, report)),
            deadline,
            grpc,
            refused: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ServerService`]. Dropping it before it
    /// completes cancels the request's context with
    /// [`ClientDisconnected`](crate::integrations::ClientDisconnected).
    ///
    /// ```
    /// use ctxtree::{Context, integrations::{Outcome, ServerLayer}};
    /// use tower::{Layer, Service};
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let mut svc = ServerLayer::new(Context::background()).layer(tower::service_fn(
    ///     move |req: http::Request<String>| {
    ///         tx.send(req.extensions().get::<Context>().unwrap().clone()).unwrap();
    ///         std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>()
    ///     },
    /// ));
    /// let fut = svc.call(http::Request::new(String::new()));
    /// let ctx = rx.recv().unwrap();
    /// drop(fut); // the client went away
    /// assert_eq!(Outcome::of(&ctx), Outcome::ClientDisconnected);
    /// ```
    pub struct ResponseFuture<F> {
        // Declared (so dropped) before `inner`: when the response future is
        // dropped early, the context ends with `ClientDisconnected` before
        // the handler's future is dropped, so whatever the handler's drop
        // cancels (a task group, say) sees why.
        guard: Option<RequestGuard>,
        #[pin]
        inner: Option<F>,
        deadline: Option<Done>,
        grpc: bool,
        refused: bool,
    }
}

impl<F> ResponseFuture<F> {
    /// The answer to a request that arrives after shutdown began.
    fn refused(grpc: bool) -> ResponseFuture<F> {
        ResponseFuture {
            inner: None,
            guard: None,
            deadline: None,
            grpc,
            refused: true,
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("running", &self.inner.is_some())
            .field("abort_on_deadline", &self.deadline.is_some())
            .finish()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<Response<ContextBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if std::mem::take(this.refused) {
            return Poll::Ready(Ok(ErrorResponse::ShuttingDown.response(*this.grpc)));
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // Polled after completion: stay pending rather than panic.
            return Poll::Pending;
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            this.inner.set(None);
            // Stop listening for the deadline before the context ends, so
            // that ending it has no listener to notify (no spurious wake).
            *this.deadline = None;
            let mut guard = this.guard.take().unwrap_or_else(RequestGuard::finished);
            return Poll::Ready(match result {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    if body.is_end_stream() {
                        guard.finish();
                    }
                    Ok(Response::from_parts(
                        parts,
                        ContextBody::with_guard(body, guard),
                    ))
                }
                Err(e) => {
                    guard.finish();
                    Err(e)
                }
            });
        }
        if let Some(done) = this.deadline.as_mut() {
            if let Poll::Ready(err) = Pin::new(done).poll(cx) {
                *this.deadline = None;
                if err == Error::DeadlineExceeded {
                    // Drop the handler now; the context is already done
                    // (deadline), so finishing changes nothing about it.
                    this.inner.set(None);
                    if let Some(mut guard) = this.guard.take() {
                        guard.finish();
                    }
                    return Poll::Ready(Ok(ErrorResponse::DeadlineExceeded.response(*this.grpc)));
                }
                // Cancelled otherwise (shutdown): the handler decides.
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use tower_layer::Layer;
    use tower_service::Service;

    use super::ServerLayer;
    use crate::integrations::Outcome;
    use crate::Context;

    /// Records how the request's context looked when the handler's future
    /// was dropped.
    struct OnDrop(Context, Arc<Mutex<Option<Outcome>>>);

    impl Drop for OnDrop {
        fn drop(&mut self) {
            *self.1.lock().unwrap() = Some(Outcome::of(&self.0));
        }
    }

    type Seen = Arc<Mutex<Vec<Context>>>;
    type Answer = std::future::Ready<Result<http::Response<String>, Infallible>>;

    /// A handler, and the contexts it saw, in order.
    fn recording() -> (
        impl Service<
                http::Request<()>,
                Response = http::Response<String>,
                Error = Infallible,
                Future = Answer,
            > + Clone,
        Seen,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let svc = tower::service_fn(move |req: http::Request<()>| {
            let ctx = req.extensions().get::<Context>().unwrap().clone();
            seen2.lock().unwrap().push(ctx);
            std::future::ready(Ok(http::Response::new(String::new())))
        });
        (svc, seen)
    }

    fn call_now<S: Service<http::Request<()>>>(svc: &mut S, req: http::Request<()>) {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let fut = std::pin::pin!(svc.call(req));
        assert!(fut.poll(&mut cx).is_ready());
    }

    use std::future::Future;
    use std::time::{Duration, Instant};

    #[test]
    fn capped_deadlines_are_shared_rounded_down_and_exact_for_shorter_headers() {
        let cap = Duration::from_secs(30);
        let (handler, seen) = recording();
        let (root, shutdown) = Context::background().with_cancel();
        let mut svc = ServerLayer::new(root.clone())
            .max_timeout(cap)
            .layer(handler);
        let before = Instant::now();
        for _ in 0..3 {
            call_now(&mut svc, http::Request::new(()));
        }
        let with_header = http::Request::builder()
            .header("grpc-timeout", "5S")
            .body(())
            .unwrap();
        call_now(&mut svc, with_header);
        let after = Instant::now();
        let seen = seen.lock().unwrap();
        for ctx in &seen[..3] {
            let d = ctx.deadline().unwrap();
            // Never later than arrival + cap; at most 1 ms earlier.
            assert!(d <= after + cap, "{d:?}");
            assert!(d + Duration::from_millis(1) >= before + cap, "{d:?}");
            assert_eq!(Outcome::of(ctx), Outcome::Finished);
        }
        let d = seen[3].deadline().unwrap();
        assert!(d <= after + Duration::from_secs(5) && d >= before + Duration::from_secs(5));
        drop(seen);
        // The root still ends requests derived from the shared parent.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut slow = ServerLayer::new(root)
            .max_timeout(cap)
            .layer(tower::service_fn(move |req: http::Request<()>| {
                tx.send(req.extensions().get::<Context>().unwrap().clone())
                    .unwrap();
                std::future::pending::<Result<http::Response<String>, Infallible>>()
            }));
        let pending = slow.call(http::Request::new(()));
        let running = rx.recv().unwrap();
        assert!(!running.is_done());
        shutdown.cancel_with_cause(crate::integrations::Shutdown);
        assert_eq!(Outcome::of(&running), Outcome::Shutdown);
        drop(pending);
    }

    #[test]
    fn shared_capped_deadline_fires_and_aborts() {
        // 60 ms: above the sharing threshold, so the shared parent's timer
        // is what ends the request.
        let mut svc = ServerLayer::new(Context::background())
            .max_timeout(Duration::from_millis(60))
            .abort_on_deadline()
            .layer(tower::service_fn(|_req: http::Request<()>| {
                std::future::pending::<Result<http::Response<String>, Infallible>>()
            }));
        let resp = futures::executor::block_on(svc.call(http::Request::new(()))).unwrap();
        assert_eq!(resp.status(), http::StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn handler_dropped_after_the_context_ends_as_disconnected() {
        let seen = Arc::new(Mutex::new(None));
        let seen2 = Arc::clone(&seen);
        let mut svc = ServerLayer::new(Context::background()).layer(tower::service_fn(
            move |req: http::Request<()>| {
                let ctx = req.extensions().get::<Context>().unwrap().clone();
                let guard = OnDrop(ctx, Arc::clone(&seen2));
                async move {
                    let _guard = guard;
                    std::future::pending::<Result<http::Response<String>, Infallible>>().await
                }
            },
        ));
        let fut = svc.call(http::Request::new(()));
        drop(fut);
        let outcome = seen.lock().unwrap().take();
        assert_eq!(outcome, Some(Outcome::ClientDisconnected));
    }
}
