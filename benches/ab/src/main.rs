//! One revision's side of `benches/ab.sh`: runs the workloads named on the
//! command line with the public API only (so it builds against any
//! revision) and prints `workload value` lines, ns per unit.
//!
//! W2 derive + cancel + drop, W3 derive + drop (ns/op, median of batches);
//! W5 fan-out of 100,000 children: build, cancel, drop (ns/child); W7 and
//! W7_async: a thread blocked in `wait()` / `block_on(done())` woken by a
//! cancel on this thread (median ns); W6 a chain of 100,000 levels:
//! build, cancel, drop (ns/level); W10 `with_timeout(30 s)` + cancel +
//! drop (ns/op); W8: 1,000 tokio tasks awaiting
//! `done()` on a current-thread runtime, cancel to the last completion
//! (median ns). The rounds are those of `benches/bulk.rs`
//! (`support/bare_wake.rs`).

#[path = "../../support/bare_wake.rs"]
#[allow(dead_code)]
mod bare_wake;

use std::hint::black_box;
use std::time::Instant;

use bare_wake::{current_thread, spawn_blocked_waiter, spawn_waiters};
use ctxtree::Context;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ns(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64
}

fn derive_loop(cancel: bool) -> f64 {
    let (parent, _h) = Context::background().with_cancel();
    let n = 200_000;
    let mut batches = Vec::new();
    for _ in 0..15 {
        let t0 = Instant::now();
        for _ in 0..n {
            let (ctx, h) = black_box(&parent).with_cancel();
            if cancel {
                h.cancel();
            }
            drop(black_box(ctx));
            drop(h);
        }
        batches.push(ns(t0.elapsed()) / n as f64);
    }
    median(batches)
}

fn fanout() -> [f64; 3] {
    let n = 100_000;
    let mut r: [Vec<f64>; 3] = Default::default();
    for _ in 0..7 {
        let (root, h) = Context::background().with_cancel();
        let t0 = Instant::now();
        let kids: Vec<_> = (0..n).map(|_| root.with_cancel()).collect();
        r[0].push(ns(t0.elapsed()) / n as f64);
        let t0 = Instant::now();
        h.cancel();
        r[1].push(ns(t0.elapsed()) / n as f64);
        let t0 = Instant::now();
        drop(black_box(kids));
        r[2].push(ns(t0.elapsed()) / n as f64);
    }
    r.map(median)
}

fn deep_chain() -> [f64; 3] {
    let n = 100_000;
    let mut r: [Vec<f64>; 3] = Default::default();
    for _ in 0..7 {
        let (root, h) = Context::background().with_cancel();
        let t0 = Instant::now();
        let mut chain = Vec::with_capacity(n);
        let mut cur = root.clone();
        for _ in 0..n {
            let (c, ch) = cur.with_cancel();
            cur = c.clone();
            chain.push((c, ch));
        }
        drop(cur);
        r[0].push(ns(t0.elapsed()) / n as f64);
        let t0 = Instant::now();
        h.cancel();
        r[1].push(ns(t0.elapsed()) / n as f64);
        let t0 = Instant::now();
        // Leaf first, as a chain of owners unwinds.
        while let Some(link) = chain.pop() {
            drop(black_box(link));
        }
        r[2].push(ns(t0.elapsed()) / n as f64);
    }
    r.map(median)
}

fn timeout_cancel() -> f64 {
    let (parent, _h) = Context::background().with_cancel();
    let n = 100_000;
    let mut batches = Vec::new();
    for _ in 0..15 {
        let t0 = Instant::now();
        for _ in 0..n {
            let (ctx, h) = black_box(&parent).with_timeout(std::time::Duration::from_secs(30));
            h.cancel();
            drop(black_box(ctx));
            drop(h);
        }
        batches.push(ns(t0.elapsed()) / n as f64);
    }
    median(batches)
}

fn wake_round<W: FnOnce() + Send + 'static>(wait: W, cancel: impl FnOnce()) -> f64 {
    let waiter = spawn_blocked_waiter(move || {
        wait();
        Instant::now()
    });
    let t0 = Instant::now();
    cancel();
    ns(waiter.join().unwrap().saturating_duration_since(t0))
}

fn w7(asynchronous: bool) -> f64 {
    let (parent, _h) = Context::background().with_cancel();
    let mut lat = Vec::new();
    for _ in 0..400 {
        let (ctx, h) = parent.with_cancel();
        lat.push(if asynchronous {
            wake_round(
                move || {
                    black_box(futures::executor::block_on(ctx.done()));
                },
                || h.cancel(),
            )
        } else {
            wake_round(
                move || {
                    black_box(ctx.wait());
                },
                || h.cancel(),
            )
        });
    }
    median(lat)
}

fn w8() -> f64 {
    let rt = current_thread();
    let (parent, _h) = Context::background().with_cancel();
    let mut lat = Vec::new();
    for _ in 0..150 {
        let (ctx, h) = parent.with_cancel();
        lat.push(rt.block_on(async {
            let round = spawn_waiters(|| ctx.done()).await;
            let t0 = Instant::now();
            h.cancel();
            round.all_done.notified().await;
            let end = round.end.lock().unwrap().unwrap();
            ns(end - t0)
        }));
    }
    median(lat)
}

fn main() {
    for w in std::env::args().skip(1) {
        match w.as_str() {
            "W2" => println!("W2 {:.2}", derive_loop(true)),
            "W3" => println!("W3 {:.2}", derive_loop(false)),
            "W5" => {
                let [b, c, d] = fanout();
                println!("W5/build {b:.2}\nW5/cancel {c:.2}\nW5/drop {d:.2}");
            }
            "W6" => {
                let [b, c, d] = deep_chain();
                println!("W6/build {b:.2}\nW6/cancel {c:.2}\nW6/drop {d:.2}");
            }
            "W10" => println!("W10 {:.2}", timeout_cancel()),
            "W7" => println!("W7 {:.0}", w7(false)),
            "W7_async" => println!("W7_async {:.0}", w7(true)),
            "W8" => println!("W8 {:.0}", w8()),
            other => {
                eprintln!("unknown workload {other}");
                std::process::exit(2);
            }
        }
    }
}
