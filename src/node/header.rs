//! Node layout: the common [`Header`], the node kinds and the structs
//! that start with it.
//!
//! Every derived context is one heap node. All node types start with the
//! same [`Header`] (`#[repr(C)]`, first field), so a `NonNull<Header>` can
//! point at any of them and `Header::kind` says which one it is.

use std::any::{Any, TypeId};
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::time::Instant;

use super::children::{ChildList, Link};
use super::deadline_word::DeadlineWord;
use super::raw::RawContext;
use super::state::{Snapshot, StateWord};
use super::{callback, wait};
use crate::error::Cause;
use crate::sync::{AtomicPtr, AtomicU16, AtomicU32, AtomicU64, UnsafeCell};

/// What a node is. Stored once, before the node is published.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Kind {
    /// `with_cancel` ([`CancelNode`]).
    Cancel,
    /// `with_deadline` / `with_timeout` ([`DeadlineNode`]).
    Deadline,
    /// `merge` ([`MergeNode`]).
    Merge,
    /// `with_value` ([`ValueNode`]).
    Value,
    /// `without_cancel` (a bare [`Header`]).
    Detached,
    /// The second list entry of a merge ([`ForwardNode`]).
    Forward,
    /// An `after_func` registration ([`CallbackNode`](super::callback::CallbackNode)).
    Callback,
    /// The waiter event of a node ([`wait::WaitersNode`]).
    Waiters,
}

/// Header flag: the root of this node's chain is `todo()` (`RawContext::root(true)`).
pub(crate) const FLAG_TODO: u8 = 0b01;
/// Header flag: the node was pushed onto its parent's list.
pub(crate) const FLAG_LINKED: u8 = 0b10;
/// Header flag: a hidden proxy of a contended parent (`node::proxy`): holds
/// its parent with a `HOLD`, not an observer reference, and is skipped by
/// the Debug text.
pub(crate) const FLAG_PROXY: u8 = 0b100;

/// The common prefix of every node.
#[repr(C)]
pub(crate) struct Header {
    /// Observers in the low bits and proxies' holds in the high bits (see
    /// `node::refs` and `node::proxy`). Unused (0) for list-only entries.
    pub(crate) refs: AtomicU32,
    /// Memory claims (see the module docs).
    pub(crate) claims: AtomicU16,
    pub(crate) kind: Kind,
    /// `FLAG_*` bits, written before the node is published, then read-only.
    pub(crate) flags: u8,
    /// Link in the owner's children list (list entries only).
    pub(crate) next: Link,
    /// Strong reference to the parent node (`None` under a root).
    pub(crate) parent: Option<NonNull<Header>>,
    /// Nearest strict ancestor that is a value or merge node: value lookup
    /// skips every other layer (invariant 7).
    pub(crate) up_values: Option<NonNull<Header>>,
    /// Under loom, nodes are not deallocated but flagged here, so that a
    /// list traversal reaching a freed entry fails the model (loom itself
    /// does not see use-after-free). A std atomic: no scheduling point.
    #[cfg(loom)]
    pub(crate) freed: std::sync::atomic::AtomicBool,
}

impl Header {
    /// Fails the loom model if this node was already freed.
    #[inline]
    pub(crate) fn assert_not_freed(&self) {
        #[cfg(loom)]
        assert!(
            !self.freed.load(std::sync::atomic::Ordering::SeqCst),
            "use after free: a list traversal reached a freed entry"
        );
    }
}

/// A cancellable node (`with_cancel`); also the prefix of deadline and merge
/// nodes. 64 bytes on 64-bit targets.
#[repr(C)]
pub(crate) struct CancelNode {
    pub(crate) header: Header,
    pub(crate) state: StateWord,
    /// The lazily created waiter entry (also linked in `children`).
    pub(crate) waiters: AtomicPtr<wait::WaitersNode>,
    pub(crate) children: ChildList,
}

/// `with_deadline`: a cancel node with a timer.
#[repr(C)]
pub(crate) struct DeadlineNode {
    pub(crate) cancel: CancelNode,
    /// The deadline, movable (`CancelHandle::set_deadline`); the timer's
    /// claim sets its `FIRED` bit (`deadline_word`, invariant 10m).
    pub(crate) deadline: DeadlineWord,
    /// The armed timer's id bits; only read or written under its shard's lock (the hint in `disarm` aside).
    pub(crate) timer: AtomicU64,
    /// The cause given to `with_deadline_cause`; taken when the node dies.
    pub(crate) cause: UnsafeCell<Option<Cause>>,
}

/// `merge`: a cancel node linked under `a` (its parent) and, through its
/// forwarder, under `b`.
#[repr(C)]
pub(crate) struct MergeNode {
    pub(crate) cancel: CancelNode,
    /// The second parent (`b`), held strongly; taken when the node dies.
    pub(crate) other: ManuallyDrop<RawContext>,
    /// The entry in `b`'s scope's list, if any.
    pub(crate) forwarder: Option<NonNull<ForwardNode>>,
    /// `min(a.deadline(), b.deadline())`, computed at creation.
    pub(crate) deadline: Option<Instant>,
}

/// `with_value`.
#[repr(C)]
pub(crate) struct ValueNode {
    pub(crate) header: Header,
    /// Nearest cancellable ancestor (what `is_done` reads).
    pub(crate) scope: Option<NonNull<CancelNode>>,
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) value: Box<dyn Any + Send + Sync>,
}

