//! A guided tour of ctxtree: `cargo run --release --example tour`.
//!
//! Builds a small request tree, looks values up through it, merges it with
//! a shutdown signal, registers an `after_func`, parks three threads and
//! three async tasks on it, cancels it with a cause, and finally lets a
//! 50 ms deadline fire on the timer thread. Every wait is bounded: the
//! request has a 2 s deadline and a watchdog ends the process after 10 s.

use std::fmt;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ctxtree::{CancelHandle, Cause, Context, Error};

// Request-scoped values are keyed by type: use newtypes.
struct RequestId(u64);
struct ServerName(&'static str);
struct User(&'static str);

/// A custom cause: any `Error + Send + Sync + 'static` works.
#[derive(Debug)]
struct ClientGone(&'static str);
impl fmt::Display for ClientGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} disconnected", self.0)
    }
}
impl std::error::Error for ClientGone {}

fn section(title: &str, explanation: &str) {
    println!("\n=== {title} ===\n    ({explanation})");
}

/// A context's state in one line: err and cause.
fn state(ctx: &Context) -> String {
    match (ctx.err(), ctx.cause()) {
        (Ok(()), _) => "live".to_string(),
        (Err(err), Some(cause)) => format!("done: err = {err:?}, cause = \"{cause}\""),
        (Err(err), None) => format!("done: err = {err:?} but NO CAUSE (library bug!)"),
    }
}

/// Time left until a context's deadline, if it has one.
fn left(ctx: &Context) -> Option<Duration> {
    let deadline = ctx.deadline()?;
    Some(deadline.saturating_duration_since(Instant::now()))
}

/// What a woken waiter prints; returns the cause it saw.
fn report(kind: &str, name: &str, ctx: &Context, err: Error) -> Cause {
    let cause = ctx.cause().expect("a done context always has a cause");
    println!("  {kind:<6} {name:<8} woke: err = {err}, cause = \"{cause}\"");
    cause
}

/// Step 1: a server root, a request with a 2 s deadline and a RequestId,
/// and sub-contexts under it.
fn request_tree() -> (Context, CancelHandle, Context, Context) {
    section("1. a request tree", "Debug prints Go's String() form");
    let server = Context::background().with_value(ServerName("tour-server"));
    let (request, cancel_request) = server
        .with_value(RequestId(42))
        .with_timeout(Duration::from_secs(2));
    let (db_call, _db) = request.with_cancel();
    // A deadline later than the parent's is not installed (Go's rule): the
    // child inherits 2 s and its Debug text says `.WithCancel`.
    let (slow, _slow) = request.with_timeout(Duration::from_secs(60));
    let audit = request.without_cancel(); // keeps values, never done
    println!("server  : {server:?}");
    println!("request : {request:?}");
    println!("db_call : {db_call:?}");
    println!("slow    : {slow:?}  <- asked for 60 s");
    println!("audit   : {audit:?}");
    let (r, s, a) = (left(&request), left(&slow), left(&audit));
    println!("deadline left: request {r:?}, slow {s:?} (inherited), audit {a:?}");
    (request, cancel_request, db_call, audit)
}

/// Step 2: values are found through any number of cancel/deadline layers.
fn value_lookup(db_call: &Context) -> Context {
    section("2. value lookup", "nearest value of the type wins");
    let (inner, _h) = db_call.with_cancel();
    let deep = inner.with_value(User("ada")).with_value(RequestId(7));
    let (deep, _h2) = deep.with_timeout(Duration::from_secs(30));
    println!("deep    : {deep:?}");
    let user = deep.value::<User>().map(|u| u.0);
    let id = deep.value::<RequestId>().map(|r| r.0);
    let server = deep.value::<ServerName>().map(|s| s.0);
    println!("value::<User>()       = {user:?}");
    println!("value::<RequestId>()  = {id:?}  (shadows the request's 42)");
    println!("value::<ServerName>() = {server:?}  (from the root, 6 layers up)");
    println!("value::<String>()     = {:?}", deep.value::<String>());
    deep
}

/// Step 3: merge: done as soon as either side is.
fn merging(request: &Context) -> Context {
    section("3. merge", "done when either parent is; no thread needed");
    let (shutdown, _keep) = Context::background().with_cancel();
    let (merged, _m) = request.merge(&shutdown);
    println!("merged  : {merged:?}");
    let same = merged.deadline() == request.deadline();
    let id = merged.value::<RequestId>().map(|r| r.0);
    println!("merged deadline is the request's: {same}; value::<RequestId>() = {id:?}");
    // A probe merge with a second "shutdown" that does fire.
    let (sigterm, send_sigterm) = Context::background().with_cancel();
    let (probe, _p) = request.merge(&sigterm);
    send_sigterm.cancel_with_cause("SIGTERM");
    println!(
        "probe = request.merge(sigterm), after SIGTERM: {}",
        state(&probe)
    );
    println!("request meanwhile: {}", state(request));
    merged
}

