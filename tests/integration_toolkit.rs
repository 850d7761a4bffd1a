//! End-to-end tests of the server author's toolkit (issue 13) over real
//! sockets on 127.0.0.1: graceful drain, whole-call client deadlines,
//! deadline headers beyond gRPC, nested layers and the request-end hook.
//! Every test is bounded by a 20 s watchdog; request counts are small.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use ctxtree::integrations::{Outcome, ServerLayer};
use ctxtree::Context;
use futures::StreamExt as _;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

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

/// Serves `router` (already layered) on 127.0.0.1:0; the task ends with the runtime.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn get_text(
    client: &HttpClient,
    url: String,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

// ---- drain at shutdown ---------------------------------------------------

type Started = mpsc::UnboundedSender<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_in_flight_requests_and_refuses_new_ones() {
    watchdog(async {
        const N: usize = 3;
        let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
        // The handlers finish when `release` is closed (all senders dropped).
        let (release_tx, release_rx) = tokio::sync::watch::channel(());
        let router = Router::new()
            .route(
                "/",
                get(
                    |State((started, mut release)): State<(
                        Started,
                        tokio::sync::watch::Receiver<()>,
                    )>,
                     ctx: Context| async move {
                        let _ = started.send(());
                        while release.changed().await.is_ok() {}
                        format!("{}", Outcome::of(&ctx))
                    },
                ),
            )
            .with_state((started_tx, release_rx));
        let (layer, shutdown) = ServerLayer::with_shutdown(&Context::background());
        let addr = serve(router.layer(layer)).await;
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
        assert_eq!(shutdown.in_flight(), N);

        let draining = tokio::spawn(shutdown.shutdown(Duration::from_secs(15)));
        // Closed at once: a new request is refused without reaching a handler.
        while !shutdown.is_closed() {
            tokio::task::yield_now().await;
        }
        let (status, headers, _) = get_text(&client, format!("http://{addr}/"), &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["connection"], "close");
        let (status, headers, _) = get_text(
            &client,
            format!("http://{addr}/"),
            &[("content-type", "application/grpc")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["grpc-status"], "14", "gRPC: UNAVAILABLE");
        assert!(
            !draining.is_finished(),
            "shutdown returned with requests in flight"
        );
        assert_eq!(shutdown.in_flight(), N);

        drop(release_tx); // the handlers finish within the grace period
        let report = draining.await.unwrap();
        assert!(!report.forced, "{report:?}");
        assert_eq!(report.still_running, 0);
        assert_eq!(shutdown.in_flight(), 0);
        for r in requests {
            let (status, _, body) = r.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            // They ran to the end: their context was still running.
            assert_eq!(body, "running");
        }
        assert!(shutdown.root().is_done());
        assert!(shutdown.drained().is_done());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_period_the_root_is_cancelled_with_shutdown() {
    watchdog(async {
        const N: usize = 3;
        let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
        let router = Router::new()
            .route(
                "/",
                get(|State(started): State<Started>, ctx: Context| async move {
                    let _ = started.send(());
                    ctx.done().await; // ignores everything but its context
                    format!("{}", Outcome::of(&ctx))
                }),
            )
            .with_state(started_tx);
        let (layer, shutdown) = ServerLayer::with_shutdown(&Context::background());
        let addr = serve(router.layer(layer)).await;
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
        let report = shutdown.shutdown(Duration::from_millis(50)).await;
        assert!(report.forced);
        assert_eq!(report.in_flight_at_grace_end, N);
        assert_eq!(report.still_running, 0, "{report:?}");
        for r in requests {
            let (status, _, body) = r.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "server shutting down");
        }
    })
    .await;
}

#[test]
fn shutdown_blocking_works_without_an_async_caller() {
    // The server runs on a runtime; the shutdown is driven from a plain thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (layer, shutdown) = ServerLayer::with_shutdown(&Context::background());
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let router = Router::new()
        .route(
            "/",
            get(|State(started): State<Started>, ctx: Context| async move {
                let _ = started.send(());
                ctx.done().await;
                "stopped"
            }),
        )
        .with_state(started_tx)
        .layer(layer);
    let addr = rt.block_on(serve(router));
    let request =
        rt.spawn(async move { get_text(&client(), format!("http://{addr}/"), &[]).await });
    rt.block_on(async { watchdog(started_rx.recv()).await.unwrap() });
    let report = shutdown.shutdown_blocking(Duration::from_millis(20));
    assert!(report.forced);
    assert_eq!(report.in_flight_at_grace_end, 1);
    let (status, _, body) = rt.block_on(watchdog(request)).unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "stopped"));
}

// ---- whole-call client deadlines -----------------------------------------

/// A route whose body sends one chunk, then nothing until the client goes.
fn trickle_router() -> Router {
    Router::new().route(
        "/trickle",
        get(|| async {
            let stream = futures::stream::once(async {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(
                    b"first",
                )))
            })
            .chain(futures::stream::pending());
            axum::body::Body::new(http_body_util::StreamBody::new(stream))
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_body_reads_end_with_the_context_error() {
    watchdog(async {
        let addr = serve(trickle_router()).await;
        let client = tower::Layer::layer(&ctxtree::integrations::ClientLayer::new(), client());

        // Deadline: the headers and the first chunk arrive, then the body
        // read fails with TimedOut when the deadline passes.
        let (ctx, _c) = Context::background().with_timeout(Duration::from_millis(100));
        let req = http::Request::get(format!("http://{addr}/trickle"))
            .extension(ctx)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(client.clone(), req)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "context deadline exceeded");
        assert!(
            body.frame().await.is_none(),
            "the body ends after the error"
        );

        // Cancellation with a cause: Interrupted, the cause in the message.
        let (ctx, cancel) = Context::background().with_cancel();
        let req = http::Request::get(format!("http://{addr}/trickle"))
            .extension(ctx)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(client.clone(), req)
            .await
            .unwrap();
        let reader = tokio::spawn(async move { resp.into_body().collect().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancel.cancel_with_cause("user pressed stop");
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted);
        assert_eq!(err.to_string(), "context canceled: user pressed stop");

        // Without a context the body is not bounded (and reads normally).
        let req = http::Request::get(format!("http://{addr}/trickle"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(client, req).await.unwrap();
        let mut body = resp.into_body();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "first"
        );
    })
    .await;
}

// ---- deadlines over more than gRPC ---------------------------------------

/// Answers with the time left before the request's deadline, in ms, or "none".
fn deadline_router() -> Router {
    Router::new()
        .route(
            "/left",
            get(|ctx: Context| async move {
                ctx.deadline().map_or("none".to_owned(), |d| {
                    d.saturating_duration_since(std::time::Instant::now())
                        .as_millis()
                        .to_string()
                })
            }),
        )
        .route(
            "/expire",
            get(|ctx: Context| async move { format!("{}", ctx.done().await) }),
        )
        .route(
            "/headers",
            get(|headers: http::HeaderMap| async move {
                let get = |k: &str| {
                    headers
                        .get(k)
                        .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
                };
                format!("{} {}", get("connect-timeout-ms"), get("grpc-timeout"))
            }),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_proxy_headers_set_the_deadline_and_the_earliest_wins() {
    use ctxtree::integrations::DeadlineHeader;
    watchdog(async {
        let layer = ServerLayer::new(Context::background())
            .deadline_header(DeadlineHeader::connect())
            .deadline_header(DeadlineHeader::envoy());
        let addr = serve(deadline_router().layer(layer.clone())).await;
        let client = client();
        let left = |body: String| -> u128 { body.parse().expect("a deadline") };

        let (_, _, body) = get_text(
            &client,
            format!("http://{addr}/left"),
            &[("connect-timeout-ms", "3000")],
        )
        .await;
        assert!((1..=3000).contains(&left(body.clone())), "{body}");

        // Three sources: the earliest (Envoy's 400 ms) wins.
        let (_, _, body) = get_text(
            &client,
            format!("http://{addr}/left"),
            &[
                ("grpc-timeout", "5S"),
                ("connect-timeout-ms", "3000"),
                ("x-envoy-expected-rq-timeout-ms", "400"),
            ],
        )
        .await;
        assert!((1..=400).contains(&left(body.clone())), "{body}");

        // And it fires.
        let (_, _, body) = get_text(
            &client,
            format!("http://{addr}/expire"),
            &[("connect-timeout-ms", "30")],
        )
        .await;
        assert_eq!(body, "context deadline exceeded");

        // Malformed values of every kind: ignored (no deadline) and counted.
        let (_, _, body) = get_text(
            &client,
            format!("http://{addr}/left"),
            &[
                ("grpc-timeout", "10x"),
                ("connect-timeout-ms", "-1"),
                ("x-envoy-expected-rq-timeout-ms", "1.5"),
            ],
        )
        .await;
        assert_eq!(body, "none");
        let (_, _, body) = get_text(
            &client,
            format!("http://{addr}/left"),
            &[("connect-timeout-ms", "12345678901")], // 11 digits
        )
        .await;
        assert_eq!(body, "none");
        assert_eq!(layer.malformed_deadline_headers(), 4);
        assert_eq!(layer.malformed_grpc_timeouts(), 1);

        // A malformed header does not hide a good one.
        let (_, _, body) = get_text(
            &client,
            format!("http://{addr}/left"),
            &[("grpc-timeout", "oops"), ("connect-timeout-ms", "900")],
        )
        .await;
        assert!((1..=900).contains(&left(body.clone())), "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_layer_writes_the_configured_deadline_headers() {
    use ctxtree::integrations::{ClientLayer, DeadlineHeader};
    watchdog(async {
        let addr = serve(deadline_router()).await;
        let connect_only = tower::Layer::layer(
            &ClientLayer::new().deadline_headers([DeadlineHeader::connect()]),
            client(),
        );
        let both = tower::Layer::layer(
            &ClientLayer::new().deadline_header(DeadlineHeader::connect()),
            client(),
        );
        let call = |svc: ctxtree::integrations::ClientService<HttpClient>, ms| async move {
            let (ctx, _c) = Context::background().with_timeout(Duration::from_millis(ms));
            let req = http::Request::get(format!("http://{addr}/headers"))
                .extension(ctx)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = tower::ServiceExt::oneshot(svc, req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        };
        let sent = call(connect_only, 2000).await;
        let (ms, grpc) = sent.split_once(' ').unwrap();
        let ms: u64 = ms.parse().unwrap();
        assert!((1..=2000).contains(&ms), "{sent}");
        assert_eq!(grpc, "-");

        let sent = call(both, 2000).await;
        let (ms, grpc) = sent.split_once(' ').unwrap();
        assert!((1..=2000).contains(&ms.parse::<u64>().unwrap()), "{sent}");
        let grpc = ctxtree::integrations::grpc_timeout::parse(grpc.as_bytes()).unwrap();
        assert!(grpc <= Duration::from_secs(2));
    })
    .await;
}

// ---- nested and per-route layers -----------------------------------------

#[derive(Debug)]
struct Tenant(&'static str);

/// What middleware between the outer layer and the route would do: attach
/// a value to the request's context.
fn tenant_middleware() -> tower::util::MapRequestLayer<
    fn(http::Request<axum::body::Body>) -> http::Request<axum::body::Body>,
> {
    tower::util::MapRequestLayer::new(|mut req: http::Request<axum::body::Body>| {
        if let Some(ctx) = req.extensions().get::<Context>() {
            let ctx = ctx.with_value(Tenant("acme"));
            req.extensions_mut().insert(ctx);
        }
        req
    })
}

/// "<tenant> <ms left or none>", then waits for the context to end and
/// reports why through `ended`.
async fn describe(State(ended): State<mpsc::UnboundedSender<String>>, ctx: Context) -> String {
    let tenant = ctx.value::<Tenant>().map_or("-", |t| t.0);
    let left = ctx.deadline().map_or("none".to_owned(), |d| {
        d.saturating_duration_since(std::time::Instant::now())
            .as_millis()
            .to_string()
    });
    let _ = ctx.after_func({
        let ctx = ctx.clone();
        move || {
            let _ = ended.send(Outcome::of(&ctx).to_string());
        }
    });
    format!("{tenant} {left}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_timeout_keeps_outer_values_and_only_tightens() {
    watchdog(async {
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<String>();
        let tight = Router::new()
            .route("/tight", get(describe))
            .layer(ServerLayer::timeout(Duration::from_millis(300)));
        let loose = Router::new()
            .route("/loose", get(describe))
            .layer(ServerLayer::timeout(Duration::from_secs(60)));
        let (root, _shutdown) = Context::background().with_cancel();
        let app = Router::new()
            .merge(tight)
            .merge(loose)
            .with_state(ended_tx)
            .layer(tenant_middleware())
            .layer(ServerLayer::new(root).max_timeout(Duration::from_secs(5)));
        let addr = serve(app).await;
        let client = client();

        let (_, _, body) = get_text(&client, format!("http://{addr}/tight"), &[]).await;
        let (tenant, left) = body.split_once(' ').unwrap();
        assert_eq!(tenant, "acme", "the outer middleware's value is kept");
        assert!((1..=300).contains(&left.parse::<u64>().unwrap()), "{body}");
        assert_eq!(ended_rx.recv().await.unwrap(), "request finished");

        let (_, _, body) = get_text(&client, format!("http://{addr}/loose"), &[]).await;
        let (tenant, left) = body.split_once(' ').unwrap();
        assert_eq!(tenant, "acme");
        let left: u64 = left.parse().unwrap();
        assert!(
            (1..=5000).contains(&left),
            "60 s may not loosen the outer 5 s: {body}"
        );
        assert_eq!(ended_rx.recv().await.unwrap(), "request finished");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_inside_another_derives_from_the_request_context() {
    watchdog(async {
        let (started_tx, mut started_rx) = mpsc::unbounded_channel::<Context>();
        let router = Router::new()
            .route(
                "/",
                get(
                    |State(started): State<mpsc::UnboundedSender<Context>>, ctx: Context| async move {
                        let _ = started.send(ctx.clone());
                        let err = ctx.done().await;
                        format!("{} {err} {}", ctx.value::<Tenant>().map_or("-", |t| t.0), Outcome::of(&ctx))
                    },
                ),
            )
            .with_state(started_tx);
        // Inner: its own root (say, a per-router shutdown).
        let (inner_root, stop_inner) = Context::background().with_cancel();
        let (outer_root, _stop_outer) = Context::background().with_cancel();
        let app = router
            .layer(ServerLayer::new(inner_root))
            .layer(tenant_middleware())
            .layer(ServerLayer::new(outer_root).max_timeout(Duration::from_secs(30)));
        let addr = serve(app).await;
        let request = tokio::spawn(async move { get_text(&client(), format!("http://{addr}/"), &[]).await });
        let ctx = started_rx.recv().await.unwrap();
        // The outer deadline and value reach the inner layer's context.
        assert!(ctx.deadline().is_some(), "the outer 30 s cap is kept");
        assert_eq!(ctx.value::<Tenant>().map(|t| t.0), Some("acme"));
        // And the inner layer's own root still ends it.
        stop_inner.cancel_with_cause(ctxtree::integrations::Shutdown);
        let (_, _, body) = request.await.unwrap();
        assert_eq!(body, "acme context canceled server shutting down");
    })
    .await;
}

// ---- request-end hook ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_request_end_reports_every_kind_of_end() {
    use tokio::io::AsyncWriteExt;
    watchdog(async {
        let (ends_tx, mut ends_rx) = mpsc::unbounded_channel::<(String, String, String)>();
        let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
        let router = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/hang",
                get(|State(started): State<Started>| async move {
                    let _ = started.send(());
                    std::future::pending::<()>().await;
                }),
            )
            .with_state(started_tx);
        let (root, shutdown) = Context::background().with_cancel();
        let layer = ServerLayer::new(root)
            .abort_on_deadline()
            .on_request_end(move |end| {
                let cause = end.cause().map_or("-".to_owned(), |c| c.to_string());
                let _ = ends_tx.send((
                    format!("{} {}", end.method(), end.uri().path()),
                    end.outcome().to_string(),
                    cause,
                ));
            });
        let addr = serve(router.layer(layer)).await;
        let client = client();

        // Finished.
        let (status, _, _) = get_text(&client, format!("http://{addr}/ok"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        let (what, outcome, cause) = ends_rx.recv().await.unwrap();
        assert_eq!(
            (what.as_str(), outcome.as_str(), cause.as_str()),
            ("GET /ok", "request finished", "request finished")
        );

        // Client disconnected: the case a handler-level after_func misses
        // when the handler is dropped before it registers anything.
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"GET /hang HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        started_rx.recv().await.unwrap();
        drop(sock);
        let (what, outcome, _) = ends_rx.recv().await.unwrap();
        assert_eq!(
            (what.as_str(), outcome.as_str()),
            ("GET /hang", "client disconnected")
        );

        // Deadline exceeded (abort_on_deadline answers 504).
        let (status, _, _) = get_text(
            &client,
            format!("http://{addr}/hang"),
            &[("grpc-timeout", "30m")],
        )
        .await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        started_rx.recv().await.unwrap();
        let (what, outcome, _) = ends_rx.recv().await.unwrap();
        assert_eq!(
            (what.as_str(), outcome.as_str()),
            ("GET /hang", "deadline exceeded")
        );

        // Shutdown.
        let request = {
            let client = client.clone();
            tokio::spawn(async move {
                let req = http::Request::get(format!("http://{addr}/hang"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                // The handler ignores its context: the answer never comes,
                // the client gives up when the test ends.
                let _ = client.request(req).await;
            })
        };
        started_rx.recv().await.unwrap();
        shutdown.cancel_with_cause(ctxtree::integrations::Shutdown);
        // The context ended with the shutdown; the report comes when the
        // request ends: make the client give up.
        request.abort();
        let (what, outcome, cause) = ends_rx.recv().await.unwrap();
        assert_eq!(what, "GET /hang");
        assert_eq!(outcome, "server shutting down");
        assert_eq!(cause, "server shutting down");
    })
    .await;
}
