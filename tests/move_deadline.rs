//! Movable deadlines: `CancelHandle::set_deadline` and `set_timeout`.
//!
//! Timing checks have one hard side and one generous side: a context is
//! never done by its deadline before that deadline (the timer never fires
//! early: checked exactly), and it fires after it within `GENEROUS` (a
//! loaded machine may be slow). Every test that waits runs under a
//! watchdog.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use common::with_watchdog;
use ctxtree::{Context, Error};

const HOUR: Duration = Duration::from_secs(3600);
const GENEROUS: Duration = Duration::from_secs(10);
const WATCHDOG_SECS: u64 = 60;

/// One test at a time: some count the process's armed timers, and the
/// timing checks are fairer on a quiet timer.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits (generously) until `ctx` is done by its deadline; returns when.
fn wait_fired(ctx: &Context) -> Instant {
    let err = ctx
        .wait_timeout(GENEROUS)
        .expect("the deadline never fired");
    let at = Instant::now();
    assert_eq!(err, Error::DeadlineExceeded);
    at
}

#[test]
fn moving_later_delays_firing() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        let (ctx, h) = Context::background().with_timeout(Duration::from_millis(30));
        let new = Instant::now() + Duration::from_millis(300);
        assert!(h.set_deadline(new));
        assert_eq!(ctx.deadline(), Some(new));
        // Past the old deadline: not done.
        assert_eq!(ctx.wait_timeout(Duration::from_millis(100)), None);
        let fired = wait_fired(&ctx);
        assert!(fired >= new, "fired {:?} before its deadline", new - fired);
        assert_eq!(ctx.deadline(), Some(new));
    });
}

#[test]
fn moving_earlier_advances_firing() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        let (ctx, h) = Context::background().with_timeout(HOUR);
        let (child, _c) = ctx.with_cancel();
        let new = Instant::now() + Duration::from_millis(20);
        assert!(h.set_deadline(new));
        let fired = wait_fired(&ctx);
        assert!(fired >= new, "fired early");
        assert_eq!(child.err(), Err(Error::DeadlineExceeded));
    });
}

#[test]
fn moving_to_the_past_fires_at_once() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        let (ctx, h) = Context::background().with_timeout_cause(HOUR, "idle");
        assert!(h.set_deadline(Instant::now()));
        wait_fired(&ctx);
        assert_eq!(ctx.cause().unwrap().to_string(), "idle");
    });
}

#[test]
fn returns_false_once_done() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        let later = Instant::now() + HOUR;
        // Cancelled.
        let (ctx, h) = Context::background().with_timeout(HOUR);
        let d = ctx.deadline();
        h.cancel();
        assert!(!h.set_deadline(later));
        assert!(!h.set_timeout(Duration::ZERO));
        assert_eq!(ctx.deadline(), d, "a refused move changed the deadline");
        assert_eq!(ctx.err(), Err(Error::Canceled));

        // Fired.
        let (ctx, h) = Context::background().with_timeout(Duration::from_millis(5));
        let d = ctx.deadline();
        wait_fired(&ctx);
        assert!(!h.set_deadline(later));
        assert_eq!(ctx.deadline(), d);

        // Done on creation, and done through its parent.
        let (_ctx, h) = Context::background().with_timeout(Duration::ZERO);
        assert!(!h.set_deadline(later));
        let (parent, ph) = Context::background().with_cancel();
        let (_child, h) = parent.with_timeout(HOUR);
        ph.cancel();
        assert!(!h.set_deadline(later));
    });
}

#[test]
fn returns_false_without_a_deadline_of_its_own() {
    let _serial = serial();
    let later = Instant::now() + HOUR;
    let (_c, h) = Context::background().with_cancel();
    assert!(!h.set_deadline(later));
    assert!(!h.set_timeout(Duration::from_secs(1)));

    // Go's rule: a deadline no earlier than the parent's makes a plain
    // child, which has nothing of its own to move.
    let (parent, _ph) = Context::background().with_timeout(Duration::from_secs(60));
    let (child, h) = parent.with_timeout(HOUR);
    assert_eq!(child.deadline(), parent.deadline());
    assert!(!h.set_timeout(Duration::from_secs(1)));
    assert_eq!(child.deadline(), parent.deadline());

    // Unrepresentable: no deadline at all.
    let (_c, h) = Context::background().with_timeout(Duration::MAX);
    assert!(!h.set_timeout(Duration::from_secs(1)));

    // A merge has no timer of its own.
    let (a, _ha) = Context::background().with_timeout(HOUR);
    let (_m, h) = a.merge(&Context::background());
    assert!(!h.set_deadline(later));
}

