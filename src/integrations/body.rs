//! [`ContextBody`]: the response body that keeps a request's context alive
//! until the body has been sent, and the guard that ends the context.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http_body::{Body, Frame, SizeHint};

use crate::integrations::hook::PendingReport;
use crate::integrations::maybe_body;
use crate::integrations::outcome;
#[cfg(doc)]
use crate::integrations::outcome::{ClientDisconnected, RequestFinished};
use crate::integrations::shutdown::Token;
use crate::CancelHandle;

/// Ends a request's context exactly once: [`finish`](Self::finish) cancels
/// with [`RequestFinished`]; dropping it unfinished cancels with
/// [`ClientDisconnected`] (the response future or the body was dropped
/// before the end).
///
/// It also holds the request's place in a [`ShutdownHandle`]'s count
/// (`token`), released when the request ends either way.
///
/// [`ShutdownHandle`]: crate::integrations::ShutdownHandle
pub(crate) struct RequestGuard {
    handle: Option<CancelHandle>,
    token: Option<Token>,
    /// The `on_request_end` report, made once the context has ended.
    report: Option<Box<PendingReport>>,
}

impl RequestGuard {
    pub(crate) fn new(
        handle: CancelHandle,
        token: Option<Token>,
        report: Option<Box<PendingReport>>,
    ) -> RequestGuard {
        RequestGuard {
            handle: Some(handle),
            token,
            report,
        }
    }

    pub(crate) fn finished() -> RequestGuard {
        RequestGuard {
            handle: None,
            token: None,
            report: None,
        }
    }

    /// After the context ended: report, then leave the shutdown count (so
    /// a drain also waits for the report).
    fn ended(&mut self) {
        if let Some(report) = self.report.take() {
            report.report();
        }
        self.token = None;
    }

    /// The handler (and its body, if any) completed.
    pub(crate) fn finish(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.cancel_with_shared_cause(outcome::request_finished());
        }
        // After the cancel: a request counts as in flight until its
        // context has ended.
        self.ended();
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.cancel_with_shared_cause(outcome::client_disconnected());
        }
        self.ended();
    }
}

pin_project_lite::pin_project! {
    /// The response body of a service wrapped by
    /// [`ServerLayer`](crate::integrations::ServerLayer): the handler's body,
    /// unchanged, plus the request's cancel guard. The request's context
    /// stays alive while the body streams; it ends with
    /// [`RequestFinished`] when the body ends, or with
    /// [`ClientDisconnected`] if the body is dropped before its end.
    ///
    /// It is also the (empty) body of the 504 / `DEADLINE_EXCEEDED` answer
    /// of [`ServerLayer::abort_on_deadline`](crate::integrations::ServerLayer::abort_on_deadline).
    ///
    /// ```
    /// use http_body::Body;
    /// use ctxtree::integrations::ContextBody;
    ///
    /// let body: ContextBody<String> = ContextBody::new("hello".to_owned());
    /// assert_eq!(body.size_hint().exact(), Some(5));
    /// assert!(ContextBody::<String>::empty().is_end_stream());
    /// ```
    pub struct ContextBody<B> {
        #[pin]
        inner: Option<B>,
        guard: RequestGuard,
    }
}

impl<B> ContextBody<B> {
    pub(crate) fn with_guard(inner: B, guard: RequestGuard) -> ContextBody<B> {
        ContextBody {
            inner: Some(inner),
            guard,
        }
    }

    /// Wraps `body` with no context attached (for responses built outside
    /// the layer, e.g. in tests).
    ///
    /// ```
    /// let body = ctxtree::integrations::ContextBody::new(String::from("ok"));
    /// assert_eq!(body.into_inner(), Some(String::from("ok")));
    /// ```
    pub fn new(body: B) -> ContextBody<B> {
        ContextBody::with_guard(body, RequestGuard::finished())
    }

    /// An empty body (what the layer's 504 answer carries).
    ///
    /// ```
    /// use http_body::Body;
    /// assert!(ctxtree::integrations::ContextBody::<String>::empty().is_end_stream());
    /// ```
    pub fn empty() -> ContextBody<B> {
        ContextBody {
            inner: None,
            guard: RequestGuard::finished(),
        }
    }

    /// The handler's body (`None` for the layer's own empty answers).
    /// Taking it out ends the request's context as finished.
    ///
    /// ```
    /// let body = ctxtree::integrations::ContextBody::<String>::empty();
    /// assert_eq!(body.into_inner(), None);
    /// ```
    pub fn into_inner(self) -> Option<B> {
        let mut this = self;
        this.guard.finish();
        // Moving out of a pin-projected struct that is not pinned is fine.
        let ContextBody { inner, .. } = this;
        inner
    }
}

impl<B: Body> Body for ContextBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let Some(mut inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let frame = inner.as_mut().poll_frame(cx);
        match &frame {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(_))) if !inner.is_end_stream() => {}
            // The last frame, the end, or an error: the body is over.
            _ => this.guard.finish(),
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        maybe_body::is_end_stream(self.inner.as_ref())
    }

    fn size_hint(&self) -> SizeHint {
        maybe_body::size_hint(self.inner.as_ref())
    }
}

impl<B> std::fmt::Debug for ContextBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextBody")
            .field("empty", &self.inner.is_none())
            .field("finished", &self.guard.handle.is_none())
            .finish()
    }
}
