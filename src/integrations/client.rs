//! [`ClientLayer`]: outbound calls that inherit the caller's context — its
//! deadline travels as `grpc-timeout`, and its cancellation aborts the call.

use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use std::sync::Arc;

use crate::integrations::deadline_header::{self, DeadlineHeader};
use crate::integrations::maybe_body;
use crate::{Cause, Context, Done, Error};

/// A boxed error, as tower and hyper use them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a [`ClientService`] turns its two kinds of failure — the context
/// ended, or the wrapped service failed — into one error type.
///
/// Two mappings come with the crate: [`IoErrors`] (`std::io::Error`, for
/// hyper clients) and, with the `tonic` feature,
/// `tonic::GrpcErrors` (`tonic::Status`).
///
/// ```
/// use ctxtree::{Error, integrations::{ErrorMapping, IoErrors}};
/// let e = <IoErrors as ErrorMapping<std::io::Error>>::context(Error::DeadlineExceeded, None);
/// assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
/// ```
pub trait ErrorMapping<E> {
    /// The error type of the wrapped service.
    type Error;
    /// The call's context ended with `err` (and `cause`) before the call
    /// completed, or before it started.
    fn context(err: Error, cause: Option<Cause>) -> Self::Error;
    /// The wrapped service failed with `e`.
    fn inner(e: E) -> Self::Error;
}

/// Maps failures to [`std::io::Error`]: `DeadlineExceeded` →
/// [`TimedOut`](io::ErrorKind::TimedOut), `Canceled` →
/// [`Interrupted`](io::ErrorKind::Interrupted) (as `From<Error> for
/// io::Error` does), with a [`ContextError`] inside that carries the cause;
/// errors of the wrapped service are kept (an `io::Error` as is, anything
/// else inside `io::Error::other`).
///
/// ```
/// use ctxtree::{Error, integrations::{ContextError, ErrorMapping, IoErrors}};
/// let e = <IoErrors as ErrorMapping<std::io::Error>>::context(Error::Canceled, None);
/// assert_eq!(e.kind(), std::io::ErrorKind::Interrupted);
/// let inner = e.get_ref().unwrap().downcast_ref::<ContextError>().unwrap();
/// assert_eq!(inner.err(), Error::Canceled);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct IoErrors;

impl<E: Into<BoxError>> ErrorMapping<E> for IoErrors {
    type Error = io::Error;

    fn context(err: Error, cause: Option<Cause>) -> io::Error {
        let kind = io::Error::from(err).kind();
        io::Error::new(kind, ContextError { err, cause })
    }

    fn inner(e: E) -> io::Error {
        match e.into().downcast::<io::Error>() {
            Ok(io) => *io,
            Err(other) => io::Error::other(other),
        }
    }
}

/// The context of an outbound call ended: its [`err`](Self::err) and the
/// [`cause`](Self::cause) it was cancelled with.
/// Display: `context canceled: <cause>` or `context deadline exceeded`.
///
/// ```
/// use std::sync::Arc;
/// use ctxtree::{Error, integrations::ContextError};
/// let e = ContextError::new(Error::Canceled, Some(Arc::new(ctxtree::integrations::Shutdown)));
/// assert_eq!(e.to_string(), "context canceled: server shutting down");
/// ```
#[derive(Clone)]
pub struct ContextError {
    err: Error,
    cause: Option<Cause>,
}

impl ContextError {
    /// A context error from `err` and its `cause`.
    ///
    /// ```
    /// let e = ctxtree::integrations::ContextError::new(ctxtree::Error::DeadlineExceeded, None);
    /// assert!(e.err().is_timeout());
    /// ```
    pub fn new(err: Error, cause: Option<Cause>) -> ContextError {
        ContextError { err, cause }
    }

    /// Why the context is done.
    ///
    /// ```
    /// let e = ctxtree::integrations::ContextError::new(ctxtree::Error::Canceled, None);
    /// assert_eq!(e.err(), ctxtree::Error::Canceled);
    /// ```
    pub fn err(&self) -> Error {
        self.err
    }

