//! [`AfterFunc`]: the handle of an `after_func` registration.

use std::fmt;
use std::ptr::NonNull;

use crate::context::Context;
use crate::node::callback::{self, CallbackNode};

/// Returned by [`Context::after_func`]. Dropping it does **not** stop the
/// callback: a registered callback keeps its context observable until it
/// runs or is stopped.
///
/// Go equivalent: the `stop func() bool` returned by `context.AfterFunc`.
///
/// ```
/// let (ctx, cancel) = ctxtree::Context::background().with_cancel();
/// let af = ctx.after_func(|| unreachable!("stopped first"));
/// assert!(af.stop());
/// cancel.cancel();
/// assert!(!af.stop());
/// ```
pub struct AfterFunc {
    /// `None` when the callback ran during registration.
    entry: Option<NonNull<CallbackNode>>,
}

// SAFETY: the entry is shared through atomics only (`callback` module); the
// callback itself is `Send` and touched by the one thread that wins the race.
unsafe impl Send for AfterFunc {}
// SAFETY: as above; `stop` takes `&self` and is race-safe by design.
unsafe impl Sync for AfterFunc {}

impl AfterFunc {
    pub(crate) fn register(ctx: &Context, f: Box<dyn FnOnce() + Send + 'static>) -> AfterFunc {
        AfterFunc {
            entry: callback::register(ctx.raw().scope_ptr(), f),
        }
    }

    /// Prevents the callback from running. Returns `true` if this call
    /// stopped it (also on a context that can never be done), `false` if it
    /// has started, has run, or was already stopped. Drops the callback at
    /// once.
    ///
    /// Go equivalent: `stop()`.
    ///
    /// ```
    /// let af = ctxtree::Context::background().after_func(|| {});
    /// assert!(af.stop());
    /// assert!(!af.stop());
    /// ```
    pub fn stop(&self) -> bool {
        match self.entry {
            // SAFETY: the handle's claim keeps the entry valid.
            Some(entry) => callback::stop(unsafe { entry.as_ref() }),
            None => false,
        }
    }
}

impl Drop for AfterFunc {
    fn drop(&mut self) {
        if let Some(entry) = self.entry {
            // SAFETY: one handle, one release.
            unsafe { callback::release_handle(entry) };
        }
    }
}

impl fmt::Debug for AfterFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfterFunc").finish_non_exhaustive()
    }
}
