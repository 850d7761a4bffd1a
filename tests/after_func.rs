//! after_func (Go 1.21 AfterFunc): exactly-once callbacks, stop(), panics.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use common::{count, with_watchdog, DropCounter, TestError};
use ctxtree::{Context, Error};

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn incrementer(c: &Arc<AtomicUsize>) -> impl FnOnce() + Send + 'static {
    let c = Arc::clone(c);
    move || {
        c.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn callback_does_not_run_before_the_context_is_done() {
    let (ctx, _handle) = Context::background().with_cancel();
    let ran = counter();
    let _af = ctx.after_func(incrementer(&ran));
    assert_eq!(count(&ran), 0);
}

#[test]
fn callback_runs_exactly_once_after_cancel() {
    let (parent, parent_handle) = Context::background().with_cancel();
    let (ctx, handle) = parent.with_cancel();
    let ran = counter();
    let _af = ctx.after_func(incrementer(&ran));
    handle.cancel();
    assert_eq!(count(&ran), 1, "runs inside the cancel that completes");
    handle.cancel_with_cause(TestError("again"));
    parent_handle.cancel();
    assert_eq!(count(&ran), 1);
}

#[test]
fn callback_runs_when_an_ancestor_is_cancelled() {
    let (root, handle) = Context::background().with_cancel();
    let child = root.with_value(1u8);
    let (grandchild, _gh) = child.with_cancel();
    let ran = counter();
    let _af = grandchild.after_func(incrementer(&ran));
    handle.cancel();
    assert_eq!(count(&ran), 1);
}

#[test]
fn callback_sees_the_context_already_done() {
    let (ctx, handle) = Context::background().with_cancel();
    let seen = Arc::new(Mutex::new(None));
    let (ctx2, seen2) = (ctx.clone(), Arc::clone(&seen));
    let _af = ctx.after_func(move || {
        *seen2.lock().unwrap() = Some((ctx2.is_done(), ctx2.err(), ctx2.cause().is_some()));
    });
    handle.cancel();
    assert_eq!(
        *seen.lock().unwrap(),
        Some((true, Err(Error::Canceled), true))
    );
}

#[test]
fn callback_runs_at_once_on_the_calling_thread_if_already_done() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    let runner = Arc::new(Mutex::new(None));
    let r = Arc::clone(&runner);
    let af = ctx.after_func(move || {
        *r.lock().unwrap() = Some(thread::current().id());
    });
    assert_eq!(*runner.lock().unwrap(), Some(thread::current().id()));
    assert!(!af.stop(), "it already ran");
}

#[test]
fn callback_on_a_context_done_on_creation_runs_at_once() {
    let (ctx, _h) = Context::background().with_timeout(Duration::ZERO);
    let ran = counter();
    let _af = ctx.after_func(incrementer(&ran));
    assert_eq!(count(&ran), 1);
}

#[test]
fn callback_runs_on_the_thread_that_cancels() {
    let (ctx, handle) = Context::background().with_cancel();
    let runner = Arc::new(Mutex::new(None));
    let r = Arc::clone(&runner);
    let _af = ctx.after_func(move || {
        *r.lock().unwrap() = Some(thread::current().id());
    });
    let canceller = thread::spawn(move || {
        handle.cancel();
        thread::current().id()
    });
    let canceller_id = canceller.join().unwrap();
    assert_eq!(*runner.lock().unwrap(), Some(canceller_id));
}

#[test]
fn every_registered_callback_runs_exactly_once() {
    let (ctx, handle) = Context::background().with_cancel();
    let ran = counter();
    let n = if cfg!(miri) { 20 } else { 1_000 };
    let afs: Vec<_> = (0..n).map(|_| ctx.after_func(incrementer(&ran))).collect();
    handle.cancel();
    assert_eq!(count(&ran), n);
    handle.cancel();
    assert_eq!(count(&ran), n);
    assert!(afs.iter().all(|af| !af.stop()));
}