    /// The cause the context was cancelled with, if known.
    ///
    /// ```
    /// let e = ctxtree::integrations::ContextError::new(ctxtree::Error::Canceled, None);
    /// assert!(e.cause().is_none());
    /// ```
    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_ref()
    }

    /// `err` and `cause` as one message: the cause's text is added when it
    /// says more than `err` does.
    pub(crate) fn message(err: Error, cause: Option<&Cause>) -> String {
        match cause {
            Some(c) if c.downcast_ref::<Error>().is_none() => format!("{err}: {c}"),
            _ => err.to_string(),
        }
    }
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&ContextError::message(self.err, self.cause.as_ref()))
    }
}

impl fmt::Debug for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextError")
            .field("err", &self.err)
            .field("cause", &self.cause.as_ref().map(|c| c.to_string()))
            .finish()
    }
}

impl std::error::Error for ContextError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.err)
    }
}

/// A [`tower::Layer`](tower_layer::Layer) for outbound HTTP/gRPC calls that
/// inherit the caller's context.
///
/// Put the caller's [`Context`] in the outgoing request's extensions; the
/// layer then:
///
/// - fails at once if the context is already done;
/// - writes `grpc-timeout` (or the [`DeadlineHeader`]s chosen with
///   [`deadline_headers`](Self::deadline_headers)) from the time left
///   before its deadline (keeping an existing, smaller value), so the next
///   hop sees the same deadline;
/// - races the call with [`ctx.done()`](Context::done): if the context ends
///   first, the call is dropped and fails with the mapped error
///   (`DeadlineExceeded` → timed out / `DEADLINE_EXCEEDED`, `Canceled` →
///   interrupted / `CANCELLED`);
/// - bounds the *whole* call, body included: the response body is a
///   [`ClientBody`], whose reads end with that same error once the context
///   ends (the underlying body is dropped then, which aborts the
///   transfer), as Go's `resp.Body.Read` does.
///
/// A request with no context passes through untouched. The error type
/// is chosen by `M`: [`IoErrors`] by default (hyper), or
/// `tonic::GrpcErrors` with the `tonic`
/// feature.
///
/// Go equivalent: `http.NewRequestWithContext(ctx, …)` and grpc-go's
/// `Invoke(ctx, …)`, which send the deadline and abort on cancellation.
///
/// ```
/// use std::{convert::Infallible, io, time::Duration};
/// use ctxtree::{Context, integrations::ClientLayer};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // A stand-in for a hyper client: answers with the grpc-timeout it got.
/// let client = ClientLayer::new().layer(tower::service_fn(|req: http::Request<()>| async move {
///     let header = req.headers().get("grpc-timeout").cloned();
///     Ok::<_, Infallible>(http::Response::new(header))
/// }));
/// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(2));
/// let req = http::Request::builder().extension(ctx).body(()).unwrap();
/// let resp = client.clone().oneshot(req).await.unwrap();
/// let sent = resp.into_body().into_inner().unwrap().unwrap();
/// let sent = ctxtree::integrations::grpc_timeout::parse(sent.as_bytes()).unwrap();
/// assert!(sent <= Duration::from_secs(2));
///
/// // A cancelled context fails the call with Interrupted, not Infallible.
/// let (ctx, cancel) = Context::background().with_cancel();
/// cancel.cancel();
/// let req = http::Request::builder().extension(ctx).body(()).unwrap();
/// let err: io::Error = client.oneshot(req).await.unwrap_err();
/// assert_eq!(err.kind(), io::ErrorKind::Interrupted);
/// # }
/// ```
pub struct ClientLayer<M = IoErrors> {
    deadline_headers: Arc<[DeadlineHeader]>,
    _mapping: PhantomData<fn() -> M>,
}

impl ClientLayer<IoErrors> {
    /// A client layer whose errors are `std::io::Error` (for hyper).
    ///
    /// ```
    /// let layer = ctxtree::integrations::ClientLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> ClientLayer<IoErrors> {
        ClientLayer::with_mapping()
    }
}

impl<M> ClientLayer<M> {
    /// A client layer with the error mapping `M`.
    ///
    /// ```
    /// use ctxtree::integrations::{ClientLayer, IoErrors};
    /// let layer = ClientLayer::<IoErrors>::with_mapping();
    /// # let _ = layer;
    /// ```
    pub fn with_mapping() -> ClientLayer<M> {
        ClientLayer {
            deadline_headers: deadline_header::default_set(),
            _mapping: PhantomData,
        }
    }

