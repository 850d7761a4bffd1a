//! Workloads that criterion's per-iteration model does not fit: large
//! one-shot structures (W5 fan-out, W6 deep chains), latency distributions
//! (W7, and W7_async with an async waiter) and wake-all times (W8), with
//! their physical limits (L_park_unpark, L_park_unpark_async,
//! L_block_on_wake, L_tokio_wake_1000).
//!
//! Each workload is repeated and summarised (median, p10/p90, p99) into
//! `<target>/ctxtree-bench/bulk.jsonl` (see `support::results_dir`).
//! `CTXTREE_BENCH_QUICK=1` runs fewer repetitions.
//!
//! The 1,000,000-level chain on a 256 KiB stack runs in a child process per
//! implementation (this binary re-executed with `CTXTREE_BENCH_CHILD`), so
//! a stack overflow is recorded as a failure instead of ending the run.

mod support;

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use ctxtree::Context;
use support::bare_wake::{
    bare_park_pair, current_thread, spawn_blocked_waiter, spawn_waiters, Bare, BareWait,
};
use support::{mutex_port, ns, record, record_check, stats};
use tokio_util::sync::CancellationToken;

const FILE: &str = "bulk";
const IMPLS: [&str; 3] = ["ctxtree", "tokio-util", "mutex-port"];

fn reps(full: usize, quick: usize) -> usize {
    if support::quick() {
        quick
    } else {
        full
    }
}

/// Runs `f` on a thread with a large stack (the peers recurse).
fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

// The ctxtree and mutex-port arms of W5 and W6 are the same code over two
// types with the same Go-style API: one macro body each.

/// W5 for a Go-style API (`with_cancel()` returning (ctx, handle)).
macro_rules! w5_go_style {
    ($background:expr, $n:expr) => {{
        let n = $n;
        let (parent, h) = $background.with_cancel();
        let mut kids = Vec::with_capacity(n);
        let t = Instant::now();
        for _ in 0..n {
            kids.push(parent.with_cancel());
        }
        let build = t.elapsed();
        let t = Instant::now();
        h.cancel();
        let cancel = t.elapsed();
        assert!(kids[n / 2].0.is_done());
        let t = Instant::now();
        drop(kids);
        drop(parent);
        drop(h);
        let dropped = t.elapsed();
        [build, cancel, dropped].map(|d| ns(d) / n as f64)
    }};
}

/// W6 for a Go-style API.
macro_rules! w6_go_style {
    ($background:expr, $n:expr) => {{
        let n = $n;
        let (root, h) = $background.with_cancel();
        let mut levels = Vec::with_capacity(n);
        let t = Instant::now();
        let mut ctx = root.clone();
        for _ in 0..n {
            let (c, hh) = ctx.with_cancel();
            levels.push((ctx, hh));
            ctx = c;
        }
        let build = t.elapsed();
        let t = Instant::now();
        h.cancel();
        let cancel = t.elapsed();
        assert!(ctx.is_done());
        let t = Instant::now();
        drop(levels);
        drop(ctx);
        drop(root);
        drop(h);
        let dropped = t.elapsed();
        [build, cancel, dropped].map(|d| ns(d) / n as f64)
    }};
}

// ---- W5: fan-out ------------------------------------------------------------

const FANOUT: usize = 100_000;

/// (build, cancel, drop) in ns per child for one run.
fn w5_once(imp: &str) -> [f64; 3] {
    let n = FANOUT;
    match imp {
        "ctxtree" => w5_go_style!(Context::background(), n),
        "tokio-util" => {
            let parent = CancellationToken::new();
            let mut kids = Vec::with_capacity(n);
            let t = Instant::now();
            for _ in 0..n {
                kids.push(parent.child_token());
            }
            let build = t.elapsed();
            let t = Instant::now();
            parent.cancel();
            let cancel = t.elapsed();
            assert!(kids[n / 2].is_cancelled());
            let t = Instant::now();
            drop(kids);
            drop(parent);
            let dropped = t.elapsed();
            [build, cancel, dropped].map(|d| ns(d) / n as f64)
        }
        "mutex-port" => w5_go_style!(mutex_port::Ctx::background(), n),
        _ => unreachable!(),
    }
}

