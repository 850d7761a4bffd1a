//! Proxies of a contended parent (docs/SCALING.md): a child derived through
//! one behaves exactly like a direct child (outcome, cause, values,
//! deadline, Debug text), and the parent, its proxies and their children
//! are all freed whatever goes first. The loom models of the races are in
//! `loom-tests/tests/loom_proxy.rs`; the two-thread races in the race
//! matrix (`tests/races`, shape `proxied`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{with_watchdog, DropCounter};
use ctxtree::{__private, Context, Error};

/// Proxies need two shards, i.e. two CPUs (`node::proxy::shards`).
fn proxies_on() -> bool {
    thread::available_parallelism().map_or(1, |n| n.get()) >= 2
}

#[test]
fn a_proxied_child_behaves_like_a_direct_child() {
    if !proxies_on() {
        return;
    }
    with_watchdog(30, || {
        let (drop_counter, drops) = DropCounter::new();
        let root = Context::background().with_value(drop_counter);
        let deadline = Instant::now() + Duration::from_secs(3600);
        let (p, ph) = root.with_deadline(deadline);
        assert!(__private::install_proxy(&p));
        // Installing again is a no-op that reports the proxy.
        assert!(__private::install_proxy(&p));
        let (child, ch) = p.with_cancel();
        assert!(__private::is_proxied(&child));
        assert_eq!(child.deadline(), Some(deadline));
        assert!(child.value::<DropCounter>().is_some());
        let text = format!("{child:?}");
        assert!(
            text.starts_with("context.Background.WithValue(")
                && text.contains(".WithDeadline(")
                && text.ends_with(".WithCancel")
                && text.matches(".WithCancel").count() == 1,
            "the proxy shows in {text}"
        );
        let (timed, th) = p.with_timeout(Duration::from_secs(60));
        assert!(__private::is_proxied(&timed));
        ph.cancel_with_cause("stop");
        assert_eq!(child.err(), Err(Error::Canceled));
        assert_eq!(timed.err(), Err(Error::Canceled));
        assert!(Arc::ptr_eq(&child.cause().unwrap(), &p.cause().unwrap()));
        // Born done under a done proxy.
        let (late, _) = p.with_cancel();
        assert_eq!(late.err(), Err(Error::Canceled));
        drop((root, p, ph, child, ch, timed, th, late));
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn the_parent_goes_first_then_its_proxied_children() {
    if !proxies_on() {
        return;
    }
    with_watchdog(30, || {
        let (drop_counter, drops) = DropCounter::new();
        let (p, ph) = Context::background().with_value(drop_counter).with_cancel();
        assert!(__private::install_proxy(&p));
        let kids: Vec<_> = (0..10).map(|_| p.with_cancel()).collect();
        assert!(kids.iter().all(|(k, _)| __private::is_proxied(k)));
        // The kill: P's last observers go, the proxy stays for its children.
        drop((p, ph));
        assert_eq!(drops.load(Ordering::SeqCst), 0, "the value went early");
        for (k, _) in &kids {
            assert!(k.value::<DropCounter>().is_some());
            assert!(!k.is_done());
        }
        drop(kids);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_deadline_fires_through_the_proxies_after_the_handles_are_gone() {
    if !proxies_on() {
        return;
    }
    with_watchdog(30, || {
        let (p, ph) = Context::background().with_timeout(Duration::from_millis(50));
        assert!(__private::install_proxy(&p));
        let (child, _ch) = p.with_cancel();
        assert!(__private::is_proxied(&child));
        drop((p, ph));
        assert_eq!(
            child.wait_timeout(Duration::from_secs(20)),
            Some(Error::DeadlineExceeded)
        );
    });
}

#[test]
fn two_threads_on_one_parent_get_proxies_and_free_everything() {
    if !proxies_on() {
        return;
    }
    with_watchdog(120, || {
        let (drop_counter, drops) = DropCounter::new();
        let (p, ph) = Context::background().with_value(drop_counter).with_cancel();
        let proxied = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (p, proxied, start) = (p.clone(), proxied.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    let mut kept = Vec::new();
                    for i in 0..200_000 {
                        let (c, h) = p.with_cancel();
                        if __private::is_proxied(&c) {
                            proxied.fetch_add(1, Ordering::Relaxed);
                        }
                        match i % 3 {
                            0 => h.cancel(),
                            1 => kept.push((c, h)),
                            _ => drop((c, h)),
                        }
                        if kept.len() > 64 {
                            kept.drain(..32);
                        }
                    }
                    kept
                })
            })
            .collect();
        let kept: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        // Whether the pushes ever collided depends on the scheduler; when
        // they did, the proxies carried the children that followed.
        eprintln!(
            "{} of 400,000 children went under a proxy",
            proxied.load(Ordering::Relaxed)
        );
        ph.cancel();
        for (c, _) in kept.iter().flatten() {
            assert_eq!(c.err(), Err(Error::Canceled));
        }
        drop((p, ph));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(kept);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_child_derived_in_an_after_func_of_a_proxied_parent_is_done_at_once() {
    if !proxies_on() {
        return;
    }
    with_watchdog(30, || {
        let (p, ph) = Context::background().with_cancel();
        assert!(__private::install_proxy(&p));
        // Children under the proxy, so the walk has a subtree to reach
        // after the callback (which is in P's own list).
        let kids: Vec<_> = (0..4).map(|_| p.with_cancel()).collect();
        let seen = Arc::new(AtomicUsize::new(0));
        let (p2, seen2) = (p.clone(), seen.clone());
        let _after = p.after_func(move || {
            let (c, _h) = p2.with_cancel();
            assert_eq!(c.err(), Err(Error::Canceled));
            seen2.fetch_add(1, Ordering::SeqCst);
        });
        ph.cancel();
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert!(kids.iter().all(|(k, _)| k.is_done()));
    });
}