    /// Also sends the deadline in `header` (in addition to `grpc-timeout`
    /// and any added before; a header of the same name is replaced), from
    /// the time left, rounded up to the header's unit. An existing,
    /// smaller value on the request is kept.
    ///
    /// ```
    /// use std::{convert::Infallible, time::Duration};
    /// use ctxtree::{Context, integrations::{ClientLayer, DeadlineHeader}};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A Connect-speaking upstream:
    /// let client = ClientLayer::new()
    ///     .deadline_headers([DeadlineHeader::connect()])
    ///     .layer(tower::service_fn(|req: http::Request<()>| async move {
    ///         Ok::<_, Infallible>(http::Response::new(req.headers().clone()))
    ///     }));
    /// let (ctx, _c) = Context::background().with_timeout(Duration::from_secs(2));
    /// let req = http::Request::builder().extension(ctx).body(()).unwrap();
    /// let sent = client.oneshot(req).await.unwrap().into_body().into_inner().unwrap();
    /// let ms: u64 = sent["connect-timeout-ms"].to_str().unwrap().parse().unwrap();
    /// assert!(ms > 0 && ms <= 2000);
    /// assert!(!sent.contains_key("grpc-timeout")); // replaced, not added
    /// # }
    /// ```
    pub fn deadline_header(mut self, header: DeadlineHeader) -> ClientLayer<M> {
        self.deadline_headers = deadline_header::with_header(&self.deadline_headers, header);
        self
    }

    /// Sends the deadline in exactly these headers (replacing the default
    /// `grpc-timeout`; an empty set sends none, the call is still bounded).
    ///
    /// ```
    /// use ctxtree::integrations::{ClientLayer, DeadlineHeader};
    /// let layer = ClientLayer::new().deadline_headers([DeadlineHeader::connect()]);
    /// # let _ = layer;
    /// ```
    pub fn deadline_headers<I>(mut self, headers: I) -> ClientLayer<M>
    where
        I: IntoIterator<Item = DeadlineHeader>,
    {
        self.deadline_headers = headers.into_iter().collect();
        self
    }
}

impl Default for ClientLayer<IoErrors> {
    fn default() -> Self {
        ClientLayer::new()
    }
}

impl<M> Clone for ClientLayer<M> {
    fn clone(&self) -> Self {
        ClientLayer {
            deadline_headers: Arc::clone(&self.deadline_headers),
            _mapping: PhantomData,
        }
    }
}

impl<M> fmt::Debug for ClientLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLayer")
            .field("deadline_headers", &self.deadline_headers)
            .finish()
    }
}

impl<S, M> Layer<S> for ClientLayer<M> {
    type Service = ClientService<S, M>;

    fn layer(&self, inner: S) -> ClientService<S, M> {
        ClientService {
            inner,
            deadline_headers: Arc::clone(&self.deadline_headers),
            _mapping: PhantomData,
        }
    }
}

/// The service made by [`ClientLayer`]: see there.
///
/// ```
/// use ctxtree::integrations::{ClientLayer, ClientService};
/// use tower::Layer;
/// let svc: ClientService<_> = ClientLayer::new().layer(tower::service_fn(
///     |_req: http::Request<()>| async { Ok::<_, std::io::Error>(()) },
/// ));
/// # let _ = svc;
/// ```
pub struct ClientService<S, M = IoErrors> {
    inner: S,
    deadline_headers: Arc<[DeadlineHeader]>,
    _mapping: PhantomData<fn() -> M>,
}

