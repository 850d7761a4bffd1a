//! Tree shape: without_cancel, merge, deep chains, wide fan-out, Debug text.
//!
//! Random forests of these layers are compared with the reference model
//! step by step in `tests/model_proptest.rs` (the shared model of
//! `tests/model/`).

mod common;

use std::any::type_name;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{count, run_with_stack, with_watchdog, DropCounter, TestError};
use ctxtree::{Cause, Context, Error};

const HOUR: Duration = Duration::from_secs(3600);
const SMALL_STACK: usize = 256 * 1024;
const DEPTH: usize = if cfg!(miri) { 2_000 } else { 1_000_000 };
const WIDTH: usize = if cfg!(miri) { 1_000 } else { 100_000 };

#[derive(Debug, PartialEq, Eq)]
struct RequestId(u64);

fn cause_of(ctx: &Context) -> Cause {
    ctx.cause().expect("a done context must have a cause")
}

fn assert_not_done(ctx: &Context) {
    assert!(!ctx.is_done(), "{ctx:?} should not be done");
    assert_eq!(ctx.err(), Ok(()));
    assert!(ctx.cause().is_none());
}

// ---- without_cancel --------------------------------------------------------

#[test]
fn without_cancel_is_not_done_when_the_parent_is_cancelled_later() {
    let (parent, handle) = Context::background().with_cancel();
    let detached = parent.without_cancel();
    handle.cancel();
    assert!(parent.is_done());
    assert_not_done(&detached);
}

#[test]
fn without_cancel_of_an_already_done_parent_is_not_done() {
    let (parent, handle) = Context::background().with_cancel();
    handle.cancel_with_cause(TestError("gone"));
    assert_not_done(&parent.without_cancel());
    let (timed_out, _h) = Context::background().with_timeout(Duration::ZERO);
    assert_not_done(&timed_out.without_cancel());
}

#[test]
fn without_cancel_has_no_deadline() {
    let (parent, _h) = Context::background().with_timeout(HOUR);
    assert!(parent.deadline().is_some());
    assert_eq!(parent.without_cancel().deadline(), None);
}

#[test]
#[cfg_attr(miri, ignore)]
fn without_cancel_is_not_done_when_the_parents_deadline_fires() {
    with_watchdog(30, || {
        let (parent, _h) = Context::background().with_timeout(Duration::from_millis(20));
        let detached = parent.without_cancel();
        assert_eq!(
            parent.wait_timeout(Duration::from_secs(10)),
            Some(Error::DeadlineExceeded)
        );
        assert_not_done(&detached);
        assert_eq!(detached.wait_timeout(Duration::from_millis(20)), None);
    });
}

#[test]
fn without_cancel_keeps_values() {
    let parent = Context::background().with_value(RequestId(4));
    let (cancellable, handle) = parent.with_cancel();
    let detached = cancellable.without_cancel();
    handle.cancel();
    assert_eq!(detached.value::<RequestId>(), Some(&RequestId(4)));
}

#[test]
fn children_of_without_cancel_are_cancellable_by_their_own_handles_only() {
    let (parent, parent_handle) = Context::background().with_cancel();
    let detached = parent.without_cancel();
    let (child, child_handle) = detached.with_cancel();
    parent_handle.cancel();
    assert_not_done(&child);
    child_handle.cancel_with_cause(TestError("own"));
    assert_eq!(child.err(), Err(Error::Canceled));
    assert_eq!(
        cause_of(&child).downcast_ref::<TestError>(),
        Some(&TestError("own"))
    );
    assert_not_done(&detached);
}

#[test]
fn children_of_without_cancel_can_have_their_own_deadline() {
    let (parent, _h) = Context::background().with_timeout(Duration::ZERO);
    let detached = parent.without_cancel();
    let d = Instant::now() + HOUR;
    let (child, _ch) = detached.with_deadline(d);
    assert_eq!(child.deadline(), Some(d));
    assert_not_done(&child);
    let (expired, _eh) = detached.with_timeout(Duration::ZERO);
    assert_eq!(expired.err(), Err(Error::DeadlineExceeded));
}

// ---- merge -----------------------------------------------------------------

#[test]
fn merge_of_live_parents_is_not_done() {
    let (a, _ha) = Context::background().with_cancel();
    let (b, _hb) = Context::background().with_cancel();
    let (m, _hm) = a.merge(&b);
    assert_not_done(&m);
}

