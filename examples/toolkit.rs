//! The server author's toolkit in one axum server: a task group per
//! request, drain at shutdown, SIGINT/SIGTERM as a context, a per-route
//! timeout and a request-end log line.
//!
//! ```sh
//! cargo run --example toolkit -- --demo   # serve, drive itself, drain, exit
//! cargo run --example toolkit             # serve on 127.0.0.1:3001 until Ctrl-C
//! ```
//!
//! `GET /fanout?fail=K` runs three shards in a [`Group`]: two futures (on
//! tokio, through the group's spawner) and one blocking thread. Shard K
//! fails; the group cancels the others with that error as the cause, and
//! the handler answers with it. `GET /slow` runs until its context ends
//! (per-route timeout of 2 s, tighter than the server's 30 s cap).
//! Shutdown (Ctrl-C, SIGTERM, or the end of the demo) refuses new
//! requests, gives running ones a grace period, then cancels them.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use ctxtree::group::Group;
use ctxtree::integrations::ServerLayer;
use ctxtree::signal::NotifyContext;
use ctxtree::Context;

async fn fanout(ctx: Context, uri: axum::http::Uri) -> String {
    let fail: Option<u32> = uri
        .query()
        .and_then(|q| q.strip_prefix("fail="))
        .and_then(|v| v.parse().ok());
    let g = Group::new(&ctx).with_spawner(|fut| {
        tokio::spawn(fut);
    });
    for shard in 0..2u32 {
        let ctx = g.context().clone();
        g.spawn(async move {
            if fail == Some(shard) {
                return Err(format!("shard {shard} failed"));
            }
            // Work until done or until a sibling fails.
            // (Cancelled or not, this shard did nothing wrong: the group
            // reports the first error.)
            let _ = ctx
                .run_until_done(tokio::time::sleep(Duration::from_millis(200)))
                .await;
            Ok(())
        });
    }
    let blocking_ctx = g.context().clone();
    g.go(move || {
        if fail == Some(2) {
            return Err("shard 2 (blocking) failed".to_owned());
        }
        blocking_ctx.wait_timeout(Duration::from_millis(200));
        Ok(())
    });
    match g.join().await {
        Ok(()) => "all shards done\n".to_owned(),
        Err(e) => format!("first error: {e}\n"),
    }
}

async fn slow(ctx: Context) -> String {
    format!("slow: {}\n", ctx.done().await)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let demo = std::env::args().any(|a| a == "--demo");
    let addr: SocketAddr = ([127, 0, 0, 1], if demo { 0 } else { 3001 }).into();

    // Ctrl-C / SIGTERM end this context; a second one exits at once.
    let (signals, stop_signals) = NotifyContext::terminate()
        .exit_on_second_signal()
        .start(&Context::background())?;

    let (layer, shutdown) = ServerLayer::with_shutdown(&Context::background());
    let layer = layer
        .max_timeout(Duration::from_secs(30))
        .on_request_end(|end| {
            println!(
                "server: {} {} -> {} after {} ms",
                end.method(),
                end.uri(),
                end.outcome(),
                end.elapsed().as_millis()
            );
        });
    let router = Router::new()
        .route("/fanout", get(fanout))
        .merge(
            Router::new()
                .route("/slow", get(slow))
                .layer(ServerLayer::timeout(Duration::from_secs(2))),
        )
        .layer(layer);

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("server: listening on http://{addr}");
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    if demo {
        let client = reqwest_like::Client::new(addr);
        print!("{}", client.get("/fanout").await?);
        print!("{}", client.get("/fanout?fail=1").await?);
        print!("{}", client.get("/fanout?fail=2").await?);
        // A request in flight during shutdown: drained after the grace period.
        let in_flight = tokio::spawn(async move { client.get("/slow").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        println!("server: shutting down, {} in flight", shutdown.in_flight());
        let report = shutdown.shutdown(Duration::from_millis(100)).await;
        println!("server: {report:?}");
        print!("{}", in_flight.await.map_err(std::io::Error::other)??);
    } else {
        signals.done().await;
        println!(
            "server: {}",
            signals.cause().map_or(String::new(), |c| c.to_string())
        );
        let report = shutdown.shutdown(Duration::from_secs(10)).await;
        println!("server: {report:?}");
    }
    stop_signals.stop();
    server.abort();
    Ok(())
}

/// A minimal HTTP/1 GET over hyper, enough for the demo.
mod reqwest_like {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::{connect::HttpConnector, Client as Hyper};
    use hyper_util::rt::TokioExecutor;

    #[derive(Clone)]
    pub struct Client {
        addr: SocketAddr,
        hyper: Hyper<HttpConnector, Empty<Bytes>>,
    }

    impl Client {
        pub fn new(addr: SocketAddr) -> Client {
            Client {
                addr,
                hyper: Hyper::builder(TokioExecutor::new()).build_http(),
            }
        }

        pub async fn get(&self, path: &str) -> std::io::Result<String> {
            let uri = format!("http://{}{path}", self.addr);
            let req = http::Request::get(uri)
                .body(Empty::new())
                .map_err(std::io::Error::other)?;
            let resp = self
                .hyper
                .request(req)
                .await
                .map_err(std::io::Error::other)?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Ok(format!(
                "client: GET {path} -> {status}: {}",
                String::from_utf8_lossy(&body)
            ))
        }
    }
}
