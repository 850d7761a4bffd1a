//! Observer references (`refs`) and death.
//!
//! `refs` counts *observers*: handles ([`RawContext`](super::raw::RawContext),
//! hence `Context` clones and `Done` futures), `CancelHandle`s (and guards),
//! child nodes (each child holds its parent), pending `after_func`
//! callbacks, and a timer that is firing. When it reaches zero the node
//! *dies*: user data (values, causes) is dropped at once, the node leaves
//! its parent's list and gives up its "alive" claim (`claims`).

use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use super::alloc::free_unreachable;
use super::children::{HeadClaim, ListClaim};
use super::claims::release_claims;
use super::link::{leave_forwarder, leave_parent};
use super::{timer_glue, CancelNode, Header, Kind};
use crate::sync::{LazyGuard, Ordering};

/// A counted reference to a node's observers (`refs`).
pub(crate) struct NodeRef(NonNull<Header>);

// SAFETY: see `Header`'s impls: nodes are designed to be shared.
unsafe impl Send for NodeRef {}
// SAFETY: as above.
unsafe impl Sync for NodeRef {}

impl NodeRef {
    /// Takes over one already counted reference.
    ///
    /// # Safety
    /// `h` is a live node and the caller gives up one counted reference.
    pub(crate) unsafe fn from_raw(h: NonNull<Header>) -> NodeRef {
        NodeRef(h)
    }

    /// Gives up ownership of the counted reference without releasing it.
    pub(crate) fn into_raw(self) -> NonNull<Header> {
        ManuallyDrop::new(self).0
    }

    #[inline]
    pub(crate) fn ptr(&self) -> NonNull<Header> {
        self.0
    }

    #[inline]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: we hold a reference, so the node is alive.
        unsafe { self.0.as_ref() }
    }

    /// Adds a reference to a node the caller can prove alive.
    ///
    /// # Safety
    /// `h` is alive for the duration of the call (the caller holds a
    /// reference to it or to a descendant).
    pub(crate) unsafe fn acquire(h: NonNull<Header>) -> NodeRef {
        // Relaxed: like `Arc::clone`, a new reference is made from an
        // existing one, which already orders everything it needs.
        // SAFETY: alive by the caller's contract.
        let old = unsafe { h.as_ref() }.refs.fetch_add(1, Ordering::Relaxed);
        if old >= u32::MAX / 2 {
            // Like `Arc`: billions of live handles to one node mean leaked
            // handles; wrapping around would free a node in use.
            std::process::abort();
        }
        NodeRef(h)
    }

    /// Adds a reference unless the node is already dead (refs == 0): how
    /// the timer reaches a node it does not own.
    ///
    /// # Safety
    /// `h`'s memory is valid (the caller holds a claim, a pin or the lock
    /// that keeps it from being freed).
    pub(crate) unsafe fn try_acquire(h: NonNull<Header>) -> Option<NodeRef> {
        // SAFETY: valid by the caller's contract.
        let refs = &unsafe { h.as_ref() }.refs;
        let mut n = refs.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return None;
            }
            // Acquire on success: pairs with the Release of the decrements
            // so we see the node as its last users left it. Never from 0:
            // a dead node stays dead (invariant 8).
            match refs.compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(NodeRef(h)),
                Err(actual) => n = actual,
            }
        }
    }
}

impl Clone for NodeRef {
    #[inline]
    fn clone(&self) -> Self {
        // SAFETY: we hold a reference.
        unsafe { NodeRef::acquire(self.0) }
    }
}

impl Drop for NodeRef {
    #[inline]
    fn drop(&mut self) {
        // Releases our reference; when it was the last, the node dies, and
        // so on up the chain (see [`die_chain`]).
        // SAFETY: we own one counted reference.
        if unsafe { dec_ref(self.0) } {
            // SAFETY: we took the count to zero.
            unsafe { die_chain(self.0) };
        }
    }
}

/// Decrements `refs`; true if this was the last reference.
///
/// # Safety
/// The caller owns one counted reference to `h`.
#[inline]
unsafe fn dec_ref(h: NonNull<Header>) -> bool {
    // Release: our uses of the node happen before its death. The thread
    // that sees zero acquires in `die_chain`.
    // SAFETY: we own a reference, so the node is alive.
    unsafe { h.as_ref() }.refs.fetch_sub(1, Ordering::Release) == 1
}

