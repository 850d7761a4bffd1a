//! Not a benchmark: a fixed amount of one workload's work, for profilers
//! (`valgrind --tool=callgrind`, `perf record`). Does nothing unless
//! `CTXTREE_PROFILE` names a workload, so `cargo bench` skips it quickly.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/bench cargo bench --no-run --bench profile
//! CTXTREE_PROFILE=W2 valgrind --tool=callgrind target/bench/release/deps/profile-*[!.d]
//! ```
//!
//! Workloads: W1, W2, W3, W5, W6, W7, W8, W10, S_shared, S_private,
//! S_shared_main (ctxtree only), L7 (W7's
//! floor: a flag + `thread::park`/`unpark`) and L8 (W8's floor: the bare
//! flag + `Mutex<Vec<Waker>>` of `bulk.rs`); `N` sets the iteration count
//! (default 100,000; W7 and L7 run `N / 100` rounds of one blocked thread,
//! W8 and L8 `N / 1000` rounds of 1,000 tasks).
//!
//! W7 and L7 are for counting system calls per wake-up, e.g.
//!
//! ```sh
//! CTXTREE_PROFILE=W7 N=10000 strace -f -c -e trace=futex target/bench/release/deps/profile-*[!.d]
//! ```
//!
//! (each round also spawns and joins a thread, which L7 pays alike, so the
//! difference W7 − L7 is what the context's wake-up adds).
//!
//! W8 and L8 run the part that `bulk.rs` times, from the cancel to the
//! completion of the last task, inside `w8_wake` and nothing else, so
//!
//! ```sh
//! CTXTREE_PROFILE=W8 N=1000 valgrind --tool=callgrind --toggle-collect='*w8_wake*' ...
//! ```
//!
//! counts exactly that part (spawning and registering the tasks excluded).

mod support;

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ctxtree::Context;
use support::bare_wake::{
    bare_park_pair, current_thread, spawn_blocked_waiter, spawn_waiters, Bare, BareWait, TASKS,
};

fn main() {
    let Ok(w) = std::env::var("CTXTREE_PROFILE") else {
        return;
    };
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let (parent, _hp) = Context::background().with_cancel();
    match w.as_str() {
        "W1" => {
            let (ctx, _h) = parent.with_cancel();
            for _ in 0..n {
                black_box(black_box(&ctx).is_done());
            }
        }
        "W2" => {
            for _ in 0..n {
                let (ctx, h) = black_box(&parent).with_cancel();
                h.cancel();
                drop(black_box(ctx));
            }
        }
        "W3" => {
            for _ in 0..n {
                let (ctx, h) = black_box(&parent).with_cancel();
                drop(black_box(ctx));
                drop(h);
            }
        }
        "W5" => {
            // `REPS` rounds, as the bench does: later rounds allocate from
            // what the earlier ones freed.
            let reps: usize = std::env::var("REPS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            for _ in 0..reps {
                let (p, h) = parent.with_cancel();
                let kids: Vec<_> = (0..n).map(|_| p.with_cancel()).collect();
                h.cancel();
                drop(kids);
            }
        }
        "W6" => {
            let (root, h) = parent.with_cancel();
            let mut levels = Vec::with_capacity(n);
            let mut ctx = root.clone();
            for _ in 0..n {
                let (c, hh) = ctx.with_cancel();
                levels.push((ctx, hh));
                ctx = c;
            }
            h.cancel();
            drop(levels);
        }
        // `S_scaling/cancel_drop/2t_shared` and `/2t_private` of
        // `scaling.rs`: two threads, `n` derive+cancel+drop each, on one
        // parent or on a parent each. For `perf record` (sampling), which
        // shows where the shared parent's cache line costs.
        "S_shared" | "S_private" => {
            let shared = w == "S_shared";
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let mine = if shared {
                        parent.clone()
                    } else {
                        parent.with_cancel().0
                    };
                    s.spawn(move || s_cancel_drop(&mine, n));
                }
            });
        }
        // `S_shared` the way `scaling.rs` and `tree.rs` run it: the main
        // thread and one helper on one parent (prints the CPUs each ran
        // on). Shows the 2x mode of docs/SCALING.md in some runs.
        "S_shared_main" => {
            let helper_parent = parent.clone();
            std::thread::scope(|s| {
                let helper = s.spawn(move || {
                    let at = cpu();
                    s_cancel_drop(&helper_parent, n);
                    (at, cpu())
                });
                let at = cpu();
                s_cancel_drop(&parent, n);
                let main = (at, cpu());
                eprintln!(
                    "CPUs (start, end): main {main:?}, helper {:?}",
                    helper.join().unwrap()
                );
            });
        }
        "W10" => {
            for _ in 0..n {
                let (ctx, h) = black_box(&parent).with_timeout(Duration::from_secs(30));
                h.cancel();
                drop(black_box(ctx));
            }
        }
        "W7" => {
            for _ in 0..n / 100 {
                let (ctx, h) = parent.with_cancel();
                w7_round(
                    move || {
                        black_box(ctx.wait());
                    },
                    |_| h.cancel(),
                );
            }
        }
        "L7" => {
            for _ in 0..n / 100 {
                let (wait, wake) = bare_park_pair();
                w7_round(wait, wake);
            }
        }
        "W8" => {
            let rt = current_thread();
            for _ in 0..n / TASKS {
                let (ctx, h) = parent.with_cancel();
                w8_round(&rt, || ctx.done(), || h.cancel());
            }
        }
        "L8" => {
            let rt = current_thread();
            for _ in 0..n / TASKS {
                let bare = Arc::new(Bare::default());
                w8_round(&rt, || BareWait(bare.clone(), false), || bare.fire());
            }
        }
        other => panic!("unknown workload {other}"),
    }
}

