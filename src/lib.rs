//! # ctxtree
//!
//! Go's `context` package for Rust: a tree of contexts carrying
//! cancellation, deadlines, causes and request-scoped values across threads
//! and async tasks — lock-free, and model-checked with loom.
//!
//! ## The problem
//!
//! A server request fans out into tasks, threads and downstream calls. When
//! the client goes away, the deadline passes or the server shuts down, all
//! of that work should stop, promptly and with a reason. Go solves this with
//! `context.Context`; Rust servers usually hand-roll it, or use
//! tokio-util's `CancellationToken` (no deadlines, causes or values, and a
//! mutex on every derive and cancel).
//!
//! ## The model
//!
//! A [`Context`] is a handle to a node of a tree. Deriving
//! ([`with_cancel`](Context::with_cancel),
//! [`with_timeout`](Context::with_timeout),
//! [`with_value`](Context::with_value), [`merge`](Context::merge), …)
//! creates a child. Cancelling a node — through its [`CancelHandle`], its
//! deadline, or an ancestor — makes it and every descendant done, with an
//! [`Error`] and a [`Cause`]. Observe it with
//! [`is_done`](Context::is_done) (one atomic load), wait for it with
//! [`wait`](Context::wait) (threads) or [`done`](Context::done) (async), or
//! react to it with [`after_func`](Context::after_func).
//!
//! ```
//! use std::time::Duration;
//! use ctxtree::{Context, Error};
//!
//! #[derive(Debug)]
//! struct RequestId(u64);
//!
//! let server = Context::background();
//! let (request, finish) = server
//!     .with_value(RequestId(42))
//!     .with_timeout(Duration::from_secs(30));
//!
//! let worker = {
//!     let ctx = request.clone();
//!     std::thread::spawn(move || {
//!         // ... work, checking ctx.is_done() between steps ...
//!         let err = ctx.wait();
//!         (ctx.value::<RequestId>().map(|r| r.0), err)
//!     })
//! };
//! finish.cancel_with_cause("request finished");
//! assert_eq!(worker.join().unwrap(), (Some(42), Error::Canceled));
//! assert_eq!(request.cause().unwrap().to_string(), "request finished");
//! ```
//!
//! ## Guarantees
//!
//! - The first cancellation wins; every descendant is done before
//!   `cancel()` returns, with the same err and the same cause `Arc`.
//! - `is_done()`, `err()` and `cause()` never disagree, even mid-race.
//! - Deriving, dropping and cancelling take no lock; cancellation and drop
//!   never recurse (a 1,000,000-deep chain works on a 256 KiB stack).
//! - A context nothing can observe any more is unlinked and freed, with its
//!   timer: forgetting to cancel never leaks. Values and causes are dropped
//!   as soon as the last handle that can reach them is.
//! - Deadlines are watched by one lazily started timer thread
//!   (`ctxtree-timer`); the cancellations they cause run on a small pool of
//!   firing threads (`ctxtree-fire`), so no callback can make another
//!   deadline late.
//!
//! ## Trade-offs and caveats
//!
//! - `after_func` callbacks run synchronously inside the `cancel()` that
//!   completes the cancellation (Go starts a goroutine): keep them short.
//!   When a deadline expires, that `cancel()` runs on a `ctxtree-fire`
//!   thread; a callback that blocks there holds one firing thread, never
//!   the timer (another firing thread starts after 1 ms of no progress).
//! - Reading several properties is not one atomic snapshot: `is_done()`
//!   then `deadline()` may straddle a cancellation.
//! - Deadline contexts arm and disarm their timer under the mutex of one
//!   timer shard (one wheel per core; a thread arms in its own shard, and a
//!   disarm takes the shard the entry is in; O(1), never held while user
//!   code runs); those and the firing pool's queue (taken by the timer and
//!   firing threads only) are the only locks. Moving a deadline
//!   ([`CancelHandle::set_deadline`]) later takes no lock (one CAS);
//!   earlier re-arms under the entry's shard mutex.
//!
//! ## Servers and clients
//!
//! With the `tower`, `axum` and `tonic` features (off by default; the core
//! has no runtime dependency), `integrations` gives every request of a
//! tower, hyper, axum or tonic server a context, cancelled when the client
//! disconnects or the handler returns, with the inbound `grpc-timeout` as
//! its deadline, and makes outbound calls inherit it, as Go's net/http and
//! grpc-go do.
//!
//! ## Cargo features
//!
//! | feature | adds | pulls in |
//! |---|---|---|
//! | *(none)* | the core: [`Context`], [`CancelHandle`], [`group`] (Go's `errgroup`) | crossbeam-epoch, event-listener |
//! | `tower` | `integrations`: `ServerLayer` (a context per request, drain at shutdown, deadline headers), `ClientLayer`, `ContextBody` | tower-service, tower-layer, http, http-body |
//! | `axum` | `tower` + the `Context` extractor (`integrations::axum`) | axum-core |
//! | `tonic` | `tower` + `tonic::Status` mapping and request helpers (`integrations::tonic`) | tonic (no default features) |
//! | `signal` | `signal::notify_context` (Go's `signal.NotifyContext`), Unix only, no async runtime | signal-hook |
//! | `full` | all of the above | |
//!
//! No feature is on by default. In `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! ctxtree = "0.1"                                        # the core only
//! # an axum server, drained on SIGTERM:
//! # ctxtree = { version = "0.1", features = ["axum", "signal"] }
//! ```
//!
//! Items that need a feature say so on their page ("Available on crate
//! feature … only"); [docs.rs](https://docs.rs/ctxtree) builds with `full`.
//!
//! The algorithm, its invariants and its memory-ordering argument are in
//! `docs/DESIGN.md`.
#![cfg_attr(docsrs, feature(doc_cfg))]
// `loom` is the crate's own model-checking cfg, not something users set.
#![cfg_attr(docsrs, doc(auto_cfg(hide(loom))))]
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod after_func;
mod context;
mod done;
mod error;
mod handle;
mod node;
mod sync;
#[cfg(not(loom))]
mod timer;
/// Under loom only the firing pool is modelled (the wheel and its thread use
/// real time).
#[cfg(loom)]
mod timer {
    pub(crate) mod firing;
    pub(crate) mod sleep;
}

