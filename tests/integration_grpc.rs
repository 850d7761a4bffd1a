//! End-to-end tests of the gRPC integration: real tonic clients and tonic
//! server handlers (`tonic::client::Grpc`, `tonic::server::Grpc`) over real
//! HTTP/2 connections on 127.0.0.1, with `ServerLayer` on the server and
//! `ClientLayer::grpc()` on the client. A tiny UTF-8 string codec stands in
//! for protobuf, so no code generation is needed. Each test has a 20 s
//! watchdog.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use ctxtree::integrations::tonic::GrpcErrors;
use ctxtree::integrations::tonic::{context_status, request_context, set_context};
use ctxtree::integrations::{grpc_timeout, ClientLayer, ClientService, Outcome, ServerLayer};
use ctxtree::Context;
use http::uri::PathAndQuery;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tower::Layer;

async fn watchdog<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("watchdog: test took longer than 20 s")
}

/// Messages are plain UTF-8 strings.
#[derive(Clone, Copy, Default)]
struct Utf8;

impl Encoder for Utf8 {
    type Item = String;
    type Error = Status;
    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for Utf8 {
    type Item = String;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

impl Codec for Utf8 {
    type Encode = String;
    type Decode = String;
    type Encoder = Utf8;
    type Decoder = Utf8;
    fn encoder(&mut self) -> Utf8 {
        Utf8
    }
    fn decoder(&mut self) -> Utf8 {
        Utf8
    }
}

/// Serves one unary gRPC method (any path) over HTTP/2, behind `layer`.
async fn serve<H, F>(layer: ServerLayer, handler: H) -> SocketAddr
where
    H: Fn(tonic::Request<String>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<tonic::Response<String>, Status>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = layer.layer(tower::service_fn(
        move |req: http::Request<hyper::body::Incoming>| {
            let handler = handler.clone();
            async move {
                let method = tower::service_fn(handler);
                Ok::<_, Infallible>(tonic::server::Grpc::new(Utf8).unary(method, req).await)
            }
        },
    ));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

type Channel = ClientService<Client<HttpConnector, tonic::body::Body>, GrpcErrors>;

fn channel() -> Channel {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    ClientLayer::grpc().layer(client)
}

async fn call(addr: SocketAddr, req: tonic::Request<String>) -> Result<String, Status> {
    let origin = format!("http://{addr}").parse().unwrap();
    let mut grpc = tonic::client::Grpc::with_origin(channel(), origin);
    grpc.ready().await?;
    let resp = grpc
        .unary(req, PathAndQuery::from_static("/test.Echo/Say"), Utf8)
        .await?;
    Ok(resp.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_sees_the_grpc_timeout_deadline_and_answers_deadline_exceeded() {
    watchdog(async {
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Option<Duration>>();
        let addr = serve(ServerLayer::new(Context::background()), move |req| {
            let seen = seen_tx.clone();
            async move {
                let ctx = request_context(&req).expect("ServerLayer put a context");
                let _ = seen.send(
                    ctx.deadline()
                        .map(|d| d.saturating_duration_since(Instant::now())),
                );
                ctx.done().await;
                Err(context_status(&ctx).unwrap())
            }
        })
        .await;
        let mut req = tonic::Request::new("hi".to_owned());
        req.set_timeout(Duration::from_millis(50)); // tonic writes grpc-timeout
        let status = call(addr, req).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_eq!(status.message(), "context deadline exceeded");
        let left = seen_rx
            .recv()
            .await
            .unwrap()
            .expect("the handler saw a deadline");
        // At most the client's timeout; it may already have run out by
        // the time a loaded machine runs the handler (no lower bound).
        assert!(left <= Duration::from_millis(50), "{left:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_deadline_answers_status_4_not_cancelled() {
    watchdog(async {
        let layer = ServerLayer::new(Context::background()).abort_on_deadline();
        let addr = serve(layer, |_req| std::future::pending()).await;
        let mut req = tonic::Request::new("hi".to_owned());
        req.set_timeout(Duration::from_millis(30));
        let status = call(addr, req).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_context_sends_grpc_timeout_and_its_end_maps_to_status() {
    watchdog(async {
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<Outcome>();
        let addr = serve(ServerLayer::new(Context::background()), move |req| {
            let ended = ended_tx.clone();
            async move {
                let ctx = request_context(&req).unwrap();
                if req.get_ref() == "echo" {
                    let t = req
                        .metadata()
                        .get("grpc-timeout")
                        .map(|v| v.to_str().unwrap().to_owned());
                    return Ok(tonic::Response::new(t.unwrap_or_default()));
                }
                // "hang": a spawned task reports how the request ended (the
                // handler itself is dropped when the client goes away).
                tokio::spawn(async move {
                    ctx.done().await;
                    let _ = ended.send(Outcome::of(&ctx));
                });
                std::future::pending().await
            }
        })
        .await;

        // The deadline travels: the server gets less than the 2 s left.
        let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(2));
        let mut req = tonic::Request::new("echo".to_owned());
        set_context(&mut req, ctx);
        let sent = call(addr, req).await.unwrap();
        let sent = grpc_timeout::parse(sent.as_bytes()).expect("grpc-timeout was sent");
        assert!(
            sent > Duration::ZERO && sent < Duration::from_secs(2),
            "{sent:?}"
        );

        // Cancelling the caller's context aborts the call: CANCELLED with
        // the cause, and the server's handler sees an HTTP/2 reset as
        // "client disconnected".
        let (ctx, cancel) = Context::background().with_cancel();
        let mut req = tonic::Request::new("hang".to_owned());
        set_context(&mut req, ctx);
        let pending = tokio::spawn(call(addr, req));
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel_with_cause("user pressed stop");
        let status = pending.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Cancelled, "{status:?}");
        assert_eq!(status.message(), "context canceled: user pressed stop");
        assert_eq!(ended_rx.recv().await.unwrap(), Outcome::ClientDisconnected);

        // The caller's deadline passing: DEADLINE_EXCEEDED on the client,
        // whichever side notices first.
        let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(50));
        let mut req = tonic::Request::new("hang".to_owned());
        set_context(&mut req, ctx);
        let status = call(addr, req).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    })
    .await;
}
