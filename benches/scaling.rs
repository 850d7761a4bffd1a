//! Scaling with a second core and timer punctuality (issues 11 and 12).
//!
//! - `P_parallelism/before`, `P_parallelism/after`: how parallel the
//!   machine really is while the scaling rows run. A fixed spin workload on
//!   one thread, then the same workload on two threads at once; the row is
//!   `2 × t(1 thread) / t(2 threads)`: about 2.0 when both vCPUs are free,
//!   about 1.0 when the two threads are time-sliced on one. Measured before
//!   and after the `S_scaling` rows.
//! - `S_scaling/<op>/<shape>`: aggregate ns per operation (wall time of
//!   all threads / all operations) for `cancel_drop` (derive a cancellable
//!   child of a parent, cancel it, drop it), `drop` (derive, drop
//!   uncancelled) and `timeout_cancel_drop` (`with_timeout(30 s)`, cancel,
//!   drop), on the shapes `1t` (one thread), `2t_private` (two threads,
//!   each with its own parent) and `2t_shared` (two threads on one shared
//!   parent). Every (op, shape, implementation) is measured once per
//!   repetition, the implementations taking turns inside each repetition so
//!   that drift hits them alike; the row is the median over the
//!   repetitions. tokio-util has no deadlines: its `timeout_cancel_drop` is
//!   a child token plus a `tokio::time::Sleep` of 30 s armed in the timer of
//!   a 2-worker multi-thread runtime (polled once, then dropped after the
//!   cancel): the arm and disarm of a timer, not linked to the token.
//! - `T_lateness/plain`, `T_lateness/slow_callbacks_1pct`: 10,000 ctxtree
//!   deadlines (`with_timeout` from `background()`) spread evenly over 1 s,
//!   each with an `after_func` recording when it runs; lateness = that time
//!   minus the context's `deadline()`, in ms. In the `slow` variant 1 % of
//!   the contexts (every 100th deadline) carry instead an `after_func` that
//!   sleeps 300 ms; the row is the lateness of the other 99 %.
//!
//! Rows go to `<results>/scaling.jsonl` (see `support::results_dir`).
//! `CTXTREE_BENCH_QUICK=1`: fewer operations and repetitions, 1,000
//! deadlines over 200 ms. `cargo bench --bench scaling -- T_lateness` runs
//! only the rows whose name contains an argument (`P_parallelism` rows run
//! with `S_scaling`).

mod support;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::Context as TaskCx;
use std::time::{Duration, Instant};

use ctxtree::{CancelHandle, Context};
use support::{mutex_port, ns, record, stats};
use tokio_util::sync::CancellationToken;

const FILE: &str = "scaling";
const IMPLS: [&str; 3] = ["ctxtree", "tokio-util", "mutex-port"];
const OPS: [&str; 3] = ["cancel_drop", "drop", "timeout_cancel_drop"];
/// (name, threads, shared parent)
const SHAPES: [(&str, usize, bool); 3] = [
    ("1t", 1, false),
    ("2t_private", 2, false),
    ("2t_shared", 2, true),
];
const THIRTY: Duration = Duration::from_secs(30);

fn pick<T>(full: T, quick: T) -> T {
    if support::quick() {
        quick
    } else {
        full
    }
}

/// Runs `f(thread_index)` on `threads` threads (the calling thread is
/// index 0) that start together; returns the wall time from the common
/// start to the end of the last one. Thread creation is not timed.
fn run_threads<F>(threads: usize, f: F) -> Duration
where
    F: Fn(usize) + Sync,
{
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads)
            .map(|i| {
                let (b, f) = (&barrier, &f);
                s.spawn(move || {
                    b.wait();
                    f(i);
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        f(0);
        for h in helpers {
            h.join().unwrap();
        }
        start.elapsed()
    })
}

// ---- P: parallelism probe ---------------------------------------------------

/// A fixed amount of CPU work with no memory traffic (xorshift chain).
fn spin(iters: u64) -> u64 {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15_u64);
    for _ in 0..black_box(iters) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x)
}

fn probe(row: &str) {
    let iters = pick(10_000_000, 3_000_000);
    spin(iters); // warm-up (frequency, page faults)
    let ratios: Vec<f64> = (0..pick(7, 3))
        .map(|_| {
            let one = run_threads(1, |_| {
                spin(iters);
            });
            let two = run_threads(2, |_| {
                spin(iters);
            });
            2.0 * ns(one) / ns(two)
        })
        .collect();
    record(FILE, row, "machine", "ratio", stats(&ratios));
}

// ---- S: derive/cancel/drop on 1 and 2 threads --------------------------------

