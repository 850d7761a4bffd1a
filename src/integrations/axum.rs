//! axum: `Context` as an extractor.

use std::convert::Infallible;
use std::fmt;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use crate::Context;

/// Extracts the request's [`Context`], put there by
/// [`ServerLayer`](crate::integrations::ServerLayer). Rejects with
/// [`MissingContext`] (500) when the layer is not installed; use
/// `Option<Context>` to make it optional.
///
/// Go equivalent: `r.Context()`.
///
/// ```
/// use axum::{routing::get, Router};
/// use ctxtree::{Context, integrations::ServerLayer};
///
/// async fn handler(ctx: Context) -> String {
///     // Give up on the slow part when the client leaves or time runs out.
///     match ctx.run_until_done(async { "done".to_owned() }).await {
///         Ok(body) => body,
///         Err(err) => err.to_string(),
///     }
/// }
///
/// let (root, _shutdown) = Context::background().with_cancel();
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(ServerLayer::new(root));
/// # let _ = app;
/// ```
impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = MissingContext;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Context, MissingContext> {
        parts
            .extensions
            .get::<Context>()
            .cloned()
            .ok_or(MissingContext)
    }
}

/// `Option<Context>`: `None` when no [`ServerLayer`](crate::integrations::ServerLayer)
/// is installed.
///
/// ```
/// async fn handler(ctx: Option<ctxtree::Context>) -> &'static str {
///     if ctx.is_some() { "with context" } else { "without" }
/// }
/// let app: axum::Router = axum::Router::new().route("/", axum::routing::get(handler));
/// # let _ = app;
/// ```
impl<S: Send + Sync> OptionalFromRequestParts<S> for Context {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Context>, Infallible> {
        Ok(parts.extensions.get::<Context>().cloned())
    }
}

/// Rejection of the [`Context`] extractor: the request has no context,
/// because no [`ServerLayer`](crate::integrations::ServerLayer) wraps the
/// route. Answers `500 Internal Server Error` (a server misconfiguration,
/// not the client's fault).
///
/// ```
/// use axum::response::IntoResponse;
/// let resp = ctxtree::integrations::axum::MissingContext.into_response();
/// assert_eq!(resp.status(), 500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MissingContext;

impl fmt::Display for MissingContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no ctxtree::Context in the request: is ctxtree::integrations::ServerLayer installed?",
        )
    }
}

impl std::error::Error for MissingContext {}

impl IntoResponse for MissingContext {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}