#[test]
fn merge_is_done_when_the_first_parent_is_cancelled() {
    let (a, ha) = Context::background().with_cancel();
    let (b, _hb) = Context::background().with_cancel();
    let (m, _hm) = a.merge(&b);
    let (below, _h) = m.with_cancel();
    ha.cancel_with_cause(TestError("a"));
    assert_eq!(m.err(), Err(Error::Canceled));
    assert!(Arc::ptr_eq(&cause_of(&m), &cause_of(&a)));
    assert!(Arc::ptr_eq(&cause_of(&below), &cause_of(&a)));
    assert_not_done(&b);
}

#[test]
fn merge_is_done_when_the_second_parent_is_cancelled() {
    let (a, _ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let (m, _hm) = a.merge(&b);
    hb.cancel_with_cause(TestError("b"));
    assert_eq!(m.err(), Err(Error::Canceled));
    assert!(Arc::ptr_eq(&cause_of(&m), &cause_of(&b)));
    assert_not_done(&a);
}

#[test]
fn merge_keeps_the_err_and_cause_of_whichever_parent_finished_first() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let (m, _hm) = a.merge(&b);
    hb.cancel_with_cause(TestError("b first"));
    ha.cancel_with_cause(TestError("a second"));
    assert!(Arc::ptr_eq(&cause_of(&m), &cause_of(&b)));
}

#[test]
fn merge_of_two_done_parents_takes_the_first_parents_err_and_cause() {
    let (a, ha) = Context::background().with_cancel();
    ha.cancel_with_cause(TestError("a"));
    let (b, _hb) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(b.err(), Err(Error::DeadlineExceeded));

    let (ab, _h1) = a.merge(&b);
    assert_eq!(ab.err(), Err(Error::Canceled));
    assert!(Arc::ptr_eq(&cause_of(&ab), &cause_of(&a)));

    let (ba, _h2) = b.merge(&a);
    assert_eq!(ba.err(), Err(Error::DeadlineExceeded));
    assert!(Arc::ptr_eq(&cause_of(&ba), &cause_of(&b)));
}

