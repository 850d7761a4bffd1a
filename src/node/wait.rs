//! Waiting for a node to be done: one concept per file.
//!
//! - [`waiters`]: the node's waiter event, created on first use and
//!   published as an entry of the node's children list, so the canceller's
//!   walk finds and notifies it; the check → listen → fence → re-check
//!   protocol that loses no wake-up (invariant 12).
//! - [`wake_list`]: wake-ups deferred until nothing internal is held.
//!   event-listener calls a registered waker inside `Event::notify`, under
//!   the event's list lock, while the canceller is pinned in its walk; the
//!   crate's wakers only record themselves there, and the cancellation (or
//!   the notifier) wakes them once it has released everything.
//! - [`task`]: what a pending `Done` future keeps, and the guard it
//!   registers in place of the task's waker (the public `Done` in
//!   `done.rs` is a thin wrapper).
//! - [`park`]: blocking waits (`wait`, `wait_timeout`, `wait_deadline`).
//!
//! The waiter entry also carries the node's proxy slots (`node::proxy`):
//! it is the one lazily created entry that lives as long as its owner.

mod park;
mod task;
mod waiters;
mod wake_list;

pub(crate) use park::wait_until;
pub(crate) use task::TaskWait;
pub(crate) use waiters::{entry_of, WaitersNode};
pub(crate) use wake_list::WakeScope;
