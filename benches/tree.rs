//! Criterion micro-benchmarks: W1, W1_2t, W2, W3, W4, W10, W10m, W11 and the
//! physical limits L_atomic_load, L_alloc_1cas, L_alloc_3cas.
//!
//! Every workload is a criterion group named after the workload; the
//! function names are the implementations (`ctxtree`, `tokio-util`,
//! `mutex-port`). `benches/report.py` reads criterion's
//! `<target>/criterion/<group>/<impl>/new/{estimates,sample}.json`.
//!
//! `CTXTREE_BENCH_QUICK=1` shortens warm-up and measurement (CI smoke).

mod support;

use std::hint::black_box;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ctxtree::Context;
use support::mutex_port;
use tokio_util::sync::CancellationToken;

fn config() -> Criterion {
    let c = Criterion::default().without_plots();
    if support::quick() {
        c.warm_up_time(Duration::from_millis(150))
            .measurement_time(Duration::from_millis(400))
            .sample_size(10)
    } else {
        c.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sample_size(50)
    }
}

/// Runs `per_thread(iters_for_this_thread)` on two threads that start
/// together; returns the wall time from the common start to both ends.
/// Thread creation happens before the start and is not timed.
fn two_threads<F>(split: [u64; 2], f: F) -> Duration
where
    F: Fn(u64) + Sync,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let helper = s.spawn(|| {
            barrier.wait();
            f(split[1]);
        });
        barrier.wait();
        let start = Instant::now();
        f(split[0]);
        helper.join().unwrap();
        start.elapsed()
    })
}

// ---- W1: is_done on a live cancellable child ----------------------------

fn w1(c: &mut Criterion) {
    let mut g = c.benchmark_group("W1_check");
    {
        let (parent, _hp) = Context::background().with_cancel();
        let (ctx, _h) = parent.with_cancel();
        g.bench_function("ctxtree", |b| b.iter(|| black_box(&ctx).is_done()));
    }
    {
        let parent = CancellationToken::new();
        let tok = parent.child_token();
        g.bench_function("tokio-util", |b| b.iter(|| black_box(&tok).is_cancelled()));
    }
    {
        let (parent, _hp) = mutex_port::Ctx::background().with_cancel();
        let (ctx, _h) = parent.with_cancel();
        g.bench_function("mutex-port", |b| b.iter(|| black_box(&ctx).is_done()));
    }
    g.finish();

    // Both threads check the same context; time per check per thread.
    let mut g = c.benchmark_group("W1_check_2t");
    {
        let (parent, _hp) = Context::background().with_cancel();
        let (ctx, _h) = parent.with_cancel();
        g.bench_function("ctxtree", |b| {
            b.iter_custom(|iters| {
                two_threads([iters, iters], |n| {
                    for _ in 0..n {
                        black_box(black_box(&ctx).is_done());
                    }
                })
            })
        });
    }
    {
        let parent = CancellationToken::new();
        let tok = parent.child_token();
        g.bench_function("tokio-util", |b| {
            b.iter_custom(|iters| {
                two_threads([iters, iters], |n| {
                    for _ in 0..n {
                        black_box(black_box(&tok).is_cancelled());
                    }
                })
            })
        });
    }
    {
        let (parent, _hp) = mutex_port::Ctx::background().with_cancel();
        let (ctx, _h) = parent.with_cancel();
        g.bench_function("mutex-port", |b| {
            b.iter_custom(|iters| {
                two_threads([iters, iters], |n| {
                    for _ in 0..n {
                        black_box(black_box(&ctx).is_done());
                    }
                })
            })
        });
    }
    g.finish();
}

// ---- W2 / W3: derive a child, (cancel it,) drop it -----------------------

fn w2_w3(c: &mut Criterion) {
    for (group, cancel) in [("W2_child_cancel", true), ("W3_child_drop", false)] {
        let mut g = c.benchmark_group(group);
        {
            let (parent, _hp) = Context::background().with_cancel();
            g.bench_function("ctxtree", |b| {
                b.iter(|| {
                    let (ctx, h) = black_box(&parent).with_cancel();
                    if cancel {
                        h.cancel();
                    }
                    drop(black_box(ctx));
                    drop(h);
                })
            });
            assert!(!parent.is_done());
        }
        {
            let parent = CancellationToken::new();
            g.bench_function("tokio-util", |b| {
                b.iter(|| {
                    let tok = black_box(&parent).child_token();
                    if cancel {
                        tok.cancel();
                    }
                    drop(black_box(tok));
                })
            });
        }
        {
            let (parent, _hp) = mutex_port::Ctx::background().with_cancel();
            g.bench_function("mutex-port", |b| {
                b.iter(|| {
                    let (ctx, h) = black_box(&parent).with_cancel();
                    if cancel {
                        h.cancel();
                    }
                    drop(black_box(ctx));
                    drop(h);
                })
            });
        }
        g.finish();
    }
}

