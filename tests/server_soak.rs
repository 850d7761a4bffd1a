//! End-to-end soak: a real axum server with `ServerLayer` on 127.0.0.1,
//! two tokio workers, and many concurrent hyper clients for a fixed time
//! (`CTXTREE_SERVER_SOAK_SECS`, default 2 s; clients: `CTXTREE_SERVER_SOAK_CLIENTS`,
//! default 64, as in issue 9).
//!
//! Handlers have the shapes servers use (issue 9 §7):
//!
//! - `/fanout`: two sub-tasks, each with its own child of the request
//!   context (`with_cancel`, `with_timeout(5 s)`), await it (`done()`)
//!   while the handler returns at once: the request's end cancels the
//!   children while their owners wake and drop them. Before the fix of
//!   issue 9 this crashed the process (SIGSEGV) within seconds;
//! - `/wide`: the same with eight sub-tasks, one a blocking thread;
//! - `/run`: a sub-task under `run_until_done`, awaited or not;
//! - `/blocking`: a `spawn_blocking` thread `wait`ing on a child;
//! - `/slow`: the handler awaits its own context (ended by the client's
//!   `grpc-timeout` or its disconnect), with sub-tasks on children;
//! - `/deadline`: `grpc-timeout` from the client is the deadline; a child
//!   with a longer timeout inherits it;
//! - `/manual`: contexts made by hand from a server-wide root, without the
//!   layer, same sub-task shape as `/fanout`.
//!
//! Some clients drop the request future mid-flight, some close a raw
//! socket after sending: the layer cancels those requests with
//! `ClientDisconnected`.
//!
//! Checked: no crash and no panic anywhere (a panic hook counts panics on
//! every thread, including tokio's); every sub-task sees its context done
//! with a consistent outcome; every response is 200 or 504; memory is flat
//! (RSS and the bytes allocated by the runtime's threads, first third of
//! the run against the last, with a generous margin); after the load
//! stops and everything is dropped: every sub-task finished, no timer entry
//! armed, and every byte the server's and clients' threads allocated is
//! freed (a counting global allocator, so in release/ASan builds too), and
//! in debug builds the crate's node counters are back to zero. Everything
//! runs under a watchdog.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::counting::{track_this_thread, tracked_bytes, untrack_this_thread};
use common::with_watchdog;
use ctxtree::integrations::{Outcome, ServerLayer, Shutdown};
use ctxtree::{Context, Error};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

#[global_allocator]
static ALLOC: common::counting::Counting = common::counting::Counting;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(default)
}

/// Panics on any thread (tokio catches those of tasks; this counts them).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts of what happened, server side and client side.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    ok: AtomicU64,
    timeouts_504: AtomicU64,
    dropped_mid_flight: AtomicU64,
    raw_disconnects: AtomicU64,
    client_errors: AtomicU64,
    subtasks_started: AtomicU64,
    subtasks_finished: AtomicU64,
    outcome_finished: AtomicU64,
    outcome_disconnected: AtomicU64,
    outcome_deadline: AtomicU64,
    outcome_shutdown: AtomicU64,
    outcome_other: AtomicU64,
}

fn add(c: &AtomicU64) {
    // Relaxed: statistics; read after the threads/tasks are finished.
    c.fetch_add(1, Ordering::Relaxed);
}

