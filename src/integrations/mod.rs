//! Request contexts for tower, hyper, axum and tonic servers and clients.
//!
//! Go's net/http and grpc-go give every request a context: cancelled when
//! the client disconnects or the handler returns, carrying the inbound
//! deadline (`grpc-timeout`) to every outbound call. In Rust, a handler
//! learns about a disconnect only by being dropped (the tasks it spawned
//! keep running), tower's `Timeout` passes no budget downstream, and tonic
//! handlers cannot see the caller's deadline. This module gives Rust
//! servers Go's model, with [`Context`](crate::Context):
//!
//! | piece | feature | what it does |
//! |---|---|---|
//! | [`ServerLayer`] | `tower` | per-request child of a server root; deadline = min(cap, `grpc-timeout`); cancelled with [`ClientDisconnected`] or [`RequestFinished`]; optional 504 / `DEADLINE_EXCEEDED` on expiry |
//! | [`ServerLayer::timeout`] / [`ServerLayer::nested`] | `tower` | per-route layers: derive from the request's existing context, only tighten its deadline |
//! | [`ServerLayer::on_request_end`] | `tower` | a callback per ended request: [`RequestEnd`] (outcome, elapsed, cause, method, URI, context) |
//! | [`ShutdownHandle`] | `tower` | graceful shutdown: counts in-flight requests, refuses new ones (503 / `UNAVAILABLE`), waits a grace period, then cancels the root with [`Shutdown`] |
//! | [`ClientLayer`] | `tower` | outbound calls send `grpc-timeout` from the remaining time and abort when the context ends, response body included ([`ClientBody`]; `io::Error` for hyper) |
//! | [`grpc_timeout`] | `tower` | the header codec |
//! | [`DeadlineHeader`] | `tower` | deadlines in other headers: Connect's `Connect-Timeout-Ms`, Envoy's `x-envoy-expected-rq-timeout-ms`, any integer header; chosen per layer |
//! | [`Outcome`] | `tower` | how a request context ended: finished, client disconnected, deadline, shutdown |
//! | `Context: FromRequestParts` (module `axum`) | `axum` | `async fn handler(ctx: Context)` |
//! | module `tonic` | `tonic` | `tonic::request_context`, `ClientLayer::grpc()` (errors as `tonic::Status`) |
//!
//! The features add no async runtime to the crate: the layers spawn no
//! task and use the crate's own timer, so they work under any executor.
//!
//! A server (axum here; any tower-based server works the same):
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use ctxtree::{Context, integrations::{Outcome, ServerLayer, Shutdown}};
//!
//! async fn handler(ctx: Context) -> String {
//!     // Work the handler spawns stops when the request ends, whatever ends it.
//!     let work = tokio::spawn(
//!         ctx.clone().run_until_done_owned(tokio::time::sleep(Duration::from_secs(1))),
//!     );
//!     let _ = ctx.after_func({
//!         let ctx = ctx.clone();
//!         move || println!("request ended: {}", Outcome::of(&ctx))
//!     });
//!     format!("{:?}", work.await)
//! }
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let (root, shutdown) = Context::background().with_cancel();
//! let app = Router::new()
//!     .route("/", get(handler))
//!     .layer(ServerLayer::new(root).max_timeout(Duration::from_secs(30)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         shutdown.cancel_with_cause(Shutdown); // every in-flight request ends now
//!     })
//!     .await
//! # }
//! ```
//!
//! `examples/server.rs` is a complete server with a fan-out handler and a
//! downstream call, and `examples/client.rs` drives it.

mod body;
mod client;
mod deadline_header;
mod error_response;
pub mod grpc_timeout;
mod hook;
mod maybe_body;
mod outcome;
mod server;
mod shutdown;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;

pub use body::ContextBody;
pub use client::{
    BoxError, ClientBody, ClientFuture, ClientLayer, ClientService, ContextError, ErrorMapping,
    IoErrors,
};
pub use deadline_header::DeadlineHeader;
pub use hook::RequestEnd;
pub use outcome::{ClientDisconnected, Outcome, RequestFinished, Shutdown};
pub use server::{ResponseFuture, ServerLayer, ServerService};
pub use shutdown::{ShutdownHandle, ShutdownReport};

/// The README's examples, compiled and run as doctests with the features on.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
