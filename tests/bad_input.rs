//! Every public operation on every kind of context state, including the
//! odd ones: cancel after cancel, fire after cancel, stop after run, merge
//! with itself and with a descendant, deadlines in the past, at `now`, and
//! near `Instant`'s limits. Each must give its documented result and leave
//! the tree consistent (`err`/`cause`/`is_done` agree; a child is done
//! exactly when its parent is, with the same cause `Arc`).
//!
//! Single cases already covered elsewhere (panicking callbacks and wakers,
//! `Duration::MAX`, huge deadlines, merge with a descendant) are not
//! repeated one by one; this file crosses every state with every operation.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{CountingWaker, TestError};
use ctxtree::{CancelHandle, Context, Error};

const HOUR: Duration = Duration::from_secs(3600);

/// A context in some state, with its handle if it has one.
struct State {
    name: &'static str,
    ctx: Context,
    handle: Option<CancelHandle>,
    /// Whether `fire_deadline` acts on `ctx` itself.
    is_deadline_node: bool,
    /// Kept alive for the state's lifetime (parents, other sides).
    _keep: Vec<(Context, Option<CancelHandle>)>,
}

fn far_past() -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_secs(1_000_000_000))
        .or_else(|| now.checked_sub(Duration::from_secs(1_000)))
        .unwrap_or(now)
}

fn near_limit() -> Instant {
    let now = Instant::now();
    [u64::MAX / 2, u64::MAX / 4, 1 << 40]
        .into_iter()
        .find_map(|s| now.checked_add(Duration::from_secs(s)))
        .expect("some far instant is representable")
}

/// Every state, freshly built.
fn states() -> Vec<State> {
    let bg = Context::background;
    let s = |name, (ctx, handle): (Context, CancelHandle), is_deadline_node| State {
        name,
        ctx,
        handle: Some(handle),
        is_deadline_node,
        _keep: Vec::new(),
    };
    let mut v = vec![
        State {
            name: "background",
            ctx: bg(),
            handle: None,
            is_deadline_node: false,
            _keep: Vec::new(),
        },
        State {
            name: "todo",
            ctx: Context::todo(),
            handle: None,
            is_deadline_node: false,
            _keep: Vec::new(),
        },
        s("live with_cancel", bg().with_cancel(), false),
        s("live far deadline", bg().with_timeout(HOUR), true),
        s(
            "live deadline near Instant's limit",
            bg().with_deadline(near_limit()),
            true,
        ),
        s(
            "Duration::MAX timeout (a plain child)",
            bg().with_timeout(Duration::MAX),
            false,
        ),
        s("zero timeout", bg().with_timeout(Duration::ZERO), true),
        s(
            "deadline at now with cause",
            bg().with_deadline_cause(Instant::now(), TestError("now")),
            true,
        ),
        s(
            "deadline far in the past",
            bg().with_deadline(far_past()),
            true,
        ),
    ];
    let (c, h) = bg().with_cancel();
    h.cancel();
    v.push(s("cancelled", (c, h), false));
    let (c, h) = bg().with_cancel();
    h.cancel_with_cause(TestError("first"));
    v.push(s("cancelled with cause", (c, h), false));
    let (c, h) = bg().with_timeout(HOUR);
    assert!(ctxtree::__private::fire_deadline(&c));
    v.push(s("deadline fired", (c, h), true));
    let (p, ph) = bg().with_cancel();
    ph.cancel_with_cause(TestError("parent"));
    let mut child = s("child of a cancelled parent", p.with_cancel(), false);
    child._keep.push((p.clone(), Some(ph)));
    v.push(child);
    let mut detached = State {
        name: "without_cancel of a cancelled parent",
        ctx: p.without_cancel(),
        handle: None,
        is_deadline_node: false,
        _keep: Vec::new(),
    };
    detached._keep.push((p.clone(), None));
    v.push(detached);
    let mut value = State {
        name: "value over a cancelled parent",
        ctx: p.with_value(5u8),
        handle: None,
        is_deadline_node: false,
        _keep: Vec::new(),
    };
    value._keep.push((p.clone(), None));
    v.push(value);
    let (a, ha) = bg().with_cancel();
    let (b, hb) = bg().with_timeout(HOUR);
    let mut merged = s("merge of live parents", a.merge(&b), false);
    merged._keep.push((a.clone(), Some(ha)));
    merged._keep.push((b.clone(), Some(hb)));
    v.push(merged);
    let mut done_merge = s("merge with a done parent", a.merge(&p), false);
    done_merge._keep.push((p.clone(), None));
    v.push(done_merge);
    let mut self_merge = s("merge with itself", a.merge(&a), false);
    self_merge._keep.push((a.clone(), None));
    v.push(self_merge);
    let (d, dh) = a.with_cancel();
    let mut desc_merge = s("merge with its own descendant", a.merge(&d), false);
    desc_merge._keep.push((d, Some(dh)));
    v.push(desc_merge);
    v
}

