//! End-to-end tests of the HTTP integration: a real axum server on
//! 127.0.0.1 with `ServerLayer`, real hyper clients and raw sockets.
//! Every test is bounded by a 20 s watchdog; request counts are small.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use ctxtree::integrations::{
    grpc_timeout, ClientLayer, ClientService, Outcome, ServerLayer, Shutdown,
};
use ctxtree::{Context, Error};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Fails the test instead of hanging CI.
async fn watchdog<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("watchdog: test took longer than 20 s")
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Serves `router` behind `layer` on 127.0.0.1:0; the task ends with the runtime.
async fn serve(router: Router, layer: ServerLayer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router.layer(layer)).await });
    addr
}

async fn get_text(
    client: &HttpClient,
    url: String,
    headers: &[(&str, &[u8])],
) -> (StatusCode, String) {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, http::HeaderValue::from_bytes(v).unwrap());
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The issue asks for "within 100 ms". hyper notices the EOF on its next
/// read poll, which the socket close wakes at once: measured 0.12-0.47 ms
/// over 10 runs on the 2-core dev VM. 100 ms leaves a 200x margin for a
/// loaded CI machine; it is the only upper-bound timing assertion here.
const DISCONNECT_BOUND: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_spawned_subtask_within_100ms() {
    watchdog(async {
        // The handler spawns a sub-task that reports when its context ends,
        // then waits forever: only the disconnect can end it.
        let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(Instant, Outcome)>();
        let state = (started_tx, ended_tx);
        type St = (
            mpsc::UnboundedSender<()>,
            mpsc::UnboundedSender<(Instant, Outcome)>,
        );
        let router = Router::new()
            .route(
                "/slow",
                get(
                    |State((started, ended)): State<St>, ctx: Context| async move {
                        tokio::spawn(async move {
                            ctx.done().await;
                            let _ = ended.send((Instant::now(), Outcome::of(&ctx)));
                        });
                        let _ = started.send(());
                        std::future::pending::<()>().await;
                    },
                ),
            )
            .with_state(state);
        let addr = serve(router, ServerLayer::new(Context::background())).await;

        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        started_rx.recv().await.unwrap();
        let closed_at = Instant::now();
        drop(sock);
        let (ended_at, outcome) = ended_rx.recv().await.unwrap();
        let took = ended_at.duration_since(closed_at);
        println!("disconnect -> sub-task cancelled in {took:?}");
        assert_eq!(outcome, Outcome::ClientDisconnected);
        assert!(
            took < DISCONNECT_BOUND,
            "sub-task cancelled {took:?} after the disconnect"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_grpc_timeout_is_the_deadline_and_fires() {
    watchdog(async {
        let router = Router::new().route(
            "/",
            get(|ctx: Context| async move {
                let left = ctx
                    .deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()));
                let err = ctx.done().await;
                format!("{left:?} {err} {}", Outcome::of(&ctx))
            }),
        );
        let addr = serve(router, ServerLayer::new(Context::background())).await;
        let sent = Instant::now();
        let (status, body) = get_text(
            &client(),
            format!("http://{addr}/"),
            &[("grpc-timeout", b"50m")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (left, rest) = body.split_once(' ').unwrap();
        assert_eq!(rest, "context deadline exceeded deadline exceeded");
        let left: Duration = left
            .strip_prefix("Some(")
            .and_then(|s| s.strip_suffix(')'))
            .map(parse_debug_duration)
            .expect("the handler saw a deadline");
        assert!(
            left > Duration::ZERO && left <= Duration::from_millis(50),
            "{left:?}"
        );
        // The deadline did fire (not just "eventually"): no earlier than 50 ms.
        assert!(sent.elapsed() >= Duration::from_millis(50));
    })
    .await;
}

/// Parses `Duration`'s Debug text (`49.9ms`, `49.123µs`, `1.2s`, `800ns`).
fn parse_debug_duration(s: &str) -> Duration {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic() || c == 'µ').unwrap());
    let v: f64 = num.parse().unwrap();
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "µs" => v / 1e6,
        "ns" => v / 1e9,
        _ => panic!("unit {unit}"),
    };
    Duration::from_secs_f64(secs)
}

#[derive(Clone)]
struct Front {
    addr: Arc<Mutex<Option<SocketAddr>>>,
    client: ClientService<HttpClient>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_from_handler_carries_a_smaller_grpc_timeout() {
    watchdog(async {
        let front = Front {
            addr: Arc::default(),
            client: ClientLayer::new().layer(client()),
        };
        async fn front_handler(State(f): State<Front>, ctx: Context, headers: HeaderMap) -> String {
            let addr = f.addr.lock().unwrap().unwrap();
            let back = headers
                .get("x-back")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("echo");
            let req = http::Request::get(format!("http://{addr}/{back}"))
                .extension(ctx.clone())
                .body(Empty::new())
                .unwrap();
            match f.client.clone().oneshot(req).await {
                Ok(resp) => {
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    String::from_utf8(body.to_vec()).unwrap()
                }
                Err(e) => format!("error {:?} {e}", e.kind()),
            }
        }
        let router = Router::new()
            .route("/front", get(front_handler))
            .route(
                "/echo",
                get(|headers: HeaderMap| async move {
                    headers
                        .get("grpc-timeout")
                        .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
                }),
            )
            .route("/hang", get(std::future::pending::<()>))
            .with_state(front.clone());
        let addr = serve(router, ServerLayer::new(Context::background())).await;
        *front.addr.lock().unwrap() = Some(addr);

        // The back end gets what is left of the front's 2 s: less than 2 s.
        let (status, sent) = get_text(
            &client(),
            format!("http://{addr}/front"),
            &[("grpc-timeout", b"2S")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let sent =
            grpc_timeout::parse(sent.as_bytes()).expect("the outbound call had grpc-timeout");
        assert!(
            sent > Duration::ZERO && sent < Duration::from_secs(2),
            "{sent:?}"
        );

        // A back end slower than the budget: the outbound call times out
        // (io::ErrorKind::TimedOut) when the front's deadline passes.
        let (_, body) = get_text(
            &client(),
            format!("http://{addr}/front"),
            &[("grpc-timeout", b"100m"), ("x-back", b"hang")],
        )
        .await;
        assert_eq!(body, "error TimedOut context deadline exceeded");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_every_in_flight_request_with_its_cause() {
    watchdog(async {
        const N: usize = 5;
        let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
        let router = Router::new()
            .route(
                "/",
                get(
                    |State(started): State<mpsc::UnboundedSender<()>>, ctx: Context| async move {
                        let _ = started.send(());
                        ctx.done().await;
                        let cause = ctx.cause().unwrap();
                        format!("{} {}", Outcome::of(&ctx), cause.is::<Shutdown>())
                    },
                ),
            )
            .with_state(started_tx);
        let (root, shutdown) = Context::background().with_cancel();
        let addr = serve(router, ServerLayer::new(root)).await;
        let client = client();
        let requests: Vec<_> = (0..N)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { get_text(&client, format!("http://{addr}/"), &[]).await })
            })
            .collect();
        for _ in 0..N {
            started_rx.recv().await.unwrap();
        }
        shutdown.cancel_with_cause(Shutdown);
        for r in requests {
            let (status, body) = r.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "server shutting down true");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_timeouts_are_ignored_and_counted() {
    watchdog(async {
        let router = Router::new().route(
            "/",
            get(|ctx: Context| async move { format!("{:?}", ctx.deadline()) }),
        );
        let layer = ServerLayer::new(Context::background());
        let addr = serve(router, layer.clone()).await;
        let client = client();
        let bad: [&[u8]; 5] = [b"999999999S", b"-1m", b"10x", b"", "5\u{b5}m".as_bytes()];
        for value in bad {
            let (status, body) = get_text(
                &client,
                format!("http://{addr}/"),
                &[("grpc-timeout", value)],
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{value:?}");
            assert_eq!(body, "None", "{value:?} gave a deadline");
        }
        // A raw request with a non-UTF-8 header byte, as hyper's client
        // would not send it formatted like this.
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(
            b"GET / HTTP/1.1\r\nhost: t\r\ngrpc-timeout: 1\xffS\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        sock.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(layer.malformed_grpc_timeouts(), 6);
        // A well-formed one still works, and is not counted.
        let (_, body) = get_text(
            &client,
            format!("http://{addr}/"),
            &[("grpc-timeout", b"5S")],
        )
        .await;
        assert!(body.starts_with("Some("), "{body}");
        assert_eq!(layer.malformed_grpc_timeouts(), 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_deadline_answers_504_and_drops_the_handler() {
    watchdog(async {
        let (dropped_tx, mut dropped_rx) = mpsc::unbounded_channel::<Outcome>();
        struct OnDrop(Context, mpsc::UnboundedSender<Outcome>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.1.send(Outcome::of(&self.0));
            }
        }
        let router = Router::new()
            .route(
                "/",
                get(
                    |State(tx): State<mpsc::UnboundedSender<Outcome>>, ctx: Context| async move {
                        let _guard = OnDrop(ctx, tx);
                        std::future::pending::<()>().await;
                    },
                ),
            )
            .with_state(dropped_tx);
        let layer = ServerLayer::new(Context::background())
            .max_timeout(Duration::from_millis(30))
            .abort_on_deadline();
        let addr = serve(router, layer).await;
        let (status, body) = get_text(&client(), format!("http://{addr}/"), &[]).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body, "");
        assert_eq!(dropped_rx.recv().await.unwrap(), Outcome::DeadlineExceeded);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_body_keeps_the_context_alive_until_its_end() {
    watchdog(async {
        type Tx = mpsc::UnboundedSender<(Context, mpsc::UnboundedSender<Bytes>)>;
        let (handed_tx, mut handed_rx) =
            mpsc::unbounded_channel::<(Context, mpsc::UnboundedSender<Bytes>)>();
        let router = Router::new()
            .route(
                "/",
                get(|State(handed): State<Tx>, ctx: Context| async move {
                    let (chunks_tx, chunks_rx) = mpsc::unbounded_channel::<Bytes>();
                    let _ = handed.send((ctx, chunks_tx));
                    let stream = futures::stream::unfold(chunks_rx, |mut rx| async move {
                        let chunk = rx.recv().await?;
                        Some((
                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk)),
                            rx,
                        ))
                    });
                    axum::body::Body::new(http_body_util::StreamBody::new(stream))
                }),
            )
            .with_state::<()>(handed_tx);
        let addr = serve(router, ServerLayer::new(Context::background())).await;
        let resp = client()
            .request(
                http::Request::get(format!("http://{addr}/"))
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let (ctx, chunks) = handed_rx.recv().await.unwrap();
        let mut body = resp.into_body();
        chunks.send(Bytes::from_static(b"one")).unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "one");
        // The handler has returned, the body is still streaming: alive.
        assert_eq!(Outcome::of(&ctx), Outcome::Running);
        drop(chunks); // end of the body
        assert!(body.frame().await.is_none());
        assert_eq!(ctx.done().await, Error::Canceled);
        assert_eq!(Outcome::of(&ctx), Outcome::Finished);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_extractor_without_the_layer_is_a_500_not_a_panic() {
    watchdog(async {
        let router = Router::new().route("/", get(|_ctx: Context| async { "unreachable" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let (status, body) = get_text(&client(), format!("http://{addr}/"), &[]).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("ServerLayer"), "{body}");
    })
    .await;
}
