//! The context tree's nodes: the node layer under the public handles.
//!
//! One concept per file:
//! - [`header`]: the node layout, the kinds and the structs that start
//!   with the common `Header`;
//! - [`refs`]: observer references (`refs`) and death;
//! - [`claims`]: memory claims and reclamation through the epoch, and the
//!   walk count (invariant 5);
//! - [`alloc`](mod@alloc): allocating and freeing node memory (and [`cache`], the
//!   per-thread block cache);
//! - [`state`]: the state word; [`children`]: the children list;
//! - [`derive`](mod@derive): creating children; [`link`]: leaving lists;
//!   [`proxy`]: per-shard stand-ins for a contended parent;
//!   [`cancel`]: the cancellation walk; [`callback`]: `after_func` entries;
//!   [`values`]: values, deadlines and the Debug text; [`wait`]: waiting;
//!   [`timer_glue`]: deadline nodes and the timer; [`deadline_word`]: the
//!   movable deadline word;
//! - [`raw`]: [`RawContext`](raw::RawContext), the handle the public types
//!   wrap. Nothing here knows the public types.
//!
//! Two counts live in the header: `refs` counts *observers* (see [`refs`]);
//! `claims` counts who may still touch the node's *memory* (see
//! [`claims`]).
//!
//! The numbered invariants are listed in `docs/DESIGN.md`.

pub(crate) mod alloc;
pub(crate) mod cache;
pub(crate) mod callback;
pub(crate) mod cancel;
pub(crate) mod children;
pub(crate) mod claims;
pub(crate) mod deadline_word;
pub(crate) mod derive;
pub(crate) mod header;
pub(crate) mod link;
pub(crate) mod proxy;
pub(crate) mod raw;
pub(crate) mod refs;
pub(crate) mod state;
pub(crate) mod timer_glue;
pub(crate) mod values;
pub(crate) mod wait;

#[cfg(any(loom, debug_assertions))]
pub(crate) use self::alloc::ALLOCATED_NODES;
pub(crate) use self::alloc::{alloc, alloc_proxy, free_unreachable};
#[cfg(any(loom, debug_assertions))]
pub(crate) use self::claims::LIVE_CLAIMS;
pub(crate) use self::claims::{release_claims, release_claims_later, set_claims, Unlinked};
pub(crate) use self::header::CANCEL_NODE_SIZE;
pub(crate) use self::header::{
    as_cancel, scope_of, CancelNode, DeadlineNode, ForwardNode, Header, Kind, MergeNode, ValueNode,
    FLAG_LINKED, FLAG_PROXY, FLAG_TODO,
};
pub(crate) use self::refs::{NodeRef, TransientRef};
