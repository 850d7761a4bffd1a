//! Not a benchmark: a fixed amount of one workload's work, for profilers
//! (`valgrind --tool=callgrind`, `perf record`). Does nothing unless
//! `CTXTREE_PROFILE` names a workload, so `cargo bench` skips it quickly.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/bench cargo bench --no-run --bench profile
//! CTXTREE_PROFILE=W2 valgrind --tool=callgrind target/bench/release/deps/profile-*[!.d]
//! ```
//!
//! Workloads: W1, W2, W3, W5, W6, W7, W8, W10 (ctxtree only); `N` sets the
//! iteration count (default 100,000).

use std::hint::black_box;
use std::time::Duration;

use ctxtree::Context;

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
        "W10" => {
            for _ in 0..n {
                let (ctx, h) = black_box(&parent).with_timeout(Duration::from_secs(30));
                h.cancel();
                drop(black_box(ctx));
            }
        }
        "W8" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            for _ in 0..n / 1000 {
                let (ctx, h) = parent.with_cancel();
                rt.block_on(async {
                    let tasks: Vec<_> = (0..1000).map(|_| tokio::spawn(ctx.done())).collect();
                    tokio::task::yield_now().await;
                    h.cancel();
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
            }
        }
        other => panic!("unknown workload {other}"),
    }
}