// ---- W4: two threads doing W2 on one shared parent -----------------------

fn w4(c: &mut Criterion) {
    // Each sample runs `iters` operations in total, split over the two
    // threads: criterion's time per iteration is wall time per operation of
    // the pair (1 / aggregate throughput).
    let split = |iters: u64| [iters - iters / 2, iters / 2];
    let mut g = c.benchmark_group("W4_contended_2t");
    {
        let (parent, _hp) = Context::background().with_cancel();
        g.bench_function("ctxtree", |b| {
            b.iter_custom(|iters| {
                two_threads(split(iters), |n| {
                    for _ in 0..n {
                        let (ctx, h) = parent.with_cancel();
                        h.cancel();
                        drop(black_box(ctx));
                    }
                })
            })
        });
    }
    {
        let parent = CancellationToken::new();
        g.bench_function("tokio-util", |b| {
            b.iter_custom(|iters| {
                two_threads(split(iters), |n| {
                    for _ in 0..n {
                        let tok = parent.child_token();
                        tok.cancel();
                        drop(black_box(tok));
                    }
                })
            })
        });
    }
    {
        let (parent, _hp) = mutex_port::Ctx::background().with_cancel();
        g.bench_function("mutex-port", |b| {
            b.iter_custom(|iters| {
                two_threads(split(iters), |n| {
                    for _ in 0..n {
                        let (ctx, h) = parent.with_cancel();
                        h.cancel();
                        drop(black_box(ctx));
                    }
                })
            })
        });
    }
    g.finish();
}

// ---- W10: with_timeout(30 s), cancel, drop --------------------------------

fn w10(c: &mut Criterion) {
    let mut g = c.benchmark_group("W10_timeout_cancel");
    let thirty = Duration::from_secs(30);
    {
        let (parent, _hp) = Context::background().with_cancel();
        // Start the timer thread outside the measurement.
        drop(parent.with_timeout(thirty));
        g.bench_function("ctxtree", |b| {
            b.iter(|| {
                let (ctx, h) = black_box(&parent).with_timeout(thirty);
                h.cancel();
                drop(black_box(ctx));
            })
        });
        assert_eq!(ctxtree::__private::armed_timers(), 0);
    }
    {
        // tokio-util has no deadlines: the idiomatic equivalent is a child
        // token plus a task that cancels it when a tokio sleep fires. The
        // task is polled once (the sleep is armed) before the cancel, and
        // awaited after it (the sleep is disarmed when the task ends).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let parent = CancellationToken::new();
        g.bench_function("tokio-util", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let tok = parent.child_token();
                        let t2 = tok.clone();
                        let task = tokio::spawn(async move {
                            tokio::select! {
                                _ = tokio::time::sleep(thirty) => t2.cancel(),
                                _ = t2.cancelled() => {}
                            }
                        });
                        tokio::task::yield_now().await;
                        tok.cancel();
                        task.await.unwrap();
                        drop(black_box(tok));
                    }
                    start.elapsed()
                })
            })
        });
    }
    {
        let (parent, _hp) = mutex_port::Ctx::background().with_cancel();
        drop(parent.with_timeout(thirty));
        g.bench_function("mutex-port", |b| {
            b.iter(|| {
                let (ctx, h) = black_box(&parent).with_timeout(thirty);
                h.cancel();
                drop(black_box(ctx));
            })
        });
    }
    g.finish();
}

// ---- W11: value::<T>() through N cancel/deadline layers ------------------

#[derive(Debug, PartialEq)]
struct Key(u64);

const LAYERS: [usize; 4] = [1, 10, 100, 1000];

