//! Observer references (`refs`) and death.
//!
//! The low bits of `refs` ([`OBSERVERS`]) count *observers*: handles
//! ([`RawContext`](super::raw::RawContext), hence `Context` clones and
//! `Done` futures), `CancelHandle`s (and guards), child nodes (each child
//! holds its parent), pending `after_func` callbacks, and a timer that is
//! firing. The high bits count the *holds* of the node's proxies (one
//! [`HOLD`] each, `node::proxy`, invariant 13). When the whole word reaches
//! zero the node *dies*: user data (values, causes) is dropped at once, the
//! node leaves its parent's list and gives up its "alive" claim (`claims`).
//! When only the observers reach zero, the last observer's release then
//! empties the node's proxy slots (the kill, invariant 13k); observers
//! never come back from zero.

use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use super::alloc::free_unreachable;
use super::children::{HeadClaim, ListClaim};
use super::claims::release_claims;
use super::link::{leave_forwarder, leave_parent};
use super::{proxy, timer_glue, CancelNode, Header, Kind, FLAG_PROXY};
use crate::sync::{LazyGuard, Ordering};

/// One proxy's hold on its parent: the unit of the high bits of `refs`
/// (at most 255 holds: a node has at most `proxy::MAX_SHARDS` proxies).
pub(crate) const HOLD: u32 = 1 << 24;
/// The observer bits of `refs`.
pub(crate) const OBSERVERS: u32 = HOLD - 1;

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
        if old & OBSERVERS >= OBSERVERS / 2 {
            // Like `Arc`: millions of live handles to one node mean leaked
            // handles; overflowing into the holds would free a node in use.
            std::process::abort();
        }
        NodeRef(h)
    }

    /// Adds a proxy's hold on `h` (invariant 13) and returns the pointer
    /// the proxy's `parent` keeps.
    ///
    /// # Safety
    /// The caller holds an observer reference to `h`.
    pub(crate) unsafe fn acquire_hold(h: NonNull<Header>) -> NonNull<Header> {
        // Relaxed: as in `acquire`; the caller's reference orders it.
        // SAFETY: alive by the caller's contract.
        let old = unsafe { h.as_ref() }
            .refs
            .fetch_add(HOLD, Ordering::Relaxed);
        // At most one proxy per slot, ever (`proxy::install`).
        debug_assert!(old >> 24 < 255, "proxy holds overflow");
        h
    }

    /// Adds a reference unless the node is already dead (refs == 0): how
    /// the timer and a walk detaching a merge reach a node they do not
    /// own. An observer reference while the node has observers, else a
    /// hold: observers never come back from zero (invariant 13k).
    ///
    /// # Safety
    /// `h`'s memory is valid (the caller holds a claim, a pin or the lock
    /// that keeps it from being freed).
    pub(crate) unsafe fn try_acquire(h: NonNull<Header>) -> Option<TransientRef> {
        // SAFETY: valid by the caller's contract.
        let refs = &unsafe { h.as_ref() }.refs;
        let mut n = refs.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return None;
            }
            let hold = n & OBSERVERS == 0;
            if hold && n >> 24 == u32::MAX >> 24 {
                // 255 holds: 64 proxies at most, so about 190 threads
                // detaching one merge at once. Not a state to recover from.
                std::process::abort();
            }
            let add = if hold { HOLD } else { 1 };
            // Acquire on success: pairs with the Release of the decrements
            // so we see the node as its last users left it. Never from 0:
            // a dead node stays dead (invariant 8).
            match refs.compare_exchange_weak(n, n + add, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(TransientRef { h, hold }),
                Err(actual) => n = actual,
            }
        }
    }
}

/// A reference [`NodeRef::try_acquire`] took: an observer reference, or a
/// hold on a node whose observers are gone (invariant 13k). Released when
/// dropped.
pub(crate) struct TransientRef {
    h: NonNull<Header>,
    hold: bool,
}

impl From<NodeRef> for TransientRef {
    fn from(r: NodeRef) -> TransientRef {
        TransientRef {
            h: r.into_raw(),
            hold: false,
        }
    }
}

impl Drop for TransientRef {
    fn drop(&mut self) {
        // SAFETY: we own this reference or hold.
        let zero = unsafe {
            if self.hold {
                release_hold(self.h)
            } else {
                release(self.h)
            }
        };
        if zero {
            // SAFETY: we took the count to zero.
            unsafe { die_chain(self.h) };
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
        if unsafe { release(self.0) } {
            // SAFETY: we took the count to zero.
            unsafe { die_chain(self.0) };
        }
    }
}

/// Releases one observer reference; true if the whole word reached zero
/// (the caller runs the death).
///
/// The release that leaves no observer while proxies still hold the node
/// then empties the node's slots (the kill, invariant 13k). It no longer
/// holds a reference, but every hold left is a proxy in a slot, which
/// nobody but this kill releases: those keep the node alive until the
/// kill has emptied every slot.
///
/// # Safety
/// The caller owns one observer reference to `h`.
#[inline]
unsafe fn release(h: NonNull<Header>) -> bool {
    // Release: our uses of the node happen before its death. The thread
    // that sees zero acquires in `die_chain`.
    // SAFETY: we own a reference, so the node is alive.
    let prev = unsafe { h.as_ref() }.refs.fetch_sub(1, Ordering::Release);
    if prev & OBSERVERS == 1 && prev != 1 {
        // SAFETY: we took the observers to zero with holds left.
        unsafe { release_last_observer(h) };
    }
    prev == 1
}

/// The kill, after the release of the last observer (invariant 13k).
///
/// # Safety
/// The caller's release took `h`'s observers from 1 to 0 while holds
/// remained.
#[cold]
#[inline(never)]
unsafe fn release_last_observer(h: NonNull<Header>) {
    // SAFETY: the holds of the proxies in `h`'s slots keep it alive until
    // the kill releases them (the caller's contract, invariant 13k).
    unsafe { proxy::kill(h) };
}

/// Releases a dead proxy's hold on its parent `h`; true if the whole word
/// reached zero. A hold never triggers a kill: the observers reached zero
/// through a kill already, or some are left and will (invariant 13k).
///
/// # Safety
/// The caller is the dead proxy's dying thread.
#[inline]
unsafe fn release_hold(h: NonNull<Header>) -> bool {
    // Release: as in `release`.
    // SAFETY: the hold keeps the node alive.
    unsafe { h.as_ref() }
        .refs
        .fetch_sub(HOLD, Ordering::Release)
        == HOLD
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
        let header = unsafe { h.as_ref() };
        let _ = header.refs.load(Ordering::Acquire);
        let is_proxy = header.flags & FLAG_PROXY != 0;
        // SAFETY: refs reached zero: we are the node's only user and it
        // dies exactly once (invariant 8).
        let [first, second] = unsafe { die(h, &mut guard) };
        // SAFETY: the dead node held one reference to each parent: a hold
        // if it was a proxy (invariant 13).
        next = first.filter(|&p| unsafe {
            if is_proxy {
                release_hold(p)
            } else {
                release(p)
            }
        });
        // SAFETY: as above (a merge is never a proxy).
        pending.extend(second.filter(|&p| unsafe { release(p) }));
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