/// The entry a merge node puts in its second parent's list.
#[repr(C)]
pub(crate) struct ForwardNode {
    pub(crate) header: Header,
    pub(crate) target: NonNull<CancelNode>,
}

// SAFETY: nodes are shared between threads by design; every field that is
// written after publication is an atomic or an `UnsafeCell` whose accesses
// are serialised by the protocol documented at its use; user data inside is
// `Send + Sync` (values, causes) or `Send` and only touched by one thread at
// a time (callbacks).
unsafe impl Send for Header {}
// SAFETY: see above.
unsafe impl Sync for Header {}

impl Header {
    pub(crate) fn new(kind: Kind, refs: u32, claims: u16, flags: u8) -> Header {
        Header {
            refs: AtomicU32::new(refs),
            claims: AtomicU16::new(claims),
            kind,
            flags,
            next: Link::new(),
            parent: None,
            up_values: None,
            #[cfg(loom)]
            freed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl CancelNode {
    pub(crate) fn new(header: Header, initial: Snapshot) -> CancelNode {
        CancelNode {
            header,
            state: StateWord::new(initial),
            children: if initial.is_done() {
                ChildList::new_sealed()
            } else {
                ChildList::new()
            },
            waiters: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

/// A node seen as the type its kind names ([`Header::view`]).
pub(crate) enum NodeView<'a> {
    // Matched on, not read yet (the field is there for uniformity).
    #[allow(dead_code)]
    Cancel(&'a CancelNode),
    Deadline(&'a DeadlineNode),
    Merge(&'a MergeNode),
    Value(&'a ValueNode),
    /// `without_cancel`: a bare header.
    #[allow(dead_code)]
    Detached(&'a Header),
    Forward(&'a ForwardNode),
    Callback(&'a callback::CallbackNode),
    Waiters(&'a wait::WaitersNode),
}

impl Header {
    /// The node `h` points at, as the type its kind names: the typed
    /// downcast every other module goes through.
    ///
    /// # Safety
    /// `h` points at a node that stays valid for `'a` (the caller holds a
    /// reference to it or to a descendant, a claim on it, or a pin that
    /// keeps it).
    #[inline]
    pub(crate) unsafe fn view<'a>(h: NonNull<Header>) -> NodeView<'a> {
        // SAFETY: valid by the contract; `kind` is written before the node
        // is published, then immutable.
        let kind = unsafe { h.as_ref() }.kind;
        // The kind names the type the node was allocated as (`alloc::<T>`),
        // which starts with this `Header` (`#[repr(C)]`, first field).
        // SAFETY: each cast is to the allocation's own type (above), `h`
        // keeps the provenance of the whole allocation, and it is valid for
        // `'a` by the contract.
        unsafe {
            match kind {
                Kind::Cancel => NodeView::Cancel(h.cast().as_ref()),
                Kind::Deadline => NodeView::Deadline(h.cast().as_ref()),
                Kind::Merge => NodeView::Merge(h.cast().as_ref()),
                Kind::Value => NodeView::Value(h.cast().as_ref()),
                Kind::Detached => NodeView::Detached(h.as_ref()),
                Kind::Forward => NodeView::Forward(h.cast().as_ref()),
                Kind::Callback => NodeView::Callback(h.cast().as_ref()),
                Kind::Waiters => NodeView::Waiters(h.cast().as_ref()),
            }
        }
    }

    /// `h` as a deadline node, if it is one.
    ///
    /// # Safety
    /// As for [`Header::view`].
    #[inline]
    pub(crate) unsafe fn as_deadline<'a>(h: NonNull<Header>) -> Option<&'a DeadlineNode> {
        // SAFETY: forwarded.
        match unsafe { Header::view(h) } {
            NodeView::Deadline(d) => Some(d),
            _ => None,
        }
    }

    /// `h` as a merge node, if it is one.
    ///
    /// # Safety
    /// As for [`Header::view`].
    #[inline]
    pub(crate) unsafe fn as_merge<'a>(h: NonNull<Header>) -> Option<&'a MergeNode> {
        // SAFETY: forwarded.
        match unsafe { Header::view(h) } {
            NodeView::Merge(m) => Some(m),
            _ => None,
        }
    }
}

/// Views a header as the cancel node it starts, if it is one.
#[inline]
pub(crate) fn as_cancel(h: NonNull<Header>) -> Option<NonNull<CancelNode>> {
    // SAFETY: `kind` is immutable after publication; the caller holds the
    // node (a reference or a pin).
    match unsafe { h.as_ref() }.kind {
        Kind::Cancel | Kind::Deadline | Kind::Merge => Some(h.cast()),
        _ => None,
    }
}

/// The nearest cancellable ancestor-or-self: whose state `is_done` reads
/// and whose list a child registers in.
#[inline]
pub(crate) fn scope_of(h: NonNull<Header>) -> Option<NonNull<CancelNode>> {
    // SAFETY: the caller holds the node.
    match unsafe { Header::view(h) } {
        NodeView::Cancel(_) | NodeView::Deadline(_) | NodeView::Merge(_) => Some(h.cast()),
        NodeView::Value(v) => v.scope,
        _ => None,
    }
}

/// Used by compile-time size checks in tests.
#[allow(dead_code)]
pub(crate) const CANCEL_NODE_SIZE: usize = std::mem::size_of::<CancelNode>();
