//! Cancellation semantics: first cancel wins, propagation to descendants,
//! err/cause consistency, CancelHandle and CancelGuard.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use common::{with_watchdog, NumberedError, TestError};
use ctxtree::{Cause, Context, Error};

fn cause_of(ctx: &Context) -> Cause {
    ctx.cause().expect("a done context must have a cause")
}

fn assert_not_done(ctx: &Context) {
    assert!(!ctx.is_done(), "{ctx:?} should not be done");
    assert_eq!(ctx.err(), Ok(()), "{ctx:?} should not have an error");
    assert!(ctx.cause().is_none(), "{ctx:?} should not have a cause");
}

fn assert_canceled_with(ctx: &Context, cause: &Cause) {
    assert!(ctx.is_done(), "{ctx:?} should be done");
    assert_eq!(ctx.err(), Err(Error::Canceled));
    assert!(
        Arc::ptr_eq(&cause_of(ctx), cause),
        "{ctx:?} should share the cause Arc"
    );
}

#[test]
fn background_and_todo_are_never_done() {
    for ctx in [Context::background(), Context::todo(), Context::default()] {
        assert_not_done(&ctx);
        assert_eq!(ctx.deadline(), None);
    }
}

#[test]
fn fresh_with_cancel_context_is_not_done() {
    let (ctx, _handle) = Context::background().with_cancel();
    assert_not_done(&ctx);
}

#[test]
fn cancel_sets_err_canceled_and_is_done() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    assert!(ctx.is_done());
    assert_eq!(ctx.err(), Err(Error::Canceled));
    assert!(ctx.cause().is_some());
}

#[test]
fn cause_defaults_to_the_error_as_ctxtree_error() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    let cause = cause_of(&ctx);
    assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
    assert_eq!(cause.to_string(), "context canceled");
}

#[test]
fn cancel_with_cause_sets_err_canceled_and_the_given_cause() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel_with_cause(TestError("shutdown"));
    assert_eq!(ctx.err(), Err(Error::Canceled));
    assert_eq!(
        cause_of(&ctx).downcast_ref::<TestError>(),
        Some(&TestError("shutdown"))
    );
}

#[test]
fn cancel_with_cause_accepts_a_string_cause() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel_with_cause("client went away");
    assert_eq!(ctx.err(), Err(Error::Canceled));
    assert_eq!(cause_of(&ctx).to_string(), "client went away");
}

#[test]
fn cause_is_the_same_arc_on_every_read() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel_with_cause(TestError("x"));
    let clone = ctx.clone();
    assert!(Arc::ptr_eq(&cause_of(&ctx), &cause_of(&ctx)));
    assert!(Arc::ptr_eq(&cause_of(&ctx), &cause_of(&clone)));
}

#[test]
fn first_cancel_wins_over_later_cancels_with_cause() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    let first = cause_of(&ctx);
    handle.cancel_with_cause(TestError("too late"));
    handle.cancel();
    assert_canceled_with(&ctx, &first);
    assert_eq!(first.downcast_ref::<Error>(), Some(&Error::Canceled));
}

#[test]
fn first_cancel_with_cause_wins_over_later_cancels() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel_with_cause(TestError("first"));
    let first = cause_of(&ctx);
    handle.cancel_with_cause(TestError("second"));
    handle.cancel();
    assert_canceled_with(&ctx, &first);
    assert_eq!(first.downcast_ref::<TestError>(), Some(&TestError("first")));
}

#[test]
fn parent_cancel_after_child_cancel_changes_nothing_for_the_child() {
    let (parent, parent_handle) = Context::background().with_cancel();
    let (child, child_handle) = parent.with_cancel();
    child_handle.cancel_with_cause(TestError("child"));
    let child_cause = cause_of(&child);
    parent_handle.cancel_with_cause(TestError("parent"));
    assert_canceled_with(&child, &child_cause);
    assert_eq!(
        cause_of(&parent).downcast_ref::<TestError>(),
        Some(&TestError("parent"))
    );
}