#[test]
fn merge_with_one_done_parent_is_done_on_creation_with_that_parents_cause() {
    let (a, _ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    hb.cancel_with_cause(TestError("b"));
    let (m, _hm) = a.merge(&b);
    assert_eq!(m.err(), Err(Error::Canceled));
    assert!(Arc::ptr_eq(&cause_of(&m), &cause_of(&b)));
    let (m2, _hm2) = b.merge(&a);
    assert!(Arc::ptr_eq(&cause_of(&m2), &cause_of(&b)));
}

#[test]
fn merge_own_handle_cancels_only_the_merged_context() {
    let (a, _ha) = Context::background().with_cancel();
    let (b, _hb) = Context::background().with_cancel();
    let (m, hm) = a.merge(&b);
    let (below, _h) = m.with_cancel();
    hm.cancel_with_cause(TestError("merged"));
    assert_eq!(
        cause_of(&m).downcast_ref::<TestError>(),
        Some(&TestError("merged"))
    );
    assert!(Arc::ptr_eq(&cause_of(&below), &cause_of(&m)));
    assert_not_done(&a);
    assert_not_done(&b);
}

#[test]
fn merge_deadline_is_the_earlier_of_the_two() {
    let d1 = Instant::now() + HOUR;
    let d2 = d1 + HOUR;
    let (a, _ha) = Context::background().with_deadline(d1);
    let (b, _hb) = Context::background().with_deadline(d2);
    assert_eq!(a.merge(&b).0.deadline(), Some(d1));
    assert_eq!(b.merge(&a).0.deadline(), Some(d1));
    let bg = Context::background();
    assert_eq!(bg.merge(&b).0.deadline(), Some(d2));
    assert_eq!(b.merge(&bg).0.deadline(), Some(d2));
    assert_eq!(bg.merge(&Context::todo()).0.deadline(), None);
}

#[test]
fn merge_of_never_done_parents_is_done_only_by_its_own_handle() {
    let (m, hm) = Context::background().merge(&Context::todo());
    assert_not_done(&m);
    hm.cancel();
    assert_eq!(m.err(), Err(Error::Canceled));
}

#[test]
fn merge_with_a_without_cancel_parent_ignores_that_parents_ancestors() {
    let (p, hp) = Context::background().with_cancel();
    let (a, ha) = Context::background().with_cancel();
    let (m, _hm) = a.merge(&p.without_cancel());
    hp.cancel();
    assert_not_done(&m);
    ha.cancel();
    assert!(m.is_done());
}

#[test]
#[cfg_attr(miri, ignore)]
fn merge_is_done_when_a_parents_deadline_fires() {
    with_watchdog(30, || {
        let (a, _ha) = Context::background().with_cancel();
        let (b, _hb) =
            Context::background().with_timeout_cause(Duration::from_millis(20), TestError("b"));
        let (m, _hm) = a.merge(&b);
        assert_eq!(
            m.wait_timeout(Duration::from_secs(10)),
            Some(Error::DeadlineExceeded)
        );
        assert_eq!(
            cause_of(&m).downcast_ref::<TestError>(),
            Some(&TestError("b"))
        );
    });
}

#[test]
fn merge_with_itself_behaves_like_a_child() {
    let (a, ha) = Context::background().with_cancel();
    let (m, hm) = a.merge(&a);
    assert_not_done(&m);
    hm.cancel();
    assert!(m.is_done());
    assert_not_done(&a);

    let (m2, _hm2) = a.merge(&a);
    ha.cancel_with_cause(TestError("a"));
    assert_eq!(m2.err(), Err(Error::Canceled));
    assert!(Arc::ptr_eq(&cause_of(&m2), &cause_of(&a)));
}

#[test]
fn merge_of_background_with_itself_does_not_panic() {
    let bg = Context::background();
    let (m, hm) = bg.merge(&bg);
    assert_not_done(&m);
    drop(hm);
    drop(m);
}

#[test]
fn merge_with_its_own_descendant_is_done_when_the_descendant_is_cancelled() {
    let (a, _ha) = Context::background().with_cancel();
    let (child, hc) = a.with_cancel();
    let (m, _hm) = a.merge(&child);
    let (m_rev, _hmr) = child.merge(&a);
    hc.cancel_with_cause(TestError("child"));
    assert!(Arc::ptr_eq(&cause_of(&m), &cause_of(&child)));
    assert!(Arc::ptr_eq(&cause_of(&m_rev), &cause_of(&child)));
    assert_not_done(&a);
}

#[test]
fn merge_with_its_own_descendant_is_done_when_the_ancestor_is_cancelled() {
    let (a, ha) = Context::background().with_cancel();
    let (child, _hc) = a.with_cancel();
    let (m, _hm) = a.merge(&child);
    let (m_rev, _hmr) = child.merge(&a);
    ha.cancel_with_cause(TestError("a"));
    let cause = cause_of(&a);
    for ctx in [&child, &m, &m_rev] {
        assert_eq!(ctx.err(), Err(Error::Canceled));
        assert!(Arc::ptr_eq(&cause_of(ctx), &cause));
    }
}

#[test]
fn merge_of_merges_propagates_cancellation() {
    let (a, ha) = Context::background().with_cancel();
    let (b, _hb) = Context::background().with_cancel();
    let (c, _hc) = Context::background().with_cancel();
    let (ab, _h1) = a.merge(&b);
    let (abc, _h2) = ab.merge(&c);
    let (ab_ab, _h3) = ab.merge(&abc);
    ha.cancel_with_cause(TestError("a"));
    for ctx in [&ab, &abc, &ab_ab] {
        assert!(Arc::ptr_eq(&cause_of(ctx), &cause_of(&a)));
    }
}

#[test]
fn dropped_merges_leave_both_parents_working() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    for _ in 0..1_000 {
        let (m, hm) = a.merge(&b);
        drop(m);
        drop(hm);
    }
    let (kept, _hk) = a.merge(&b);
    hb.cancel();
    ha.cancel();
    assert!(Arc::ptr_eq(&cause_of(&kept), &cause_of(&b)));
}

#[test]
fn merge_racing_cancels_of_both_parents_takes_one_parents_outcome() {
    let rounds = if cfg!(miri) { 3 } else { 300 };
    with_watchdog(120, move || {
        for _ in 0..rounds {
            let (a, ha) = Context::background().with_cancel();
            let (b, hb) = Context::background().with_cancel();
            let (m, _hm) = a.merge(&b);
            let barrier = Arc::new(Barrier::new(2));
            let b2 = Arc::clone(&barrier);
            let t = thread::spawn(move || {
                b2.wait();
                hb.cancel_with_cause(TestError("b"));
            });
            barrier.wait();
            ha.cancel_with_cause(TestError("a"));
            t.join().unwrap();
            let cause = cause_of(&m);
            assert!(Arc::ptr_eq(&cause, &cause_of(&a)) || Arc::ptr_eq(&cause, &cause_of(&b)));
            assert_eq!(m.err(), Err(Error::Canceled));
        }
    });
}