#[test]
fn dropping_the_after_func_handle_does_not_stop_the_callback() {
    let (ctx, handle) = Context::background().with_cancel();
    let ran = counter();
    drop(ctx.after_func(incrementer(&ran)));
    handle.cancel();
    assert_eq!(count(&ran), 1);
}

#[test]
fn callback_is_dropped_after_it_runs() {
    let (ctx, handle) = Context::background().with_cancel();
    let (token, dropped) = DropCounter::new();
    let af = ctx.after_func(move || drop(token));
    handle.cancel();
    assert_eq!(count(&dropped), 1);
    drop(af);
}

#[test]
fn stop_before_cancel_returns_true_prevents_the_callback_and_drops_it_at_once() {
    let (ctx, handle) = Context::background().with_cancel();
    let ran = counter();
    let (token, dropped) = DropCounter::new();
    let r = Arc::clone(&ran);
    let af = ctx.after_func(move || {
        let _token = token;
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert!(af.stop());
    assert_eq!(count(&dropped), 1, "stop() drops f at once");
    handle.cancel();
    assert_eq!(count(&ran), 0);
}

#[test]
fn stop_after_the_callback_ran_returns_false() {
    let (ctx, handle) = Context::background().with_cancel();
    let ran = counter();
    let af = ctx.after_func(incrementer(&ran));
    handle.cancel();
    assert!(!af.stop());
    assert_eq!(count(&ran), 1);
}

#[test]
fn second_stop_returns_false() {
    let (ctx, handle) = Context::background().with_cancel();
    let ran = counter();
    let af = ctx.after_func(incrementer(&ran));
    assert!(af.stop());
    assert!(!af.stop());
    handle.cancel();
    assert!(!af.stop());
    assert_eq!(count(&ran), 0);
}

#[test]
fn stop_on_a_context_that_can_never_be_done_returns_true_and_drops_f() {
    for ctx in [
        Context::background(),
        Context::todo(),
        Context::background().with_value(1u8),
        Context::background().with_cancel().0.without_cancel(),
    ] {
        let (token, dropped) = DropCounter::new();
        let af = ctx.after_func(move || drop(token));
        assert!(af.stop(), "{ctx:?}");
        assert_eq!(count(&dropped), 1, "{ctx:?}");
        assert!(!af.stop(), "{ctx:?}");
    }
}

#[test]
fn stop_only_affects_its_own_callback() {
    let (ctx, handle) = Context::background().with_cancel();
    let ran = counter();
    let stopped = ctx.after_func(incrementer(&ran));
    let _kept = ctx.after_func(incrementer(&ran));
    assert!(stopped.stop());
    handle.cancel();
    assert_eq!(count(&ran), 1);
}

#[test]
fn stop_works_from_another_thread() {
    let (ctx, handle) = Context::background().with_cancel();
    let ran = counter();
    let af = ctx.after_func(incrementer(&ran));
    assert!(thread::spawn(move || af.stop()).join().unwrap());
    handle.cancel();
    assert_eq!(count(&ran), 0);
}

#[test]
fn callback_may_derive_cancel_and_register_from_inside() {
    let (ctx, handle) = Context::background().with_cancel();
    let (other, other_handle) = Context::background().with_cancel();
    let nested_ran = counter();
    let derived_done = Arc::new(AtomicBool::new(false));
    let keep_alive = Arc::new(Mutex::new(Vec::new()));

    let (c, h, n, d, k) = (
        ctx.clone(),
        handle.clone(),
        Arc::clone(&nested_ran),
        Arc::clone(&derived_done),
        Arc::clone(&keep_alive),
    );
    let _af = ctx.after_func(move || {
        // Derive from the (now done) context: done on creation.
        let (child, _child_handle) = c.with_cancel();
        d.store(child.is_done(), Ordering::SeqCst);
        // Register on the done context: runs at once, here.
        let inner = c.after_func(incrementer(&n));
        // Other derivations work too.
        assert!(c.with_value(0u8).is_done());
        assert!(c.merge(&Context::background()).0.is_done());
        // Cancel again (no effect) and cancel an unrelated context.
        h.cancel();
        other_handle.cancel_with_cause(TestError("from callback"));
        k.lock().unwrap().push(inner);
    });

    handle.cancel();
    assert!(derived_done.load(Ordering::SeqCst));
    assert_eq!(count(&nested_ran), 1);
    assert_eq!(other.err(), Err(Error::Canceled));
    assert_eq!(keep_alive.lock().unwrap().len(), 1);
}

#[test]
fn callback_may_register_a_callback_on_a_live_context_that_runs_later() {
    let (first, first_handle) = Context::background().with_cancel();
    let (second, second_handle) = Context::background().with_cancel();
    let ran = counter();
    let registered = Arc::new(Mutex::new(None));
    let (s, r, reg) = (second.clone(), Arc::clone(&ran), Arc::clone(&registered));
    let _af = first.after_func(move || {
        *reg.lock().unwrap() = Some(s.after_func(incrementer(&r)));
    });
    first_handle.cancel();
    assert!(registered.lock().unwrap().is_some());
    assert_eq!(count(&ran), 0);
    second_handle.cancel();
    assert_eq!(count(&ran), 1);
}

#[test]
fn callback_cancelling_a_descendant_of_its_context_does_not_deadlock() {
    with_watchdog(30, || {
        let (root, root_handle) = Context::background().with_cancel();
        let (child, child_handle) = root.with_cancel();
        let ran = counter();
        let r = Arc::clone(&ran);
        let _af = root.after_func(move || {
            child_handle.cancel_with_cause(TestError("inside"));
            r.fetch_add(1, Ordering::SeqCst);
        });
        root_handle.cancel();
        assert_eq!(count(&ran), 1);
        assert!(child.is_done());
    });
}

#[test]
fn callback_whose_handles_were_all_dropped_still_runs_when_an_ancestor_is_cancelled() {
    let (root, root_handle) = Context::background().with_cancel();
    let ran = counter();
    let (token, dropped) = DropCounter::new();
    {
        let (child, child_handle) = root.with_value(5u32).with_cancel();
        let (grandchild, grandchild_handle) = child.with_cancel();
        let r = Arc::clone(&ran);
        let af = grandchild.after_func(move || {
            let _token = token;
            r.fetch_add(1, Ordering::SeqCst);
        });
        drop(af);
        drop(grandchild);
        drop(grandchild_handle);
        drop(child);
        drop(child_handle);
    }
    assert_eq!(count(&dropped), 0, "a registered callback keeps its node");
    root_handle.cancel();
    assert_eq!(count(&ran), 1);
    assert_eq!(count(&dropped), 1);
}

#[test]
fn callback_in_a_merge_runs_when_either_parent_is_cancelled() {
    for cancel_first in [true, false] {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let (m, _hm) = a.merge(&b);
        let ran = counter();
        let _af = m.after_func(incrementer(&ran));
        if cancel_first {
            ha.cancel();
        } else {
            hb.cancel();
        }
        assert_eq!(count(&ran), 1);
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn callback_runs_when_the_deadline_fires() {
    with_watchdog(30, || {
        let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(20));
        let (tx, rx) = std::sync::mpsc::channel();
        let c = ctx.clone();
        let _af = ctx.after_func(move || {
            tx.send((thread::current().id(), c.err())).unwrap();
        });
        let (runner, err) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_ne!(runner, thread::current().id());
        assert_eq!(err, Err(Error::DeadlineExceeded));
    });
}

#[test]
fn panicking_callback_does_not_prevent_other_callbacks_or_descendants_and_the_panic_resumes() {
    with_watchdog(30, || {
        let (root, handle) = Context::background().with_cancel();
        let children: Vec<_> = (0..50).map(|_| root.with_cancel()).collect();
        let ran = counter();
        let mut afs = Vec::new();
        for i in 0..10 {
            afs.push(root.after_func(incrementer(&ran)));
            if i == 4 {
                afs.push(root.after_func(|| panic!("deliberate callback panic")));
            }
        }
        for (child, _) in &children[..10] {
            afs.push(child.after_func(incrementer(&ran)));
        }
        let waiter = {
            let root = root.clone();
            thread::spawn(move || root.wait())
        };

        let result = catch_unwind(AssertUnwindSafe(|| handle.cancel()));
        let payload = result.expect_err("the callback's panic must resume from cancel()");
        assert_eq!(
            payload.downcast_ref::<&str>().copied(),
            Some("deliberate callback panic")
        );

        assert_eq!(root.err(), Err(Error::Canceled));
        assert!(children
            .iter()
            .all(|(c, _)| c.err() == Err(Error::Canceled)));
        assert_eq!(count(&ran), 20);
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
        // Later cancels are harmless.
        handle.cancel();
        assert_eq!(count(&ran), 20);
    });
}

#[test]
fn panicking_callback_on_a_descendant_does_not_leave_the_tree_half_cancelled() {
    with_watchdog(30, || {
        let (root, handle) = Context::background().with_cancel();
        let (first, _h1) = root.with_cancel();
        let (second, _h2) = root.with_cancel();
        let (third, _h3) = second.with_cancel();
        let ran = counter();
        let _a = first.after_func(|| panic!("descendant panic"));
        let _b = second.after_func(incrementer(&ran));
        let _c = third.after_func(incrementer(&ran));
        let _d = root.after_func(incrementer(&ran));

        assert!(catch_unwind(AssertUnwindSafe(|| handle.cancel())).is_err());
        for ctx in [&root, &first, &second, &third] {
            assert_eq!(ctx.err(), Err(Error::Canceled));
        }
        assert_eq!(count(&ran), 3);
    });
}

#[test]
fn panicking_callback_registered_on_a_done_context_panics_in_after_func() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _af = ctx.after_func(|| panic!("immediate"));
    }));
    assert!(result.is_err());
    assert!(ctx.is_done());
}

