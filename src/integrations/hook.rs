//! [`RequestEnd`]: what [`ServerLayer::on_request_end`] reports when a
//! request's context ends.
//!
//! [`ServerLayer::on_request_end`]: crate::integrations::ServerLayer::on_request_end

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Uri, Version};

use crate::integrations::outcome::Outcome;
use crate::{Cause, Context};

/// The callback type of [`ServerLayer::on_request_end`](crate::integrations::ServerLayer::on_request_end).
pub(crate) type Hook = Arc<dyn Fn(&RequestEnd) + Send + Sync + 'static>;

/// A [`Hook`] in a `Debug` struct.
#[derive(Clone)]
pub(crate) struct OnEnd(pub(crate) Hook);

impl fmt::Debug for OnEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnEnd(..)")
    }
}

/// How one request ended, as given to the
/// [`on_request_end`](crate::integrations::ServerLayer::on_request_end)
/// callback: its [`Outcome`] (finished, client disconnected, deadline
/// exceeded, shutdown, …), how long it took, the cause, and the parts of
/// the request a log line needs.
///
/// ```
/// use std::{convert::Infallible, sync::{Arc, Mutex}};
/// use ctxtree::{Context, integrations::{Outcome, ServerLayer}};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let layer = ServerLayer::new(Context::background()).on_request_end({
///     let log = log.clone();
///     move |end| log.lock().unwrap().push(format!("{} {} {}", end.method(), end.uri(), end.outcome()))
/// });
/// let svc = layer.layer(tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, Infallible>(http::Response::new(String::from("ok")))
/// }));
/// let req = http::Request::post("/orders").body(String::new()).unwrap();
/// let body = svc.oneshot(req).await.unwrap().into_body();
/// drop(body.into_inner()); // the body was sent: the request is over
/// assert_eq!(log.lock().unwrap().as_slice(), ["POST /orders request finished"]);
/// # }
/// ```
pub struct RequestEnd {
    outcome: Outcome,
    elapsed: Duration,
    method: Method,
    uri: Uri,
    version: Version,
    context: Context,
}

impl RequestEnd {
    /// How the request ended.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// From the layer's `call` to the end (the handler returned and its
    /// body was sent, or the client went away, …).
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The request's cause: [`RequestFinished`](crate::integrations::RequestFinished),
    /// [`ClientDisconnected`](crate::integrations::ClientDisconnected), a
    /// deadline's cause, [`Shutdown`](crate::integrations::Shutdown), or
    /// whatever the root was cancelled with.
    pub fn cause(&self) -> Option<Cause> {
        self.context.cause()
    }

    /// The request's method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request's URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The request's HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The request's context (done by now): read the values middleware
    /// attached (a request id, a trace span, the user).
    pub fn context(&self) -> &Context {
        &self.context
    }
}

impl fmt::Debug for RequestEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestEnd")
            .field("outcome", &self.outcome)
            .field("elapsed", &self.elapsed)
            .field("method", &self.method)
            .field("uri", &self.uri)
            .finish()
    }
}

/// What a request needs to report its end: taken when it starts.
pub(crate) struct PendingReport {
    hook: Hook,
    start: Instant,
    method: Method,
    uri: Uri,
    version: Version,
    context: Context,
}

impl PendingReport {
    pub(crate) fn new<B>(hook: &Hook, req: &http::Request<B>, context: &Context) -> PendingReport {
        PendingReport {
            hook: Arc::clone(hook),
            start: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            context: context.clone(),
        }
    }

    /// Calls the hook, once the request's context has ended. A panic in
    /// the hook is reported on stderr and goes no further: it runs inside
    /// drops, where a panic could abort the process.
    pub(crate) fn report(self) {
        let end = RequestEnd {
            outcome: Outcome::of(&self.context),
            elapsed: self.start.elapsed(),
            method: self.method,
            uri: self.uri,
            version: self.version,
            context: self.context,
        };
        let hook = self.hook;
        if panic::catch_unwind(AssertUnwindSafe(|| hook(&end))).is_err() {
            eprintln!("ctxtree: the on_request_end callback panicked (ignored)");
        }
    }
}
