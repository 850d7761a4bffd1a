//! The operation-sequence harness and its reference model, shared by the
//! property tests (`tests/model_proptest.rs`), `tests/stress.rs`,
//! `tests/leaks.rs`, `tests/soak.rs` and the fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, which include this module with `#[path]`).
//!
//! Input is a byte string decoded into [`Op`]s (derive of every kind,
//! cancel with or without cause, guards, deadline expiry, drops,
//! `after_func`/`stop`, `done()` futures, zero-timeout waits, Debug). Two
//! drivers run them:
//!
//! - [`run_single`]: one thread, on a forest of at most [`MAX_SLOTS`] held
//!   contexts, against a simple reference model. After every step it
//!   compares every held context's `is_done`/`err`/`cause` (the cause by
//!   `Arc::ptr_eq` to the one Arc of the cancellation that reached it),
//!   `deadline`, values, callback runs, waker wake-ups, dropped values
//!   (exactly the unreachable ones) and armed timers with the model; at
//!   the end everything is torn down and every node must be freed.
//! - [`run_threads`]: the same ops from two threads on one shared forest,
//!   checking what holds under every interleaving: `err`/`cause`/`is_done`
//!   agree and are monotone, a cause names a cancellation of an
//!   ancestor-or-self, every descendant is done when `cancel` returns,
//!   every callback runs or is stopped exactly once, and nothing leaks.
//!
//! The model uses only far-future deadlines (never reached during a run),
//! deadlines already passed, `Duration::ZERO` and unrepresentable ones;
//! expiry is driven by `__private::fire_deadline`, so runs are
//! deterministic.
//!
//! Files, one concept each:
//!
//! | file | what it holds |
//! | --- | --- |
//! | `ops.rs` | [`Op`] and its decoding from bytes |
//! | `probes.rs` | values that flag their drop, cause tags, the counting waker, the callback body, the crate's global counters |
//! | `clock.rs` | a run's deadlines, known up to an interval |
//! | `slots.rs` | the contexts a run holds and how an op picks one |
//! | `reference.rs` | the reference model |
//! | `single.rs` | the single-thread driver |
//! | `compare.rs` | its comparison with the model after every step, and teardown |
//! | `forest.rs` | the two-thread driver's shared bookkeeping |
//! | `thread_op.rs` | one op of a thread, and the checks right after it |
//! | `threads.rs` | the two-thread driver: threads, quiescent checks, teardown |
//! | `checks.rs` | checks that hold whatever races (also used by `tests/soak.rs`) |
#![allow(dead_code)]

mod checks;
mod clock;
mod compare;
mod forest;
mod ops;
mod probes;
mod reference;
mod single;
mod slots;
mod thread_op;
mod threads;

// Each including binary uses part of these.
#[allow(unused_imports)]
pub use checks::{check_reads, WatchedDone};
#[allow(unused_imports)]
pub use ops::{DeadlineArg, Op, Parent};
#[allow(unused_imports)]
pub use probes::{callback_body, cause_kind, flush_until_at_most, CauseKind, Tag};
#[allow(unused_imports)]
pub use single::{run_single, run_single_ops, run_single_ops_with_slots};
#[allow(unused_imports)]
pub use threads::{run_threads, run_threads_ops, THREAD_START_HOOK};

/// Most contexts held in the forest's slots at once.
pub const MAX_SLOTS: usize = 16;
/// Most `after_func` registrations and `done()` futures tracked at once.
const MAX_CALLBACKS: usize = 16;
const MAX_DONES: usize = 8;
/// Ops decoded from one input at most (per thread for `run_threads`).
pub const MAX_OPS: usize = 256;