#[test]
fn descendants_report_the_earliest_deadline_up_to_a_merge() {
    let _serial = serial();
    let now = Instant::now();
    let (d1, d2) = (now + HOUR, now + 2 * HOUR);
    let (parent, h) = Context::background().with_deadline(d2);
    let (plain, _p) = parent.with_cancel();
    let value = plain.with_value(7u8);
    let (own, _o) = parent.with_deadline(d1);
    let detached = parent.without_cancel();
    let (merged, _m) = parent.merge(&Context::background());
    assert_eq!(plain.deadline(), Some(d2));
    assert_eq!(own.deadline(), Some(d1));

    // Later: the plain child follows; the child with an earlier deadline of
    // its own keeps it.
    let d3 = now + 3 * HOUR;
    assert!(h.set_deadline(d3));
    assert_eq!(parent.deadline(), Some(d3));
    assert_eq!(plain.deadline(), Some(d3));
    assert_eq!(value.deadline(), Some(d3));
    assert_eq!(own.deadline(), Some(d1));
    // A child derived after the move sees it too.
    assert_eq!(parent.with_cancel().0.deadline(), Some(d3));

    // Earlier than the child's own: everyone below sees the parent's.
    let d0 = now + HOUR / 2;
    assert!(h.set_deadline(d0));
    assert_eq!(plain.deadline(), Some(d0));
    assert_eq!(own.deadline(), Some(d0));

    // Never: the parent reports none, the child its own.
    assert!(h.set_timeout(Duration::MAX));
    assert_eq!(parent.deadline(), None);
    assert_eq!(plain.deadline(), None);
    assert_eq!(own.deadline(), Some(d1));

    // Unaffected: `without_cancel` (no deadline), and a merge made before
    // the moves (the minimum computed at its creation).
    assert_eq!(detached.deadline(), None);
    assert_eq!(merged.deadline(), Some(d2));
}

#[test]
fn a_childs_own_deadline_fires_even_if_the_parent_moves_later() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        let (parent, h) = Context::background().with_timeout(Duration::from_millis(200));
        let (child, _c) = parent.with_timeout(Duration::from_millis(100));
        assert!(h.set_timeout(HOUR));
        wait_fired(&child);
        assert!(!parent.is_done());
        h.cancel();
    });
}

#[test]
fn moving_the_parent_earlier_cancels_a_child_with_a_later_own_deadline() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        let (parent, h) = Context::background().with_timeout_cause(HOUR, "parent");
        let (child, _c) = parent.with_timeout_cause(HOUR / 2, "child");
        assert!(h.set_timeout(Duration::from_millis(10)));
        wait_fired(&child);
        assert_eq!(child.cause().unwrap().to_string(), "parent");
    });
}

#[test]
fn never_does_not_fire_or_panic() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        let (ctx, h) = Context::background().with_timeout(Duration::from_millis(20));
        assert!(h.set_timeout(Duration::MAX));
        assert_eq!(ctx.deadline(), None);
        assert!(format!("{ctx:?}").contains("WithDeadline(never)"));
        // Past the old deadline: the old entry pops, re-arms far away.
        assert_eq!(ctx.wait_timeout(Duration::from_millis(100)), None);
        // A far instant, representable as an `Instant` or not.
        if let Some(far) = Instant::now().checked_add(Duration::from_secs(u64::MAX / 4)) {
            assert!(h.set_deadline(far));
            assert_eq!(ctx.deadline(), None, "beyond the representable range");
        }
        let century = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        assert!(h.set_deadline(century));
        assert_eq!(ctx.deadline(), Some(century));
        assert_eq!(ctx.wait_timeout(Duration::from_millis(30)), None);
        // And back from never.
        assert!(h.set_timeout(Duration::MAX));
        let new = Instant::now() + Duration::from_millis(10);
        assert!(h.set_deadline(new));
        assert!(wait_fired(&ctx) >= new);
    });
}

