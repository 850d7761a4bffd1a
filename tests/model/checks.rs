//! Checks that hold of a context whatever races with them, and a `done()`
//! future watched across operations: used by the two-thread driver and by
//! `tests/soak.rs`.

use std::sync::Arc;
use std::task::Poll;

use ctxtree::{Context, Done, Error};

use super::probes::{cause_kind, poll_done, CauseKind, CountingWaker};

/// Reads `err`, `cause`, `is_done` and `err` again, as an observer racing
/// a cancellation does, and checks that they agree and only move forward:
/// an `err` means a cause and done, and stays the same; done means an
/// `err` later; a cause means an `err` later, and matches it (the default
/// cause is that error, a [`Tag`](super::Tag) says whether it is a
/// deadline's). Panics on a cause the harness never gives. Returns the
/// error and the cause's kind if there is a cause.
pub fn check_reads(ctx: &Context) -> Option<(Error, CauseKind)> {
    let err = ctx.err();
    let cause = ctx.cause();
    let done = ctx.is_done();
    let err2 = ctx.err();
    if let Err(e) = err {
        assert!(
            cause.is_some(),
            "{ctx:?}: err() is {e:?} but cause() is None"
        );
        assert!(done, "{ctx:?}: err() is {e:?} but is_done() is false later");
        assert_eq!(err2, err, "{ctx:?}: err() changed after done");
    }
    if done {
        assert!(err2.is_err(), "{ctx:?}: is_done() but err() is Ok later");
    }
    let cause = cause?;
    let e = err2.expect_err("cause() was Some, so err() must be Err later");
    let kind = cause_kind(&cause);
    match kind {
        Some(CauseKind::Default(d)) => assert_eq!(d, e, "{ctx:?}: default cause vs err"),
        Some(CauseKind::Tag(tag)) => {
            let want = if tag.deadline {
                Error::DeadlineExceeded
            } else {
                Error::Canceled
            };
            assert_eq!(e, want, "{ctx:?}: cause {tag} vs err");
        }
        None => panic!("{ctx:?}: unknown cause {cause:?}"),
    }
    kind.map(|k| (e, k))
}

/// A `done()` future kept across operations, with its context and a
/// waker that counts its wake-ups.
pub struct WatchedDone {
    pub ctx: Context,
    fut: Done,
    waker: Arc<CountingWaker>,
    /// The last poll returned `Pending`: a wake-up is owed once done. (A
    /// later poll that returned `Ready` settles it: a poll racing with the
    /// cancel may see done and drop its listener before the notifier gets
    /// to it, and that is fine.)
    polled_pending: bool,
}

impl WatchedDone {
    /// `ctx.done()`, not polled yet.
    pub fn new(ctx: Context) -> WatchedDone {
        WatchedDone {
            fut: ctx.done(),
            ctx,
            waker: Arc::new(CountingWaker::default()),
            polled_pending: false,
        }
    }

    /// Polls once and returns the error if ready: it must be the
    /// context's error, and pending is only allowed if the context was not
    /// done before the poll.
    pub fn poll(&mut self) -> Option<Error> {
        let was_done = self.ctx.is_done();
        match poll_done(&mut self.fut, &self.waker) {
            Poll::Ready(e) => {
                assert_eq!(Err(e), self.ctx.err(), "done() result");
                self.polled_pending = false;
                Some(e)
            }
            Poll::Pending => {
                assert!(!was_done, "done() pending on a done context");
                self.polled_pending = true;
                None
            }
        }
    }

    /// Whether the last poll was pending: a wake-up is owed once done.
    pub fn polled_pending(&self) -> bool {
        self.polled_pending
    }

    /// Whether a wake-up is owed now: the last poll was pending and the
    /// context is done.
    pub fn owes_wake(&self) -> bool {
        self.polled_pending && self.ctx.is_done()
    }

    /// How many times the waker was woken.
    pub fn wakes(&self) -> usize {
        self.waker.wakes()
    }
}