#[cfg(not(loom))]
pub mod group;

#[cfg(all(feature = "signal", unix, not(loom)))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "signal", unix))))]
pub mod signal;

#[cfg(all(feature = "tower", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod integrations;

pub use crate::after_func::AfterFunc;
pub use crate::context::Context;
pub use crate::done::Done;
pub use crate::error::{Cause, Error};
pub use crate::handle::{CancelGuard, CancelHandle};

/// Internal hooks for the crate's own loom models, tests and benchmarks.
/// Not part of the API: no stability promise.
#[doc(hidden)]
pub mod __private {
    use crate::context::Context;

    /// Fires the deadline of `ctx` as the timer thread would (loom models
    /// call this from a loom thread). Returns false if `ctx` is not a
    /// deadline context or already dead.
    pub fn fire_deadline(ctx: &Context) -> bool {
        crate::node::timer_glue::fire_context(ctx.raw())
    }

    /// Loom only: turns on the stand-in timer (`node::timer_glue::loom_timer`):
    /// deadline nodes are then armed in it and [`expire_deadlines`] runs the
    /// timer's claim step. Set before `loom::model`.
    #[cfg(loom)]
    pub fn loom_timer(on: bool) {
        // Relaxed: read by the model's threads, all started after this.
        crate::node::timer_glue::loom_timer::ON.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Loom only: the stand-in timer's poll at `now` (a pretend clock):
    /// pops every entry armed at or before it and runs the timer's claim
    /// step on each (fire, or re-arm a deadline that moved later), as the
    /// timer thread does. Returns how many fired.
    #[cfg(loom)]
    pub fn expire_deadlines(now: std::time::Instant) -> usize {
        crate::node::timer_glue::loom_timer::expire(now)
    }

    /// Loom only: entries armed in the stand-in timer.
    #[cfg(loom)]
    pub fn loom_armed_timers() -> usize {
        crate::node::timer_glue::loom_timer::armed()
    }

    /// Gives the calling thread's shard a proxy of `ctx`'s node, as a
    /// contended derive does (docs/SCALING.md): later derives from `ctx` on
    /// this thread go under it. Returns true if the shard has a proxy now
    /// (false if `ctx` is a root, a value layer, done, or the machine has
    /// one core, outside loom).
    pub fn install_proxy(ctx: &Context) -> bool {
        crate::node::proxy::install(ctx.raw())
    }

    /// True if `ctx`'s node hangs under a proxy of its parent.
    pub fn is_proxied(ctx: &Context) -> bool {
        crate::node::proxy::is_proxied(ctx.raw())
    }

    /// Lets every timer shard hold `n` entries without allocating, whichever
    /// thread arms them (for tests that count allocations).
    #[cfg(not(loom))]
    pub fn reserve_timers(n: usize) {
        crate::node::timer_glue::reserve(n);
    }

    /// Number of armed timer entries, over every shard of the timer.
    #[cfg(not(loom))]
    pub fn armed_timers() -> usize {
        crate::node::timer_glue::armed()
    }

    /// Pins and flushes the epoch collector a few times so deferred frees
    /// run (for leak checks), then empties this thread's node block cache.
    pub fn flush_epoch() {
        // Each flush can advance the epoch by one step and collects a few
        // bags; enough rounds empty the queue when no other thread is pinned.
        for _ in 0..8 {
            crate::sync::pin().flush();
        }
        // And the blocks this thread keeps for reuse (`node::cache`).
        crate::node::cache::flush();
    }

    /// Node memory claims not yet released (or handed to the epoch for
    /// release), process-wide. Loom and debug builds only: a model or test
    /// that ends where it started has freed every node it made.
    #[cfg(any(loom, debug_assertions))]
    pub fn live_claims() -> isize {
        crate::node::LIVE_CLAIMS.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Nodes allocated and not yet freed, process-wide, counting those
    /// whose release still waits in an epoch bag (unlike
    /// [`live_claims`]): the retained node memory. Loom and debug builds
    /// only.
    #[cfg(any(loom, debug_assertions))]
    pub fn allocated_nodes() -> isize {
        crate::node::ALLOCATED_NODES.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Loom only: makes every thread flush its epoch bag once it has
    /// deferred `n` node releases since its last flush (off by default
    /// under loom; 64 outside it). Set before `loom::model`.
    #[cfg(loom)]
    pub fn loom_flush_after(n: usize) {
        // Relaxed: read by the model's threads, all started after this.
        crate::node::claims::retention::FLUSH_AFTER.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Same as [`live_claims`] (older name used by some tests).
    #[cfg(any(loom, debug_assertions))]
    pub fn live_nodes() -> isize {
        live_claims()
    }

    /// Loom only: the timer's firing pool over boxed closures, for
    /// `loom-tests/tests/loom_firing.rs`.
    #[cfg(loom)]
    pub struct FiringPool(crate::timer::firing::Firing<FiringJob>);

    /// Loom only: a job of [`FiringPool`].
    #[cfg(loom)]
    pub struct FiringJob(Box<dyn FnOnce() + Send>);

    #[cfg(loom)]
    impl crate::timer::firing::Job for FiringJob {
        fn run(self) {
            (self.0)()
        }

        fn idle() {}
    }

    #[cfg(loom)]
    impl FiringPool {
        /// An empty pool (no worker yet).
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            FiringPool(crate::timer::firing::Firing::new())
        }

        /// Queues `job` as expired at `now_us` (what the timer thread does).
        pub fn submit(&self, now_us: u64, job: impl FnOnce() + Send + 'static) {
            self.0.submit(now_us, [FiringJob(Box::new(job))]);
        }

        /// The timer thread's stall rule at `now_us`; true if jobs are queued.
        pub fn check_stall(&self, now_us: u64) -> bool {
            self.0.check_stall(now_us)
        }

        /// Makes the workers exit once the queue is empty.
        pub fn close(&self) {
            self.0.close()
        }

        /// The stall period, in µs.
        pub const STALL_US: u64 = crate::timer::firing::STALL_US;
    }

    /// Loom only: the timer thread's sleep word, for
    /// `loom-tests/tests/loom_timer_sleep.rs` (times in µs).
    #[cfg(loom)]
    pub struct TimerSleep(crate::timer::sleep::Sleeper);

    #[cfg(loom)]
    impl TimerSleep {
        /// A timer thread that has not scanned yet.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            TimerSleep(crate::timer::sleep::Sleeper::new())
        }

        /// The timer thread, before it locks the first shard.
        pub fn begin_scan(&self) {
            self.0.begin_scan()
        }

        /// The timer thread, after its scan: true if it may sleep until
        /// `us` (`None`: until woken).
        pub fn finish_scan(&self, us: Option<u64>) -> bool {
            self.0.finish_scan(us)
        }

        /// An arm at `us`, after its insert: true if it must unpark the
        /// timer thread.
        pub fn notify(&self, us: u64) -> bool {
            self.0.notify(|| us)
        }
    }

    /// Size in bytes of a `with_cancel` node.
    pub const CANCEL_NODE_SIZE: usize = crate::node::CANCEL_NODE_SIZE;
}
