//! Creating child nodes of every kind.

use std::any::{Any, TypeId};
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::time::Instant;

use super::children::{ChildList, Pushed};
use super::deadline_word::DeadlineWord;
use super::raw::RawContext;
use super::state::Snapshot;
use super::{
    cancel, proxy, release_claims, timer_glue, CancelNode, DeadlineNode, ForwardNode, Header, Kind,
    MergeNode, NodeRef, ValueNode, FLAG_LINKED, FLAG_PROXY, FLAG_TODO,
};
use crate::error::Cause;
use crate::sync::{Ordering, UnsafeCell};

/// A header for a child of `parent` with `refs` observers, held by `holder`
/// (a reference to `parent`'s node, or to its proxy for this shard).
fn child_header(parent: &RawContext, holder: Option<NodeRef>, kind: Kind, refs: u32) -> Header {
    let flags = match &parent.node {
        Some(node) => node.header().flags & FLAG_TODO,
        None if parent.todo => FLAG_TODO,
        None => 0,
    };
    // Alive claim only; `link` adds the list's claim.
    let mut header = Header::new(kind, refs, 1, flags);
    header.up_values = parent.value_head();
    header.parent = holder.map(NodeRef::into_raw);
    header
}

/// The initial state of a cancellable child registered in `scope`.
///
/// # Safety
/// `scope` is kept alive by the caller.
unsafe fn inherited(scope: Option<NonNull<CancelNode>>) -> Snapshot {
    match scope {
        // SAFETY: by the contract.
        Some(scope) => unsafe { scope.as_ref() }.state.load().borrowed(),
        None => Snapshot::LIVE,
    }
}

/// Where a cancellable child of `parent` goes: under this shard's proxy of
/// `parent`'s node if it has one (`node::proxy`), else under `parent`
/// itself. Returns the holder reference for the child's header and the
/// scope it registers in (kept alive by that reference).
#[inline]
fn placement(parent: &RawContext) -> (Option<NodeRef>, Option<NonNull<CancelNode>>) {
    match proxy::for_derive(parent) {
        Some(p) => {
            let scope = Some(p.ptr().cast());
            (Some(p), scope)
        }
        None => (parent.node.clone(), parent.scope),
    }
}

/// What [`link`] did with a new cancellable node.
enum Linked {
    /// Linked under a live scope (or there is no scope: never done).
    Live(Pushed),
    /// Done on creation (born done, or the scope's list was sealed); never
    /// published.
    Done,
    /// Linked, but the scope turned out to be done (the push/cancel
    /// handshake, see `ChildList::push`): the caller must finish the node
    /// with this borrowed outcome once it is fully set up.
    Late(Snapshot),
}

/// Links a freshly allocated, unpublished cancellable node under its
/// parent's scope. If the scope is sealed (done), the node becomes done on
/// creation with the scope's outcome instead (invariant 3).
///
/// # Safety
/// `node` is unpublished and owned by the caller; `scope` is its parent's
/// scope, kept alive by the parent reference in the node.
unsafe fn link(node: NonNull<CancelNode>, scope: Option<NonNull<CancelNode>>) -> Linked {
    // Each access below reborrows from the raw pointer for just that
    // statement: no `&mut` may live across `push`, which reads the entry
    // through the same pointer.
    // SAFETY: unpublished, so we are the only user; `push`
    // publishes it only on success, after which we no longer write.
    unsafe {
        if (*node.as_ptr()).state.load().is_done() {
            return Linked::Done;
        }
        let Some(scope) = scope else {
            return Linked::Live(Pushed::Alone);
        };
        (*node.as_ptr()).header.flags |= FLAG_LINKED;
        // One more claim, the list's.
        let claims = (*node.as_ptr()).header.claims.load(Ordering::Relaxed);
        super::set_claims(&(*node.as_ptr()).header, claims + 1);
        // The scope is alive (held by the parent reference in the node).
        let scope = scope.as_ref();
        if let Ok(pushed) = scope.children.push(node.cast()) {
            let now = scope.state.load_after_push();
            return if now.is_done() {
                Linked::Late(now.borrowed())
            } else {
                Linked::Live(pushed)
            };
        }
        // Sealed: still unpublished, so plain rewrites are fine.
        let n = &mut *node.as_ptr();
        n.header.flags &= !FLAG_LINKED;
        super::set_claims(&n.header, claims);
        n.state = super::state::StateWord::new(scope.state.load().borrowed());
        n.children = ChildList::new_sealed();
        Linked::Done
    }
}

/// Finishes a node that `link` found `Late`.
///
/// # Safety
/// The caller holds the node's references; its parent keeps the owner of
/// the outcome's record alive.
unsafe fn finish_late(node: NonNull<CancelNode>, linked: &Linked) {
    if let Linked::Late(word) = *linked {
        // SAFETY: forwarded.
        unsafe { cancel::finish_with(node, word) };
    }
}

