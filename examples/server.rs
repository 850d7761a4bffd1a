//! An axum HTTP server where every request has a `ctxtree::Context`.
//!
//! ```sh
//! cargo run --release --example server -- --demo   # serve, drive the client scenarios, exit
//! cargo run --release --example server             # serve on 127.0.0.1:3000 until Ctrl-C
//! cargo run --release --example client             # (other terminal) drive it
//! ```
//!
//! `GET /work?ms=N` fans out, in a task group (`ctxtree::group::Group`, Go's
//! errgroup), to three sub-tasks (N/3, 2N/3 and N ms of "work": two tokio
//! tasks and one blocking thread) and one downstream HTTP call
//! (`/downstream`, on this same server, through `ClientLayer`, so it
//! inherits the deadline as `grpc-timeout`). With `&fail=K`, sub-task K
//! fails: the group cancels its siblings with that error as the cause and
//! the handler answers 500 with it. Every request's context is derived by
//! `ServerLayer` from the root of a `ShutdownHandle`; Ctrl-C (or
//! `GET /shutdown`) drains: new requests are refused, running ones get a
//! grace period, then the root is cancelled with the `Shutdown` cause. The
//! server prints how each context ended: request finished, client
//! disconnected, deadline exceeded, canceled by a sibling's error, or
//! server shutting down.

#[path = "client.rs"]
mod client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use ctxtree::group::Group;
use ctxtree::integrations::{ClientLayer, ClientService, Outcome, ServerLayer, ShutdownHandle};
use ctxtree::{Context, Error};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};

/// Outbound HTTP client: hyper, wrapped so calls inherit the context.
type Downstream = ClientService<Client<HttpConnector, Empty<Bytes>>>;

#[derive(Clone)]
struct App {
    addr: SocketAddr,
    downstream: Downstream,
    /// Drains the server: see `drain`.
    shutdown: ShutdownHandle,
    /// How each request's context ended, by `x-request-id`.
    outcomes: Arc<Mutex<HashMap<String, String>>>,
}