fn w5() {
    for imp in IMPLS {
        let mut runs = [vec![], vec![], vec![]];
        w5_once(imp); // warm-up (allocator, page faults)
        for _ in 0..reps(15, 3) {
            let r = w5_once(imp);
            for i in 0..3 {
                runs[i].push(r[i]);
            }
        }
        for (i, phase) in ["build", "cancel", "drop"].iter().enumerate() {
            record(
                FILE,
                &format!("W5_fanout_cancel/{phase}"),
                imp,
                "ns/child",
                stats(&runs[i]),
            );
        }
    }
}

// ---- W6: deep chain ---------------------------------------------------------

/// (build, cancel root, drop) in ns per level for one chain of `n`.
fn w6_once(imp: &str, n: usize) -> [f64; 3] {
    match imp {
        "ctxtree" => w6_go_style!(Context::background(), n),
        "tokio-util" => {
            let root = CancellationToken::new();
            let mut levels = Vec::with_capacity(n);
            let t = Instant::now();
            let mut tok = root.clone();
            for _ in 0..n {
                let c = tok.child_token();
                levels.push(tok);
                tok = c;
            }
            let build = t.elapsed();
            let t = Instant::now();
            root.cancel();
            let cancel = t.elapsed();
            assert!(tok.is_cancelled());
            let t = Instant::now();
            drop(levels);
            drop(tok);
            drop(root);
            let dropped = t.elapsed();
            [build, cancel, dropped].map(|d| ns(d) / n as f64)
        }
        "mutex-port" => w6_go_style!(mutex_port::Ctx::background(), n),
        _ => unreachable!(),
    }
}

fn w6() {
    const DEPTH: usize = 10_000;
    for imp in IMPLS {
        // On a big-stack thread: the mutex port recurses 10,000 deep.
        let runs = on_big_stack(move || {
            let mut runs = [vec![], vec![], vec![]];
            w6_once(imp, DEPTH);
            for _ in 0..reps(25, 5) {
                let r = w6_once(imp, DEPTH);
                for i in 0..3 {
                    runs[i].push(r[i]);
                }
            }
            runs
        });
        for (i, phase) in ["build", "cancel", "drop"].iter().enumerate() {
            record(
                FILE,
                &format!("W6_deep_chain/{phase}"),
                imp,
                "ns/level",
                stats(&runs[i]),
            );
        }
    }
    // 1,000,000 levels on a 256 KiB stack, one child process each.
    let exe = std::env::current_exe().unwrap();
    for imp in IMPLS {
        let t = Instant::now();
        let out = std::process::Command::new(&exe)
            .env("CTXTREE_BENCH_CHILD", format!("w6_1m:{imp}"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let note = if out.status.success() {
            "completed".to_string()
        } else if stderr.contains("overflow") {
            "stack overflow".to_string()
        } else {
            format!("failed: {}", out.status)
        };
        record_check(
            FILE,
            "W6_deep_chain/1M_on_256KiB",
            imp,
            out.status.success(),
            secs,
            &note,
        );
    }
}

/// Child process: build, cancel and drop a 1,000,000-level chain on a
/// thread with a 256 KiB stack.
fn w6_1m_child(imp: &str) {
    let imp = imp.to_string();
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            w6_once(&imp, 1_000_000);
        })
        .unwrap()
        .join()
        .unwrap();
}

// ---- W7: cancel-to-wake latency of one blocked thread ------------------------

/// One round: a thread blocks in `wait`, then the main thread cancels. The
/// latency runs from just before the cancel call to just after the waiter
/// returns (one monotonic clock, read on both threads).
fn wake_round<W, C>(wait: W, cancel: C) -> f64
where
    W: FnOnce() + Send + 'static,
    C: FnOnce(&std::thread::Thread),
{
    let waiter = spawn_blocked_waiter(move || {
        wait();
        Instant::now()
    });
    let t0 = Instant::now();
    cancel(waiter.thread());
    let woke = waiter.join().unwrap();
    ns(woke.saturating_duration_since(t0))
}

