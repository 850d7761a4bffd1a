//! Compile-time assertions about the public types. If this file compiles,
//! the auto traits and trait impls promised by the API contract are there.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;

use ctxtree::{AfterFunc, CancelGuard, CancelHandle, Cause, Context, Done, Error};

fn assert_send_sync_static<T: Send + Sync + 'static>() {}
fn assert_done_like<T: Future<Output = Error> + Send + Unpin + 'static>() {}
fn assert_context_traits<T: Clone + Default + Debug>() {}
fn assert_clone<T: Clone>() {}
fn assert_error_traits<T: Copy + Eq + Hash + Debug + std::fmt::Display + std::error::Error>() {}
fn assert_send_value<T: Send>(value: T) -> T {
    value
}

#[test]
fn handles_are_send_sync_and_static() {
    assert_send_sync_static::<Context>();
    assert_send_sync_static::<CancelHandle>();
    assert_send_sync_static::<CancelGuard>();
    assert_send_sync_static::<AfterFunc>();
    assert_send_sync_static::<Error>();
    assert_send_sync_static::<Cause>();
}

#[test]
fn done_is_a_send_unpin_static_future_of_error() {
    assert_done_like::<Done>();
}

#[test]
fn context_is_clone_default_and_debug() {
    assert_context_traits::<Context>();
    assert_clone::<CancelHandle>();
}

#[test]
fn error_is_copy_eq_hash_and_a_std_error() {
    assert_error_traits::<Error>();
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::Canceled);
    assert_eq!(boxed.to_string(), "context canceled");
    let io: std::io::Error = Error::DeadlineExceeded.into();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
}

#[test]
fn run_until_done_future_is_send_when_the_inner_future_is_send() {
    let ctx = Context::background();
    let fut = assert_send_value(ctx.run_until_done(async { 5 }));
    assert_eq!(futures::executor::block_on(fut), Ok(5));
    let (child, _h) = ctx.with_cancel();
    let fut = assert_send_value(child.run_until_done(std::future::ready("ok")));
    assert_eq!(futures::executor::block_on(fut), Ok("ok"));
}

#[test]
fn run_until_done_can_be_spawned_on_a_multi_thread_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let ctx = Context::background();
    let out = rt.block_on(async move {
        tokio::spawn(async move { ctx.run_until_done(async { 1 }).await })
            .await
            .unwrap()
    });
    assert_eq!(out, Ok(1));
}

#[test]
fn cause_is_a_shareable_error_trait_object() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    let cause: Cause = ctx.cause().unwrap();
    let shared = std::thread::spawn(move || cause.to_string())
        .join()
        .unwrap();
    assert_eq!(shared, "context canceled");
}

#[test]
#[cfg(target_pointer_width = "64")]
fn done_stays_small() {
    // The context (24 bytes), the listener box and the cached waker guard.
    assert_eq!(std::mem::size_of::<Done>(), 40);
}
