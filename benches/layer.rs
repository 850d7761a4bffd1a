//! Per-request cost of `ServerLayer`, next to the bare service and to the
//! tower middleware it replaces (`tower::timeout::TimeoutLayer`,
//! `tower_http::timeout::TimeoutLayer`): issue 13 §2.
//!
//! Each request is what axum does per request: clone the service and
//! `oneshot` it, on a current-thread tokio runtime (timers enabled: the
//! tower timeouts need them), then drop the response. Two columns:
//!
//! - `ready`: the handler's future is ready at its first poll;
//! - `yields once`: the handler yields to the runtime once
//!   (`tokio::task::yield_now`), so the middleware's future is polled
//!   twice and its waker registration (timer, deadline) is exercised.
//!
//! Every case and column is measured in interleaved rounds (round r
//! measures all of them once, in order), so load from other processes
//! hits them alike; each sample is the mean over a batch of requests, and
//! the row is the median over the rounds. Results go to
//! `<results>/layer.jsonl` (see `support::record`), rendered by
//! `benches/report.py` with the target "ServerLayer with a deadline and
//! abort_on_deadline costs no more than tower's TimeoutLayer, both columns".
//!
//! ```sh
//! cargo bench --bench layer                          # full (~15 s)
//! CTXTREE_BENCH_QUICK=1 cargo bench --bench layer    # smoke run
//! CTXTREE_LAYER_ONLY=abort CTXTREE_BENCH_QUICK=1 valgrind --tool=callgrind target/release/deps/layer-*
//! ```

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ctxtree::integrations::ServerLayer;
use ctxtree::Context;
use http_body_util::Empty;
use tower::{Layer, Service, ServiceExt};

use support::{ns, record, reset, stats};

type Req = http::Request<Empty<Bytes>>;
type Resp = http::Response<Empty<Bytes>>;

const FILE: &str = "layer";
/// The columns: does the handler yield once before answering?
const COLUMNS: [(&str, bool); 2] = [("ready", false), ("yields once", true)];
const TIMEOUT: Duration = Duration::from_secs(30);

/// The handler: answers an empty 200, at once or after one yield.
async fn handle(req: Req, yields: bool) -> Result<Resp, Infallible> {
    black_box(&req);
    if yields {
        tokio::task::yield_now().await;
    }
    Ok(http::Response::new(Empty::new()))
}

/// One measured case: runs `n` requests with the handler yielding or not,
/// returns the elapsed time.
type Case = Box<dyn Fn(&tokio::runtime::Runtime, usize, bool) -> Duration>;

/// `n` requests through `svc` (cloned per request, as axum does).
fn batch<S, R>(rt: &tokio::runtime::Runtime, svc: &S, n: usize) -> Duration
where
    S: Service<Req, Response = http::Response<R>> + Clone,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            let req = http::Request::new(Empty::new());
            let resp = svc.clone().oneshot(req).await;
            black_box(resp.map(|r| r.status()).ok());
        }
        start.elapsed()
    })
}

/// A case for the service `make(handler)` builds around the handler.
fn case<S, R>(make: impl Fn(bool) -> S + 'static) -> Case
where
    S: Service<Req, Response = http::Response<R>> + Clone + 'static,
    S::Error: std::fmt::Debug,
{
    let ready = make(false);
    let yields = make(true);
    Box::new(move |rt, n, y| {
        if y {
            batch(rt, &yields, n)
        } else {
            batch(rt, &ready, n)
        }
    })
}

fn handler(
    yields: bool,
) -> impl Service<Req, Response = Resp, Error = Infallible, Future = impl Send> + Clone {
    tower::service_fn(move |req| handle(req, yields))
}

fn main() {
    let quick = support::quick();
    let (rounds, per_sample) = if quick { (5, 2_000) } else { (31, 20_000) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    // A server root that can be cancelled (what a real server has).
    let (root, _shutdown) = Context::background().with_cancel();
    let r1 = root.clone();
    let r2 = root.clone();
    let r3 = root.clone();

    let cases: Vec<(&str, Case)> = vec![
        ("bare service_fn", case(handler)),
        (
            "ServerLayer, no deadline",
            case(move |y| ServerLayer::new(r1.clone()).layer(handler(y))),
        ),
        (
            "ServerLayer max_timeout(30 s)",
            case(move |y| {
                ServerLayer::new(r2.clone())
                    .max_timeout(TIMEOUT)
                    .layer(handler(y))
            }),
        ),
        (
            "… + abort_on_deadline",
            case(move |y| {
                ServerLayer::new(r3.clone())
                    .max_timeout(TIMEOUT)
                    .abort_on_deadline()
                    .layer(handler(y))
            }),
        ),
        (
            "tower TimeoutLayer(30 s)",
            case(|y| tower::timeout::TimeoutLayer::new(TIMEOUT).layer(handler(y))),
        ),
        (
            "tower-http TimeoutLayer(30 s)",
            case(|y| {
                tower_http::timeout::TimeoutLayer::with_status_code(
                    http::StatusCode::REQUEST_TIMEOUT,
                    TIMEOUT,
                )
                .layer(handler(y))
            }),
        ),
    ];

    // Profiling (docs/BENCHMARKS.md "Profiles"): only the cases whose name
    // contains $CTXTREE_LAYER_ONLY, e.g. under callgrind.
    let only = std::env::var("CTXTREE_LAYER_ONLY").unwrap_or_default();
    let cases: Vec<(&str, Case)> = cases
        .into_iter()
        .filter(|(name, _)| name.contains(only.as_str()))
        .collect();
    println!(
        "layer: {} cases x {} columns, {rounds} interleaved rounds of {per_sample} requests, load {}",
        cases.len(),
        COLUMNS.len(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Warm-up: every case once (allocator, timer wheel, caches).
    for (_, run) in &cases {
        for (_, y) in COLUMNS {
            run(&rt, per_sample / 4, y);
        }
    }
    let mut samples = vec![vec![Vec::with_capacity(rounds); COLUMNS.len()]; cases.len()];
    for _ in 0..rounds {
        for (c, (_, run)) in cases.iter().enumerate() {
            for (k, (_, y)) in COLUMNS.iter().enumerate() {
                let t = run(&rt, per_sample, *y);
                samples[c][k].push(ns(t) / per_sample as f64);
            }
        }
    }
    reset(FILE);
    for (c, (name, _)) in cases.iter().enumerate() {
        for (k, (column, _)) in COLUMNS.iter().enumerate() {
            record(FILE, name, column, "ns/request", stats(&samples[c][k]));
        }
    }
}