impl<S: Clone, M> Clone for ClientService<S, M> {
    fn clone(&self) -> Self {
        ClientService {
            inner: self.inner.clone(),
            deadline_headers: Arc::clone(&self.deadline_headers),
            _mapping: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for ClientService<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientService")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, M> ClientService<S, M> {
    /// The wrapped service.
    ///
    /// ```
    /// use tower::Layer;
    /// let svc = ctxtree::integrations::ClientLayer::new().layer(5);
    /// assert_eq!(*svc.get_ref(), 5);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, ResBody, M> Service<Request<B>> for ClientService<S, M>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    M: ErrorMapping<S::Error>,
{
    type Response = Response<ClientBody<ResBody, M>>;
    type Error = M::Error;
    type Future = ClientFuture<S::Future, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), M::Error>> {
        self.inner.poll_ready(cx).map_err(M::inner)
    }

    fn call(&mut self, mut req: Request<B>) -> ClientFuture<S::Future, M> {
        let Some(ctx) = req.extensions().get::<Context>().cloned() else {
            return ClientFuture::running(self.inner.call(req), None);
        };
        if let Err(err) = ctx.err() {
            return ClientFuture::failed(err, ctx.cause());
        }
        if let Some(deadline) = ctx.deadline() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The timer has not fired yet, but the deadline has passed.
                return ClientFuture::failed(Error::DeadlineExceeded, None);
            }
            deadline_header::write_all(&self.deadline_headers, req.headers_mut(), left);
        }
        let done = ctx.done();
        ClientFuture::running(self.inner.call(req), Some((done, ctx)))
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ClientService`]: the call raced with the
    /// end of its context.
    ///
    /// ```
    /// use ctxtree::{Context, integrations::ClientLayer};
    /// use tower::{Layer, Service};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut client = ClientLayer::new().layer(tower::service_fn(|_req: http::Request<()>| {
    ///     std::future::pending::<Result<http::Response<String>, std::io::Error>>() // a call that hangs
    /// }));
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let fut = client.call(http::Request::builder().extension(ctx).body(()).unwrap());
    /// cancel.cancel_with_cause("user pressed stop");
    /// let err = fut.await.unwrap_err();
    /// assert_eq!(err.to_string(), "context canceled: user pressed stop");
    /// # }
    /// ```
    pub struct ClientFuture<F, M> {
        #[pin]
        inner: Option<F>,
        done: Bound,
        failed: Option<(Error, Option<Cause>)>,
        _mapping: PhantomData<fn() -> M>,
    }
}

impl<F, M> ClientFuture<F, M> {
    fn running(inner: F, done: Bound) -> Self {
        ClientFuture {
            inner: Some(inner),
            done,
            failed: None,
            _mapping: PhantomData,
        }
    }

    fn failed(err: Error, cause: Option<Cause>) -> Self {
        ClientFuture {
            inner: None,
            done: None,
            failed: Some((err, cause)),
            _mapping: PhantomData,
        }
    }
}

impl<F, M> fmt::Debug for ClientFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFuture")
            .field("running", &self.inner.is_some())
            .finish()
    }
}

impl<F, ResBody, E, M> Future for ClientFuture<F, M>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    M: ErrorMapping<E>,
{
    type Output = Result<Response<ClientBody<ResBody, M>>, M::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some((err, cause)) = this.failed.take() {
            return Poll::Ready(Err(M::context(err, cause)));
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // Polled after completion: stay pending rather than panic.
            return Poll::Pending;
        };
        // The call first: a response that is ready wins over a
        // cancellation seen in the same poll (like run_until_done).
        if let Poll::Ready(result) = inner.poll(cx) {
            this.inner.set(None);
            // The context's waiter moves on to bound the body.
            let done = this.done.take();
            return Poll::Ready(match result {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    Ok(Response::from_parts(parts, ClientBody::new(body, done)))
                }
                Err(e) => Err(M::inner(e)),
            });
        }
        if let Poll::Ready((err, cause)) = poll_end(this.done, cx) {
            // Abort the call now, not when the caller drops us.
            this.inner.set(None);
            return Poll::Ready(Err(M::context(err, cause)));
        }
        Poll::Pending
    }
}

/// The call's context while it bounds a call or its response body: the
/// waiter on its end, and the context itself (for the cause). `None` once
/// the call is unbounded (no context, or the bound is over).
type Bound = Option<(Done, Context)>;

/// If the bounding context has already ended: stops bounding (drops the
/// waiter) and returns why it ended.
fn ended(bound: &mut Bound) -> Option<(Error, Option<Cause>)> {
    let err = bound.as_ref()?.1.err().err()?;
    let cause = bound.take().and_then(|(_, ctx)| ctx.cause());
    Some((err, cause))
}

