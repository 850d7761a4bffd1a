//! Per-request overhead of `ServerLayer`, next to the bare service.
//!
//! Each iteration builds a request, calls the service, polls the response
//! future to completion (it is ready at once) and drops the response, so
//! the difference between a layered case and `bare` is what the layer adds
//! to one request: deriving the child context, the extension insert, the
//! response guard and the final cancel (plus the timer entry when the
//! request has a deadline).
//!
//! ```sh
//! cargo bench --bench layer
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use ctxtree::integrations::ServerLayer;
use ctxtree::Context;
use http_body_util::Empty;
use tower::{Layer, Service};

type Req = http::Request<Empty<Bytes>>;
type Resp = http::Response<Empty<Bytes>>;

/// Polls a future that is ready at once (the handlers here never wait).
fn now<F: Future>(fut: F) -> F::Output {
    let waker = futures::task::noop_waker();
    let mut cx = TaskContext::from_waker(&waker);
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the bench handlers are always ready"),
    }
}

fn handler() -> impl Service<
    Req,
    Response = Resp,
    Error = Infallible,
    Future = std::future::Ready<Result<Resp, Infallible>>,
> + Clone {
    tower::service_fn(|req: Req| {
        black_box(&req);
        std::future::ready(Ok(http::Response::new(Empty::new())))
    })
}

fn run<S>(c: &mut Criterion, name: &str, mut svc: S, grpc_timeout: Option<&'static str>)
where
    S: Service<Req>,
{
    c.bench_function(name, |b| {
        b.iter(|| {
            let mut req = http::Request::new(Empty::new());
            if let Some(t) = grpc_timeout {
                req.headers_mut()
                    .insert("grpc-timeout", http::HeaderValue::from_static(t));
            }
            let resp = now(svc.call(req));
            black_box(resp.is_ok());
        })
    });
}

fn layer(c: &mut Criterion) {
    let (root, _shutdown) = Context::background().with_cancel();
    run(c, "layer/bare service", handler(), None);
    run(
        c,
        "layer/bare service, grpc-timeout header",
        handler(),
        Some("30S"),
    );
    let layer = ServerLayer::new(root.clone());
    run(
        c,
        "layer/ServerLayer, no deadline",
        layer.layer(handler()),
        None,
    );
    run(
        c,
        "layer/ServerLayer, grpc-timeout 30S",
        layer.layer(handler()),
        Some("30S"),
    );
    let capped = ServerLayer::new(root.clone()).max_timeout(Duration::from_secs(30));
    run(
        c,
        "layer/ServerLayer, 30 s cap",
        capped.layer(handler()),
        None,
    );
    let abort = ServerLayer::new(root).abort_on_deadline();
    run(
        c,
        "layer/ServerLayer abort_on_deadline, grpc-timeout 30S",
        abort.layer(handler()),
        Some("30S"),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = layer
}
criterion_main!(benches);
