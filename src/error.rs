//! Why a context is done: [`Error`] and [`Cause`].

use std::fmt;
use std::sync::{Arc, OnceLock};

/// Why a context is done. Display strings are Go's, byte for byte.
///
/// Go equivalent: `context.Canceled` and `context.DeadlineExceeded`.
///
/// ```
/// use ctxtree::{Context, Error};
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// cancel.cancel();
/// assert_eq!(ctx.err(), Err(Error::Canceled));
/// assert_eq!(Error::Canceled.to_string(), "context canceled");
/// assert_eq!(Error::DeadlineExceeded.to_string(), "context deadline exceeded");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The context was cancelled (by its [`CancelHandle`](crate::CancelHandle),
    /// a [`CancelGuard`](crate::CancelGuard) or an ancestor's cancellation).
    Canceled,
    /// The context's deadline passed.
    DeadlineExceeded,
}

impl Error {
    /// True for [`Error::DeadlineExceeded`] only (Go: `DeadlineExceeded`
    /// implements `Timeout() bool`).
    ///
    /// ```
    /// assert!(ctxtree::Error::DeadlineExceeded.is_timeout());
    /// assert!(!ctxtree::Error::Canceled.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::DeadlineExceeded)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Canceled => "context canceled",
            Error::DeadlineExceeded => "context deadline exceeded",
        })
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    /// `Canceled` → `ErrorKind::Interrupted`, `DeadlineExceeded` →
    /// `ErrorKind::TimedOut`; the `Error` stays reachable as the source.
    ///
    /// ```
    /// let io: std::io::Error = ctxtree::Error::DeadlineExceeded.into();
    /// assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    /// ```
    fn from(err: Error) -> Self {
        let kind = match err {
            Error::Canceled => std::io::ErrorKind::Interrupted,
            Error::DeadlineExceeded => std::io::ErrorKind::TimedOut,
        };
        std::io::Error::new(kind, err)
    }
}

/// The cause of a cancellation (Go's `context.Cause`).
///
/// Every descendant cancelled by the same cancellation returns the same
/// `Arc` (`Arc::ptr_eq`). With no cause given, it is an `Arc` holding the
/// [`Error`] itself, shared process-wide like Go's sentinel errors.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The shared default cause for `err` (Go: `Cause(ctx) == ctx.Err()` when no
/// cause was given). One `Arc` per error kind for the whole process.
pub(crate) fn default_cause(err: Error) -> Cause {
    static CANCELED: OnceLock<Cause> = OnceLock::new();
    static DEADLINE: OnceLock<Cause> = OnceLock::new();
    let cell = match err {
        Error::Canceled => &CANCELED,
        Error::DeadlineExceeded => &DEADLINE,
    };
    cell.get_or_init(|| Arc::new(err)).clone()
}

/// Converts a user-supplied cause into a [`Cause`] without re-boxing.
pub(crate) fn into_cause<E>(cause: E) -> Cause
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    Arc::from(cause.into())
}
