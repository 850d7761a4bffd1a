//! Why a request's context ended: the causes the server layer cancels with,
//! and [`Outcome`], which reads them back.

use std::fmt;

use crate::{Cause, Context, Error};

macro_rules! cause_type {
    ($(#[$doc:meta])* $name:ident, $text:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name;

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($text)
            }
        }

        impl std::error::Error for $name {}
    };
}

cause_type!(
    /// Cause of a request context whose response future or response body
    /// was dropped before it finished: the client disconnected, the HTTP/2
    /// stream was reset, or an outer layer (a timeout, a `select!`) gave up.
    /// Display: `client disconnected`.
    ///
    /// ```
    /// use ctxtree::integrations::ClientDisconnected;
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// cancel.cancel_with_cause(ClientDisconnected);
    /// assert!(ctx.cause().unwrap().is::<ClientDisconnected>());
    /// assert_eq!(ctx.cause().unwrap().to_string(), "client disconnected");
    /// ```
    ClientDisconnected,
    "client disconnected"
);

cause_type!(
    /// Cause of a request context whose handler returned (and whose
    /// response body, if any, was sent to the end). Go's net/http cancels
    /// the request context the same way when `ServeHTTP` returns.
    /// Display: `request finished`.
    ///
    /// ```
    /// use ctxtree::integrations::RequestFinished;
    /// assert_eq!(RequestFinished.to_string(), "request finished");
    /// ```
    RequestFinished,
    "request finished"
);

cause_type!(
    /// A ready-made cause for graceful shutdown: cancel the server's root
    /// context with it, and every in-flight request context ends with it
    /// (as [`Outcome::Shutdown`]). Any other cause works too (it shows as
    /// [`Outcome::Canceled`]). Display: `server shutting down`.
    ///
    /// ```
    /// use ctxtree::integrations::{Outcome, Shutdown};
    /// let (root, shutdown) = ctxtree::Context::background().with_cancel();
    /// let (request, _finish) = root.with_cancel();
    /// shutdown.cancel_with_cause(Shutdown);
    /// assert_eq!(Outcome::of(&request), Outcome::Shutdown);
    /// ```
    Shutdown,
    "server shutting down"
);

thread_local! {
    /// The per-request causes, built once per thread: the layer ends every
    /// request with a clone (no allocation). Per thread rather than one
    /// global `Arc`, so threads serving requests do not all bump the same
    /// reference count.
    static SHARED_CAUSES: (Cause, Cause) =
        (std::sync::Arc::new(RequestFinished), std::sync::Arc::new(ClientDisconnected));
}

/// A shared [`RequestFinished`] cause (no allocation after the first on
/// this thread).
pub(crate) fn request_finished() -> Cause {
    // During thread teardown (a guard dropped by another thread-local's
    // destructor) the cache is gone: allocate instead.
    SHARED_CAUSES
        .try_with(|c| c.0.clone())
        .unwrap_or_else(|_| std::sync::Arc::new(RequestFinished))
}

/// A shared [`ClientDisconnected`] cause (no allocation after the first
/// on this thread).
pub(crate) fn client_disconnected() -> Cause {
    SHARED_CAUSES
        .try_with(|c| c.1.clone())
        .unwrap_or_else(|_| std::sync::Arc::new(ClientDisconnected))
}

/// How a request context ended, read from its [`err`](Context::err) and
/// [`cause`](Context::cause).
///
/// ```
/// use std::time::Duration;
/// use ctxtree::Context;
/// use ctxtree::integrations::{Outcome, RequestFinished};
///
/// let (ctx, finish) = Context::background().with_cancel();
/// assert_eq!(Outcome::of(&ctx), Outcome::Running);
/// finish.cancel_with_cause(RequestFinished);
/// assert_eq!(Outcome::of(&ctx), Outcome::Finished);
///
/// let (late, _c) = Context::background().with_timeout(Duration::ZERO);
/// assert_eq!(Outcome::of(&late), Outcome::DeadlineExceeded);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// Not done yet.
    Running,
    /// Cancelled with [`RequestFinished`]: the handler returned.
    Finished,
    /// Cancelled with [`ClientDisconnected`].
    ClientDisconnected,
    /// The deadline (server cap or `grpc-timeout`) passed.
    DeadlineExceeded,
    /// Cancelled with [`Shutdown`] (the server root was cancelled with it).
    Shutdown,
    /// Cancelled with any other cause (for example a root cancelled with a
    /// cause of your own).
    Canceled(Cause),
}

impl Outcome {
    /// Reads how `ctx` ended.
    ///
    /// ```
    /// use ctxtree::integrations::{ClientDisconnected, Outcome};
    /// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
    /// cancel.cancel_with_cause(ClientDisconnected);
    /// assert_eq!(Outcome::of(&ctx).to_string(), "client disconnected");
    /// ```
    pub fn of(ctx: &Context) -> Outcome {
        match ctx.err() {
            Ok(()) => Outcome::Running,
            Err(Error::DeadlineExceeded) => Outcome::DeadlineExceeded,
            Err(_) => match ctx.cause() {
                Some(c) if c.is::<RequestFinished>() => Outcome::Finished,
                Some(c) if c.is::<ClientDisconnected>() => Outcome::ClientDisconnected,
                Some(c) if c.is::<Shutdown>() => Outcome::Shutdown,
                Some(c) => Outcome::Canceled(c),
                // Unreachable by the API contract (err() is Err => cause()
                // is Some); answer something sensible anyway.
                None => Outcome::Canceled(std::sync::Arc::new(Error::Canceled)),
            },
        }
    }
}

impl PartialEq for Outcome {
    /// Variants compare by kind; `Canceled` causes compare by their text.
    fn eq(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::Canceled(a), Outcome::Canceled(b)) => a.to_string() == b.to_string(),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Running => f.write_str("Running"),
            Outcome::Finished => f.write_str("Finished"),
            Outcome::ClientDisconnected => f.write_str("ClientDisconnected"),
            Outcome::DeadlineExceeded => f.write_str("DeadlineExceeded"),
            Outcome::Shutdown => f.write_str("Shutdown"),
            Outcome::Canceled(c) => f.debug_tuple("Canceled").field(&c.to_string()).finish(),
        }
    }
}

impl fmt::Display for Outcome {
    /// `running`, `request finished`, `client disconnected`,
    /// `deadline exceeded`, `server shutting down`, or
    /// `canceled: <cause>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Running => f.write_str("running"),
            Outcome::Finished => fmt::Display::fmt(&RequestFinished, f),
            Outcome::ClientDisconnected => fmt::Display::fmt(&ClientDisconnected, f),
            Outcome::DeadlineExceeded => f.write_str("deadline exceeded"),
            Outcome::Shutdown => fmt::Display::fmt(&Shutdown, f),
            Outcome::Canceled(c) => write!(f, "canceled: {c}"),
        }
    }
}