// ---- deep chains -----------------------------------------------------------

#[test]
fn deep_chain_is_cancelled_from_the_root_and_dropped_on_a_small_stack() {
    with_watchdog(600, || {
        run_with_stack(SMALL_STACK, || {
            let (value, dropped) = DropCounter::new();
            let (root, root_handle) = Context::background().with_value(value).with_cancel();
            let mut leaf = root.clone();
            for _ in 0..DEPTH {
                let (next, _handle) = leaf.with_cancel();
                leaf = next;
            }
            assert!(!leaf.is_done());
            root_handle.cancel_with_cause(TestError("root"));
            assert!(leaf.is_done());
            assert_eq!(leaf.err(), Err(Error::Canceled));
            assert!(Arc::ptr_eq(&cause_of(&leaf), &cause_of(&root)));
            drop(root);
            drop(root_handle);
            assert_eq!(count(&dropped), 0, "the leaf still reaches the value");
            drop(leaf);
            assert_eq!(count(&dropped), 1);
        });
    });
}

#[test]
fn deep_chain_dropped_without_cancelling_is_freed_on_a_small_stack() {
    with_watchdog(600, || {
        run_with_stack(SMALL_STACK, || {
            let (root_value, root_dropped) = DropCounter::new();
            let (leaf_value, leaf_dropped) = DropCounter::new();
            let (root, root_handle) = Context::background().with_value(root_value).with_cancel();
            let mut leaf = root.clone();
            for _ in 0..DEPTH {
                let (next, _handle) = leaf.with_cancel();
                leaf = next;
            }
            let valued_leaf = leaf.with_value(leaf_value);
            drop(leaf);
            assert_eq!(count(&leaf_dropped), 0);
            drop(valued_leaf);
            assert_eq!(count(&leaf_dropped), 1);
            assert_eq!(count(&root_dropped), 0);
            // The root still works after a million children were unlinked.
            let (child, child_handle) = root.with_cancel();
            root_handle.cancel();
            assert!(child.is_done());
            drop(child);
            drop(child_handle);
            drop(root);
            drop(root_handle);
            assert_eq!(count(&root_dropped), 1);
        });
    });
}

fn build_chain_keeping_every_level(root: &Context) -> Vec<Context> {
    let mut levels = Vec::with_capacity(DEPTH + 1);
    levels.push(root.clone());
    for _ in 0..DEPTH {
        let (next, _handle) = levels.last().unwrap().with_cancel();
        levels.push(next);
    }
    levels
}

#[test]
fn deep_chain_dropped_leaf_first_is_freed_on_a_small_stack() {
    with_watchdog(600, || {
        run_with_stack(SMALL_STACK, || {
            let (value, dropped) = DropCounter::new();
            let root = Context::background().with_value(value);
            let mut levels = build_chain_keeping_every_level(&root);
            drop(root);
            while let Some(level) = levels.pop() {
                drop(level);
            }
            assert_eq!(count(&dropped), 1);
        });
    });
}

#[test]
fn deep_chain_dropped_root_first_is_freed_on_a_small_stack() {
    with_watchdog(600, || {
        run_with_stack(SMALL_STACK, || {
            let (value, dropped) = DropCounter::new();
            let root = Context::background().with_value(value);
            let levels = build_chain_keeping_every_level(&root);
            drop(root);
            // Vec drops its elements front to back: root first, leaf last,
            // so the whole chain is released by the final drop.
            drop(levels);
            assert_eq!(count(&dropped), 1);
        });
    });
}

#[test]
fn deep_chain_cancelled_then_dropped_root_first_on_a_small_stack() {
    with_watchdog(600, || {
        run_with_stack(SMALL_STACK, || {
            let (value, dropped) = DropCounter::new();
            let (root, handle) = Context::background().with_value(value).with_cancel();
            let levels = build_chain_keeping_every_level(&root);
            handle.cancel();
            assert!(levels.iter().all(Context::is_done));
            drop(root);
            drop(handle);
            drop(levels);
            assert_eq!(count(&dropped), 1);
        });
    });
}