#[test]
fn concurrent_stop_and_cancel_exactly_one_wins() {
    let rounds = if cfg!(miri) { 10 } else { 1_000 };
    with_watchdog(120, move || {
        for _ in 0..rounds {
            let (ctx, handle) = Context::background().with_cancel();
            let ran = counter();
            let (token, dropped) = DropCounter::new();
            let r = Arc::clone(&ran);
            let af = ctx.after_func(move || {
                let _token = token;
                r.fetch_add(1, Ordering::SeqCst);
            });
            let barrier = Arc::new(Barrier::new(2));
            let b = Arc::clone(&barrier);
            let stopper = thread::spawn(move || {
                b.wait();
                af.stop()
            });
            barrier.wait();
            handle.cancel();
            let stopped = stopper.join().unwrap();
            let ran = count(&ran);
            assert!(
                (stopped && ran == 0) || (!stopped && ran == 1),
                "stop() returned {stopped} but the callback ran {ran} times"
            );
            assert_eq!(count(&dropped), 1, "f is dropped either way");
        }
    });
}

#[test]
fn concurrent_registration_and_cancel_run_every_callback_exactly_once() {
    let rounds = if cfg!(miri) { 5 } else { 500 };
    with_watchdog(120, move || {
        for _ in 0..rounds {
            let (ctx, handle) = Context::background().with_cancel();
            let ran = counter();
            let barrier = Arc::new(Barrier::new(3));
            let registrars: Vec<_> = (0..2)
                .map(|_| {
                    let ctx = ctx.clone();
                    let ran = Arc::clone(&ran);
                    let barrier = Arc::clone(&barrier);
                    thread::spawn(move || {
                        barrier.wait();
                        (0..10)
                            .map(|_| ctx.after_func(incrementer(&ran)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            barrier.wait();
            handle.cancel();
            let afs: Vec<_> = registrars
                .into_iter()
                .flat_map(|r| r.join().unwrap())
                .collect();
            assert_eq!(count(&ran), 20);
            assert!(afs.iter().all(|af| !af.stop()));
        }
    });
}