/// An idle timeout: the deadline is pushed on every "read"; the context
/// stays live while reads come, fires once they stop, and the timer holds
/// one entry for it throughout.
#[test]
fn idle_timeout_moved_on_every_read() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        let idle = Duration::from_millis(300);
        let armed_before = ctxtree::__private::armed_timers();
        let (conn, h) = Context::background().with_timeout(idle);
        let start = Instant::now();
        let mut reads = 0u32;
        let mut last = Instant::now();
        while start.elapsed() < Duration::from_millis(900) {
            assert!(!conn.is_done(), "an active connection timed out");
            last = Instant::now();
            assert!(h.set_timeout(idle));
            reads += 1;
            thread::sleep(Duration::from_millis(2));
        }
        assert!(reads > 50, "{reads} reads");
        assert!(ctxtree::__private::armed_timers() <= armed_before + 1);
        let fired = wait_fired(&conn);
        assert!(fired >= last + idle, "fired before the idle timeout");
    });
}

/// Many contexts with short deadlines, moved later and earlier by one
/// thread while the timer fires them: each fires, once, never before the
/// deadline of the last move that returned `true`.
#[test]
fn concurrent_moves_never_fire_before_the_current_deadline() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        const N: usize = 300;
        struct Case {
            ctx: Context,
            h: ctxtree::CancelHandle,
            /// Instant of the last successful move, as nanos since `origin`.
            last: AtomicUsize,
            fired_at: Arc<Mutex<Option<Instant>>>,
            runs: Arc<AtomicUsize>,
            _callback: ctxtree::AfterFunc,
        }
        let origin = Instant::now();
        let cases: Vec<Case> = (0..N)
            .map(|i| {
                let timeout = Duration::from_micros(500 + (i as u64 % 7) * 700);
                let (ctx, h) = Context::background().with_timeout(timeout);
                let fired_at = Arc::new(Mutex::new(None));
                let runs = Arc::new(AtomicUsize::new(0));
                let (f, r) = (fired_at.clone(), runs.clone());
                let callback = ctx.after_func(move || {
                    *f.lock().unwrap() = Some(Instant::now());
                    r.fetch_add(1, Ordering::SeqCst);
                });
                let last = ctx.deadline().unwrap().duration_since(origin).as_nanos() as usize;
                Case {
                    ctx,
                    h,
                    last: AtomicUsize::new(last),
                    fired_at,
                    runs,
                    _callback: callback,
                }
            })
            .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..4 {
            for c in &cases {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let ahead = Duration::from_micros(seed % 4_000);
                let to = Instant::now() + ahead;
                if c.h.set_deadline(to) {
                    let nanos = to.duration_since(origin).as_nanos() as usize;
                    c.last.store(nanos, Ordering::SeqCst);
                }
            }
            if round % 2 == 1 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        for (i, c) in cases.iter().enumerate() {
            wait_fired(&c.ctx);
            // The callback runs in the firing, after `wait` may return.
            let by = Instant::now() + GENEROUS;
            while c.runs.load(Ordering::SeqCst) == 0 {
                assert!(Instant::now() < by, "case {i}: the callback never ran");
                thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(c.runs.load(Ordering::SeqCst), 1);
            let fired = c.fired_at.lock().unwrap().expect("recorded");
            let deadline = origin + Duration::from_nanos(c.last.load(Ordering::SeqCst) as u64);
            assert!(
                fired >= deadline,
                "case {i}: fired {:?} before its deadline",
                deadline - fired
            );
            assert_eq!(c.ctx.deadline(), Some(deadline));
        }
    });
}

/// Moving later many times adds no timer entry; dropping the context
/// removes its one entry, wherever the moves left it.
#[test]
fn moves_keep_one_entry_and_drop_removes_it() {
    let _serial = serial();
    with_watchdog(WATCHDOG_SECS, || {
        let before = ctxtree::__private::armed_timers();
        let (ctx, h) = Context::background().with_timeout(HOUR);
        for i in 0..1000u32 {
            let to = Instant::now() + HOUR + Duration::from_millis(u64::from(i % 10));
            assert!(h.set_deadline(to));
            if i % 3 == 0 {
                assert!(h.set_deadline(Instant::now() + HOUR / 2));
            }
        }
        assert_eq!(ctxtree::__private::armed_timers(), before + 1);
        drop((ctx, h));
        assert_eq!(ctxtree::__private::armed_timers(), before);
    });
}