// ---- wide fan-out ----------------------------------------------------------

#[test]
fn wide_fan_out_is_entirely_cancelled_with_the_same_cause() {
    with_watchdog(300, || {
        let (root, handle) = Context::background().with_cancel();
        let children: Vec<Context> = (0..WIDTH).map(|_| root.with_cancel().0).collect();
        assert!(children.iter().all(|c| !c.is_done()));
        handle.cancel_with_cause(TestError("fan-out"));
        let cause = cause_of(&root);
        for child in &children {
            assert_eq!(child.err(), Err(Error::Canceled));
            assert!(Arc::ptr_eq(&cause_of(child), &cause));
        }
    });
}

#[test]
fn wide_fan_out_with_half_the_children_dropped_cancels_the_rest() {
    with_watchdog(300, || {
        let (root, handle) = Context::background().with_cancel();
        let mut children: Vec<Option<Context>> =
            (0..WIDTH).map(|_| Some(root.with_cancel().0)).collect();
        for (i, child) in children.iter_mut().enumerate() {
            if i % 2 == 1 {
                *child = None;
            }
        }
        handle.cancel();
        let live: Vec<_> = children.iter().flatten().collect();
        assert_eq!(live.len(), WIDTH / 2);
        assert!(live.iter().all(|c| c.err() == Err(Error::Canceled)));
    });
}

#[test]
fn wide_fan_out_of_values_is_freed_while_the_root_lives() {
    let (root, _handle) = Context::background().with_cancel();
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = WIDTH / 10;
    let children: Vec<_> = (0..n)
        .map(|_| {
            root.with_value(DropCounter::with_counter(&dropped))
                .with_cancel()
        })
        .collect();
    drop(children);
    assert_eq!(count(&dropped), n);
    assert!(!root.is_done());
}

// ---- Debug -----------------------------------------------------------------

#[test]
fn debug_of_roots_is_gos_string() {
    assert_eq!(format!("{:?}", Context::background()), "context.Background");
    assert_eq!(format!("{:?}", Context::todo()), "context.TODO");
    assert_eq!(format!("{:?}", Context::default()), "context.Background");
}

#[test]
fn debug_appends_with_value_and_with_cancel() {
    let ctx = Context::background()
        .with_value(RequestId(1))
        .with_cancel()
        .0;
    assert_eq!(
        format!("{ctx:?}"),
        format!(
            "context.Background.WithValue({}).WithCancel",
            type_name::<RequestId>()
        )
    );
    let todo = Context::todo().with_cancel().0;
    assert_eq!(format!("{todo:?}"), "context.TODO.WithCancel");
}

#[test]
fn debug_of_with_value_uses_the_full_type_name() {
    let ctx = Context::background().with_value(String::from("x"));
    assert_eq!(
        format!("{ctx:?}"),
        format!("context.Background.WithValue({})", type_name::<String>())
    );
    let nested = Context::background().with_value(Some(3u8));
    assert_eq!(
        format!("{nested:?}"),
        format!(
            "context.Background.WithValue({})",
            type_name::<Option<u8>>()
        )
    );
}

#[test]
fn debug_of_with_deadline_starts_with_the_parent_and_with_deadline() {
    let (ctx, _h) = Context::background().with_timeout(HOUR);
    let text = format!("{ctx:?}");
    assert!(
        text.starts_with("context.Background.WithDeadline("),
        "{text}"
    );
    assert!(text.ends_with(')'), "{text}");
    let (with_cause, _h2) = Context::todo().with_deadline_cause(Instant::now() + HOUR, "c");
    assert!(format!("{with_cause:?}").starts_with("context.TODO.WithDeadline("));
}

#[test]
fn debug_of_an_expired_or_huge_deadline_does_not_panic() {
    let (expired, _h1) = Context::background().with_timeout(Duration::ZERO);
    assert!(format!("{expired:?}").starts_with("context.Background.WithDeadline("));
    let (huge, _h2) = Context::background().with_timeout(Duration::MAX);
    assert!(format!("{huge:?}").starts_with("context.Background.With"));
}

#[test]
fn debug_of_a_deadline_later_than_the_parents_says_with_cancel() {
    let (parent, _h) = Context::background().with_timeout(HOUR);
    let (child, _ch) = parent.with_timeout(2 * HOUR);
    // The remaining time in the parent's text changes between calls, so
    // compare the shape only.
    let text = format!("{child:?}");
    assert!(
        text.starts_with("context.Background.WithDeadline("),
        "{text}"
    );
    assert!(text.ends_with(").WithCancel"), "{text}");
    assert_eq!(text.matches("WithDeadline(").count(), 1, "{text}");
}

