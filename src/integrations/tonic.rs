//! tonic: the request context of a gRPC handler, and `tonic::Status` for
//! outbound calls that inherit it.

use std::sync::Arc;

use tonic::{Code, Status};

use crate::integrations::client::{BoxError, ClientLayer, ContextError, ErrorMapping};
use crate::{Cause, Context, Error};

/// The [`Context`] of a gRPC request, put there by
/// [`ServerLayer`](crate::integrations::ServerLayer) (tonic moves the HTTP
/// request's extensions into the `tonic::Request`). `None` when the layer
/// is not installed.
///
/// Go equivalent: the `ctx` argument of a grpc-go handler.
///
/// ```
/// use ctxtree::{Context, integrations::tonic::{request_context, set_context}};
///
/// async fn say_hello(req: tonic::Request<String>) -> Result<tonic::Response<String>, tonic::Status> {
///     // Not `unwrap_or_default()`: without the layer that would be a
///     // context that never ends, silently. See also `require_context`.
///     let ctx = request_context(&req)
///         .ok_or_else(|| tonic::Status::internal("no request context: is ServerLayer installed?"))?;
///     let name = req.into_inner();
///     // Gives DEADLINE_EXCEEDED / CANCELLED if the context ends first.
///     let reply = ctx.run_until_done(async move { format!("hello {name}") })
///         .await
///         .map_err(tonic::Status::from)?;
///     Ok(tonic::Response::new(reply))
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut req = tonic::Request::new("gopher".to_owned());
/// set_context(&mut req, Context::background());
/// assert_eq!(say_hello(req).await.unwrap().into_inner(), "hello gopher");
/// # }
/// ```
pub fn request_context<T>(req: &tonic::Request<T>) -> Option<Context> {
    req.extensions().get::<Context>().cloned()
}

/// The [`Context`] of a gRPC request, or `INTERNAL` if there is none (no
/// [`ServerLayer`](crate::integrations::ServerLayer) in front of the
/// service): a misconfiguration should fail loudly, not give the handler a
/// context that never ends (what `request_context(..).unwrap_or_default()`
/// would).
///
/// ```
/// use ctxtree::{Context, integrations::tonic::{require_context, set_context}};
///
/// async fn handler(req: tonic::Request<()>) -> Result<tonic::Response<()>, tonic::Status> {
///     let ctx = require_context(&req)?;
///     ctx.run_until_done(async {}).await.map_err(tonic::Status::from)?;
///     Ok(tonic::Response::new(()))
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = handler(tonic::Request::new(())).await.unwrap_err();
/// assert_eq!(err.code(), tonic::Code::Internal);
/// let mut req = tonic::Request::new(());
/// set_context(&mut req, Context::background());
/// assert!(handler(req).await.is_ok());
/// # }
/// ```
#[allow(clippy::result_large_err)] // tonic handlers return Status as is
pub fn require_context<T>(req: &tonic::Request<T>) -> Result<Context, Status> {
    request_context(req)
        .ok_or_else(|| Status::internal("no request context: ctxtree ServerLayer is not installed"))
}

/// Attaches `ctx` to an outbound `tonic::Request`: a client channel wrapped
/// in [`ClientLayer::grpc`] then sends its deadline as `grpc-timeout` and
/// aborts the call when it ends.
///
/// ```
/// use ctxtree::{Context, integrations::tonic::{request_context, set_context}};
/// let mut req = tonic::Request::new(());
/// set_context(&mut req, Context::background());
/// assert!(request_context(&req).is_some());
/// ```
pub fn set_context<T>(req: &mut tonic::Request<T>, ctx: Context) {
    req.extensions_mut().insert(ctx);
}

/// Maps failures to [`tonic::Status`]: `DeadlineExceeded` →
/// `DEADLINE_EXCEEDED` (status 4), `Canceled` → `CANCELLED` (status 1),
/// with the cause as the message; errors of the wrapped service (a tonic
/// `Channel`'s transport errors) go through `Status::from_error`. tonic's
/// generated clients accept any service whose error is a `Status`.
///
/// ```
/// use ctxtree::{Error, integrations::{ErrorMapping, tonic::GrpcErrors}};
/// let status = <GrpcErrors as ErrorMapping<tonic::Status>>::context(Error::DeadlineExceeded, None);
/// assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcErrors;

impl<E: Into<BoxError>> ErrorMapping<E> for GrpcErrors {
    type Error = Status;

    fn context(err: Error, cause: Option<Cause>) -> Status {
        status(err, cause.as_ref())
    }

    fn inner(e: E) -> Status {
        Status::from_error(e.into())
    }
}

fn status(err: Error, cause: Option<&Cause>) -> Status {
    let code = if err.is_timeout() {
        Code::DeadlineExceeded
    } else {
        Code::Cancelled
    };
    Status::new(code, ContextError::message(err, cause))
}

impl ClientLayer<GrpcErrors> {
    /// A client layer whose errors are `tonic::Status`, to wrap a tonic
    /// `Channel` (or any gRPC transport service).
    ///
    /// ```
    /// use ctxtree::integrations::ClientLayer;
    /// let layer = ClientLayer::grpc();
    /// // let channel = tower::ServiceBuilder::new().layer(layer).service(channel);
    /// # let _ = layer;
    /// ```
    pub fn grpc() -> ClientLayer<GrpcErrors> {
        ClientLayer::with_mapping()
    }
}

impl From<Error> for Status {
    /// `DeadlineExceeded` → `DEADLINE_EXCEEDED`, `Canceled` → `CANCELLED`
    /// (grpc-go's `status.FromContextError`).
    ///
    /// ```
    /// let s = tonic::Status::from(ctxtree::Error::Canceled);
    /// assert_eq!(s.code(), tonic::Code::Cancelled);
    /// assert_eq!(s.message(), "context canceled");
    /// ```
    fn from(err: Error) -> Status {
        status(err, None)
    }
}

impl From<ContextError> for Status {
    /// As `From<Error>`, with the cause in the message.
    ///
    /// ```
    /// use ctxtree::integrations::{ContextError, Shutdown};
    /// let e = ContextError::new(ctxtree::Error::Canceled, Some(std::sync::Arc::new(Shutdown)));
    /// assert_eq!(tonic::Status::from(e).message(), "context canceled: server shutting down");
    /// ```
    fn from(e: ContextError) -> Status {
        status(e.err(), e.cause())
    }
}

/// The `Status` for a context that is done, from its err and cause; `None`
/// while it is not done.
///
/// ```
/// use std::time::Duration;
/// let (ctx, _c) = ctxtree::Context::background().with_timeout(Duration::ZERO);
/// let s = ctxtree::integrations::tonic::context_status(&ctx).unwrap();
/// assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
/// ```
pub fn context_status(ctx: &Context) -> Option<Status> {
    let err = ctx.err().err()?;
    let cause: Option<Cause> = ctx.cause().or_else(|| Some(Arc::new(err)));
    Some(status(err, cause.as_ref()))
}
