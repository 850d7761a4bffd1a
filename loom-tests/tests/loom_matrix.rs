//! The small cells of the race matrix as loom models: the **shape** of the
//! subtree under a cancelled node × what **another thread** does with it
//! while the cancellation walks, at 2 threads (the main thread cancels, one
//! spawned thread races it). The native race matrix (`tests/races.rs`)
//! races the same cells at real speed, thousands of rounds each; here loom
//! explores every interleaving up to the preemption bound.
//!
//! Shapes (`Shape`), each under a node `P` that the main thread cancels:
//! - `leaf`: `X = P.with_cancel()`;
//! - `waiter_thread`: a leaf whose racing thread first blocks in `X.wait()`
//!   (woken by the cancel), then does its operation;
//! - `waiter_future`: the same with `block_on(X.done())`;
//! - `after_func`: a leaf with a pending `after_func`;
//! - `grandchild`: a leaf with a child of its own (`G = X.with_cancel()`);
//! - `value`: `X` is a value layer over a leaf;
//! - `merge`: `X = A.merge(&P)`: `P` is the merge's second parent (reached
//!   through the forwarder in P's list), `A` stays live;
//! - `deadline`: `P` and `X` are deadline nodes and `P`'s deadline fires
//!   (`__private::fire_deadline`: the timer thread as the walker).
//!
//! Operations of the racing thread (`Op`), on `X`: drop it (and everything
//! that hangs on it); wait on it, then drop it; derive a child and drop
//! it; poll a `done()` once and drop it; stop an `AfterFunc` (the shape's,
//! or one registered now); cancel `X` itself; read `err`/`cause`/`value`.
//! Whatever it does, it ends by dropping every context, handle and
//! callback it holds, so nodes die while the walk may be inside them.
//!
//! Every cell checks the contract: the parent's outcome; each callback ran
//! or was stopped, exactly once; a waiter got the right error; reads never
//! disagree; a child derived from a done context is done; causes are shared;
//! each value dropped once; every node memory claim released. Under loom a
//! list traversal that reaches a freed entry fails the model ("use after
//! free", see docs/VERIFICATION.md).
//!
//! Adding a cell: a new `Shape` variant (built in `build`) or `Op` variant
//! (done in `race`), then its name in the `cells!` table at the bottom.
#![cfg(loom)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use ctxtree::{__private, AfterFunc, CancelHandle, Context, Error};
use loom::thread;
use loom_tests::{model, Tracked};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Leaf,
    WaiterThread,
    WaiterFuture,
    AfterFunc,
    Grandchild,
    Value,
    Merge,
    Deadline,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Drop,
    WaitDrop,
    DeriveDrop,
    PollDoneDrop,
    Stop,
    CancelSelf,
    Read,
}

/// What the racing thread is given: `X` and everything hanging on it.
struct Subject {
    ctx: Context,
    handle: CancelHandle,
    /// A grandchild (`grandchild` shape), dropped with `X`.
    below: Option<(Context, CancelHandle)>,
    after: Option<AfterFunc>,
}

/// Counters shared by the model and the callbacks and values it makes.
#[derive(Clone)]
struct Counts {
    ran: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
}

impl Counts {
    fn callback(&self, ctx: &Context) -> AfterFunc {
        let ran = self.ran.clone();
        ctx.after_func(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
    }
}

/// The cause the parent's cancellation carries.
fn parent_cause(shape: Shape) -> &'static str {
    if shape == Shape::Deadline {
        "late"
    } else {
        "p"
    }
}

fn expected_err(shape: Shape) -> Error {
    if shape == Shape::Deadline {
        Error::DeadlineExceeded
    } else {
        Error::Canceled
    }
}

/// Builds `P` (returned with its handle) and the subject under it; `keep`
/// receives what the main thread holds besides (a merge's first parent).
fn build(
    shape: Shape,
    counts: &Counts,
    keep: &mut Vec<Context>,
) -> (Context, CancelHandle, Subject) {
    let far = Instant::now() + Duration::from_secs(7200);
    let (p, ph) = if shape == Shape::Deadline {
        Context::background().with_deadline_cause(far, parent_cause(shape))
    } else {
        Context::background().with_cancel()
    };
    let (ctx, handle) = match shape {
        Shape::Merge => {
            let (a, _a_handle) = Context::background().with_cancel();
            let pair = a.merge(&p);
            keep.push(a);
            pair
        }
        Shape::Deadline => p.with_deadline(far - Duration::from_secs(3600)),
        _ => p.with_cancel(),
    };
    let mut subject = Subject {
        ctx,
        handle,
        below: None,
        after: None,
    };
    match shape {
        Shape::AfterFunc => subject.after = Some(counts.callback(&subject.ctx)),
        Shape::Grandchild => subject.below = Some(subject.ctx.with_cancel()),
        Shape::Value => {
            let ctx = std::mem::replace(&mut subject.ctx, Context::background());
            // Consumes the leaf's context: only the value layer holds it.
            subject.ctx = ctx.with_value(Tracked(counts.drops.clone()));
        }
        _ => {}
    }
    (p, ph, subject)
}

/// Polls `fut` once with a waker that does nothing.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut std::task::Context::from_waker(Waker::noop()))
}

/// `err`, `cause` and `is_done` of `ctx` never disagree; a cause's kind
/// matches `err`.
fn check_reads(ctx: &Context, shape: Shape) {
    let done = ctx.is_done();
    let err = ctx.err();
    let cause = ctx.cause();
    if done {
        assert!(err.is_err(), "done but no err");
    }
    match err {
        Ok(()) => {}
        Err(e) => {
            let c = cause.expect("err implies a cause").to_string();
            match e {
                Error::DeadlineExceeded => assert_eq!(c, "late"),
                Error::Canceled => assert!(c == "p" || c == "x", "unexpected cause {c}"),
                other => panic!("unexpected err {other:?}"),
            }
        }
    }
    assert_eq!(ctx.value::<Tracked>().is_some(), shape == Shape::Value);
}

