//! loom models of a contended parent's proxies (`src/node/proxy.rs`,
//! docs/SCALING.md, invariants 13 and 13k): the kill racing the last
//! proxied child, a cancel racing a derive through a proxy, two installs
//! racing for one slot, and a deadline firing (the timer's `try_acquire`
//! taking a hold once the observers are gone) racing the kill and the last
//! drop.
//!
//! Under loom every thread has the same shard (`proxy::shards` is 1), so
//! `__private::install_proxy` and the derives of every thread meet on one
//! slot. Each model checks its outcome, and `model` checks that every node
//! is freed.
//!
//! Run with `.ci/loom.sh BOUND loom_proxy`.
#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctxtree::{__private, Context, Error};
use loom::thread;
use loom_tests::{model, Tracked};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// The kill (the parent's last handle dropped while its proxy holds it)
/// races the drop of the only proxied child: the proxy dies on whichever
/// thread lets it go last, the parent after it, and the parent's value is
/// dropped exactly once, only then.
#[test]
fn kill_racing_the_last_proxied_child() {
    model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (p, ph) = Context::background()
            .with_value(Tracked(drops.clone()))
            .with_cancel();
        assert!(__private::install_proxy(&p));
        let (c, ch) = p.with_cancel();
        assert!(__private::is_proxied(&c));
        let t = thread::spawn(move || {
            assert!(c.value::<Tracked>().is_some());
            drop((c, ch));
        });
        drop(p);
        drop(ph);
        t.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

/// A cancel of the parent races a derive through its proxy: the child is
/// done with the parent's cause whichever comes first (through the proxy's
/// walk, the sealed proxy list, or the push/cancel handshake one level
/// down).
#[test]
fn cancel_racing_a_derive_through_the_proxy() {
    model(|| {
        let (p, ph) = Context::background().with_cancel();
        assert!(__private::install_proxy(&p));
        let p2 = p.clone();
        let t = thread::spawn(move || {
            // Under the proxy unless the derive already sees the parent
            // done (then directly under it, born done).
            let (c, h) = p2.with_cancel();
            assert!(__private::is_proxied(&c) || p2.is_done());
            (c, h)
        });
        ph.cancel_with_cause("stop");
        let (c, h) = t.join().unwrap();
        assert_eq!(c.err(), Err(Error::Canceled));
        assert!(Arc::ptr_eq(&c.cause().unwrap(), &p.cause().unwrap()));
        drop((c, h, p, ph));
    });
}

/// Two threads install a proxy for the same slot and derive, while the
/// parent is cancelled: one installer wins (or none, if the cancel came
/// first), a loser's derive goes under the winner's proxy or directly under
/// the parent, and every child ends done.
#[test]
fn installs_racing_for_one_slot_and_a_cancel() {
    model(|| {
        let (p, ph) = Context::background().with_cancel();
        let spawn = |p: Context| {
            thread::spawn(move || {
                __private::install_proxy(&p);
                let (c, h) = p.with_cancel();
                (c, h)
            })
        };
        let (a, b) = (spawn(p.clone()), spawn(p.clone()));
        ph.cancel();
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(a.0.err(), Err(Error::Canceled));
        assert_eq!(b.0.err(), Err(Error::Canceled));
        drop((a, b, p, ph));
    });
}

/// The parent's deadline fires while its last handle goes (the kill) and
/// the proxied child is dropped: the timer's `try_acquire` takes an
/// observer reference before the last handle goes (then its release is
/// the kill) or a hold after (observers never come back from zero, so
/// there is one kill). The parent is freed once, on whichever thread is
/// last.
#[test]
fn a_firing_deadline_racing_the_kill_and_the_last_drop() {
    __private::loom_timer(true);
    model(|| {
        let t0 = Instant::now() + HOUR;
        let (p, ph) = Context::background().with_deadline_cause(t0, "late");
        assert!(__private::install_proxy(&p));
        let (c, ch) = p.with_cancel();
        assert!(__private::is_proxied(&c));
        let timer = thread::spawn(move || __private::expire_deadlines(t0 + MINUTE));
        let killer = thread::spawn(move || drop((p, ph)));
        let err = c.err();
        drop((c, ch));
        let fired = timer.join().unwrap();
        killer.join().unwrap();
        assert!(fired <= 1);
        assert!(matches!(err, Ok(()) | Err(Error::DeadlineExceeded)));
        assert_eq!(__private::loom_armed_timers(), 0);
    });
}

/// A derive that sees the parent done (its state word, not yet its proxy,
/// which the walk reaches later) makes a child that is done at once, as a
/// derive from a done context must be: this is what an `after_func` of
/// the parent does, from inside the walk (the fuzzer's `ops_threads`
/// found a proxied child live there).
#[test]
fn a_derive_after_the_parent_is_done_is_done_at_once() {
    model(|| {
        let (p, ph) = Context::background().with_cancel();
        assert!(__private::install_proxy(&p));
        let p2 = p.clone();
        let t = thread::spawn(move || {
            if p2.is_done() {
                let (c, _h) = p2.with_cancel();
                assert_eq!(
                    c.err(),
                    Err(Error::Canceled),
                    "a live child of a done parent"
                );
            }
        });
        ph.cancel();
        t.join().unwrap();
        drop((p, ph));
    });
}