/// Two parents per implementation: thread `i` of a private shape uses
/// parent `i`, both threads of the shared shape use parent 0.
struct Parents {
    cx: [(Context, CancelHandle); 2],
    tok: [CancellationToken; 2],
    mp: [(mutex_port::Ctx, mutex_port::CancelFn); 2],
    /// Allocations made between the parents and kept alive, so that two
    /// private parents never share a cache line (false sharing would make
    /// the private shape look shared).
    _gaps: Vec<Vec<u8>>,
}

impl Parents {
    fn new() -> Parents {
        let mut gaps = Vec::new();
        let mut gap = || gaps.push(vec![0u8; 256]);
        let cx0 = Context::background().with_cancel();
        gap();
        let cx1 = Context::background().with_cancel();
        gap();
        let tok0 = CancellationToken::new();
        gap();
        let tok1 = CancellationToken::new();
        gap();
        let mp0 = mutex_port::Ctx::background().with_cancel();
        gap();
        let mp1 = mutex_port::Ctx::background().with_cancel();
        gap();
        Parents {
            cx: [cx0, cx1],
            tok: [tok0, tok1],
            mp: [mp0, mp1],
            _gaps: gaps,
        }
    }
}

/// `n` operations `op` of implementation `imp` on parent `p`.
fn ops(imp: &str, op: &str, parents: &Parents, p: usize, n: usize, rt: &tokio::runtime::Runtime) {
    match (imp, op) {
        ("ctxtree", "cancel_drop") => {
            let parent = &parents.cx[p].0;
            for _ in 0..n {
                let (ctx, h) = black_box(parent).with_cancel();
                h.cancel();
                drop(black_box(ctx));
            }
        }
        ("ctxtree", "drop") => {
            let parent = &parents.cx[p].0;
            for _ in 0..n {
                let (ctx, h) = black_box(parent).with_cancel();
                drop(black_box(h));
                drop(black_box(ctx));
            }
        }
        ("ctxtree", "timeout_cancel_drop") => {
            let parent = &parents.cx[p].0;
            for _ in 0..n {
                let (ctx, h) = black_box(parent).with_timeout(THIRTY);
                h.cancel();
                drop(black_box(ctx));
            }
        }
        ("tokio-util", "cancel_drop") => {
            let parent = &parents.tok[p];
            for _ in 0..n {
                let tok = black_box(parent).child_token();
                tok.cancel();
                drop(black_box(tok));
            }
        }
        ("tokio-util", "drop") => {
            let parent = &parents.tok[p];
            for _ in 0..n {
                drop(black_box(black_box(parent).child_token()));
            }
        }
        ("tokio-util", "timeout_cancel_drop") => {
            // No deadlines in tokio-util: a child token and a 30 s tokio
            // Sleep armed in the runtime's (sharded) timer, disarmed by the
            // drop after the cancel.
            let parent = &parents.tok[p];
            let _enter = rt.enter();
            let mut cx = TaskCx::from_waker(futures::task::noop_waker_ref());
            for _ in 0..n {
                let tok = black_box(parent).child_token();
                let mut sleep = pin!(tokio::time::sleep(THIRTY));
                assert!(sleep.as_mut().poll(&mut cx).is_pending());
                tok.cancel();
                drop(black_box(tok));
            }
        }
        ("mutex-port", "cancel_drop") => {
            let parent = &parents.mp[p].0;
            for _ in 0..n {
                let (ctx, h) = black_box(parent).with_cancel();
                h.cancel();
                drop(black_box(ctx));
            }
        }
        ("mutex-port", "drop") => {
            let parent = &parents.mp[p].0;
            for _ in 0..n {
                let (ctx, h) = black_box(parent).with_cancel();
                drop(black_box(h));
                drop(black_box(ctx));
            }
        }
        ("mutex-port", "timeout_cancel_drop") => {
            let parent = &parents.mp[p].0;
            for _ in 0..n {
                let (ctx, h) = black_box(parent).with_timeout(THIRTY);
                h.cancel();
                drop(black_box(ctx));
            }
        }
        _ => unreachable!("{imp} {op}"),
    }
}

/// Aggregate ns per operation of one (implementation, op, shape).
fn measure(
    imp: &str,
    op: &str,
    (threads, shared): (usize, bool),
    parents: &Parents,
    n: usize,
    rt: &tokio::runtime::Runtime,
) -> f64 {
    let wall = run_threads(threads, |i| {
        ops(imp, op, parents, if shared { 0 } else { i }, n, rt)
    });
    ns(wall) / (threads * n) as f64
}

