//! An axum HTTP server where every request has a `ctxtree::Context`.
//!
//! ```sh
//! cargo run --release --example server -- --demo   # serve, drive the client scenarios, exit
//! cargo run --release --example server             # serve on 127.0.0.1:3000 until Ctrl-C
//! cargo run --release --example client             # (other terminal) drive it
//! ```
//!
//! `GET /work?ms=N` fans out to three concurrent sub-tasks (N/3, 2N/3 and N
//! ms of "work") and one downstream HTTP call (`/downstream`, on this same
//! server, through `ClientLayer`, so it inherits the deadline as
//! `grpc-timeout`). Every request's context is derived by `ServerLayer`
//! from a root that Ctrl-C (or `GET /shutdown`) cancels with the `Shutdown`
//! cause; the server prints how each context ended: request finished,
//! client disconnected, deadline exceeded, or server shutting down.

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
use ctxtree::integrations::{ClientLayer, ClientService, Outcome, ServerLayer, Shutdown};
use ctxtree::{CancelHandle, Context, Error};
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
    shutdown: CancelHandle,
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

/// `/work?ms=N`: three sub-tasks and a downstream call, all under `ctx`.
async fn work(
    State(app): State<App>,
    ctx: Context,
    uri: Uri,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let id = request_id(&headers);
    app.track(&ctx, &id, "/work");
    let ms = query_u64(&uri, "ms").unwrap_or(100).min(60_000);

    let subtasks: Vec<_> = (1..=3u64)
        .map(|i| {
            let (ctx, id) = (ctx.clone(), id.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let work = tokio::time::sleep(Duration::from_millis(ms * i / 3));
                match ctx.run_until_done(work).await {
                    Ok(()) => format!(
                        "sub-task {i}: done after {} ms",
                        start.elapsed().as_millis()
                    ),
                    Err(_) => {
                        let line = format!(
                            "sub-task {i}: stopped after {} ms: {}",
                            start.elapsed().as_millis(),
                            Outcome::of(&ctx)
                        );
                        println!("server: request {id:<6} {line}");
                        line
                    }
                }
            })
        })
        .collect();

    let downstream = call_downstream(&app, &ctx, &id, ms);
    let mut lines = vec![downstream.await];
    for task in subtasks {
        lines.push(
            task.await
                .unwrap_or_else(|e| format!("sub-task panicked: {e}")),
        );
    }
    lines.sort();
    // Go's model: the handler sees why its context ended and decides.
    let status = match ctx.err() {
        Ok(()) => StatusCode::OK,
        Err(Error::DeadlineExceeded) => StatusCode::GATEWAY_TIMEOUT,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
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
    println!("server: shutdown requested: cancelling the root context");
    app.shutdown.cancel_with_cause(Shutdown);
    "shutting down\n"
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let demo = std::env::args().any(|a| a == "--demo");
    let mut addr: SocketAddr = ([127, 0, 0, 1], if demo { 0 } else { 3000 }).into();
    if let Some(a) = std::env::args().skip_while(|a| a != "--addr").nth(1) {
        addr = a.parse().map_err(std::io::Error::other)?;
    }

    // The server's root: graceful shutdown = cancel it with a cause.
    let (root, shutdown_handle) = Context::background().with_cancel();
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
        // Each request: a child of `root`, deadline <= 30 s and <= grpc-timeout.
        .layer(ServerLayer::new(root.clone()).max_timeout(Duration::from_secs(30)))
        .route("/outcome", get(outcome))
        .route("/shutdown", get(shutdown))
        .with_state(app);

    println!("server: listening on http://{addr} (Ctrl-C or GET /shutdown to stop)");
    let ctrl_c = {
        let handle = shutdown_handle.clone();
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    println!("server: Ctrl-C: cancelling the root context");
                    handle.cancel_with_cause(Shutdown);
                }
                _ = root.done() => {}
            }
        }
    };
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(ctrl_c)
            .await
    });

    let ok = if demo { client::run(addr).await } else { true };
    server.await.map_err(std::io::Error::other)??;
    println!("server: stopped");
    if demo {
        println!(
            "demo: {}",
            if ok {
                "all four outcomes as expected"
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