/// Step 4: after_func runs once, inside the cancel that completes the context.
fn register_callbacks(request: &Context) {
    section("4. after_func", "Go's context.AfterFunc, run synchronously");
    let ctx = request.clone();
    let _af = request.after_func(move || {
        let name = thread::current().name().unwrap_or("?").to_string();
        println!("  [after_func] on thread {name:?}: request {}", state(&ctx));
    });
    let stopped = request.after_func(|| unreachable!("stopped before it could run"));
    println!(
        "registered two callbacks; stop() on the second -> {}",
        stopped.stop()
    );
    println!("the first handle is dropped: that does not unregister it");
}

/// Step 5: three threads in `wait()` and three tokio tasks in
/// `done().await`; then one cancellation with a cause reaches all of them.
fn wait_and_cancel(request: &Context, cancel: CancelHandle, targets: [(&str, &Context); 3]) {
    section("5. waiters", "3 threads in wait(), 3 tasks in done().await");
    let (ready_tx, ready_rx) = mpsc::channel();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut threads, mut tasks) = (Vec::new(), Vec::new());
    for (name, ctx) in targets {
        let (ctx, ready, name) = (ctx.clone(), ready_tx.clone(), name.to_string());
        let (ctx2, ready2, name2, done) = (ctx.clone(), ready.clone(), name.clone(), ctx.done());
        threads.push(thread::spawn(move || {
            ready.send(()).unwrap();
            // Bounded: every target lives under the request's 2 s deadline.
            let err = ctx.wait();
            report("thread", &name, &ctx, err)
        }));
        tasks.push(rt.spawn(async move {
            ready2.send(()).unwrap();
            let err = tokio::time::timeout(Duration::from_secs(5), done).await;
            report("task", &name2, &ctx2, err.expect("task timed out"))
        }));
    }
    for _ in 0..6 {
        let started = ready_rx.recv_timeout(Duration::from_secs(5));
        started.expect("a waiter never started");
    }
    thread::sleep(Duration::from_millis(50)); // let them block
    println!("cancel_with_cause(ClientGone(\"10.0.0.7\")) on the request ...");
    cancel.cancel_with_cause(ClientGone("10.0.0.7"));
    println!("cancel returned; request {}", state(request));
    let cause = request.cause().expect("done");
    println!("downcast: {:?}", cause.downcast_ref::<ClientGone>());
    let mut causes: Vec<Cause> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for task in rt.block_on(futures::future::join_all(tasks)) {
        causes.push(task.expect("task panicked"));
    }
    let same = causes.iter().all(|c| Arc::ptr_eq(c, &cause));
    println!(
        "all {} waiters saw the very same cause Arc: {same}",
        causes.len()
    );
}

/// Step 6: a 50 ms deadline fired by the crate's timer.
fn short_deadline() {
    section(
        "6. a deadline",
        "the ctxtree-timer thread sees it pass, a ctxtree-fire thread cancels; nobody polls",
    );
    let start = Instant::now();
    let budget = Duration::from_millis(50);
    let (ctx, _cancel) = Context::background().with_timeout_cause(budget, "budget spent");
    let deadline = ctx.deadline().expect("has a deadline");
    let (tx, rx) = mpsc::channel();
    let _af = ctx.after_func(move || {
        let name = thread::current().name().unwrap_or("?").to_string();
        let _ = tx.send((Instant::now(), name));
    });
    println!("short   : {ctx:?}");
    let err = ctx.wait(); // bounded by its own 50 ms deadline
    let woke = Instant::now();
    let (fired, on) = rx
        .recv_timeout(Duration::from_secs(1))
        .expect("callback ran");
    println!("{}; is_timeout() = {}", state(&ctx), err.is_timeout());
    let late = fired.saturating_duration_since(deadline);
    println!("fired on thread {on:?}, {late:?} after the deadline");
    let late = woke.saturating_duration_since(deadline);
    println!(
        "wait() returned {late:?} after the deadline, {:?} after start",
        woke - start
    );
}

fn main() {
    // Never hang: if anything blocks for 10 s, say so and fail.
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(10));
        eprintln!("tour: watchdog fired after 10 s: something hung");
        std::process::exit(1);
    });
    println!("roots: {:?} / {:?}", Context::background(), Context::todo());
    let (request, cancel_request, db_call, audit) = request_tree();
    let deep = value_lookup(&db_call);
    let merged = merging(&request);
    register_callbacks(&request);
    let targets = [("db_call", &db_call), ("deep", &deep), ("merged", &merged)];
    wait_and_cancel(&request, cancel_request, targets);
    println!("audit (without_cancel) is still {}", state(&audit));
    short_deadline();
    println!("\ntour finished");
}