fn get_(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Server state: the stats and a server-wide root for contexts made by hand.
#[derive(Clone)]
struct App {
    stats: Arc<Stats>,
    root: Context,
}

/// What holds of a context that is done.
fn check_done(ctx: &Context) {
    let err = ctx.err().expect_err("done context has an err");
    let cause = ctx.cause().expect("done context has a cause");
    if let Some(e) = cause.downcast_ref::<Error>() {
        assert_eq!(*e, err, "{ctx:?}: default cause vs err");
    }
    if err == Error::DeadlineExceeded {
        if let Some(d) = ctx.deadline() {
            assert!(Instant::now() >= d, "{ctx:?}: deadline exceeded early");
        }
    }
}

/// Records how a request context ended, whenever it does.
fn track_outcome(app: &App, ctx: &Context) {
    let (stats, seen) = (Arc::clone(&app.stats), ctx.clone());
    let _ = ctx.after_func(move || match Outcome::of(&seen) {
        Outcome::Finished => add(&stats.outcome_finished),
        Outcome::ClientDisconnected => add(&stats.outcome_disconnected),
        Outcome::DeadlineExceeded => add(&stats.outcome_deadline),
        Outcome::Shutdown => add(&stats.outcome_shutdown),
        _ => add(&stats.outcome_other),
    });
}

/// A sub-task that owns a child of `parent` and awaits it; the child's
/// only canceller is `parent`'s end (its 5 s timeout aside), so it carries
/// `parent`'s cause.
fn spawn_child_waiter(app: &App, parent: &Context, deadline: bool) {
    let (child, handle) = if deadline {
        parent.with_timeout(Duration::from_secs(5))
    } else {
        parent.with_cancel()
    };
    let (stats, parent) = (Arc::clone(&app.stats), parent.clone());
    add(&stats.subtasks_started);
    tokio::spawn(async move {
        let err = child.done().await;
        assert_eq!(child.err(), Err(err));
        check_done(&child);
        if !deadline || err == Error::Canceled {
            assert!(
                Arc::ptr_eq(&child.cause().unwrap(), &parent.cause().unwrap()),
                "a child ended by its parent carries the parent's cause"
            );
        }
        drop(child);
        drop(handle);
        add(&stats.subtasks_finished);
    });
}

/// Two sub-tasks with children of the request context; returns at once.
async fn fanout(State(app): State<App>, ctx: Context) -> &'static str {
    track_outcome(&app, &ctx);
    spawn_child_waiter(&app, &ctx, false);
    spawn_child_waiter(&app, &ctx, true);
    "ok"
}

/// The same with eight sub-tasks (more children in the walk that the
/// request's end makes), one of them a blocking thread; returns at once.
async fn wide(State(app): State<App>, ctx: Context) -> &'static str {
    track_outcome(&app, &ctx);
    for i in 0..7 {
        spawn_child_waiter(&app, &ctx, i % 2 == 1);
    }
    spawn_blocking_waiter(&app, &ctx);
    "ok"
}

/// A sub-task under `run_until_done`, awaited half of the time.
async fn run(State(app): State<App>, ctx: Context) -> &'static str {
    track_outcome(&app, &ctx);
    let stats = Arc::clone(&app.stats);
    add(&stats.subtasks_started);
    let micros = (Instant::now().elapsed().subsec_nanos() % 1000) as u64;
    let work = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let got = ctx
                .run_until_done(tokio::time::sleep(Duration::from_micros(micros)))
                .await;
            if let Err(e) = got {
                assert_eq!(ctx.err(), Err(e));
                check_done(&ctx);
            }
            drop(ctx);
            add(&stats.subtasks_finished);
        })
    };
    if micros % 2 == 0 {
        let _ = work.await;
    }
    "ok"
}

/// A blocking thread waits on a child; the handler returns at once.
async fn blocking(State(app): State<App>, ctx: Context) -> &'static str {
    track_outcome(&app, &ctx);
    spawn_blocking_waiter(&app, &ctx);
    "ok"
}

/// A blocking thread that waits on its own child of `parent`.
fn spawn_blocking_waiter(app: &App, parent: &Context) {
    let (child, handle) = parent.with_cancel();
    let stats = Arc::clone(&app.stats);
    add(&stats.subtasks_started);
    tokio::task::spawn_blocking(move || {
        let err = child.wait();
        assert_eq!(child.err(), Err(err));
        check_done(&child);
        drop(child);
        drop(handle);
        add(&stats.subtasks_finished);
    });
}

/// Awaits the request context itself: ends on `grpc-timeout` or on the
/// client's disconnect.
async fn slow(State(app): State<App>, ctx: Context) -> (StatusCode, &'static str) {
    track_outcome(&app, &ctx);
    spawn_child_waiter(&app, &ctx, true);
    let err = ctx.done().await;
    check_done(&ctx);
    match err {
        Error::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline"),
        _ => (StatusCode::OK, "ended"),
    }
}

/// `grpc-timeout` is the deadline; a longer child timeout inherits it.
async fn deadline(State(app): State<App>, ctx: Context) -> (StatusCode, &'static str) {
    track_outcome(&app, &ctx);
    let (child, _h) = ctx.with_timeout(Duration::from_secs(5));
    if let Some(d) = ctx.deadline() {
        assert!(
            child.deadline() <= Some(d),
            "a child's deadline is never later"
        );
    }
    spawn_child_waiter(&app, &child, false);
    let micros = u64::from(Instant::now().elapsed().subsec_nanos() % 4000);
    let got = child
        .run_until_done(tokio::time::sleep(Duration::from_micros(micros)))
        .await;
    match got {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(Error::DeadlineExceeded) => (StatusCode::GATEWAY_TIMEOUT, "deadline"),
        Err(_) => (StatusCode::OK, "ended"),
    }
}

