//! loom models of movable deadlines (`CancelHandle::set_deadline`,
//! invariant 10m in docs/DESIGN.md): a move racing the timer's claim step,
//! a cancel, and the node's death.
//!
//! There is no timer thread under loom; every model turns on the crate's
//! stand-in (`__private::loom_timer`), which keeps the real protocol (the
//! timer lock, the `timer` id field and its hint, the claim step shared
//! with the timer thread) and whose `__private::expire_deadlines(now)` is
//! the timer's poll at a pretend `now`. Deadlines are an hour away, so the
//! real clock never makes anything due on its own.
//!
//! Run with `.ci/loom.sh BOUND loom_move_deadline`.
#![cfg(loom)]

use std::time::{Duration, Instant};

use ctxtree::{__private, Context, Error};
use loom::thread;
use loom_tests::model;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// `model`, with the stand-in timer on.
fn timer_model(f: impl Fn() + Sync + Send + 'static) {
    __private::loom_timer(true);
    model(f);
}

fn cause_str(ctx: &Context) -> String {
    ctx.cause().expect("done implies a cause").to_string()
}

/// Moving later races the claim of the expired entry: exactly one wins.
/// If the move wins, the context is not done and its entry is re-armed at
/// the new deadline (fires there, not a moment before); if the claim wins,
/// the context is done by its deadline and the move reports `false`.
#[test]
fn move_later_racing_expiry_has_one_winner() {
    timer_model(|| {
        let t0 = Instant::now() + HOUR;
        let later = t0 + HOUR;
        let (ctx, h) = Context::background().with_deadline_cause(t0, "late");
        let timer = thread::spawn(move || __private::expire_deadlines(t0 + MINUTE));
        let moved = h.set_deadline(later);
        let fired = timer.join().unwrap();
        assert_eq!(fired, usize::from(!moved), "moved {moved}, fired {fired}");
        if moved {
            assert!(!ctx.is_done(), "fired before its moved deadline");
            assert_eq!(ctx.deadline(), Some(later));
            assert_eq!(__private::loom_armed_timers(), 1, "the entry was re-armed");
            assert_eq!(__private::expire_deadlines(later - MINUTE), 0);
            assert!(!ctx.is_done(), "fired before its moved deadline");
            assert_eq!(__private::expire_deadlines(later), 1);
        } else {
            assert_eq!(ctx.deadline(), Some(t0));
            assert_eq!(__private::loom_armed_timers(), 0);
        }
        assert_eq!(ctx.err(), Err(Error::DeadlineExceeded));
        assert_eq!(cause_str(&ctx), "late");
        assert!(!h.set_deadline(later), "moved a fired deadline");
    });
}

/// Moving earlier races a poll that falls between the new and the old
/// deadline: the poll fires the context only if the re-arm came first, and
/// once `set_deadline` has returned, the next poll fires it (the context is
/// never cancelled "by deadline" later than its current deadline).
#[test]
fn move_earlier_racing_expiry_is_never_late() {
    timer_model(|| {
        let t0 = Instant::now() + HOUR;
        let earlier = t0 - 30 * MINUTE;
        let poll_at = t0 - 10 * MINUTE;
        let (ctx, h) = Context::background().with_deadline(t0);
        let timer = thread::spawn(move || __private::expire_deadlines(poll_at));
        // The old entry (at t0) is not due at `poll_at`: nothing can claim
        // it before the move.
        assert!(h.set_deadline(earlier));
        let fired = timer.join().unwrap();
        assert!(fired <= 1);
        if fired == 0 {
            assert!(!ctx.is_done());
            assert_eq!(__private::expire_deadlines(poll_at), 1, "late");
        }
        assert_eq!(ctx.err(), Err(Error::DeadlineExceeded));
        assert_eq!(ctx.deadline(), Some(earlier));
        assert_eq!(__private::loom_armed_timers(), 0);
    });
}

/// Moving earlier while the old entry is already due and being claimed:
/// it fires once, whoever wins the word, and the move's re-arm (after the
/// claim cleared `timer`) leaves nothing armed.
#[test]
fn move_earlier_racing_a_due_expiry_fires_once() {
    timer_model(|| {
        let t0 = Instant::now() + HOUR;
        let (ctx, h) = Context::background().with_deadline(t0);
        let timer = thread::spawn(move || __private::expire_deadlines(t0 + MINUTE));
        let moved = h.set_deadline(t0 - 30 * MINUTE);
        assert_eq!(timer.join().unwrap(), 1);
        assert_eq!(ctx.err(), Err(Error::DeadlineExceeded));
        let want = if moved { t0 - 30 * MINUTE } else { t0 };
        assert_eq!(ctx.deadline(), Some(want));
        assert_eq!(__private::loom_armed_timers(), 0, "an entry left armed");
        assert_eq!(__private::expire_deadlines(t0 + HOUR), 0, "fired twice");
    });
}