/// Wraps a new node with `refs == 2` as (context, handle).
fn pair(node: NonNull<CancelNode>, parent: &RawContext) -> (RawContext, NodeRef) {
    // SAFETY: the node was created with two references, one for each.
    let (a, b) = unsafe {
        (
            NodeRef::from_raw(node.cast()),
            NodeRef::from_raw(node.cast()),
        )
    };
    (RawContext::from_node(a, parent.todo), b)
}

/// A push that found `parent`'s list contended gives this thread's shard a
/// proxy of it (`node::proxy`); later derives here go under the proxy.
fn after_link(parent: &RawContext, linked: &Linked) {
    if matches!(linked, Linked::Live(Pushed::Contended)) {
        proxy::install(parent);
    }
}

/// `with_cancel`. Inlined: since the layering split (issue 10) LLVM
/// stopped inlining it into `Context::with_cancel`, which cost W2/W3 5 %
/// (callgrind, 17-19 instructions per derive).
#[inline]
pub(crate) fn with_cancel(parent: &RawContext) -> (RawContext, NodeRef) {
    let (holder, scope) = placement(parent);
    // SAFETY: `holder`, stored in the node below, keeps `scope` alive.
    let initial = unsafe { inherited(scope) };
    let header = child_header(parent, holder, Kind::Cancel, 2);
    let node = CancelNode::new(header, initial);
    let node = super::alloc(node);
    // SAFETY: fresh and unpublished; the scope is held by the node's
    // parent reference. The node's references are ours until `pair`.
    let linked = unsafe { link(node, scope) };
    // SAFETY: as above.
    unsafe { finish_late(node, &linked) };
    after_link(parent, &linked);
    pair(node, parent)
}

/// A proxy of `parent`'s node for one shard (`node::proxy`): a hidden
/// cancellable child that holds its parent with a hold (invariant 13) and
/// whose one observer reference is returned (the slot's). `None` if the
/// node turned out done: the proxy is dropped then.
pub(crate) fn proxy(parent: &RawContext) -> Option<NodeRef> {
    let node_ref = parent.node.as_ref()?;
    let mut header = child_header(parent, None, Kind::Cancel, 1);
    header.flags |= FLAG_PROXY;
    // SAFETY: `parent` holds an observer reference to its node.
    header.parent = Some(unsafe { NodeRef::acquire_hold(node_ref.ptr()) });
    // SAFETY: the hold keeps the scope (the node itself) alive.
    let initial = unsafe { inherited(parent.scope) };
    let node = super::alloc_proxy(CancelNode::new(header, initial));
    // SAFETY: fresh and unpublished; the hold keeps the scope alive.
    let linked = unsafe { link(node, parent.scope) };
    // SAFETY: created with one reference, ours.
    let proxy = unsafe { NodeRef::from_raw(node.cast()) };
    match linked {
        Linked::Live(_) => Some(proxy),
        // Dropped: it dies as a childless cancel node and releases its
        // hold.
        Linked::Done => None,
        Linked::Late(_) => {
            // SAFETY: we hold its reference; `parent` keeps the record's
            // owner alive.
            unsafe { finish_late(node, &linked) };
            None
        }
    }
}

/// `with_deadline`: the caller has checked that `deadline` is earlier than
/// the parent's. A deadline already passed makes the node done on creation.
pub(crate) fn with_deadline(
    parent: &RawContext,
    deadline: Instant,
    cause: Option<Cause>,
) -> (RawContext, NodeRef) {
    let (holder, scope) = placement(parent);
    let header = child_header(parent, holder, Kind::Deadline, 2);
    // SAFETY: the node's parent reference (`holder`) keeps `scope` alive.
    let mut initial = unsafe { inherited(scope) };
    let expired = !initial.is_done() && deadline <= Instant::now();
    if expired {
        initial = Snapshot::new_owned(crate::Error::DeadlineExceeded, cause.clone());
    }
    let node = DeadlineNode {
        cancel: CancelNode::new(header, initial),
        deadline: DeadlineWord::new(deadline),
        timer: crate::sync::AtomicU64::new(timer_glue::NONE),
        cause: UnsafeCell::new(cause),
    };
    let node = super::alloc(node);
    // SAFETY: fresh and unpublished; the scope is held by the node's
    // parent reference.
    let linked = unsafe { link(node.cast(), scope) };
    match linked {
        // SAFETY: we hold the node's references until `pair` below.
        Linked::Live(_) => timer_glue::arm(unsafe { node.as_ref() }),
        Linked::Done => {}
        // SAFETY: as above; the parent reference keeps the record's owner
        // alive.
        Linked::Late(_) => unsafe { finish_late(node.cast(), &linked) },
    }
    after_link(parent, &linked);
    pair(node.cast(), parent)
}