/// Contexts made by hand (no layer): a request context from the server
/// root, two sub-tasks on its children, cancelled when the handler returns.
async fn manual(State(app): State<App>) -> &'static str {
    let (req, handle) = app.root.with_timeout(Duration::from_secs(5));
    let _guard = handle.drop_guard();
    spawn_child_waiter(&app, &req, false);
    spawn_child_waiter(&app, &req, true);
    "ok"
}

const ROUTES: [&str; 7] = [
    "/fanout",
    "/wide",
    "/run",
    "/blocking",
    "/slow",
    "/deadline",
    "/manual",
];

/// A small per-client generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One client: requests in a loop until `end`.
async fn client_loop(
    client: Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    stats: Arc<Stats>,
    seed: u64,
    end: Instant,
) {
    let mut rng = Rng(seed | 1);
    while Instant::now() < end {
        // Half the requests take the shapes that crashed before issue 9's
        // fix (`/fanout`, `/manual`), the rest spread over the others.
        let route = match rng.below(100) {
            0..=24 => "/fanout",
            25..=39 => "/wide",
            40..=49 => "/manual",
            _ => ROUTES[rng.below(ROUTES.len() as u64) as usize],
        };
        let roll = rng.below(100);
        // `/slow` ends only by deadline or disconnect: always give it one.
        let grpc_timeout = if route == "/slow" || route == "/deadline" || roll < 30 {
            let us = 200 + rng.below(20_000);
            Some(if us % 2 == 0 {
                format!("{us}u")
            } else {
                format!("{}m", us.div_ceil(1000))
            })
        } else {
            None
        };
        add(&stats.requests);
        if roll >= 97 {
            // A raw socket that sends a request and closes at once.
            add(&stats.raw_disconnects);
            if let Ok(mut sock) = tokio::net::TcpStream::connect(addr).await {
                let req = format!("GET {route} HTTP/1.1\r\nhost: soak\r\n\r\n");
                let _ = sock.write_all(req.as_bytes()).await;
                tokio::time::sleep(Duration::from_micros(rng.below(500))).await;
            }
            continue;
        }
        let mut req = http::Request::get(format!("http://{addr}{route}"));
        if let Some(t) = &grpc_timeout {
            req = req.header("grpc-timeout", t.as_str());
        }
        let req = req.body(Empty::new()).expect("a valid request");
        let call = async {
            let resp = client.request(req).await?;
            let status = resp.status();
            let _ = resp.into_body().collect().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
        };
        let got = if roll >= 87 {
            // Drop the request future mid-flight.
            let d = Duration::from_micros(20 + rng.below(2_000));
            match tokio::time::timeout(d, call).await {
                Ok(r) => Some(r),
                Err(_) => {
                    add(&stats.dropped_mid_flight);
                    None
                }
            }
        } else {
            Some(call.await)
        };
        match got {
            None => {}
            Some(Ok(StatusCode::OK)) => add(&stats.ok),
            Some(Ok(StatusCode::GATEWAY_TIMEOUT)) => add(&stats.timeouts_504),
            Some(Ok(other)) => panic!("{route}: unexpected status {other}"),
            Some(Err(_)) => add(&stats.client_errors),
        }
    }
}

/// Field `n` of /proc/self/statm, in bytes (0: size, 1: resident).
fn statm(n: usize) -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(n)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn rss_bytes() -> u64 {
    statm(1)
}

/// AddressSanitizer (and the other sanitizers) reserve terabytes of
/// address space for their shadow memory, and ASan's quarantine keeps
/// freed memory resident for a while: RSS says nothing about our memory
/// there (the tracked heap still does).
fn under_a_sanitizer() -> bool {
    statm(0) > 1 << 40
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Flushes until the tracked bytes are back to `baseline` (or a bound).
fn settle(baseline: isize) -> isize {
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        ctxtree::__private::flush_epoch();
        let left = tracked_bytes() - baseline;
        if left <= 0 || start.elapsed() > Duration::from_secs(20) {
            return left;
        }
        n += 1;
        if n % 64 == 0 {
            common::flush_timer_thread(Duration::from_secs(5));
        } else {
            thread::sleep(Duration::from_micros(200));
        }
    }
}