impl App {
    /// Prints (and records) how `ctx` ends, whenever it does.
    fn track(&self, ctx: &Context, id: &str, what: &str) {
        let (ctx2, id, what) = (ctx.clone(), id.to_owned(), what.to_owned());
        let outcomes = self.outcomes.clone();
        let start = Instant::now();
        // Runs on whichever thread ends the context: keep it short.
        let _ = ctx.after_func(move || {
            let outcome = Outcome::of(&ctx2).to_string();
            println!(
                "server: request {id:<6} {what:<12} ended after {:>4} ms: {outcome}",
                start.elapsed().as_millis()
            );
            if let Ok(mut map) = outcomes.lock() {
                map.insert(id, outcome);
            }
        });
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

fn query_u64(uri: &Uri, key: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// `/work?ms=N[&fail=K]`: three sub-tasks and a downstream call, in a
/// task group under `ctx`.
async fn work(
    State(app): State<App>,
    ctx: Context,
    uri: Uri,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let id = request_id(&headers);
    app.track(&ctx, &id, "/work");
    let ms = query_u64(&uri, "ms").unwrap_or(100).min(60_000);
    let fail = query_u64(&uri, "fail");

    // Go's errgroup.WithContext: the group's context is a child of the
    // request's; the first task to fail cancels it with its error.
    let g = Group::new(&ctx).with_spawner(|task| {
        tokio::spawn(task);
    });
    let lines = Arc::new(Mutex::new(Vec::new()));
    let report = {
        let (lines, id) = (lines.clone(), id.clone());
        let (request_ctx, group_ctx) = (ctx.clone(), g.context().clone());
        move |i: u64, start: Instant, stopped: bool| {
            let took = start.elapsed().as_millis();
            let line = if stopped {
                // The request's end if it ended, else the group's (a sibling's error).
                let why = if request_ctx.is_done() {
                    Outcome::of(&request_ctx)
                } else {
                    Outcome::of(&group_ctx)
                };
                let line = format!("sub-task {i}: stopped after {took} ms: {why}");
                println!("server: request {id:<6} {line}");
                line
            } else {
                format!("sub-task {i}: done after {took} ms")
            };
            if let Ok(mut lines) = lines.lock() {
                lines.push(line);
            }
        }
    };
    for i in 1..=2u64 {
        let (ctx, report) = (g.context().clone(), report.clone());
        g.spawn(async move {
            let start = Instant::now();
            if fail == Some(i) {
                return Err(format!("sub-task {i}: disk full"));
            }
            let work = tokio::time::sleep(Duration::from_millis(ms * i / 3));
            report(i, start, ctx.run_until_done(work).await.is_err());
            Ok(())
        });
    }
    // Sub-task 3 blocks a thread (say, a synchronous library call) and
    // still stops as soon as the group's context ends.
    let (group_ctx, blocking_report) = (g.context().clone(), report.clone());
    g.go(move || {
        let start = Instant::now();
        if fail == Some(3) {
            return Err("sub-task 3: disk full".to_owned());
        }
        let stopped = group_ctx.wait_timeout(Duration::from_millis(ms)).is_some();
        blocking_report(3, start, stopped);
        Ok(())
    });
    let (down_ctx, down_lines) = (g.context().clone(), lines.clone());
    g.spawn(async move {
        let line = call_downstream(&app, &down_ctx, &id, ms).await;
        if let Ok(mut lines) = down_lines.lock() {
            lines.push(line);
        }
        Ok::<_, String>(())
    });
    // Waits for every task; the first error, if any.
    let first_error = g.join().await.err();
    let mut lines = lines.lock().map(|l| l.clone()).unwrap_or_default();
    lines.sort();
    // Go's model: the handler sees why its context ended and decides.
    let status = match (&first_error, ctx.err()) {
        (Some(_), _) => StatusCode::INTERNAL_SERVER_ERROR,
        (None, Ok(())) => StatusCode::OK,
        (None, Err(Error::DeadlineExceeded)) => StatusCode::GATEWAY_TIMEOUT,
        (None, Err(_)) => StatusCode::SERVICE_UNAVAILABLE,
    };
    if let Some(e) = first_error {
        lines.push(format!("group: first error: {e}"));
    }
    lines.push(match Outcome::of(&ctx) {
        Outcome::Running => {
            "context: running (ends as `request finished` once this answer is sent)".into()
        }
        ended => format!("context: {ended}"),
    });
    (status, lines.join("\n") + "\n")
}

async fn call_downstream(app: &App, ctx: &Context, id: &str, ms: u64) -> String {
    let req = http::Request::get(format!("http://{}/downstream?ms={ms}", app.addr))
        .header("x-request-id", format!("{id}.down"))
        .extension(ctx.clone()) // the call inherits the request's context
        .body(Empty::new());
    let Ok(req) = req else {
        return "downstream: bad request".into();
    };
    match app.downstream.clone().oneshot(req).await {
        Ok(resp) => match ctx.run_until_done(resp.into_body().collect()).await {
            Ok(Ok(body)) => format!("downstream: {}", String::from_utf8_lossy(&body.to_bytes())),
            Ok(Err(e)) => format!("downstream: body error: {e}"),
            Err(_) => format!(
                "downstream: stopped reading the answer: {}",
                Outcome::of(ctx)
            ),
        },
        // An io::Error: TimedOut (deadline) or Interrupted (cancelled).
        Err(e) => format!("downstream: {:?}: {e}", e.kind()),
    }
}

/// `/downstream?ms=N`: reports the budget it was given, then works N ms.
async fn downstream(State(app): State<App>, ctx: Context, uri: Uri, headers: HeaderMap) -> String {
    app.track(&ctx, &request_id(&headers), "/downstream");
    let budget = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .map_or("no grpc-timeout".to_owned(), |v| {
            format!("got grpc-timeout {v}")
        });
    let ms = query_u64(&uri, "ms").unwrap_or(100).min(60_000);
    match ctx
        .run_until_done(tokio::time::sleep(Duration::from_millis(ms)))
        .await
    {
        Ok(()) => format!("{budget}, done after {ms} ms"),
        Err(e) => format!("{budget}, stopped: {e}"),
    }
}

/// `/outcome?id=X`: how request X's context ended (waits up to 2 s).
async fn outcome(State(app): State<App>, uri: Uri) -> String {
    let id = uri
        .query()
        .and_then(|q| q.strip_prefix("id="))
        .unwrap_or("")
        .to_owned();
    for _ in 0..200 {
        if let Some(o) = app.outcomes.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "running".to_owned()
}

/// `/shutdown`: what Ctrl-C does.
async fn shutdown(State(app): State<App>) -> &'static str {
    tokio::spawn(drain(app.shutdown.clone(), "GET /shutdown"));
    "shutting down\n"
}

/// The grace period of a shutdown (short, for the demo).
const GRACE: Duration = Duration::from_secs(1);

/// Graceful shutdown (Go's `srv.Shutdown(ctx)`): refuse new requests, let
/// the running ones finish for `GRACE`, then cancel the root with the
/// `Shutdown` cause and wait for them to end.
async fn drain(shutdown: ShutdownHandle, why: &str) {
    println!(
        "server: {why}: draining, {} request(s) in flight, grace period {} ms",
        shutdown.in_flight(),
        GRACE.as_millis()
    );
    let report = shutdown.shutdown(GRACE).await;
    if report.forced {
        println!(
            "server: grace period over: {} request(s) still running were cancelled \
             (`server shutting down`); {} left after a second grace period",
            report.in_flight_at_grace_end, report.still_running
        );
    } else {
        println!("server: drained: every request finished within the grace period");
    }
}

/// The group scenario of the demo: a request whose sub-task 2 fails.
async fn group_failure(addr: SocketAddr) -> bool {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{addr}/work?ms=3000&fail=2"))
        .header("x-request-id", "g")
        .body(Empty::new());
    let (status, body) = match req.map(|r| client.request(r)) {
        Ok(resp) => match resp.await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                (
                    status,
                    body.map_or(String::new(), |b| String::from_utf8_lossy(&b).into()),
                )
            }
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
        },
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
    };
    println!("client: 0. request of 3 s whose sub-task 2 fails (a task group)");
    println!("client:    response: {}", status.as_u16());
    for line in body.lines() {
        println!("client:      | {line}");
    }
    let ok = status == StatusCode::INTERNAL_SERVER_ERROR
        && body.contains("group: first error: sub-task 2: disk full");
    if !ok {
        println!("client: !! scenario 0: expected 500 and the group's first error");
    }
    ok
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let demo = std::env::args().any(|a| a == "--demo");
    let mut addr: SocketAddr = ([127, 0, 0, 1], if demo { 0 } else { 3000 }).into();
    if let Some(a) = std::env::args().skip_while(|a| a != "--addr").nth(1) {
        addr = a.parse().map_err(std::io::Error::other)?;
    }

    // The server's root and the handle that drains it (graceful shutdown).
    let (layer, shutdown_handle) = ServerLayer::with_shutdown(&Context::background());
    let root = shutdown_handle.root().clone();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;

    let app = App {
        addr,
        downstream: ClientLayer::new().layer(Client::builder(TokioExecutor::new()).build_http()),
        shutdown: shutdown_handle.clone(),
        outcomes: Arc::default(),
    };
    let router = Router::new()
        .route("/work", get(work))
        .route("/downstream", get(downstream))
        // Each request: a child of `root`, deadline <= 30 s and <= grpc-timeout,
        // counted in flight for the drain.
        .layer(layer.max_timeout(Duration::from_secs(30)))
        .route("/outcome", get(outcome))
        .route("/shutdown", get(shutdown))
        .with_state(app);

    println!("server: listening on http://{addr} (Ctrl-C or GET /shutdown to stop)");
    {
        let handle = shutdown_handle.clone();
        let stopped = root.cancelled();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => drain(handle, "Ctrl-C").await,
                _ = stopped => {}
            }
        });
    }
    // axum stops accepting and closes idle connections once the drain has
    // cancelled the root (`cancelled()`: done, as a `Future<Output = ()>`).
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(root.cancelled())
            .await
    });

    let ok = if demo {
        let group = group_failure(addr).await;
        client::run(addr).await && group
    } else {
        true
    };
    server.await.map_err(std::io::Error::other)??;
    println!("server: stopped");
    if demo {
        println!(
            "demo: {}",
            if ok {
                "all five outcomes as expected"
            } else {
                "some outcome was unexpected"
            }
        );
        if !ok {
            std::process::exit(1);
        }
    }
    Ok(())
}