/// The racing thread. Returns whether a `stop()` won.
fn race(shape: Shape, op: Op, mut s: Subject, counts: Counts) -> bool {
    let expected = expected_err(shape);
    match shape {
        Shape::WaiterThread => assert_eq!(s.ctx.wait(), expected),
        Shape::WaiterFuture => assert_eq!(loom::future::block_on(s.ctx.done()), expected),
        _ => {}
    }
    let mut stopped = false;
    match op {
        Op::Drop => {}
        Op::WaitDrop => assert_eq!(s.ctx.wait(), expected),
        Op::DeriveDrop => {
            let was_done = s.ctx.is_done();
            let (child, h) = s.ctx.with_cancel();
            if was_done {
                assert!(child.is_done(), "a child of a done context is done");
            }
            drop((child, h));
        }
        Op::PollDoneDrop => {
            let mut done = s.ctx.done();
            if let Poll::Ready(err) = poll_once(&mut done) {
                assert_eq!(err, expected);
            }
        }
        Op::Stop => {
            let af = s.after.take().unwrap_or_else(|| counts.callback(&s.ctx));
            stopped = af.stop();
        }
        Op::CancelSelf => {
            s.handle.cancel_with_cause("x");
            let cause = s.ctx.cause().expect("done after its own cancel");
            let c = cause.to_string();
            assert!(c == "x" || c == parent_cause(shape), "unexpected cause {c}");
            if let Some((g, _)) = &s.below {
                // Every descendant is done when cancel returns, sharing the
                // cause Arc of the cancellation that reached it first.
                assert!(Arc::ptr_eq(&g.cause().expect("done"), &cause));
            }
        }
        Op::Read => {
            check_reads(&s.ctx, shape);
            check_reads(&s.ctx, shape);
        }
    }
    drop(s);
    stopped
}

fn run(shape: Shape, op: Op) {
    model(move || {
        let counts = Counts {
            ran: Arc::new(AtomicUsize::new(0)),
            drops: Arc::new(AtomicUsize::new(0)),
        };
        let mut keep = Vec::new();
        let (p, ph, subject) = build(shape, &counts, &mut keep);
        let racer = counts.clone();
        let t = thread::spawn(move || race(shape, op, subject, racer));
        if shape == Shape::Deadline {
            assert!(__private::fire_deadline(&p));
        } else {
            ph.cancel_with_cause(parent_cause(shape));
        }
        let stopped = t.join().unwrap();

        assert_eq!(p.err(), Err(expected_err(shape)));
        assert_eq!(p.cause().unwrap().to_string(), parent_cause(shape));
        let callbacks = usize::from(shape == Shape::AfterFunc || op == Op::Stop);
        assert_eq!(
            counts.ran.load(Ordering::SeqCst) + usize::from(stopped),
            callbacks,
            "each callback runs or is stopped, exactly once"
        );
        assert_eq!(
            counts.drops.load(Ordering::SeqCst),
            usize::from(shape == Shape::Value),
            "each value dropped once"
        );
        for a in &keep {
            assert!(!a.is_done(), "a merge's other parent is not cancelled");
        }
        drop((keep, p, ph));
    });
}

/// One `#[test]` per cell, named `<shape>::<op>`.
macro_rules! cells {
    ($($shape:ident => $variant:ident: [$($op:ident => $opv:ident),* $(,)?];)*) => {
        $(
            mod $shape {
                $(
                    #[test]
                    fn $op() {
                        super::run(super::Shape::$variant, super::Op::$opv);
                    }
                )*
            }
        )*
    };
}

// The waiter shapes already wait before their operation: no `wait_drop`.
cells! {
    leaf => Leaf: [
        drop => Drop, wait_drop => WaitDrop, derive_drop => DeriveDrop,
        poll_done_drop => PollDoneDrop, stop => Stop, cancel_self => CancelSelf, read => Read,
    ];
    waiter_thread => WaiterThread: [
        drop => Drop, derive_drop => DeriveDrop,
        poll_done_drop => PollDoneDrop, stop => Stop, cancel_self => CancelSelf, read => Read,
    ];
    waiter_future => WaiterFuture: [
        drop => Drop, derive_drop => DeriveDrop,
        poll_done_drop => PollDoneDrop, stop => Stop, cancel_self => CancelSelf, read => Read,
    ];
    after_func => AfterFunc: [
        drop => Drop, wait_drop => WaitDrop, derive_drop => DeriveDrop,
        poll_done_drop => PollDoneDrop, stop => Stop, cancel_self => CancelSelf, read => Read,
    ];
    grandchild => Grandchild: [
        drop => Drop, wait_drop => WaitDrop, derive_drop => DeriveDrop,
        poll_done_drop => PollDoneDrop, stop => Stop, cancel_self => CancelSelf, read => Read,
    ];
    value => Value: [
        drop => Drop, wait_drop => WaitDrop, derive_drop => DeriveDrop,
        poll_done_drop => PollDoneDrop, stop => Stop, cancel_self => CancelSelf, read => Read,
    ];
    merge => Merge: [
        drop => Drop, wait_drop => WaitDrop, derive_drop => DeriveDrop,
        poll_done_drop => PollDoneDrop, stop => Stop, cancel_self => CancelSelf, read => Read,
    ];
    deadline => Deadline: [
        drop => Drop, wait_drop => WaitDrop, derive_drop => DeriveDrop,
        poll_done_drop => PollDoneDrop, stop => Stop, cancel_self => CancelSelf, read => Read,
    ];
}