/// Polls the end of the bounding context: once it has ended, stops
/// bounding (drops the waiter) and returns why it ended.
fn poll_end(bound: &mut Bound, cx: &mut TaskContext<'_>) -> Poll<(Error, Option<Cause>)> {
    let Some((done, ctx)) = bound.as_mut() else {
        return Poll::Pending;
    };
    let Poll::Ready(err) = Pin::new(done).poll(cx) else {
        return Poll::Pending;
    };
    let cause = ctx.cause();
    *bound = None;
    Poll::Ready((err, cause))
}

pin_project_lite::pin_project! {
    /// The response body of a [`ClientService`] call: the transport's body,
    /// bounded by the call's context. Once the context ends, the next read
    /// returns the mapped context error (`io::ErrorKind::TimedOut` /
    /// `Interrupted` with [`IoErrors`], `DEADLINE_EXCEEDED` / `CANCELLED`
    /// with `GrpcErrors`) and the underlying body is dropped (which aborts
    /// the transfer); errors of the body itself are mapped like the
    /// service's. Frames that are ready win over a cancellation seen in the
    /// same read only while the context is not yet done when the read
    /// starts.
    ///
    /// Go equivalent: `resp.Body.Read` failing with `ctx.Err()` after the
    /// request's context ends.
    ///
    /// ```
    /// use std::{convert::Infallible, io, time::Duration};
    /// use ctxtree::{Context, integrations::ClientLayer};
    /// use http_body_util::BodyExt;
    /// use tower::{Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A server that sends its headers at once, then never finishes the body.
    /// let slow = tower::service_fn(|_req: http::Request<()>| async {
    ///     let body = http_body_util::StreamBody::new(futures::stream::pending::<
    ///         Result<http_body::Frame<bytes::Bytes>, Infallible>,
    ///     >());
    ///     Ok::<_, Infallible>(http::Response::new(body))
    /// });
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(20));
    /// let req = http::Request::builder().extension(ctx).body(()).unwrap();
    /// let resp = ClientLayer::new().layer(slow).oneshot(req).await.unwrap(); // headers: fine
    /// let err: io::Error = resp.into_body().collect().await.unwrap_err(); // body: bounded
    /// assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    /// # }
    /// ```
    pub struct ClientBody<B, M = IoErrors> {
        #[pin]
        inner: Option<B>,
        done: Bound,
        _mapping: PhantomData<fn() -> M>,
    }
}

impl<B, M> ClientBody<B, M> {
    fn new(inner: B, done: Bound) -> ClientBody<B, M> {
        ClientBody {
            inner: Some(inner),
            done,
            _mapping: PhantomData,
        }
    }

    /// The transport's body, no longer bounded by the context (`None` if
    /// the context already ended it).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use tower::{Layer, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let svc = ctxtree::integrations::ClientLayer::new().layer(tower::service_fn(
    ///     |_req: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(String::from("hi"))) },
    /// ));
    /// let resp = svc.oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(resp.into_body().into_inner().as_deref(), Some("hi"));
    /// # }
    /// ```
    pub fn into_inner(self) -> Option<B> {
        let ClientBody { inner, .. } = self;
        inner
    }
}

impl<B, M> Body for ClientBody<B, M>
where
    B: Body,
    M: ErrorMapping<B::Error>,
{
    type Data = B::Data;
    type Error = M::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, M::Error>>> {
        let mut this = self.project();
        let Some(body) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        // A read that starts after the context ended fails, whatever is
        // buffered (Go's body reads do the same).
        if let Some((err, cause)) = ended(this.done) {
            this.inner.set(None);
            return Poll::Ready(Some(Err(M::context(err, cause))));
        }
        match body.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(M::inner(e)))),
            Poll::Ready(None) => {
                // The end: release the context's waiter now.
                *this.done = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Poll::Ready((err, cause)) = poll_end(this.done, cx) {
            // Abort the transfer now, not when the caller drops us.
            this.inner.set(None);
            return Poll::Ready(Some(Err(M::context(err, cause))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        maybe_body::is_end_stream(self.inner.as_ref())
    }

    fn size_hint(&self) -> SizeHint {
        maybe_body::size_hint(self.inner.as_ref())
    }
}

impl<B, M> fmt::Debug for ClientBody<B, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBody")
            .field("ended", &self.inner.is_none())
            .field("bounded", &self.done.is_some())
            .finish()
    }
}