/// `err`, `cause` and `is_done` agree, and a done context's cause is an
/// `Error` equal to its err or a cause someone gave.
fn assert_consistent(ctx: &Context, what: &str) {
    match ctx.err() {
        Ok(()) => {
            assert!(!ctx.is_done(), "{what}: is_done without err");
            assert!(ctx.cause().is_none(), "{what}: cause without err");
        }
        Err(e) => {
            assert!(ctx.is_done(), "{what}: err without is_done");
            let cause = ctx.cause().expect("a done context has a cause");
            if let Some(c) = cause.downcast_ref::<Error>() {
                // A default cause, or `Error::DeadlineExceeded` given as a
                // cause to a cancel (see the dedicated test below).
                assert!(
                    *c == e || e == Error::Canceled,
                    "{what}: cause {c:?} vs {e:?}"
                );
            } else {
                assert!(
                    cause.downcast_ref::<TestError>().is_some(),
                    "{what}: {cause:?}"
                );
            }
        }
    }
}

/// A context derived from `parent` (any kind) mirrors it.
fn assert_child_mirrors(parent: &Context, child: &Context, what: &str) {
    assert_consistent(child, what);
    assert_eq!(child.err(), parent.err(), "{what}");
    if let (Some(a), Some(b)) = (parent.cause(), child.cause()) {
        assert!(Arc::ptr_eq(&a, &b), "{what}: child has another cause Arc");
    }
}

fn poll_once(fut: &mut ctxtree::Done) -> Poll<Error> {
    let waker = CountingWaker::new().waker();
    Pin::new(fut).poll(&mut std::task::Context::from_waker(&waker))
}

#[test]
fn every_state_starts_consistent_with_the_documented_outcome() {
    for st in states() {
        assert_consistent(&st.ctx, st.name);
        let expected = match st.name {
            "zero timeout" | "deadline at now with cause" | "deadline far in the past" => {
                Err(Error::DeadlineExceeded)
            }
            "deadline fired" => Err(Error::DeadlineExceeded),
            "cancelled"
            | "cancelled with cause"
            | "child of a cancelled parent"
            | "value over a cancelled parent"
            | "merge with a done parent" => Err(Error::Canceled),
            _ => Ok(()),
        };
        assert_eq!(st.ctx.err(), expected, "{}", st.name);
        let _ = format!("{:?}", st.ctx);
    }
}

#[test]
fn cancel_cancel_with_cause_and_guards_on_every_state_keep_the_first_outcome() {
    for op in 0..4 {
        for st in states() {
            let what = format!("{} / op {op}", st.name);
            let before = (st.ctx.err(), st.ctx.cause());
            let (child, _ch) = st.ctx.with_cancel();
            let Some(handle) = &st.handle else {
                assert_consistent(&st.ctx, &what);
                continue;
            };
            match op {
                0 => handle.cancel(),
                1 => {
                    handle.cancel_with_cause(TestError("late"));
                    handle.cancel_with_cause(TestError("later"));
                }
                2 => drop(handle.clone().drop_guard()),
                _ => drop(handle.clone().drop_guard().disarm()),
            }
            assert_consistent(&st.ctx, &what);
            match before {
                (Err(e), Some(cause)) => {
                    assert_eq!(st.ctx.err(), Err(e), "{what}: first outcome wins");
                    assert!(Arc::ptr_eq(&st.ctx.cause().unwrap(), &cause), "{what}");
                }
                _ if op == 3 => assert_eq!(st.ctx.err(), Ok(()), "{what}: disarm"),
                _ => {
                    assert_eq!(st.ctx.err(), Err(Error::Canceled), "{what}");
                    let cause = st.ctx.cause().unwrap();
                    if op == 1 {
                        assert_eq!(cause.to_string(), "test error: late", "{what}");
                    } else {
                        assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
                    }
                }
            }
            assert_child_mirrors(&st.ctx, &child, &what);
        }
    }
}

