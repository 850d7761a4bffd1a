//! Deadlines and timeouts, and the `Error` type.

mod common;

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{with_watchdog, TestError};
use ctxtree::{Cause, Context, Error};

const HOUR: Duration = Duration::from_secs(3600);
const GENEROUS: Duration = Duration::from_secs(10);

fn cause_of(ctx: &Context) -> Cause {
    ctx.cause().expect("a done context must have a cause")
}

fn assert_deadline_exceeded_with_default_cause(ctx: &Context) {
    assert!(ctx.is_done());
    assert_eq!(ctx.err(), Err(Error::DeadlineExceeded));
    assert_eq!(
        cause_of(ctx).downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
}

// ---- Error ---------------------------------------------------------------

#[test]
fn error_display_strings_match_go_byte_for_byte() {
    assert_eq!(Error::Canceled.to_string(), "context canceled");
    assert_eq!(
        Error::DeadlineExceeded.to_string(),
        "context deadline exceeded"
    );
}

#[test]
fn only_deadline_exceeded_is_a_timeout() {
    assert!(Error::DeadlineExceeded.is_timeout());
    assert!(!Error::Canceled.is_timeout());
}

#[test]
fn error_converts_to_io_error_with_matching_kind() {
    let canceled: io::Error = Error::Canceled.into();
    assert_eq!(canceled.kind(), io::ErrorKind::Interrupted);
    let timed_out: io::Error = Error::DeadlineExceeded.into();
    assert_eq!(timed_out.kind(), io::ErrorKind::TimedOut);
}

#[test]
fn io_error_from_context_error_keeps_the_message() {
    let err: io::Error = Error::DeadlineExceeded.into();
    assert!(err.to_string().contains("context deadline exceeded"));
    let err: io::Error = Error::Canceled.into();
    assert!(err.to_string().contains("context canceled"));
}

#[test]
fn error_variants_are_distinct_values() {
    assert_ne!(Error::Canceled, Error::DeadlineExceeded);
    let set: HashSet<Error> = [Error::Canceled, Error::DeadlineExceeded, Error::Canceled]
        .into_iter()
        .collect();
    assert_eq!(set.len(), 2);
}

// ---- done on creation ----------------------------------------------------

#[test]
fn zero_timeout_is_done_on_creation_with_deadline_exceeded() {
    let (ctx, _handle) = Context::background().with_timeout(Duration::ZERO);
    assert_deadline_exceeded_with_default_cause(&ctx);
}

#[test]
fn past_deadline_is_done_on_creation_with_deadline_exceeded() {
    let now = Instant::now();
    let past = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
    let (ctx, _handle) = Context::background().with_deadline(past);
    assert_deadline_exceeded_with_default_cause(&ctx);
}

#[test]
fn deadline_equal_to_now_is_done_on_creation() {
    let (ctx, _handle) = Context::background().with_deadline(Instant::now());
    assert_deadline_exceeded_with_default_cause(&ctx);
}

#[test]
fn past_deadline_cause_variants_are_done_on_creation_with_the_given_cause() {
    let (a, _ha) =
        Context::background().with_deadline_cause(Instant::now(), TestError("deadline cause"));
    let (b, _hb) =
        Context::background().with_timeout_cause(Duration::ZERO, TestError("timeout cause"));
    assert_eq!(a.err(), Err(Error::DeadlineExceeded));
    assert_eq!(
        cause_of(&a).downcast_ref::<TestError>(),
        Some(&TestError("deadline cause"))
    );
    assert_eq!(b.err(), Err(Error::DeadlineExceeded));
    assert_eq!(
        cause_of(&b).downcast_ref::<TestError>(),
        Some(&TestError("timeout cause"))
    );
}

#[test]
fn children_of_a_context_done_on_creation_share_its_err_and_cause() {
    let (ctx, _handle) = Context::background().with_timeout_cause(Duration::ZERO, "expired");
    let (child, _h) = ctx.with_cancel();
    assert_eq!(child.err(), Err(Error::DeadlineExceeded));
    assert!(Arc::ptr_eq(&cause_of(&child), &cause_of(&ctx)));
}

#[test]
fn past_deadline_on_a_cancelled_parent_keeps_the_parents_canceled() {
    let (parent, handle) = Context::background().with_cancel();
    handle.cancel_with_cause(TestError("parent"));
    let (child, _h) = parent.with_deadline(Instant::now());
    assert_eq!(child.err(), Err(Error::Canceled));
    assert!(Arc::ptr_eq(&cause_of(&child), &cause_of(&parent)));
}

// ---- huge deadlines ------------------------------------------------------

#[test]
fn duration_max_timeout_never_panics_and_is_not_done() {
    let (ctx, _handle) = Context::background().with_timeout(Duration::MAX);
    assert!(!ctx.is_done());
    assert_eq!(ctx.err(), Ok(()));
    let _ = format!("{ctx:?}");
    let _ = ctx.deadline();
    let (child, _h) = ctx.with_timeout(Duration::MAX);
    assert!(!child.is_done());
}

#[test]
fn duration_max_timeout_cause_never_panics_and_is_not_done() {
    let (ctx, _handle) =
        Context::background().with_timeout_cause(Duration::MAX, TestError("never"));
    assert!(!ctx.is_done());
    assert!(ctx.cause().is_none());
}

#[test]
fn huge_deadlines_do_not_fire() {
    let now = Instant::now();
    let far = [
        now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)),
        now.checked_add(Duration::from_secs(u64::MAX / 4)),
        now.checked_add(Duration::from_secs(u64::MAX / 2)),
    ];
    let contexts: Vec<_> = far
        .into_iter()
        .flatten()
        .map(|d| Context::background().with_deadline(d))
        .chain([Context::background().with_timeout(Duration::MAX)])
        .collect();
    assert!(!contexts.is_empty());
    for (ctx, _) in &contexts {
        assert_eq!(ctx.wait_timeout(Duration::from_millis(30)), None);
        assert!(!ctx.is_done());
    }
}

