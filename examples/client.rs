//! Drives `examples/server.rs` through four requests and shows how each
//! one's context ended on the server:
//!
//! 1. a normal request (`request finished`);
//! 2. a request whose client disconnects after 200 ms (`client disconnected`:
//!    the handler's sub-tasks and its downstream call stop at once);
//! 3. a request with `grpc-timeout: 300m` (`deadline exceeded`: the handler
//!    sees the deadline, its downstream call carries a smaller one);
//! 4. a long request during a Ctrl-C-style shutdown (`server shutting down`).
//!
//! ```sh
//! cargo run --release --example server            # terminal 1
//! cargo run --release --example client            # terminal 2
//! ```
//!
//! `cargo run --release --example server -- --demo` runs both in one
//! process and exits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// One scenario's result, as the client saw it and as the server ended it.
struct Seen {
    status: String,
    body: String,
    server_outcome: String,
}

async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Empty::new())?).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Asks the server how request `id`'s context ended.
async fn outcome(client: &HttpClient, addr: SocketAddr, id: &str) -> String {
    match get(client, addr, &format!("/outcome?id={id}"), &[]).await {
        Ok((_, text)) => text,
        Err(e) => format!("(could not ask: {e})"),
    }
}

fn show(n: usize, what: &str, seen: &Seen) {
    println!("client: {n}. {what}");
    println!("client:    response: {}", seen.status);
    for line in seen.body.lines() {
        println!("client:      | {line}");
    }
    println!(
        "client:    server says the context ended: {}",
        seen.server_outcome
    );
}

/// Runs the four scenarios against the server at `addr` (the last one shuts
/// it down). Returns whether every scenario ended the way it should.
pub async fn run(addr: SocketAddr) -> bool {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut ok = true;
    let mut check = |n: usize, seen: &Seen, expected: &str| {
        let good = seen.server_outcome == expected;
        if !good {
            println!("client: !! scenario {n}: expected `{expected}`");
        }
        ok &= good;
    };

    // 1. A normal request: sub-tasks and the downstream call complete.
    let (status, body) = match get(&client, addr, "/work?ms=150", &[("x-request-id", "1")]).await {
        Ok((s, b)) => (s.to_string(), b),
        Err(e) => (format!("error: {e}"), String::new()),
    };
    let seen = Seen {
        status,
        body,
        server_outcome: outcome(&client, addr, "1").await,
    };
    show(1, "normal request (150 ms of work)", &seen);
    check(1, &seen, "request finished");

    // 2. The client sends a 5 s request and disconnects after 200 ms.
    let t0 = Instant::now();
    let status = match tokio::net::TcpStream::connect(addr).await {
        Ok(mut sock) => {
            let req = "GET /work?ms=5000 HTTP/1.1\r\nhost: demo\r\nx-request-id: 2\r\n\r\n";
            let _ = sock.write_all(req.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(sock);
            format!(
                "(none: the client hung up after {} ms)",
                t0.elapsed().as_millis()
            )
        }
        Err(e) => format!("error: {e}"),
    };
    let seen = Seen {
        status,
        body: String::new(),
        server_outcome: outcome(&client, addr, "2").await,
    };
    show(
        2,
        "request of 5 s whose client disconnects after 200 ms",
        &seen,
    );
    check(2, &seen, "client disconnected");

    // 3. A 5 s request with a 300 ms budget in grpc-timeout.
    let (status, body) = match get(
        &client,
        addr,
        "/work?ms=5000",
        &[("x-request-id", "3"), ("grpc-timeout", "300m")],
    )
    .await
    {
        Ok((s, b)) => (s.to_string(), b),
        Err(e) => (format!("error: {e}"), String::new()),
    };
    let seen = Seen {
        status,
        body,
        server_outcome: outcome(&client, addr, "3").await,
    };
    show(3, "request of 5 s with `grpc-timeout: 300m`", &seen);
    check(3, &seen, "deadline exceeded");

    // 4. A 10 s request in flight while the server shuts down (Ctrl-C).
    let long = {
        let client = client.clone();
        tokio::spawn(
            async move { get(&client, addr, "/work?ms=10000", &[("x-request-id", "4")]).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!("client: (asking the server to shut down, as Ctrl-C would)");
    let _ = get(&client, addr, "/shutdown", &[]).await;
    let (status, body) = match long.await {
        Ok(Ok((s, b))) => (s.to_string(), b),
        Ok(Err(e)) => (format!("error: {e}"), String::new()),
        Err(e) => (format!("error: {e}"), String::new()),
    };
    // The server is going away: its answer carries the outcome.
    let server_outcome = body
        .lines()
        .find_map(|l| l.strip_prefix("context: "))
        .unwrap_or("(unknown)")
        .to_owned();
    let seen = Seen {
        status,
        body,
        server_outcome,
    };
    show(4, "request of 10 s during a graceful shutdown", &seen);
    check(4, &seen, "server shutting down");
    ok
}

#[allow(dead_code)] // unused when server.rs includes this file as a module
#[tokio::main]
async fn main() {
    let mut addr: SocketAddr = ([127, 0, 0, 1], 3000).into();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().map(|a| a.parse())) {
            ("--addr", Some(Ok(a))) => addr = a,
            _ => {
                eprintln!("usage: client [--addr 127.0.0.1:3000]");
                std::process::exit(2);
            }
        }
    }
    let ok = run(addr).await;
    println!(
        "client: {}",
        if ok {
            "all four outcomes as expected"
        } else {
            "some outcome was unexpected"
        }
    );
    std::process::exit(if ok { 0 } else { 1 });
}