/// `with_value`.
pub(crate) fn with_value<T: Any + Send + Sync>(parent: &RawContext, value: T) -> RawContext {
    let node = ValueNode {
        header: child_header(parent, parent.node.clone(), Kind::Value, 1),
        scope: parent.scope,
        type_id: TypeId::of::<T>(),
        type_name: std::any::type_name::<T>(),
        value: Box::new(value),
    };
    let node = super::alloc(node);
    // SAFETY: created with one reference, handed to the context.
    RawContext::from_node(unsafe { NodeRef::from_raw(node.cast()) }, parent.todo)
}

/// `without_cancel`.
pub(crate) fn without_cancel(parent: &RawContext) -> RawContext {
    let node = child_header(parent, parent.node.clone(), Kind::Detached, 1);
    let node = super::alloc(node);
    // SAFETY: created with one reference, handed to the context.
    RawContext::from_node(unsafe { NodeRef::from_raw(node) }, parent.todo)
}

/// `a.merge(b)`.
pub(crate) fn merge(a: &RawContext, b: &RawContext) -> (RawContext, NodeRef) {
    let deadline = match (a.deadline(), b.deadline()) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    let (sa, sb) = (a.scope, b.scope);
    // SAFETY: `a` and `b` keep their scopes alive.
    let mut initial = unsafe { inherited(sa) };
    if !initial.is_done() {
        // SAFETY: as above.
        initial = unsafe { inherited(sb) };
    }
    let header = child_header(a, a.node.clone(), Kind::Merge, 2);
    let node = MergeNode {
        cancel: CancelNode::new(header, initial),
        other: ManuallyDrop::new(b.clone()),
        forwarder: None,
        deadline,
    };
    let node = super::alloc(node);
    let needs_forwarder = !initial.is_done() && sb.is_some() && sb != sa;
    if needs_forwarder {
        let mut fh = Header::new(Kind::Forward, 0, 2, FLAG_LINKED);
        fh.parent = None;
        let f = ForwardNode {
            header: fh,
            target: node.cast(),
        };
        // SAFETY: unpublished.
        unsafe { (*node.as_ptr()).forwarder = Some(super::alloc(f)) };
        // The forwarder holds a claim on the merge node's memory: a walker
        // of b's list reaches the merge through it, not through a's list.
        // It is part of the forwarder (released when the forwarder is
        // freed), so it is not counted on its own in `LIVE_CLAIMS`.
        // SAFETY: unpublished.
        let claims = &unsafe { node.as_ref() }.cancel.header.claims;
        // Relaxed: unpublished; the publishing CAS orders it.
        claims.store(claims.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
    // SAFETY: fresh and unpublished; `a` holds its scope.
    let linked = unsafe { link(node.cast(), sa) };
    // SAFETY: the node is ours until `pair`.
    let m = unsafe { node.as_ref() };
    if let Some(f) = m.forwarder {
        let Some(sb) = sb else {
            unreachable!("a forwarder needs b's scope")
        };
        if !matches!(linked, Linked::Live(_)) {
            // Done through `a` (on creation, or found done after the
            // push): the forwarder is never linked.
            // SAFETY: unpublished; we give up its list claim ourselves.
            unsafe { f.as_ref() }.header.next.mark();
            // SAFETY: the list's claim, never used.
            unsafe { release_claims(f.cast(), 1) };
        } else {
            // SAFETY: `b` (held by the node) keeps its scope alive.
            let scope = unsafe { sb.as_ref() };
            // SAFETY: the forwarder is valid and unpublished.
            if unsafe { scope.children.push(f.cast()) }.is_err() {
                // `b` is done: the merge ends with b's outcome.
                // SAFETY: as above.
                unsafe { f.as_ref() }.header.next.mark();
                // SAFETY: the list's claim, never used.
                unsafe { release_claims(f.cast(), 1) };
                let word = scope.state.load().borrowed();
                // SAFETY: we hold the node's references; `b` keeps the
                // record's owner alive.
                unsafe { cancel::finish_with(node.cast(), word) };
            } else {
                // The push/cancel handshake (see `ChildList::push`): `b`
                // may be done with its list left open.
                let word = scope.state.load_after_push();
                if word.is_done() {
                    // SAFETY: as above. The walk detaches the forwarder.
                    unsafe { cancel::finish_with(node.cast(), word.borrowed()) };
                }
            }
        }
    }
    // SAFETY: the node's references are ours; `a` keeps the record's owner
    // alive.
    unsafe { finish_late(node.cast(), &linked) };
    pair(node.cast(), a)
}