/// Moving earlier to a time not reached yet, racing a poll: never fires
/// before the new deadline, whichever comes first.
#[test]
fn move_earlier_never_fires_before_the_new_deadline() {
    timer_model(|| {
        let t0 = Instant::now() + HOUR;
        let earlier = t0 - 30 * MINUTE;
        let (ctx, h) = Context::background().with_deadline(t0);
        let timer = thread::spawn(move || __private::expire_deadlines(earlier - MINUTE));
        assert!(h.set_deadline(earlier));
        assert_eq!(timer.join().unwrap(), 0, "fired early");
        assert!(!ctx.is_done());
        assert_eq!(__private::loom_armed_timers(), 1);
        assert_eq!(__private::expire_deadlines(earlier), 1);
        assert_eq!(ctx.err(), Err(Error::DeadlineExceeded));
    });
}

/// Moving earlier races a cancel: the cancel disarms the entry, and the
/// move's re-arm must not put it back (an entry left armed for a done, and
/// later freed, node).
#[test]
fn move_earlier_racing_cancel_leaves_nothing_armed() {
    timer_model(|| {
        let t0 = Instant::now() + HOUR;
        let (ctx, h) = Context::background().with_deadline(t0);
        let h2 = h.clone();
        let canceller = thread::spawn(move || h2.cancel());
        let _moved = h.set_deadline(t0 - 30 * MINUTE);
        canceller.join().unwrap();
        assert_eq!(ctx.err(), Err(Error::Canceled));
        assert_eq!(__private::loom_armed_timers(), 0, "an entry left armed");
        assert_eq!(__private::expire_deadlines(t0 + HOUR), 0);
        assert!(
            !h.set_deadline(t0 + HOUR),
            "moved a done context's deadline"
        );
    });
}

/// Moving later races a cancel and the expiry: one outcome, nothing left
/// armed.
#[test]
fn move_later_racing_cancel_and_expiry() {
    timer_model(|| {
        let t0 = Instant::now() + HOUR;
        let (ctx, h) = Context::background().with_deadline_cause(t0, "late");
        let h2 = h.clone();
        let canceller = thread::spawn(move || h2.cancel());
        let timer = thread::spawn(move || __private::expire_deadlines(t0 + MINUTE));
        let moved = h.set_deadline(t0 + HOUR);
        canceller.join().unwrap();
        let fired = timer.join().unwrap();
        match ctx.err() {
            Err(Error::DeadlineExceeded) => {
                assert!(!moved, "fired by the old deadline after a move");
                assert_eq!(fired, 1);
                assert_eq!(cause_str(&ctx), "late");
            }
            Err(Error::Canceled) => assert_eq!(cause_str(&ctx), "context canceled"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(__private::loom_armed_timers(), 0, "an entry left armed");
    });
}

/// The timer's claim (and a re-arm) racing the node's death, while the last
/// handle moves the deadline and is dropped: the timer never touches a
/// freed node (invariants 10 and 10m; a freed node fails the model), and
/// nothing stays armed.
fn move_racing_drop_and_expiry(later: bool) {
    timer_model(move || {
        let t0 = Instant::now() + HOUR;
        let to = if later { t0 + HOUR } else { t0 - 30 * MINUTE };
        let (ctx, h) = Context::background().with_deadline_cause(t0, "late");
        let mover = thread::spawn(move || {
            let _ = h.set_deadline(to);
            drop(h);
        });
        let timer = thread::spawn(move || __private::expire_deadlines(t0 + MINUTE));
        drop(ctx);
        mover.join().unwrap();
        let _ = timer.join().unwrap();
        assert_eq!(__private::loom_armed_timers(), 0, "an entry left armed");
    });
}

#[test]
fn move_later_racing_drop_and_expiry_never_touches_a_freed_node() {
    move_racing_drop_and_expiry(true);
}

#[test]
fn move_earlier_racing_drop_and_expiry_never_touches_a_freed_node() {
    move_racing_drop_and_expiry(false);
}

/// A plain child sees its parent's move in `deadline()`; a child with an
/// earlier deadline of its own keeps it; moving the parent earlier than the
/// child's own deadline cancels both at the parent's new time, racing the
/// child's own expiry.
#[test]
fn descendants_follow_a_move_racing_expiry() {
    timer_model(|| {
        let t0 = Instant::now() + HOUR;
        let (parent, h) = Context::background().with_deadline_cause(t0, "parent");
        let (plain, _hp) = parent.with_cancel();
        let (own, _ho) = parent.with_deadline_cause(t0 - 10 * MINUTE, "own");
        let earlier = t0 - 20 * MINUTE;
        let timer = thread::spawn(move || __private::expire_deadlines(t0 - 15 * MINUTE));
        assert!(h.set_deadline(earlier));
        assert_eq!(plain.deadline(), Some(earlier));
        assert_eq!(own.deadline(), Some(earlier));
        let _ = timer.join().unwrap();
        // Whatever the poll saw, the parent's deadline passed at the poll:
        // one more poll settles it.
        let _ = __private::expire_deadlines(t0 - 15 * MINUTE);
        assert_eq!(parent.err(), Err(Error::DeadlineExceeded));
        assert_eq!(cause_str(&plain), "parent");
        // The child's own deadline had not passed: it ends with the parent.
        assert_eq!(cause_str(&own), "parent");
        assert_eq!(__private::loom_armed_timers(), 0);
    });
}