fn w11(c: &mut Criterion) {
    let mut g = c.benchmark_group("W11_value_depth");
    for layers in LAYERS {
        // Alternate cancel and deadline layers; each deadline is earlier
        // than the one above it, so every deadline layer is a real one.
        let mut ctx = Context::background().with_value(Key(7));
        let mut keep = Vec::new();
        for i in 0..layers {
            let (c, h) = if i % 2 == 0 {
                ctx.with_cancel()
            } else {
                ctx.with_timeout(Duration::from_secs(3600) - Duration::from_millis(i as u64))
            };
            keep.push(h);
            ctx = c;
        }
        assert_eq!(ctx.value::<Key>(), Some(&Key(7)));
        g.bench_with_input(BenchmarkId::new("ctxtree", layers), &ctx, |b, ctx| {
            b.iter(|| black_box(ctx).value::<Key>().map(|k| k.0))
        });
        drop(keep);

        let mut ctx = mutex_port::Ctx::background().with_value(Key(7));
        let mut keep = Vec::new();
        for i in 0..layers {
            let (c, h) = if i % 2 == 0 {
                ctx.with_cancel()
            } else {
                ctx.with_timeout(Duration::from_secs(3600) - Duration::from_millis(i as u64))
            };
            keep.push(h);
            ctx = c;
        }
        assert_eq!(ctx.value::<Key>(), Some(&Key(7)));
        g.bench_with_input(BenchmarkId::new("mutex-port", layers), &ctx, |b, ctx| {
            b.iter(|| black_box(ctx).value::<Key>().map(|k| k.0))
        });
        for h in &keep {
            h.cancel();
        }
    }
    g.finish();
}

// ---- W10m: moving a deadline ---------------------------------------------

/// `set_timeout` on a live deadline context, every iteration: `later`
/// moves it later each time (one CAS, the idle-timeout pattern);
/// `earlier_later` alternates 20 s and 30 s, so every other move is earlier
/// (a re-arm under the entry's shard lock).
fn w10m(c: &mut Criterion) {
    let mut g = c.benchmark_group("W10m_move_deadline");
    let (ctx, h) = Context::background().with_timeout(Duration::from_secs(30));
    g.bench_function(BenchmarkId::new("ctxtree", "later"), |b| {
        b.iter(|| black_box(&h).set_timeout(Duration::from_secs(30)))
    });
    let mut flip = false;
    g.bench_function(BenchmarkId::new("ctxtree", "earlier_later"), |b| {
        b.iter(|| {
            flip = !flip;
            let secs = if flip { 20 } else { 30 };
            black_box(&h).set_timeout(Duration::from_secs(secs))
        })
    });
    assert!(!ctx.is_done());
    h.cancel();
    g.finish();
}

// ---- Limits ---------------------------------------------------------------

fn limits(c: &mut Criterion) {
    let mut g = c.benchmark_group("L_atomic_load");
    let a = AtomicUsize::new(0);
    g.bench_function("limit", |b| {
        b.iter(|| black_box(&a).load(Ordering::Acquire))
    });
    g.finish();

    // One 64-byte allocation, N uncontended compare-exchanges on a shared
    // word, one free: the floor under "derive, (cancel,) drop".
    #[repr(align(8))]
    #[allow(dead_code)]
    struct Block([u64; 8]);
    for (group, cases) in [("L_alloc_1cas", 1), ("L_alloc_3cas", 3)] {
        let mut g = c.benchmark_group(group);
        let slot: AtomicPtr<Block> = AtomicPtr::new(ptr::null_mut());
        g.bench_function("limit", |b| {
            b.iter(|| {
                let p = Box::into_raw(Box::new(Block([0; 8])));
                let mut cur = black_box(&slot).load(Ordering::Relaxed);
                let old = cur;
                let mut want = p;
                for i in 0..cases {
                    // AcqRel like a push / state CAS; never fails here.
                    match slot.compare_exchange(cur, want, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => cur = want,
                        Err(a) => cur = a,
                    }
                    want = if i % 2 == 0 { p.map_addr(|x| x | 1) } else { p };
                }
                // Leave the slot holding the new block, untagged.
                slot.store(p, Ordering::Relaxed);
                if !old.is_null() {
                    // SAFETY: `old` came from Box::into_raw in an earlier
                    // iteration and is no longer in the slot.
                    drop(unsafe { Box::from_raw(old) });
                }
            })
        });
        let last = slot.swap(ptr::null_mut(), Ordering::Relaxed);
        if !last.is_null() {
            // SAFETY: as above.
            drop(unsafe { Box::from_raw(last) });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = limits, w1, w2_w3, w4, w10, w10m, w11
}
criterion_main!(benches);