#[test]
fn huge_deadline_context_can_still_be_cancelled() {
    let (ctx, handle) = Context::background().with_timeout(Duration::MAX);
    handle.cancel();
    assert_eq!(ctx.err(), Err(Error::Canceled));
}

#[test]
fn dropping_a_duration_max_context_does_not_panic() {
    for _ in 0..100 {
        let (ctx, handle) = Context::background().with_timeout(Duration::MAX);
        drop(ctx);
        drop(handle);
    }
}

// ---- deadline() ----------------------------------------------------------

#[test]
fn with_deadline_reports_its_deadline() {
    let d = Instant::now() + HOUR;
    let (ctx, _handle) = Context::background().with_deadline(d);
    assert_eq!(ctx.deadline(), Some(d));
}

#[test]
fn with_timeout_deadline_is_now_plus_timeout() {
    let before = Instant::now();
    let (ctx, _handle) = Context::background().with_timeout(HOUR);
    let after = Instant::now();
    let d = ctx.deadline().expect("a timeout context has a deadline");
    assert!(d >= before + HOUR && d <= after + HOUR);
}

#[test]
fn child_with_later_deadline_reports_the_parents_earlier_deadline() {
    let d1 = Instant::now() + HOUR;
    let (parent, _ph) = Context::background().with_deadline(d1);
    let (child, _ch) = parent.with_deadline(d1 + HOUR);
    assert_eq!(child.deadline(), Some(d1));
    let (child2, _ch2) = parent.with_timeout(3 * HOUR);
    assert_eq!(child2.deadline(), Some(d1));
}

#[test]
fn child_with_earlier_deadline_reports_its_own_deadline() {
    let d1 = Instant::now() + 2 * HOUR;
    let (parent, _ph) = Context::background().with_deadline(d1);
    let d2 = Instant::now() + HOUR;
    let (child, _ch) = parent.with_deadline(d2);
    assert_eq!(child.deadline(), Some(d2));
    assert_eq!(parent.deadline(), Some(d1));
}

#[test]
fn deadline_is_inherited_through_cancel_and_value_layers() {
    let d = Instant::now() + HOUR;
    let (ctx, _h) = Context::background().with_deadline(d);
    let (child, _ch) = ctx.with_cancel();
    let valued = child.with_value(1u8);
    assert_eq!(child.deadline(), Some(d));
    assert_eq!(valued.deadline(), Some(d));
}

#[test]
fn contexts_without_deadline_report_none() {
    let (ctx, _h) = Context::background().with_cancel();
    assert_eq!(ctx.deadline(), None);
    assert_eq!(ctx.with_value(1u8).deadline(), None);
}