fn w7() {
    // The implementations take turns round by round, so a change in the
    // machine's state (load, frequency) hits all of them alike.
    let rounds = reps(1500, 150);
    let mut lat: [Vec<f64>; 4] = Default::default();
    let (cx_parent, _hp) = Context::background().with_cancel();
    let tok_parent = CancellationToken::new();
    let (mp_parent, _hmp) = mutex_port::Ctx::background().with_cancel();
    for _ in 0..rounds {
        let (ctx, h) = cx_parent.with_cancel();
        lat[0].push(wake_round(
            move || {
                black_box(ctx.wait());
            },
            |_| h.cancel(),
        ));

        let tok = tok_parent.child_token();
        let t2 = tok.clone();
        lat[1].push(wake_round(
            move || futures::executor::block_on(t2.cancelled()),
            |_| tok.cancel(),
        ));

        let (ctx, h) = mp_parent.with_cancel();
        lat[2].push(wake_round(
            move || {
                black_box(ctx.wait());
            },
            |_| h.cancel(),
        ));

        // The limit: a bare flag + thread::park/unpark (futex) round trip.
        let (wait, wake) = bare_park_pair();
        lat[3].push(wake_round(wait, wake));
    }
    record(FILE, "W7_wake_latency", "ctxtree", "ns", stats(&lat[0]));
    record(FILE, "W7_wake_latency", "tokio-util", "ns", stats(&lat[1]));
    record(FILE, "W7_wake_latency", "mutex-port", "ns", stats(&lat[2]));
    record(FILE, "L_park_unpark", "limit", "ns", stats(&lat[3]));
}

// ---- W7 async: the waiter is a thread in `block_on(done())` ------------------

/// W7 with an async waiter, as a user meets it: a thread parked in
/// `futures::executor::block_on(ctx.done())` (tokio-util:
/// `block_on(cancelled())`; mutex port: `block_on(done())`), woken by the
/// cancel on the main thread. Floors measured in the same rounds: the bare
/// `park`/`unpark` pair of W7 (`L_park_unpark_async`) and `block_on` of a
/// bare flag-and-waker future (`L_block_on_wake`).
fn w7_async() {
    use futures::executor::block_on;
    let rounds = reps(1500, 150);
    let mut lat: [Vec<f64>; 5] = Default::default();
    let (cx_parent, _hp) = Context::background().with_cancel();
    let tok_parent = CancellationToken::new();
    let (mp_parent, _hmp) = mutex_port::Ctx::background().with_cancel();
    for _ in 0..rounds {
        let (ctx, h) = cx_parent.with_cancel();
        lat[0].push(wake_round(
            move || {
                black_box(block_on(ctx.done()));
            },
            |_| h.cancel(),
        ));

        let tok = tok_parent.child_token();
        let t2 = tok.clone();
        lat[1].push(wake_round(
            move || block_on(t2.cancelled()),
            |_| tok.cancel(),
        ));

        let (ctx, h) = mp_parent.with_cancel();
        lat[2].push(wake_round(
            move || {
                black_box(block_on(ctx.done()));
            },
            |_| h.cancel(),
        ));

        let (wait, wake) = bare_park_pair();
        lat[3].push(wake_round(wait, wake));

        let bare = Arc::new(Bare::default());
        let b2 = bare.clone();
        lat[4].push(wake_round(
            move || block_on(BareWait(b2, false)),
            |_| bare.fire(),
        ));
    }
    let row = "W7_wake_latency_async";
    record(FILE, row, "ctxtree", "ns", stats(&lat[0]));
    record(FILE, row, "tokio-util", "ns", stats(&lat[1]));
    record(FILE, row, "mutex-port", "ns", stats(&lat[2]));
    record(FILE, "L_park_unpark_async", "limit", "ns", stats(&lat[3]));
    record(FILE, "L_block_on_wake", "limit", "ns", stats(&lat[4]));
}

// ---- W8: wake 1,000 tasks ---------------------------------------------------

