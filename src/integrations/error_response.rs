//! The server layer's own error answers, given instead of the handler's:
//! an HTTP status, or for a gRPC request a trailers-only response (HTTP
//! 200 with the gRPC status in its headers).

use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};

use crate::integrations::body::ContextBody;

/// Why the layer answers instead of the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorResponse {
    /// The request arrived after a shutdown began: 503 with
    /// `connection: close`, or gRPC status 14 `UNAVAILABLE`.
    ShuttingDown,
    /// The deadline passed under `abort_on_deadline`: 504, or gRPC status
    /// 4 `DEADLINE_EXCEEDED`.
    DeadlineExceeded,
}

impl ErrorResponse {
    /// The answer, with an empty body, in gRPC form if `grpc`.
    pub(crate) fn response<B>(self, grpc: bool) -> Response<ContextBody<B>> {
        // grpc-message is percent-encoded.
        let (status, grpc_status, grpc_message) = match self {
            ErrorResponse::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "14",
                "server%20shutting%20down",
            ),
            ErrorResponse::DeadlineExceeded => (
                StatusCode::GATEWAY_TIMEOUT,
                "4",
                "context%20deadline%20exceeded",
            ),
        };
        let mut response = Response::new(ContextBody::empty());
        let headers = response.headers_mut();
        if grpc {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from_static(grpc_status));
            headers.insert("grpc-message", HeaderValue::from_static(grpc_message));
        } else {
            if self == ErrorResponse::ShuttingDown {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            *response.status_mut() = status;
        }
        response
    }
}

/// Whether `req` is a gRPC call (`content-type: application/grpc…`).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