#[test]
fn fire_deadline_on_every_state_acts_only_on_live_deadline_nodes() {
    for st in states() {
        let before = (st.ctx.err(), st.ctx.cause());
        let fired = ctxtree::__private::fire_deadline(&st.ctx);
        assert_eq!(fired, st.is_deadline_node, "{}", st.name);
        match before {
            (Err(e), Some(cause)) => {
                assert_eq!(st.ctx.err(), Err(e), "{}: fire after done", st.name);
                assert!(Arc::ptr_eq(&st.ctx.cause().unwrap(), &cause));
            }
            _ if fired => assert_eq!(st.ctx.err(), Err(Error::DeadlineExceeded), "{}", st.name),
            _ => assert_eq!(st.ctx.err(), Ok(()), "{}", st.name),
        }
        assert_consistent(&st.ctx, st.name);
        // A second fire changes nothing either.
        let now = st.ctx.err();
        let _ = ctxtree::__private::fire_deadline(&st.ctx);
        assert_eq!(st.ctx.err(), now, "{}: second fire", st.name);
    }
}

#[test]
fn every_derivation_of_every_state_mirrors_its_parent() {
    for st in states() {
        let p = &st.ctx;
        let past = far_past();
        let derived: Vec<(&str, Context, Option<CancelHandle>)> = vec![
            ("with_cancel", p.with_cancel().0, None),
            ("with_value", p.with_value(1u32), None),
            ("with_timeout(MAX)", p.with_timeout(Duration::MAX).0, None),
            (
                "with_deadline(limit)",
                p.with_deadline(near_limit()).0,
                None,
            ),
            ("merge(self)", p.merge(p).0, None),
            ("merge(background)", p.merge(&Context::background()).0, None),
            (
                "background.merge(p)",
                Context::background().merge(p).0,
                None,
            ),
        ];
        for (kind, child, _) in &derived {
            assert_child_mirrors(p, child, &format!("{} / {kind}", st.name));
        }
        // Deriving a deadline that has passed: done with DeadlineExceeded
        // unless the parent is already done (then the parent's outcome).
        for (kind, (child, _h)) in [
            ("with_timeout(ZERO)", p.with_timeout(Duration::ZERO)),
            ("with_deadline(far past)", p.with_deadline(past)),
            (
                "with_deadline_cause(now)",
                p.with_deadline_cause(Instant::now(), TestError("c")),
            ),
        ] {
            let what = format!("{} / {kind}", st.name);
            assert_consistent(&child, &what);
            if p.is_done() {
                assert_child_mirrors(p, &child, &what);
            } else {
                assert_eq!(child.err(), Err(Error::DeadlineExceeded), "{what}");
            }
        }
        // without_cancel: never done, same values.
        let detached = p.without_cancel();
        assert_eq!(detached.err(), Ok(()), "{}", st.name);
        assert_eq!(detached.deadline(), None, "{}", st.name);
        assert_eq!(detached.value::<u8>(), p.value::<u8>(), "{}", st.name);
    }
}

#[test]
fn after_func_and_stop_on_every_state_run_exactly_once_or_never() {
    for st in states() {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let af = st.ctx.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let done = st.ctx.is_done();
        assert_eq!(ran.load(Ordering::SeqCst), usize::from(done), "{}", st.name);
        // stop(): true only if it prevented a pending callback.
        assert_eq!(af.stop(), !done, "{}: first stop", st.name);
        assert!(!af.stop(), "{}: second stop", st.name);
        if let Some(h) = &st.handle {
            h.cancel();
        }
        assert_eq!(ran.load(Ordering::SeqCst), usize::from(done), "{}", st.name);
        assert!(!af.stop(), "{}: stop after cancel", st.name);
        // A callback registered and never stopped runs on cancel, once.
        let ran2 = Arc::new(AtomicUsize::new(0));
        let r2 = Arc::clone(&ran2);
        drop(st.ctx.after_func(move || {
            r2.fetch_add(1, Ordering::SeqCst);
        }));
        if let Some(h) = &st.handle {
            h.cancel();
        }
        assert_eq!(
            ran2.load(Ordering::SeqCst),
            usize::from(st.ctx.is_done()),
            "{}",
            st.name
        );
    }
}