#[test]
fn server_soak_with_child_context_subtasks_stays_flat_and_frees_everything() {
    let secs = env_f64("CTXTREE_SERVER_SOAK_SECS", 2.0).min(24.0 * 3600.0);
    let clients = env_f64("CTXTREE_SERVER_SOAK_CLIENTS", 64.0).clamp(1.0, 1024.0) as usize;
    let run_for = Duration::from_secs_f64(secs);
    with_watchdog(120 + 2 * run_for.as_secs(), move || {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));

        // What lives as long as the process, made before counting: the
        // epoch collector, the timer thread and every timer shard's slab
        // (more entries than the run holds at once), the default causes.
        common::counting::warm_up(20_000);
        assert!(common::flush_timer_thread(Duration::from_secs(10)));
        // This thread is not tracked: the server's and clients' threads are.
        untrack_this_thread();
        ctxtree::__private::flush_epoch();
        let baseline = tracked_bytes();

        let stats = Arc::new(Stats::default());
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(track_this_thread)
            .build()
            .expect("server runtime");
        let (root, shutdown) = Context::background().with_cancel();
        let app = App {
            stats: Arc::clone(&stats),
            root: root.clone(),
        };
        let router = Router::new()
            .route("/fanout", get(fanout))
            .route("/wide", get(wide))
            .route("/run", get(run))
            .route("/blocking", get(blocking))
            .route("/slow", get(slow))
            .route("/deadline", get(deadline))
            .route("/manual", get(manual))
            .with_state(app)
            .layer(ServerLayer::new(root.clone()).max_timeout(Duration::from_secs(10)));
        let listener = server_rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        assert!(addr.ip().is_loopback());
        let server = {
            let shutdown_signal = root.clone();
            server_rt.spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        shutdown_signal.done().await;
                    })
                    .await
            })
        };

        // Memory sampler (untracked thread).
        let sampling = Arc::new(AtomicBool::new(true));
        let samples: Arc<Mutex<Vec<(u64, isize)>>> = Arc::default();
        let sampler = {
            let (sampling, samples) = (Arc::clone(&sampling), Arc::clone(&samples));
            thread::spawn(move || {
                while sampling.load(Ordering::SeqCst) {
                    let s = (rss_bytes(), tracked_bytes());
                    samples.lock().unwrap().push(s);
                    thread::sleep(Duration::from_millis(25));
                }
            })
        };

        // Clients on a runtime of their own, on one thread.
        let start = Instant::now();
        let end = start + run_for;
        let client_thread = {
            let stats = Arc::clone(&stats);
            thread::Builder::new()
                .name("soak-clients".into())
                .spawn(move || {
                    track_this_thread();
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("client runtime");
                    rt.block_on(async {
                        let client = Client::builder(TokioExecutor::new()).build_http();
                        let tasks: Vec<_> = (0..clients)
                            .map(|i| {
                                tokio::spawn(client_loop(
                                    client.clone(),
                                    addr,
                                    Arc::clone(&stats),
                                    0x9E37_79B9 ^ (i as u64 * 7919),
                                    end,
                                ))
                            })
                            .collect();
                        for t in tasks {
                            if let Err(e) = t.await {
                                std::panic::resume_unwind(e.into_panic());
                            }
                        }
                    });
                    drop(rt);
                    ctxtree::__private::flush_epoch();
                })
                .expect("spawn the client thread")
        };
        if let Err(p) = client_thread.join() {
            std::panic::resume_unwind(p);
        }
        let load_time = start.elapsed();
        sampling.store(false, Ordering::SeqCst);
        sampler.join().unwrap();

        // Shut down: the root's cancel ends every in-flight request.
        shutdown.cancel_with_cause(Shutdown);
        let served = server_rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), server).await });
        assert!(
            matches!(served, Ok(Ok(Ok(())))),
            "the server did not shut down cleanly"
        );
        // Every sub-task finishes (they run asynchronously after their
        // request ended).
        let wait_start = Instant::now();
        while get_(&stats.subtasks_finished) < get_(&stats.subtasks_started)
            && wait_start.elapsed() < Duration::from_secs(20)
        {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            get_(&stats.subtasks_finished),
            get_(&stats.subtasks_started),
            "sub-tasks never finished"
        );
        server_rt.block_on(async {
            for _ in 0..2 {
                let _ = tokio::spawn(async { ctxtree::__private::flush_epoch() }).await;
            }
        });
        server_rt.shutdown_timeout(Duration::from_secs(20));
        drop((root, shutdown));

        // Nothing left: no timer entry, no byte, no node.
        let timers_start = Instant::now();
        while ctxtree::__private::armed_timers() != 0
            && timers_start.elapsed() < Duration::from_secs(10)
        {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            ctxtree::__private::armed_timers(),
            0,
            "timer entries left armed"
        );
        let left = settle(baseline);
        // Debug builds: the crate's own node counters are back to zero (no
        // context exists before the run nor after it; not read as a
        // baseline after the warm-up, whose last node the timer thread may
        // still hold for a moment).
        #[cfg(debug_assertions)]
        {
            let (claims0, nodes0) = (0, 0);
            let t = Instant::now();
            while (ctxtree::__private::live_claims() != claims0
                || ctxtree::__private::allocated_nodes() != nodes0)
                && t.elapsed() < Duration::from_secs(20)
            {
                ctxtree::__private::flush_epoch();
                thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(
                ctxtree::__private::live_claims(),
                claims0,
                "node claims left"
            );
            assert_eq!(
                ctxtree::__private::allocated_nodes(),
                nodes0,
                "nodes left allocated"
            );
        }

        let s = &*stats;
        let samples = samples.lock().unwrap().clone();
        let third = samples.len() / 3;
        let (first, last) = (&samples[..third], &samples[samples.len() - third..]);
        let rss_first = median(&first.iter().map(|s| s.0).collect::<Vec<_>>());
        let rss_last = median(&last.iter().map(|s| s.0).collect::<Vec<_>>());
        let heap_first = median(&first.iter().map(|s| s.1.max(0) as u64).collect::<Vec<_>>());
        let heap_last = median(&last.iter().map(|s| s.1.max(0) as u64).collect::<Vec<_>>());
        let requests = get_(&s.requests);
        println!(
            "server soak: {clients} clients, {:.2} s of load, {requests} requests ({:.0}/s): \
             {} ok, {} 504, {} dropped mid-flight, {} raw disconnects, {} client errors; \
             {} sub-tasks; request outcomes: {} finished, {} disconnected, {} deadline, \
             {} shutdown, {} other; RSS median first/last third {:.1}/{:.1} MiB, \
             tracked heap {:.2}/{:.2} MiB ({} samples{}); {left} bytes left",
            load_time.as_secs_f64(),
            requests as f64 / load_time.as_secs_f64(),
            get_(&s.ok),
            get_(&s.timeouts_504),
            get_(&s.dropped_mid_flight),
            get_(&s.raw_disconnects),
            get_(&s.client_errors),
            get_(&s.subtasks_started),
            get_(&s.outcome_finished),
            get_(&s.outcome_disconnected),
            get_(&s.outcome_deadline),
            get_(&s.outcome_shutdown),
            get_(&s.outcome_other),
            rss_first as f64 / 1048576.0,
            rss_last as f64 / 1048576.0,
            heap_first as f64 / 1048576.0,
            heap_last as f64 / 1048576.0,
            samples.len(),
            if under_a_sanitizer() {
                ", sanitizer: RSS not compared"
            } else {
                ""
            },
        );
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            0,
            "a handler, sub-task or client panicked"
        );
        assert!(requests > 0 && get_(&s.ok) > 0, "no request was served");
        assert!(
            get_(&s.client_errors) * 100 <= requests,
            "more than 1% of the requests failed on the client side"
        );
        assert_eq!(
            left, 0,
            "{left} bytes allocated by the server's and clients' threads were never freed"
        );
        // Flat memory, with a generous margin (the first third includes the
        // warm-up of connection pools and allocator arenas).
        if third >= 2 {
            assert!(
                under_a_sanitizer() || rss_last <= rss_first + rss_first / 2 + (16 << 20),
                "RSS grew from {rss_first} to {rss_last} bytes"
            );
            assert!(
                heap_last <= 2 * heap_first + (4 << 20),
                "the tracked heap grew from {heap_first} to {heap_last} bytes"
            );
        }
        ctxtree::__private::flush_epoch();
    });
    ctxtree::__private::flush_epoch();
}