fn scaling() {
    let n = pick(200_000, 20_000);
    let reps = pick(9, 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a multi-thread runtime");
    let parents = Parents::new();
    // Warm-up: starts ctxtree's and the mutex port's timer threads, fills
    // the allocators' caches.
    for op in OPS {
        for &(_, threads, shared) in &SHAPES {
            for imp in IMPLS {
                measure(imp, op, (threads, shared), &parents, n / 10, &rt);
            }
        }
    }
    let mut samples = vec![vec![vec![Vec::new(); IMPLS.len()]; SHAPES.len()]; OPS.len()];
    for rep in 0..reps {
        for (o, op) in OPS.iter().enumerate() {
            for (s, &(_, threads, shared)) in SHAPES.iter().enumerate() {
                // Rotate the order of the implementations from one
                // repetition to the next.
                for k in 0..IMPLS.len() {
                    let i = (k + rep) % IMPLS.len();
                    let v = measure(IMPLS[i], op, (threads, shared), &parents, n, &rt);
                    samples[o][s][i].push(v);
                }
            }
        }
    }
    assert_eq!(ctxtree::__private::armed_timers(), 0);
    for (o, op) in OPS.iter().enumerate() {
        for (s, (shape, _, _)) in SHAPES.iter().enumerate() {
            for (i, imp) in IMPLS.iter().enumerate() {
                record(
                    FILE,
                    &format!("S_scaling/{op}/{shape}"),
                    imp,
                    "ns/op",
                    stats(&samples[o][s][i]),
                );
            }
        }
    }
}

// ---- T: timer lateness -------------------------------------------------------

/// A small deterministic generator for the creation order.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn lateness(row: &str, slow_every: Option<usize>) {
    let count = pick(10_000, 1_000);
    let spread = pick(Duration::from_secs(1), Duration::from_millis(200));
    let lead = Duration::from_millis(100);
    let slow_sleep = Duration::from_millis(300);
    let is_slow = |i: usize| slow_every.is_some_and(|k| i % k == k / 2);
    let slow_count = (0..count).filter(|&i| is_slow(i)).count();

    // fired[i]: ns since `base` + 1 when context i's recorder ran, 0 before.
    let fired: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicUsize::new(0));
    // Creation in a shuffled order, as a server's requests arrive.
    let mut order: Vec<usize> = (0..count).collect();
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    for j in (1..count).rev() {
        order.swap(j, (xorshift(&mut seed) % (j as u64 + 1)) as usize);
    }
    let base = Instant::now();
    let mut live = Vec::with_capacity(count);
    for &i in &order {
        let target = base + lead + spread * i as u32 / count as u32;
        let (ctx, h) =
            Context::background().with_timeout(target.saturating_duration_since(Instant::now()));
        let deadline = ctx.deadline().expect("a deadline context");
        let af = if is_slow(i) {
            let d = done.clone();
            ctx.after_func(move || {
                std::thread::sleep(slow_sleep);
                d.fetch_add(1, Ordering::Release);
            })
        } else {
            let (f, d) = (fired.clone(), done.clone());
            ctx.after_func(move || {
                // Relaxed: the value is read after the Acquire load of
                // `done` that this callback's Release increment precedes.
                f[i].store(ns(base.elapsed()) as u64 + 1, Ordering::Relaxed);
                d.fetch_add(1, Ordering::Release);
            })
        };
        live.push((i, deadline, ctx, h, af));
    }
    let created = base.elapsed();
    // Every deadline fires in order on today's timer, so the last one can
    // wait for every slow callback: allow for that, and a generous margin.
    let watchdog = lead + spread + slow_sleep * slow_count as u32 + Duration::from_secs(30);
    while done.load(Ordering::Acquire) < count {
        assert!(
            base.elapsed() < watchdog,
            "{row}: only {} of {count} deadlines fired within {watchdog:?}",
            done.load(Ordering::Acquire)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let late_ms: Vec<f64> = live
        .iter()
        .filter(|(i, ..)| !is_slow(*i))
        .map(|(i, deadline, ..)| {
            let at = fired[*i].load(Ordering::Relaxed) - 1;
            let at = base + Duration::from_nanos(at);
            // Signed: a timer that fires early shows a negative lateness.
            if at >= *deadline {
                ns(at - *deadline) / 1e6
            } else {
                -ns(*deadline - at) / 1e6
            }
        })
        .collect();
    drop(live);
    println!(
        "{row}: {count} deadlines over {spread:?}, {slow_count} with a {slow_sleep:?} callback; \
         created in {created:?}"
    );
    record(FILE, row, "ctxtree", "ms", stats(&late_ms));
}

fn main() {
    // `cargo bench --bench scaling -- <filter>`: only the rows whose name
    // contains an argument (cargo passes `--bench`, ignored).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    if filters.is_empty() {
        support::reset(FILE);
    }
    let t = Instant::now();
    if want("S_scaling") || want("P_parallelism") {
        probe("P_parallelism/before");
        scaling();
        probe("P_parallelism/after");
    }
    if want("T_lateness/plain") {
        lateness("T_lateness/plain", None);
    }
    if want("T_lateness/slow_callbacks_1pct") {
        lateness("T_lateness/slow_callbacks_1pct", Some(100));
    }
    println!("scaling: {:.1} s", t.elapsed().as_secs_f64());
}