#[test]
fn waiting_on_every_state_returns_the_documented_result_at_once() {
    for st in states() {
        let err = st.ctx.err().err();
        assert_eq!(st.ctx.wait_timeout(Duration::ZERO), err, "{}", st.name);
        assert_eq!(st.ctx.wait_deadline(far_past()), err, "{}", st.name);
        let mut done = st.ctx.done();
        match (poll_once(&mut done), err) {
            (Poll::Ready(e), Some(x)) => assert_eq!(e, x, "{}", st.name),
            (Poll::Pending, None) => {}
            (got, want) => panic!("{}: done() {got:?}, expected {want:?}", st.name),
        }
        if let Some(e) = err {
            assert_eq!(st.ctx.wait(), e, "{}", st.name);
            assert_eq!(st.ctx.wait_deadline(near_limit()), Some(e), "{}", st.name);
            // A `Done` that completed keeps answering Ready.
            assert_eq!(poll_once(&mut done), Poll::Ready(e), "{}", st.name);
            let r = futures::executor::block_on(st.ctx.run_until_done(async { 1 }));
            assert_eq!(r, Err(e), "{}", st.name);
        } else if let Some(h) = &st.handle {
            h.cancel();
            assert_eq!(
                poll_once(&mut done),
                Poll::Ready(Error::Canceled),
                "{}",
                st.name
            );
        }
    }
}

#[test]
fn deadline_and_debug_of_every_state_never_panic_and_agree_with_derivation() {
    for st in states() {
        let text = format!("{:?}", st.ctx);
        assert!(text.starts_with("context."), "{}: {text}", st.name);
        if let Some(d) = st.ctx.deadline() {
            // Children inherit an earlier deadline and ignore a later one.
            let (later, _h) = st.ctx.with_deadline(d + Duration::from_nanos(1));
            assert_eq!(later.deadline(), Some(d), "{}", st.name);
            assert!(format!("{later:?}").ends_with(".WithCancel"), "{}", st.name);
            let (same, _h) = st.ctx.with_deadline(d);
            assert_eq!(same.deadline(), Some(d), "{}", st.name);
        }
    }
}

/// `cancel_with_cause(Error::DeadlineExceeded)` is a cancel: err is
/// `Canceled` (not a timeout), and the cause is the given error.
#[test]
fn cancel_with_a_deadline_exceeded_cause_is_still_canceled() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel_with_cause(Error::DeadlineExceeded);
    assert_eq!(ctx.err(), Err(Error::Canceled));
    assert!(!ctx.err().unwrap_err().is_timeout());
    let cause = ctx.cause().unwrap();
    assert_eq!(
        cause.downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
}

/// A `CancelGuard` dropped while a panic unwinds still cancels.
#[test]
fn cancel_guard_cancels_while_a_panic_unwinds() {
    let (ctx, handle) = Context::background().with_cancel();
    let (child, _h) = ctx.with_cancel();
    let result = std::panic::catch_unwind(move || {
        let _guard = handle.drop_guard();
        panic!("request handler failed");
    });
    assert!(result.is_err());
    assert_eq!(ctx.err(), Err(Error::Canceled));
    assert_eq!(child.err(), Err(Error::Canceled));
}

/// Deadlines before the process started and near `Instant`'s limit: the
/// former are done on creation, the latter armed and cancellable; neither
/// panics in `deadline()`, Debug or drop.
#[test]
fn deadlines_at_the_extremes_of_instant_behave_as_documented() {
    let past = far_past();
    let (old, _h) = Context::background().with_deadline(past);
    assert_eq!(old.err(), Err(Error::DeadlineExceeded));
    assert_eq!(old.deadline(), Some(past));
    let _ = format!("{old:?}");
    let limit = near_limit();
    let (far, h) = Context::background().with_deadline(limit);
    assert_eq!(far.deadline(), Some(limit));
    assert_eq!(far.wait_timeout(Duration::from_millis(5)), None);
    let _ = format!("{far:?}");
    h.cancel();
    assert_eq!(far.err(), Err(Error::Canceled));
    // A timeout that is representable but absurd behaves like a deadline.
    if let Some(d) = Instant::now().checked_add(Duration::from_secs(u64::MAX / 4)) {
        let (c, _h) = Context::background().with_timeout(Duration::from_secs(u64::MAX / 4));
        assert!(c.deadline().is_some_and(|got| got >= d));
        assert!(!c.is_done());
    }
}
