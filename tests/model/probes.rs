//! What the harness hands the library so it can observe it: values that
//! flag their drop, causes that name their cancellation, a waker that counts
//! its wake-ups, the body of every `after_func` callback, and the crate's
//! global counters.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Wake, Waker};

use ctxtree::{Cause, Context, Done, Error};

/// Sets its flag when dropped.
#[derive(Debug)]
pub struct DropFlag(pub(crate) Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        assert!(
            !self.0.swap(true, Ordering::SeqCst),
            "a value was dropped twice"
        );
    }
}

/// Value keys: three distinct types.
#[derive(Debug)]
pub struct Key<const N: usize>(pub u32, pub(crate) DropFlag);

/// How many key types there are.
pub(crate) const KEYS: usize = 3;

/// A value that counts its drops in a shared counter (the two-thread
/// driver's values, where which one is dropped when is not decided).
pub(crate) struct Counted(pub(crate) Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A cause that names the cancellation it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub id: u32,
    pub deadline: bool,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag {} (deadline: {})", self.id, self.deadline)
    }
}

impl std::error::Error for Tag {}

/// What a cause should be: a `Tag`, or the default `Arc::new(err)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CauseKind {
    Tag(Tag),
    Default(Error),
}

/// The kind of a cause the harness gave (or the library's default one);
/// `None` for any other cause.
pub fn cause_kind(cause: &Cause) -> Option<CauseKind> {
    if let Some(tag) = cause.downcast_ref::<Tag>() {
        return Some(CauseKind::Tag(*tag));
    }
    cause
        .downcast_ref::<Error>()
        .map(|e| CauseKind::Default(*e))
}

/// A waker that counts its wake-ups.
#[derive(Default)]
pub struct CountingWaker(AtomicUsize);

impl CountingWaker {
    /// How many times it was woken.
    pub fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls a `done()` future once with `waker`.
pub fn poll_done(done: &mut Done, waker: &Arc<CountingWaker>) -> Poll<Error> {
    let waker = Waker::from(Arc::clone(waker));
    Pin::new(done).poll(&mut std::task::Context::from_waker(&waker))
}

/// The body of every `after_func` callback: the context must be observably
/// done, a child derived now is done on creation with the same outcome,
/// and it must run at most once.
pub fn callback_body(ctx: Context, runs: Arc<AtomicUsize>) -> impl FnOnce() + Send + 'static {
    move || {
        assert!(ctx.is_done(), "after_func ran before {ctx:?} was done");
        let (child, _handle) = ctx.with_cancel();
        assert_eq!(child.err(), ctx.err(), "child derived inside a callback");
        assert!(
            Arc::ptr_eq(&child.cause().unwrap(), &ctx.cause().unwrap()),
            "child derived inside a callback shares the cause"
        );
        assert_eq!(runs.fetch_add(1, Ordering::SeqCst), 0, "callback ran twice");
    }
}

/// Flushes the epoch until the crate's live node count is at most `limit`
/// (debug builds; elsewhere there is no counter and this returns at once).
pub fn flush_until_at_most(limit: isize) -> isize {
    #[cfg(debug_assertions)]
    {
        for _ in 0..2_000 {
            let live = ctxtree::__private::live_nodes();
            if live <= limit {
                return live;
            }
            ctxtree::__private::flush_epoch();
            std::thread::yield_now();
        }
        ctxtree::__private::live_nodes()
    }
    #[cfg(not(debug_assertions))]
    {
        ctxtree::__private::flush_epoch();
        limit
    }
}

/// Timer entries armed in the whole process.
pub(crate) fn armed_timers() -> usize {
    ctxtree::__private::armed_timers()
}
