//! Multi-thread stress: derive, cancel, drop, wait, merge and `after_func`
//! from several threads on one shared tree, bounded by operation counts (a
//! watchdog turns a hang into a failure). These are also the
//! ThreadSanitizer target (`.ci/tsan.sh`), which runs this binary in release
//! mode under `-Zsanitizer=thread`.
//!
//! Every test takes `SERIAL`: the model-based test compares crate-global
//! counts (armed timers), which the other tests would disturb.

mod common;
mod model;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use common::{with_watchdog, NumberedError};
use ctxtree::{AfterFunc, CancelHandle, Context, Error};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Scales operation counts: small under Miri, moderate under TSan (which
/// runs this binary, optimised, about 10x slower than native).
fn scaled(n: usize) -> usize {
    if cfg!(miri) {
        (n / 200).max(2)
    } else {
        n
    }
}

/// A tiny deterministic generator, one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An `after_func` registration and its run counter.
type Registered = (AfterFunc, Arc<AtomicUsize>);

/// One shared node: its context and its handle (if cancellable).
#[derive(Clone)]
struct Shared {
    ctx: Context,
    handle: Option<CancelHandle>,
}

/// Every descendant of a context is done when `cancel` returns, whatever
/// the other threads are doing: threads repeatedly derive (all kinds, merges
/// across subtrees), cancel, drop, wait with zero and short timeouts,
/// register and stop callbacks on a pool of shared contexts. At the end the
/// root is cancelled: every context is done, every callback ran or was
/// stopped exactly once, and every waiter returned.
#[test]
fn mixed_operations_from_four_threads_keep_every_cancel_complete() {
    let _serial = serial();
    let ops = scaled(20_000);
    with_watchdog(300, move || {
        let (root, root_handle) = Context::background().with_cancel();
        let pool: Arc<Mutex<Vec<Shared>>> = Arc::new(Mutex::new(vec![Shared {
            ctx: root.clone(),
            handle: None,
        }]));
        let callbacks: Arc<Mutex<Vec<Registered>>> = Arc::default();
        let stopped = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(4));
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = Arc::clone(&pool);
                let callbacks = Arc::clone(&callbacks);
                let stopped = Arc::clone(&stopped);
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                    barrier.wait();
                    for i in 0..ops {
                        let pick = |rng: &mut Rng| {
                            let p = pool.lock().unwrap();
                            p[rng.below(p.len())].clone()
                        };
                        match rng.below(12) {
                            0..=2 => {
                                let parent = pick(&mut rng);
                                let parent_was_done = parent.ctx.is_done();
                                let (ctx, handle) = match rng.below(4) {
                                    0 => parent.ctx.with_cancel(),
                                    1 => parent.ctx.with_value(i).with_cancel(),
                                    2 => parent.ctx.with_timeout(Duration::from_secs(3600)),
                                    _ => parent.ctx.merge(&pick(&mut rng).ctx),
                                };
                                if parent_was_done {
                                    // Done on creation: the parent was done
                                    // before the derive started.
                                    assert!(ctx.is_done(), "{ctx:?} under a done parent");
                                }
                                let mut p = pool.lock().unwrap();
                                if p.len() < 64 {
                                    p.push(Shared {
                                        ctx,
                                        handle: Some(handle),
                                    });
                                }
                            }
                            3 | 4 => {
                                let node = pick(&mut rng);
                                // Never the root: it ends the run.
                                if let Some(h) = &node.handle {
                                    let child = node.ctx.with_cancel().0;
                                    h.cancel_with_cause(NumberedError(i));
                                    assert!(node.ctx.is_done());
                                    assert!(child.is_done(), "child not done after cancel");
                                    let (err, cause) = (node.ctx.err(), node.ctx.cause());
                                    assert!(err.is_err() && cause.is_some());
                                    assert!(std::sync::Arc::ptr_eq(
                                        &child.cause().unwrap(),
                                        &cause.unwrap()
                                    ));
                                }
                            }
                            5 => {
                                let mut p = pool.lock().unwrap();
                                if p.len() > 1 {
                                    let k = 1 + rng.below(p.len() - 1);
                                    let gone = p.swap_remove(k);
                                    drop(p);
                                    drop(gone);
                                }
                            }
                            6 => {
                                let node = pick(&mut rng);
                                if let Some(err) = node.ctx.wait_timeout(Duration::ZERO) {
                                    assert_eq!(node.ctx.err(), Err(err));
                                }
                            }
                            7 => {
                                let node = pick(&mut rng);
                                let got = node.ctx.wait_timeout(Duration::from_micros(50));
                                if let Some(err) = got {
                                    assert_eq!(node.ctx.err(), Err(err));
                                }
                            }
                            8 | 9 => {
                                let node = pick(&mut rng);
                                let runs = Arc::new(AtomicUsize::new(0));
                                let r = Arc::clone(&runs);
                                let seen = node.ctx.clone();
                                let af = node.ctx.after_func(move || {
                                    assert!(seen.is_done());
                                    r.fetch_add(1, Ordering::SeqCst);
                                });
                                callbacks.lock().unwrap().push((af, runs));
                            }
                            10 => {
                                let mut cbs = callbacks.lock().unwrap();
                                if !cbs.is_empty() {
                                    let k = rng.below(cbs.len());
                                    if cbs[k].0.stop() {
                                        stopped.fetch_add(1, Ordering::SeqCst);
                                        assert_eq!(cbs[k].1.load(Ordering::SeqCst), 0);
                                        cbs.swap_remove(k);
                                    }
                                }
                            }
                            _ => {
                                let node = pick(&mut rng);
                                let err = node.ctx.err();
                                let cause = node.ctx.cause();
                                if err.is_err() {
                                    assert!(cause.is_some(), "err without cause");
                                }
                                if cause.is_some() {
                                    assert!(node.ctx.is_done());
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        root_handle.cancel();
        for node in pool.lock().unwrap().iter() {
            assert!(
                node.ctx.is_done(),
                "{:?} survived the root's cancel",
                node.ctx
            );
            assert!(node.ctx.wait_timeout(Duration::ZERO).is_some());
        }
        for (af, runs) in callbacks.lock().unwrap().iter() {
            assert_eq!(runs.load(Ordering::SeqCst), 1, "callback ran once");
            assert!(!af.stop(), "stop after run");
        }
    });
}

/// Threads blocked in `wait()` and tasks pending on `done()` at many depths
/// are all woken by one cancel of the root, however it races with them.
#[test]
fn every_blocked_waiter_at_every_depth_is_woken_by_one_cancel() {
    let _serial = serial();
    let rounds = scaled(200);
    with_watchdog(300, move || {
        for round in 0..rounds {
            let (root, handle) = Context::background().with_cancel();
            let mut chain = vec![root.clone()];
            for _ in 0..4 {
                let next = chain.last().unwrap().with_value(round).with_cancel().0;
                chain.push(next);
            }
            let waiters: Vec<_> = (0..4)
                .map(|i| {
                    let ctx = chain[i + 1].clone();
                    thread::spawn(move || {
                        if i % 2 == 0 {
                            ctx.wait()
                        } else {
                            futures::executor::block_on(ctx.done())
                        }
                    })
                })
                .collect();
            if round % 2 == 0 {
                thread::yield_now();
            }
            handle.cancel();
            for w in waiters {
                assert_eq!(w.join().unwrap(), Error::Canceled);
            }
        }
    });
}

/// Two threads cancel the two parents of many merges while a third derives
/// more merges and drops them: every merge ends with one parent's outcome
/// (the same cause Arc) and nothing is left half-cancelled.
#[test]
fn merges_cancelled_from_both_sides_while_being_derived_and_dropped_end_consistent() {
    let _serial = serial();
    let rounds = scaled(300);
    with_watchdog(300, move || {
        for _ in 0..rounds {
            let (a, ha) = Context::background().with_cancel();
            let (b, hb) = Context::background().with_cancel();
            let merges: Vec<Context> = (0..8).map(|_| a.merge(&b).0).collect();
            let go = Arc::new(Barrier::new(3));
            let stop = Arc::new(AtomicBool::new(false));
            let deriver = {
                let (a, b, go, stop) = (a.clone(), b.clone(), go.clone(), stop.clone());
                thread::spawn(move || {
                    go.wait();
                    let mut kept = Vec::new();
                    while !stop.load(Ordering::SeqCst) || kept.len() < 4 {
                        let (m, _h) = b.merge(&a);
                        if kept.len() % 2 == 0 {
                            kept.push(m);
                        } else {
                            kept.push(m.clone());
                            drop(m);
                        }
                        if kept.len() > 64 {
                            kept.drain(..32);
                        }
                    }
                    kept
                })
            };
            let ta = {
                let go = go.clone();
                thread::spawn(move || {
                    go.wait();
                    ha.cancel_with_cause(NumberedError(1));
                })
            };
            go.wait();
            hb.cancel_with_cause(NumberedError(2));
            ta.join().unwrap();
            stop.store(true, Ordering::SeqCst);
            let kept = deriver.join().unwrap();
            let (ca, cb) = (a.cause().unwrap(), b.cause().unwrap());
            for m in merges.iter().chain(&kept) {
                assert_eq!(m.err(), Err(Error::Canceled), "{m:?}");
                let c = m.cause().unwrap();
                assert!(Arc::ptr_eq(&c, &ca) || Arc::ptr_eq(&c, &cb), "{m:?} cause");
            }
        }
    });
}

/// The shared operation-sequence harness (the fuzz targets' second one) on
/// two threads, over a fixed set of pseudo-random inputs.
#[test]
fn model_harness_on_two_threads_over_many_random_inputs_keeps_every_invariant() {
    let _serial = serial();
    let runs = scaled(400);
    with_watchdog(300, move || {
        let mut rng = Rng(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..runs {
            let len = 64 + rng.below(448);
            let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            model::run_threads(&input);
        }
    });
}

/// Not a test of the crate: a deliberate data race, to prove that
/// ThreadSanitizer is really on. `.ci/tsan.sh` runs it alone and requires
/// TSan to report it (exit code 66). Without TSan it does nothing visible.
#[test]
#[ignore = "run by .ci/tsan.sh only: must FAIL under ThreadSanitizer"]
fn deliberate_data_race_is_reported_by_thread_sanitizer() {
    struct Racy(std::cell::UnsafeCell<u64>);
    // SAFETY: it is not; that is the point of this test.
    unsafe impl Sync for Racy {}
    let racy = Arc::new(Racy(std::cell::UnsafeCell::new(0)));
    let other = Arc::clone(&racy);
    let t = thread::spawn(move || {
        // SAFETY: deliberately racing with the write below (UB on purpose,
        // for the sanitizer to find).
        unsafe { *other.0.get() += 1 };
    });
    // SAFETY: as above.
    unsafe { *racy.0.get() += 1 };
    t.join().unwrap();
}