/// One round on a current-thread runtime: spawn `TASKS` tasks awaiting
/// `make_wait()`, let every one of them register, cancel, and take the time
/// from just before the cancel to the completion of the last task.
fn wake_many_round<F, W, C>(rt: &tokio::runtime::Runtime, make_wait: W, cancel: C) -> f64
where
    W: Fn() -> F,
    F: Future + Send + 'static,
    C: FnOnce(),
{
    rt.block_on(async {
        let round = spawn_waiters(make_wait).await;
        let t0 = Instant::now();
        cancel();
        round.all_done.notified().await;
        let end = round.end.lock().unwrap().unwrap();
        ns(end - t0)
    })
}

fn w8() {
    let rt = current_thread();
    let rounds = reps(300, 30);
    // Round by round in turn, as in W7.
    let mut lat: [Vec<f64>; 4] = Default::default();
    let (cx_parent, _hp) = Context::background().with_cancel();
    let tok_parent = CancellationToken::new();
    let (mp_parent, _hmp) = mutex_port::Ctx::background().with_cancel();
    for _ in 0..rounds {
        let (ctx, h) = cx_parent.with_cancel();
        lat[0].push(wake_many_round(&rt, || ctx.done(), || h.cancel()));

        let tok = tok_parent.child_token();
        lat[1].push(wake_many_round(
            &rt,
            || tok.clone().cancelled_owned(),
            || tok.cancel(),
        ));

        let (ctx, h) = mp_parent.with_cancel();
        lat[2].push(wake_many_round(&rt, || ctx.done(), || h.cancel()));

        let bare = Arc::new(Bare::default());
        lat[3].push(wake_many_round(
            &rt,
            || BareWait(bare.clone(), false),
            || bare.fire(),
        ));
    }
    record(FILE, "W8_wake_many", "ctxtree", "ns", stats(&lat[0]));
    record(FILE, "W8_wake_many", "tokio-util", "ns", stats(&lat[1]));
    record(FILE, "W8_wake_many", "mutex-port", "ns", stats(&lat[2]));
    record(FILE, "L_tokio_wake_1000", "limit", "ns", stats(&lat[3]));
}

fn main() {
    if let Ok(child) = std::env::var("CTXTREE_BENCH_CHILD") {
        if let Some(imp) = child.strip_prefix("w6_1m:") {
            w6_1m_child(imp);
            return;
        }
        panic!("unknown child job {child}");
    }
    // `cargo bench -- <filter>`: run only the workloads whose name contains
    // one of the arguments (cargo passes `--bench`, ignored).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    // `--exact`: a filter names one workload (the suite's child processes:
    // `W7_wake_latency` must not also run `W7_wake_latency_async`).
    let exact = args.iter().any(|a| a == "--exact");
    if filters.is_empty() {
        // The whole suite: each workload in a process of its own, so that
        // none inherits another's heap. W8 allocates per task (tokio's
        // task cells, event-listener's listener boxes) and was measured
        // 1.2x its floor in a fresh process but 1.5x right after W5 had
        // freed 100,000 nodes in the same process (glibc's free lists).
        support::reset(FILE);
        let exe = std::env::current_exe().expect("the bench binary's path");
        for workload in [
            "W5_fanout_cancel",
            "W6_deep_chain",
            "W7_wake_latency",
            "W7_wake_latency_async",
            "W8_wake_many",
        ] {
            let status = std::process::Command::new(&exe)
                .args([workload, "--exact"])
                .status()
                .expect("run a bench child process");
            assert!(status.success(), "{workload}: {status}");
        }
        return;
    }
    let want = |name: &str| {
        filters.iter().any(|f| {
            if exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        })
    };
    if want("W5_fanout_cancel") {
        w5();
    }
    if want("W6_deep_chain") {
        w6();
    }
    if want("W7_wake_latency") || want("L_park_unpark") {
        w7();
    }
    if want("W7_wake_latency_async") || want("L_park_unpark_async") || want("L_block_on_wake") {
        w7_async();
    }
    if want("W8_wake_many") || want("L_tokio_wake_1000") {
        w8();
    }
}