#[test]
#[cfg_attr(miri, ignore)]
fn inherited_earlier_parent_deadline_fires_the_child_with_the_parents_cause() {
    with_watchdog(30, || {
        let (parent, _ph) =
            Context::background().with_timeout_cause(Duration::from_millis(20), "parent");
        let (child, _ch) = parent.with_timeout_cause(HOUR, "child");
        assert_eq!(child.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
        assert_eq!(cause_of(&child).to_string(), "parent");
    });
}

// ---- firing --------------------------------------------------------------

#[test]
#[cfg_attr(miri, ignore)]
fn short_timeout_fires_with_deadline_exceeded_but_not_before_the_deadline() {
    with_watchdog(30, || {
        let (ctx, _handle) = Context::background().with_timeout(Duration::from_millis(50));
        let deadline = ctx.deadline().expect("deadline");
        assert_eq!(ctx.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
        assert!(Instant::now() >= deadline, "fired before the deadline");
        assert_deadline_exceeded_with_default_cause(&ctx);
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn timeout_fires_without_anyone_waiting_or_polling() {
    with_watchdog(30, || {
        let (ctx, _handle) = Context::background().with_timeout(Duration::from_millis(30));
        let deadline = ctx.deadline().expect("deadline");
        let give_up = Instant::now() + GENEROUS;
        // Only sleep: never call a blocking wait on the context itself.
        while !ctx.is_done() && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(5));
        }
        assert!(ctx.is_done(), "the timer never fired");
        assert!(Instant::now() >= deadline);
        assert_eq!(ctx.err(), Err(Error::DeadlineExceeded));
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn with_deadline_fires_at_the_deadline() {
    with_watchdog(30, || {
        let deadline = Instant::now() + Duration::from_millis(40);
        let (ctx, _handle) = Context::background().with_deadline(deadline);
        assert_eq!(ctx.wait(), Error::DeadlineExceeded);
        assert!(Instant::now() >= deadline);
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn timeout_cause_fires_with_deadline_exceeded_and_the_given_cause() {
    with_watchdog(30, || {
        let (ctx, _handle) = Context::background()
            .with_timeout_cause(Duration::from_millis(30), TestError("too slow"));
        assert_eq!(ctx.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
        assert_eq!(
            cause_of(&ctx).downcast_ref::<TestError>(),
            Some(&TestError("too slow"))
        );
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn deadline_cause_fires_with_deadline_exceeded_and_the_given_cause() {
    with_watchdog(30, || {
        let (ctx, _handle) = Context::background().with_deadline_cause(
            Instant::now() + Duration::from_millis(30),
            TestError("deadline"),
        );
        assert_eq!(ctx.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
        assert_eq!(
            cause_of(&ctx).downcast_ref::<TestError>(),
            Some(&TestError("deadline"))
        );
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn firing_deadline_cancels_descendants_with_the_same_cause_but_not_the_parent() {
    with_watchdog(30, || {
        let (parent, _ph) = Context::background().with_cancel();
        let (ctx, _h) = parent.with_timeout(Duration::from_millis(30));
        let (child, _ch) = ctx.with_cancel();
        let (later_child, _lh) = ctx.with_timeout(HOUR);
        assert_eq!(child.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
        let cause = cause_of(&ctx);
        assert!(Arc::ptr_eq(&cause_of(&child), &cause));
        assert_eq!(later_child.err(), Err(Error::DeadlineExceeded));
        assert!(Arc::ptr_eq(&cause_of(&later_child), &cause));
        assert!(!parent.is_done());
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn cancel_before_the_deadline_gives_canceled_and_the_later_deadline_changes_nothing() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_timeout(Duration::from_millis(30));
        let deadline = ctx.deadline().unwrap();
        handle.cancel();
        let cause = cause_of(&ctx);
        assert_eq!(ctx.err(), Err(Error::Canceled));
        thread::sleep(
            deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100),
        );
        assert_eq!(ctx.err(), Err(Error::Canceled));
        assert!(Arc::ptr_eq(&cause_of(&ctx), &cause));
        assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn cancel_before_the_deadline_of_a_cause_variant_gives_canceled_not_the_deadline_cause() {
    with_watchdog(30, || {
        let (ctx, handle) =
            Context::background().with_timeout_cause(Duration::from_millis(30), "deadline cause");
        handle.cancel();
        thread::sleep(Duration::from_millis(130));
        assert_eq!(ctx.err(), Err(Error::Canceled));
        assert_eq!(
            cause_of(&ctx).downcast_ref::<Error>(),
            Some(&Error::Canceled)
        );
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn cancel_with_cause_before_the_deadline_keeps_that_cause() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_timeout(Duration::from_millis(30));
        handle.cancel_with_cause(TestError("early"));
        thread::sleep(Duration::from_millis(130));
        assert_eq!(ctx.err(), Err(Error::Canceled));
        assert_eq!(
            cause_of(&ctx).downcast_ref::<TestError>(),
            Some(&TestError("early"))
        );
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn cancel_after_the_deadline_fired_changes_nothing() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_timeout(Duration::from_millis(20));
        assert_eq!(ctx.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
        let cause = cause_of(&ctx);
        handle.cancel_with_cause(TestError("late"));
        assert_eq!(ctx.err(), Err(Error::DeadlineExceeded));
        assert!(Arc::ptr_eq(&cause_of(&ctx), &cause));
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn many_timeouts_all_fire_and_none_before_its_deadline() {
    with_watchdog(60, || {
        let contexts: Vec<_> = (0..200u64)
            .map(|i| Context::background().with_timeout(Duration::from_millis(5 + (i * 37) % 100)))
            .collect();
        for (ctx, _) in &contexts {
            let deadline = ctx.deadline().unwrap();
            assert_eq!(ctx.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
            assert!(Instant::now() >= deadline);
        }
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn cancelled_and_dropped_timeouts_do_not_disturb_a_later_one() {
    with_watchdog(60, || {
        for i in 0..10_000u64 {
            let (ctx, handle) = Context::background().with_timeout(Duration::from_millis(i % 50));
            if i % 2 == 0 {
                handle.cancel();
            }
            drop(ctx);
        }
        let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(30));
        assert_eq!(ctx.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn timer_keeps_serving_deadlines_after_a_callback_panics_on_it() {
    with_watchdog(60, || {
        let ran_after_panic = Arc::new(AtomicUsize::new(0));
        let (first, _h1) = Context::background().with_timeout(Duration::from_millis(10));
        let _stop = first.after_func(|| panic!("deliberate panic in a timer-run callback"));
        let ran = Arc::clone(&ran_after_panic);
        let _other = first.after_func(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(first.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
        // Give the timer thread time to finish that cancellation.
        let give_up = Instant::now() + GENEROUS;
        while ran_after_panic.load(Ordering::SeqCst) == 0 && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(ran_after_panic.load(Ordering::SeqCst), 1);

        let (second, _h2) = Context::background().with_timeout(Duration::from_millis(30));
        assert_eq!(second.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn timeouts_created_from_many_threads_all_fire() {
    with_watchdog(60, || {
        let workers: Vec<_> = (0..8u64)
            .map(|t| {
                thread::spawn(move || {
                    for i in 0..20u64 {
                        let (ctx, _h) = Context::background()
                            .with_timeout(Duration::from_millis(1 + (t * 7 + i) % 30));
                        let deadline = ctx.deadline().unwrap();
                        assert_eq!(ctx.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
                        assert!(Instant::now() >= deadline);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
}

struct PanickingWaker;

impl std::task::Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("deliberate waker panic on the timer thread");
    }

    fn wake_by_ref(self: &Arc<Self>) {
        panic!("deliberate waker panic on the timer thread");
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn timer_keeps_serving_deadlines_after_a_waker_panics_on_it() {
    use std::future::Future;
    use std::task::{Context as TaskContext, Poll, Waker};

    with_watchdog(60, || {
        let (first, _h1) = Context::background().with_timeout(Duration::from_millis(10));
        // The future whose waker panics is leaked: this test is about the
        // timer, not about dropping it.
        let mut done = std::mem::ManuallyDrop::new(first.done());
        let waker = Waker::from(Arc::new(PanickingWaker));
        let poll = std::pin::Pin::new(&mut *done).poll(&mut TaskContext::from_waker(&waker));
        assert_eq!(poll, Poll::Pending);
        // A thread blocked in wait() (registered after the panicking waker)
        // must still be woken when the deadline fires.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let first = first.clone();
            thread::spawn(move || tx.send(first.wait()).unwrap())
        };
        assert_eq!(
            rx.recv_timeout(GENEROUS),
            Ok(Error::DeadlineExceeded),
            "the blocked waiter was not woken by the timer"
        );
        waiter.join().unwrap();

        let (second, _h2) = Context::background().with_timeout(Duration::from_millis(30));
        assert_eq!(second.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
    });
}