/// The last reference to `h` is gone: `h` dies, then the parents it held
/// are released, and so on. Iterative: a chain of any length is released in
/// constant stack space.
///
/// # Safety
/// `refs` of `h` just reached zero on this thread.
#[inline(never)]
unsafe fn die_chain(h: NonNull<Header>) {
    let mut guard = LazyGuard::new();
    // Only merges release two parents; the stack stays empty otherwise.
    let mut pending: Vec<NonNull<Header>> = Vec::new();
    let mut next = Some(h);
    while let Some(h) = next.take().or_else(|| pending.pop()) {
        // Acquire load rather than an Acquire fence (as `Arc` does under
        // ThreadSanitizer, which does not model fences): it reads our own
        // decrement, which continues the release sequences of every earlier
        // decrement, so the dying thread sees every use of the node.
        // SAFETY: still alive: we are its last user.
        let _ = unsafe { h.as_ref() }.refs.load(Ordering::Acquire);
        // SAFETY: refs reached zero: we are the node's only user and it
        // dies exactly once (invariant 8).
        let [first, second] = unsafe { die(h, &mut guard) };
        // SAFETY: the dead node held one reference to each parent.
        next = first.filter(|&p| unsafe { dec_ref(p) });
        // SAFETY: as above.
        pending.extend(second.filter(|&p| unsafe { dec_ref(p) }));
    }
}

/// The node's observers are gone: drop its user data, leave the lists it is
/// in, and give up the "alive" claim. Returns the parents whose references
/// it held (the caller releases them).
///
/// # Safety
/// `refs` of `h` just reached zero on this thread.
unsafe fn die(h: NonNull<Header>, guard: &mut LazyGuard) -> [Option<NonNull<Header>>; 2] {
    // SAFETY: the node is alive until we release the alive claim.
    let header = unsafe { h.as_ref() };
    let parent = header.parent;
    match header.kind {
        Kind::Value | Kind::Detached => {
            // Never in a list and unknown to the timer: nobody else can reach
            // it, so free it now (this drops the value promptly).
            // SAFETY: the last reference is gone and no list links it.
            unsafe { free_unreachable(h) };
            [parent, None]
        }
        Kind::Cancel | Kind::Deadline | Kind::Merge => {
            let node = h.cast::<CancelNode>();
            // SAFETY: kind checked.
            let c = unsafe { node.as_ref() };
            let mut other = None;
            // SAFETY: alive until we release the alive claim.
            if let Some(d) = unsafe { Header::as_deadline(h) } {
                timer_glue::disarm(d);
                // SAFETY: dead: no handle can read the cause any more and a
                // timer that fired held a reference (invariant 8).
                drop(d.cause.with_mut(|c| unsafe { (*c).take() }));
            }
            // SAFETY: alive, as above; dead, so `other` is ours to take.
            if let Some(m) = unsafe { Header::as_merge(h) } {
                if let Some(f) = m.forwarder {
                    // SAFETY: we hold the owner claim on the forwarder and
                    // `other` (which keeps its list's owner alive) is still
                    // held until after this call.
                    unsafe { leave_forwarder(f, &m.other, guard) };
                    // SAFETY: the merge node's claim on its forwarder; any
                    // traverser that may still see it holds the list's claim
                    // or was deferred behind (invariant 5).
                    unsafe { release_claims(f.cast(), 1) };
                }
                // SAFETY: taken exactly once, at death.
                let ctx = unsafe { std::ptr::read(&*m.other) };
                other = ctx.into_node_ptr();
            }
            // The record of an outcome this node owns: every node that could
            // borrow it is a descendant, and all of them are dead (they held
            // references to us) (invariant 2).
            // SAFETY: last use of the owned record.
            unsafe { c.state.load().free_if_owned() };
            // SAFETY: our parent reference is still held.
            let list_claim = unsafe { leave_parent(h, guard, HeadClaim::HandBack) };
            // The waiter entry is the one entry that does not hold a
            // reference to us: retire it with us.
            let waiters = NonNull::new(c.waiters.load(Ordering::Acquire));
            if let Some(w) = waiters {
                // SAFETY: we hold the owner's claim on it.
                unsafe { w.as_ref() }.header.next.mark();
            }
            // Everything left in our own list is now marked (every live
            // entry holds a reference to us): unlink it all.
            // SAFETY: we are the owner's dying thread.
            unsafe { c.children.drain(guard) };
            if let Some(w) = waiters {
                // SAFETY: the owner's claim on its waiter entry.
                unsafe { release_claims(w.cast(), 1) };
            }
            // The alive claim, and the list's when it was handed back to us
            // (by `leave_parent` now, or by the detach after a cancel). A
            // traverser that can still see us keeps the list's claim, or its
            // release was deferred behind it (invariant 5).
            let ours = if list_claim == ListClaim::HandedBack || header.next.claim_returned() {
                2
            } else {
                1
            };
            // SAFETY: we own `ours` claims on `h` (see above).
            unsafe { release_claims(h, ours) };
            [parent, other]
        }
        Kind::Forward | Kind::Callback | Kind::Waiters => {
            debug_assert!(false, "list-only entries have no observers");
            [None, None]
        }
    }
}