/// The CPU the calling thread runs on (-1 where unknown).
fn cpu() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: no preconditions.
    return unsafe { libc::sched_getcpu() };
    #[cfg(not(target_os = "linux"))]
    return -1;
}

/// The loop of the `S_*` workloads (a function of its own for `perf
/// annotate`).
#[inline(never)]
fn s_cancel_drop(parent: &Context, n: usize) {
    for _ in 0..n {
        let (ctx, h) = black_box(parent).with_cancel();
        h.cancel();
        drop(black_box(ctx));
    }
}

// ---- W7 / L7 -----------------------------------------------------------------

/// One round of `bulk.rs`'s `wake_round`, without the clock: a thread
/// blocks in `wait`, and once it has had time to sleep in the kernel the
/// main thread runs `wake` (in `w7_wake`) and joins it.
fn w7_round<W, C>(wait: W, wake: C)
where
    W: FnOnce() + Send + 'static,
    C: FnOnce(&std::thread::Thread),
{
    let waiter = spawn_blocked_waiter(wait);
    w7_wake(wake, waiter.thread());
    waiter.join().unwrap();
}

/// The waking part of W7: the cancel (or the floor's store + unpark).
#[inline(never)]
fn w7_wake<C: FnOnce(&std::thread::Thread)>(wake: C, waiter: &std::thread::Thread) {
    wake(waiter);
}

// ---- W8 / L8 -----------------------------------------------------------------

/// One round of `bulk.rs`'s `wake_many_round`, without the clock: spawn
/// `TASKS` tasks awaiting `make_wait()` and let every one register, then
/// `fire` and run until the last task has completed (in `w8_wake`).
fn w8_round<W, F, C>(rt: &tokio::runtime::Runtime, make_wait: W, fire: C)
where
    W: Fn() -> F,
    F: Future + Send + 'static,
    C: FnOnce(),
{
    let round = rt.block_on(spawn_waiters(make_wait));
    // Every task is parked on its wait; nothing runs until `fire`.
    w8_wake(rt, fire, &round.all_done);
    assert_eq!(round.finished.load(Ordering::Relaxed), TASKS);
}

/// The timed part of W8: from the cancel to the completion of the last task.
#[inline(never)]
fn w8_wake(rt: &tokio::runtime::Runtime, fire: impl FnOnce(), all_done: &tokio::sync::Notify) {
    rt.block_on(async {
        fire();
        all_done.notified().await;
    });
}
