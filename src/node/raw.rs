//! [`RawContext`]: the node layer's handle to one node of the tree.
//!
//! Everything the public handles do goes through this type: deriving
//! children, reading the state word, the deadline and values, listening and
//! blocking. `Context` (in `context.rs`) is a thin public wrapper around it;
//! the node layer itself knows nothing of the public types (a merge node
//! holds its second parent as a `RawContext`).

use std::any::Any;
use std::fmt;
use std::ptr::NonNull;
use std::time::Instant;

use super::state::Snapshot;
use super::wait;
use super::{derive, scope_of, values, CancelNode, Header, NodeRef};
use crate::error::{Cause, Error};

/// A counted reference to a node (or to no node, for the roots), with the
/// node's scope cached so that `is_done` is one load.
pub(crate) struct RawContext {
    /// The node (`None` for `background()` and `todo()`).
    pub(super) node: Option<NodeRef>,
    /// The nearest cancellable ancestor-or-self of `node`, cached so
    /// `is_done` is one load of its state word. Kept alive by `node`.
    pub(super) scope: Option<NonNull<CancelNode>>,
    /// For roots: `todo()` rather than `background()`.
    pub(super) todo: bool,
}

// SAFETY: `scope` points at `node` or one of its ancestors, which `node`
// keeps alive; nodes are `Send + Sync` (see `node::Header`).
unsafe impl Send for RawContext {}
// SAFETY: as above.
unsafe impl Sync for RawContext {}

impl RawContext {
    /// A root: no node; `todo` only changes the Debug text.
    #[inline]
    pub(crate) const fn root(todo: bool) -> RawContext {
        RawContext {
            node: None,
            scope: None,
            todo,
        }
    }

    /// A handle that owns `node`'s counted reference.
    pub(super) fn from_node(node: NodeRef, todo: bool) -> RawContext {
        let scope = scope_of(node.ptr());
        RawContext {
            node: Some(node),
            scope,
            todo,
        }
    }

    /// The node, if any.
    #[inline]
    pub(crate) fn node(&self) -> Option<&NodeRef> {
        self.node.as_ref()
    }

    /// The scope (what `is_done` reads and what a child registers in).
    #[inline]
    pub(crate) fn scope_ptr(&self) -> Option<NonNull<CancelNode>> {
        self.scope
    }

    /// The scope, borrowed for as long as this handle.
    pub(crate) fn scope_ref(&self) -> Option<&CancelNode> {
        // SAFETY: kept alive by `self.node`.
        self.scope.map(|s| unsafe { &*s.as_ptr() })
    }

    /// The first node of this handle's value chain.
    pub(super) fn value_head(&self) -> Option<NonNull<Header>> {
        self.node.as_ref().and_then(|n| values::value_head(n.ptr()))
    }

    /// Gives up the node reference without releasing it (see `refs::die`).
    pub(super) fn into_node_ptr(self) -> Option<NonNull<Header>> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again.
        unsafe { std::ptr::read(&this.node) }.map(NodeRef::into_raw)
    }

    // ---- derivation -------------------------------------------------

    /// `with_cancel`: the child and its handle's reference.
    #[inline]
    pub(crate) fn with_cancel(&self) -> (RawContext, NodeRef) {
        derive::with_cancel(self)
    }

    /// `with_deadline`: the caller has checked that `deadline` is earlier
    /// than this context's.
    pub(crate) fn with_deadline(
        &self,
        deadline: Instant,
        cause: Option<Cause>,
    ) -> (RawContext, NodeRef) {
        derive::with_deadline(self, deadline, cause)
    }

    /// `with_value`.
    pub(crate) fn with_value<T: Any + Send + Sync>(&self, value: T) -> RawContext {
        derive::with_value(self, value)
    }

    /// `without_cancel`.
    pub(crate) fn without_cancel(&self) -> RawContext {
        derive::without_cancel(self)
    }

    /// `self.merge(other)`.
    pub(crate) fn merge(&self, other: &RawContext) -> (RawContext, NodeRef) {
        derive::merge(self, other)
    }

    // ---- observation ------------------------------------------------

    /// The state word of the scope, loaded once (Acquire).
    #[inline]
    fn state(&self) -> Snapshot {
        match self.scope {
            // SAFETY: kept alive by `self.node`.
            Some(scope) => unsafe { scope.as_ref() }.state.load(),
            None => Snapshot::LIVE,
        }
    }

    /// One Acquire load.
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        self.state().is_done()
    }

    /// `Ok(())` while live, then why it is done.
    #[inline]
    pub(crate) fn err(&self) -> Result<(), Error> {
        self.state().err()
    }

    /// `None` while live, then the cause.
    pub(crate) fn cause(&self) -> Option<Cause> {
        let scope = self.scope?;
        // SAFETY: kept alive by `self.node`, and so is the owner of any
        // record the word borrows (invariant 2).
        unsafe { scope.as_ref().state.load().cause() }
    }

    /// The deadline in force, if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        // SAFETY: `self.node` is held.
        unsafe { values::deadline(self.node.as_ref().map(NodeRef::ptr)) }
    }

    /// The nearest value of type `T`.
    pub(crate) fn value<T: Any + Send + Sync>(&self) -> Option<&T> {
        // SAFETY: `self` holds the chain for the returned borrow.
        unsafe { values::lookup::<T>(self.value_head()) }
    }

    // ---- waiting ----------------------------------------------------

    /// Blocks until done (`Some(err)`) or `deadline` passes (`None`).
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> Option<Error> {
        wait::wait_until(self, deadline)
    }
}

impl Clone for RawContext {
    #[inline]
    fn clone(&self) -> Self {
        RawContext {
            node: self.node.clone(),
            scope: self.scope,
            todo: self.todo,
        }
    }
}

impl fmt::Debug for RawContext {
    /// Go's `String()`: `context.Background.WithValue(my_app::RequestId).WithCancel`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: `self.node` is held.
        unsafe { values::describe(f, self.node.as_ref().map(NodeRef::ptr), self.todo) }
    }
}