#[test]
fn cancelling_a_node_cancels_all_descendants_with_the_same_cause_arc() {
    let root = Context::background();
    let (ctx, handle) = root.with_cancel();
    let (child, _h1) = ctx.with_cancel();
    let (grandchild, _h2) = child.with_cancel();
    let valued = grandchild.with_value(7u32);
    let (under_value, _h3) = valued.with_cancel();
    let (sibling_grandchild, _h4) = child.with_cancel();
    let (timed, _h5) = child.with_timeout(std::time::Duration::from_secs(3600));

    handle.cancel_with_cause(TestError("tree"));
    let cause = cause_of(&ctx);
    for node in [
        &ctx,
        &child,
        &grandchild,
        &valued,
        &under_value,
        &sibling_grandchild,
        &timed,
    ] {
        assert_canceled_with(node, &cause);
    }
    assert_not_done(&root);
}

#[test]
fn default_cause_is_shared_by_descendants() {
    let (ctx, handle) = Context::background().with_cancel();
    let (child, _h) = ctx.with_cancel();
    handle.cancel();
    let cause = cause_of(&ctx);
    assert_canceled_with(&child, &cause);
    assert_eq!(
        cause_of(&child).downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
}

#[test]
fn cancelling_a_child_leaves_parent_and_siblings_untouched() {
    let (parent, _ph) = Context::background().with_cancel();
    let (child, child_handle) = parent.with_cancel();
    let (sibling, _sh) = parent.with_cancel();
    let (nephew, _nh) = sibling.with_cancel();
    child_handle.cancel();
    assert!(child.is_done());
    assert_not_done(&parent);
    assert_not_done(&sibling);
    assert_not_done(&nephew);
}

#[test]
fn cancelling_one_clone_is_seen_by_every_clone() {
    let (ctx, handle) = Context::background().with_cancel();
    let clone = ctx.clone();
    let other_thread_clone = ctx.clone();
    handle.cancel();
    assert!(clone.is_done());
    let seen = thread::spawn(move || other_thread_clone.err())
        .join()
        .unwrap();
    assert_eq!(seen, Err(Error::Canceled));
}

#[test]
fn child_of_a_cancelled_parent_is_done_on_creation_with_the_parents_err_and_cause() {
    let (parent, handle) = Context::background().with_cancel();
    handle.cancel_with_cause(TestError("parent gone"));
    let cause = cause_of(&parent);

    let (cancel_child, _h1) = parent.with_cancel();
    let (deadline_child, _h2) =
        parent.with_deadline(std::time::Instant::now() + std::time::Duration::from_secs(3600));
    let (timeout_child, _h3) = parent.with_timeout(std::time::Duration::from_secs(3600));
    let (timeout_cause_child, _h4) =
        parent.with_timeout_cause(std::time::Duration::from_secs(3600), TestError("timeout"));
    let value_child = parent.with_value("v");
    let (merge_child, _h5) = parent.merge(&Context::background());
    let (grandchild, _h6) = value_child.with_cancel();

    for child in [
        &cancel_child,
        &deadline_child,
        &timeout_child,
        &timeout_cause_child,
        &value_child,
        &merge_child,
        &grandchild,
    ] {
        assert_canceled_with(child, &cause);
    }
}

#[test]
fn child_of_a_timed_out_parent_is_done_on_creation_with_deadline_exceeded() {
    let (parent, _handle) = Context::background().with_timeout(std::time::Duration::ZERO);
    assert_eq!(parent.err(), Err(Error::DeadlineExceeded));
    let cause = cause_of(&parent);
    let (child, _h) = parent.with_cancel();
    assert!(child.is_done());
    assert_eq!(child.err(), Err(Error::DeadlineExceeded));
    assert!(Arc::ptr_eq(&cause_of(&child), &cause));
}

#[test]
fn cancelling_a_child_created_done_does_not_change_its_err_or_cause() {
    let (parent, handle) = Context::background().with_cancel();
    handle.cancel_with_cause(TestError("parent"));
    let cause = cause_of(&parent);
    let (child, child_handle) = parent.with_cancel();
    child_handle.cancel_with_cause(TestError("child"));
    assert_canceled_with(&child, &cause);
}

#[test]
fn err_cause_and_is_done_agree_before_and_after_cancel() {
    let (ctx, handle) = Context::background().with_cancel();
    assert!(!ctx.is_done());
    assert!(ctx.err().is_ok());
    assert!(ctx.cause().is_none());
    handle.cancel();
    assert!(ctx.is_done());
    assert!(ctx.err().is_err());
    assert!(ctx.cause().is_some());
}

#[test]
fn cloned_cancel_handle_cancels_the_same_context() {
    let (ctx, handle) = Context::background().with_cancel();
    let clone = handle.clone();
    drop(handle);
    assert!(!ctx.is_done());
    clone.cancel_with_cause(TestError("via clone"));
    assert_eq!(
        cause_of(&ctx).downcast_ref::<TestError>(),
        Some(&TestError("via clone"))
    );
}

#[test]
fn cancel_handle_can_be_used_from_another_thread() {
    let (ctx, handle) = Context::background().with_cancel();
    thread::spawn(move || handle.cancel()).join().unwrap();
    assert_eq!(ctx.err(), Err(Error::Canceled));
}

#[test]
fn dropping_every_cancel_handle_does_not_cancel() {
    let (ctx, handle) = Context::background().with_cancel();
    let clone = handle.clone();
    let (child, child_handle) = ctx.with_cancel();
    drop(handle);
    drop(clone);
    drop(child_handle);
    assert_not_done(&ctx);
    assert_not_done(&child);
}

#[test]
fn dropping_the_cancel_handle_still_lets_the_parent_cancel_the_child() {
    let (parent, parent_handle) = Context::background().with_cancel();
    let (child, child_handle) = parent.with_cancel();
    drop(child_handle);
    parent_handle.cancel();
    assert_eq!(child.err(), Err(Error::Canceled));
}

#[test]
fn cancel_guard_cancels_its_context_when_dropped() {
    let (ctx, handle) = Context::background().with_cancel();
    let (child, _child_handle) = ctx.with_cancel();
    {
        let _guard = handle.drop_guard();
        assert!(!ctx.is_done());
    }
    assert!(ctx.is_done());
    assert_eq!(ctx.err(), Err(Error::Canceled));
    assert_eq!(
        cause_of(&ctx).downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
    assert!(child.is_done());
}

#[test]
fn cancel_guard_disarm_returns_the_handle_without_cancelling() {
    let (ctx, handle) = Context::background().with_cancel();
    let guard = handle.drop_guard();
    let handle = guard.disarm();
    assert_not_done(&ctx);
    handle.cancel_with_cause(TestError("after disarm"));
    assert_eq!(
        cause_of(&ctx).downcast_ref::<TestError>(),
        Some(&TestError("after disarm"))
    );
}

#[test]
fn dropping_a_disarmed_handle_does_not_cancel() {
    let (ctx, handle) = Context::background().with_cancel();
    drop(handle.drop_guard().disarm());
    assert_not_done(&ctx);
}

#[test]
fn cancel_guard_of_a_clone_cancels_while_other_clones_live() {
    let (ctx, handle) = Context::background().with_cancel();
    let keep = handle.clone();
    drop(handle.drop_guard());
    assert!(ctx.is_done());
    keep.cancel_with_cause(TestError("late"));
    assert_eq!(
        cause_of(&ctx).downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
}

#[test]
fn cancel_guard_can_be_dropped_on_another_thread() {
    let (ctx, handle) = Context::background().with_cancel();
    let guard = handle.drop_guard();
    thread::spawn(move || drop(guard)).join().unwrap();
    assert_eq!(ctx.err(), Err(Error::Canceled));
}

#[test]
fn concurrent_cancels_from_many_threads_agree_on_one_outcome() {
    let threads = if cfg!(miri) { 4 } else { 16 };
    let rounds = if cfg!(miri) { 3 } else { 200 };
    with_watchdog(120, move || {
        for _ in 0..rounds {
            let (ctx, handle) = Context::background().with_cancel();
            let (child, _child_handle) = ctx.with_cancel();
            let barrier = Arc::new(Barrier::new(threads));
            let workers: Vec<_> = (0..threads)
                .map(|i| {
                    let handle = handle.clone();
                    let ctx = ctx.clone();
                    let barrier = Arc::clone(&barrier);
                    thread::spawn(move || {
                        barrier.wait();
                        if i % 4 == 0 {
                            handle.cancel();
                        } else {
                            handle.cancel_with_cause(NumberedError(i));
                        }
                        // After our own cancel returned, the context is done.
                        assert!(ctx.is_done());
                        (ctx.err(), ctx.cause().expect("done implies a cause"))
                    })
                })
                .collect();
            let outcomes: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            let final_cause = cause_of(&ctx);
            for (err, cause) in &outcomes {
                assert_eq!(*err, Err(Error::Canceled));
                assert!(Arc::ptr_eq(cause, &final_cause));
            }
            assert_canceled_with(&child, &final_cause);
            let is_default = final_cause.downcast_ref::<Error>() == Some(&Error::Canceled);
            let is_numbered = final_cause.downcast_ref::<NumberedError>().is_some();
            assert!(
                is_default || is_numbered,
                "the cause must be one of the given ones"
            );
        }
    });
}

#[test]
fn a_reader_racing_with_cancel_always_sees_err_and_cause_consistently() {
    let rounds = if cfg!(miri) { 3 } else { 500 };
    with_watchdog(120, move || {
        for round in 0..rounds {
            let (ctx, handle) = Context::background().with_cancel();
            let (child, _child_handle) = ctx.with_cancel();
            let start = Arc::new(Barrier::new(3));
            let readers: Vec<_> = [ctx.clone(), child.clone()]
                .into_iter()
                .map(|ctx| {
                    let start = Arc::clone(&start);
                    thread::spawn(move || {
                        start.wait();
                        let mut seen_done = false;
                        let mut extra = 0;
                        while extra < 20 {
                            let done = ctx.is_done();
                            let err = ctx.err();
                            let cause = ctx.cause();
                            if done {
                                assert!(err.is_err(), "is_done() then err() must be Err");
                            }
                            if err.is_err() {
                                assert!(cause.is_some(), "err() Err then cause() must be Some");
                                assert!(ctx.is_done(), "err() Err then is_done() must be true");
                            }
                            if cause.is_some() {
                                assert!(ctx.err().is_err(), "cause() Some then err() must be Err");
                                assert!(ctx.is_done());
                            }
                            if seen_done {
                                assert!(done, "a done context must stay done");
                                extra += 1;
                            }
                            seen_done |= done;
                            thread::yield_now();
                        }
                    })
                })
                .collect();
            start.wait();
            if round % 2 == 0 {
                handle.cancel();
            } else {
                handle.cancel_with_cause(TestError("race"));
            }
            for reader in readers {
                reader.join().unwrap();
            }
        }
    });
}

#[test]
fn parent_and_child_cancelled_concurrently_end_with_one_consistent_child_cause() {
    let rounds = if cfg!(miri) { 3 } else { 300 };
    with_watchdog(120, move || {
        for _ in 0..rounds {
            let (parent, parent_handle) = Context::background().with_cancel();
            let (child, child_handle) = parent.with_cancel();
            let (grandchild, _gh) = child.with_cancel();
            let barrier = Arc::new(Barrier::new(2));
            let b = Arc::clone(&barrier);
            let t = thread::spawn(move || {
                b.wait();
                child_handle.cancel_with_cause(TestError("child"));
            });
            barrier.wait();
            parent_handle.cancel_with_cause(TestError("parent"));
            t.join().unwrap();
            let child_cause = cause_of(&child);
            let is_parent = child_cause.downcast_ref::<TestError>() == Some(&TestError("parent"));
            let is_child = child_cause.downcast_ref::<TestError>() == Some(&TestError("child"));
            assert!(is_parent || is_child);
            if is_parent {
                assert!(Arc::ptr_eq(&child_cause, &cause_of(&parent)));
            }
            assert_canceled_with(&grandchild, &child_cause);
        }
    });
}

#[test]
fn is_done_is_visible_to_a_thread_polling_without_locks() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        let stop = Arc::new(AtomicBool::new(false));
        let observer = {
            let ctx = ctx.clone();
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !ctx.is_done() {
                    assert!(!stop.load(Ordering::SeqCst) || ctx.is_done());
                    thread::yield_now();
                }
                ctx.err()
            })
        };
        handle.cancel();
        stop.store(true, Ordering::SeqCst);
        assert_eq!(observer.join().unwrap(), Err(Error::Canceled));
    });
}