#[test]
fn debug_of_without_cancel_appends_without_cancel() {
    let ctx = Context::background().without_cancel();
    assert_eq!(format!("{ctx:?}"), "context.Background.WithoutCancel");
    let (parent, _h) = Context::todo().with_cancel();
    assert_eq!(
        format!("{:?}", parent.without_cancel()),
        "context.TODO.WithCancel.WithoutCancel"
    );
}

#[test]
fn debug_of_merge_appends_merge_of_the_other() {
    let (a, _ha) = Context::background().with_cancel();
    let b = Context::todo().with_value(RequestId(2));
    let (m, _hm) = a.merge(&b);
    let text = format!("{m:?}");
    assert!(
        text.starts_with("context.Background.WithCancel.Merge("),
        "{text}"
    );
    assert_eq!(text, format!("{a:?}.Merge({b:?})"));
}

#[test]
fn debug_of_children_extends_the_parents_text() {
    let (m, _hm) = Context::background().merge(&Context::todo());
    let (child, _h) = m.with_cancel();
    assert_eq!(format!("{child:?}"), format!("{m:?}.WithCancel"));
    let v = child.with_value(1u32);
    assert_eq!(
        format!("{v:?}"),
        format!("{child:?}.WithValue({})", type_name::<u32>())
    );
}

// ---- races between derivation, drop and cancel ------------------------------

#[test]
fn children_derived_while_the_parent_is_cancelled_all_end_up_done() {
    let rounds = if cfg!(miri) { 2 } else { 50 };
    let per_thread = if cfg!(miri) { 20 } else { 2_000 };
    with_watchdog(120, move || {
        for _ in 0..rounds {
            let (root, handle) = Context::background().with_cancel();
            let barrier = Arc::new(Barrier::new(3));
            let workers: Vec<_> = (0..2)
                .map(|t| {
                    let root = root.clone();
                    let barrier = Arc::clone(&barrier);
                    thread::spawn(move || {
                        barrier.wait();
                        (0..per_thread)
                            .map(|i| match (t + i) % 3 {
                                0 => root.with_cancel().0,
                                1 => root.with_value(i).with_cancel().0,
                                _ => root.merge(&Context::background()).0,
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            barrier.wait();
            thread::yield_now();
            handle.cancel_with_cause(TestError("racing"));
            let cause = cause_of(&root);
            for w in workers {
                for child in w.join().unwrap() {
                    assert_eq!(child.err(), Err(Error::Canceled), "{child:?} was lost");
                    assert!(Arc::ptr_eq(&cause_of(&child), &cause));
                }
            }
        }
    });
}

#[test]
fn children_dropped_while_the_parent_is_cancelled_are_freed_and_the_rest_cancelled() {
    let rounds = if cfg!(miri) { 2 } else { 50 };
    let per_thread = if cfg!(miri) { 20 } else { 2_000 };
    with_watchdog(120, move || {
        for _ in 0..rounds {
            let (root, handle) = Context::background().with_cancel();
            let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let children: Vec<Vec<_>> = (0..2)
                .map(|_| {
                    (0..per_thread)
                        .map(|_| {
                            root.with_value(DropCounter::with_counter(&dropped))
                                .with_cancel()
                        })
                        .collect()
                })
                .collect();
            let barrier = Arc::new(Barrier::new(3));
            let workers: Vec<_> = children
                .into_iter()
                .map(|mine| {
                    let barrier = Arc::clone(&barrier);
                    thread::spawn(move || {
                        barrier.wait();
                        let mut kept = Vec::new();
                        for (i, (ctx, h)) in mine.into_iter().enumerate() {
                            if i % 2 == 0 {
                                drop(ctx);
                                drop(h);
                            } else {
                                kept.push(ctx);
                            }
                        }
                        kept
                    })
                })
                .collect();
            barrier.wait();
            handle.cancel();
            let kept: Vec<Context> = workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect();
            assert_eq!(count(&dropped), per_thread, "every dropped child is freed");
            assert!(kept.iter().all(|c| c.err() == Err(Error::Canceled)));
            drop(kept);
            assert_eq!(count(&dropped), 2 * per_thread);
        }
    });
}
