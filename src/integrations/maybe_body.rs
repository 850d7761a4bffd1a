//! What the two wrapping bodies ([`ContextBody`] on the server side,
//! [`ClientBody`] on the client side) share: the wrapped body is held as an
//! `Option<B>`, `None` once it is gone (never there, taken out, or dropped
//! when the request's context ended), and a gone body reads as an empty
//! body that has ended.
//!
//! [`ContextBody`]: crate::integrations::ContextBody
//! [`ClientBody`]: crate::integrations::ClientBody

use http_body::{Body, SizeHint};

/// [`Body::is_end_stream`] of a body that may be gone: a gone body has
/// ended.
pub(crate) fn is_end_stream<B: Body>(body: Option<&B>) -> bool {
    body.is_none_or(B::is_end_stream)
}

/// [`Body::size_hint`] of a body that may be gone: a gone body has
/// exactly 0 bytes left.
pub(crate) fn size_hint<B: Body>(body: Option<&B>) -> SizeHint {
    body.map_or_else(|| SizeHint::with_exact(0), B::size_hint)
}
