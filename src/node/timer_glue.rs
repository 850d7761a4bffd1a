//! Deadline nodes and the timer: arming, disarming and firing.
//!
//! The timer service (`crate::timer`) is generic and knows nothing of nodes;
//! this module owns its one instance and is the only code that connects the
//! two. The wheel lives behind the timer's mutex; the node keeps the id of
//! its entry in `DeadlineNode::timer`, written only under that lock. The
//! timer thread pops an entry and acquires the node (`try_acquire`, in
//! `Armed::expired`) while still holding the lock, and a dying node
//! disarms under the same lock before its memory can be freed, so the timer
//! never touches a freed node (invariant 10). Under loom there is no timer
//! thread: models call [`fire`] from a loom thread.

use std::ptr::NonNull;

use super::raw::RawContext;
use super::{cancel, DeadlineNode, NodeRef};
use crate::error::Error;
use crate::sync::Ordering;

/// `DeadlineNode::timer` when no entry is armed.
pub(crate) const NONE: u64 = u64::MAX;

#[cfg(not(loom))]
const _: () = assert!(NONE == crate::timer::NONE_BITS);

/// A deadline node armed in the timer's wheel.
#[cfg(not(loom))]
struct Armed(NonNull<DeadlineNode>);

// SAFETY: only dereferenced under the wheel lock while the node is armed
// (invariant 10), or after acquiring it.
#[cfg(not(loom))]
unsafe impl Send for Armed {}

/// An expired deadline node, acquired by the timer thread, on its way to a
/// firing thread.
#[cfg(not(loom))]
pub(crate) struct Expired(NonNull<DeadlineNode>, NodeRef);

// SAFETY: the pointer is only dereferenced while the `NodeRef` next to it
// keeps the node alive, and nodes are designed to be shared across threads.
#[cfg(not(loom))]
unsafe impl Send for Expired {}

#[cfg(not(loom))]
impl crate::timer::Expiry for Armed {
    type Fired = Expired;

    unsafe fn expired(self) -> Option<Expired> {
        let node = self.0;
        // The entry was armed until this poll and its `timer` field still
        // holds the id, so a dying node takes the lock in `disarm` before it
        // can be freed (invariant 10).
        // SAFETY: valid while the timer holds the lock (the caller's
        // contract) and until we store NONE.
        let d = unsafe { node.as_ref() };
        // SAFETY: valid, as above. A dead node is skipped.
        let held = unsafe { NodeRef::try_acquire(node.cast()) };
        // Release, and last: a dying thread whose Acquire hint read sees
        // NONE skips the lock and may free the node, so every access we make
        // without a reference happens before this store.
        d.timer.store(NONE, Ordering::Release);
        held.map(|held| Expired(node, held))
    }
}

#[cfg(not(loom))]
impl crate::timer::firing::Job for Expired {
    fn run(self) {
        let Expired(node, held) = self;
        // SAFETY: `held` keeps the node alive.
        unsafe { fire(node, held) }
    }

    fn idle() {
        // This thread dropped the last reference to some of the nodes it
        // fired: hand their deferred frees to the epoch and their blocks
        // back to the allocator before sleeping, possibly for good.
        crate::sync::pin().flush();
        super::cache::flush();
    }
}

/// The crate's timer (started by the first deadline that needs it).
#[cfg(not(loom))]
fn timer() -> &'static crate::timer::Timer<Armed> {
    static TIMER: std::sync::OnceLock<crate::timer::Timer<Armed>> = std::sync::OnceLock::new();
    TIMER.get_or_init(crate::timer::Timer::new)
}

/// Number of armed timer entries (for tests and benchmarks).
#[cfg(not(loom))]
pub(crate) fn armed() -> usize {
    timer().armed()
}

/// Arms the node's timer (a no-op under loom).
pub(crate) fn arm(node: &DeadlineNode) {
    #[cfg(not(loom))]
    {
        timer().arm(node.deadline, Armed(NonNull::from(node)), |bits| {
            // Relaxed: written and read under the lock (the unlocked read in
            // `disarm` is a hint only).
            node.timer.store(bits, Ordering::Relaxed);
        });
        // SeqCst fence: pairs with the one in `disarm`. Either we see the
        // state done here, or the canceller sees our armed id there.
        crate::sync::fence(Ordering::SeqCst);
        if node.cancel.state.load().is_done() {
            // A parent's walk may have cancelled the node before it was
            // armed and found nothing to disarm.
            disarm(node);
        }
    }
    #[cfg(loom)]
    let _ = node;
}

/// Disarms the node's timer if it is armed (a walk reaching a deadline
/// node, or the node dying).
///
/// SeqCst fence, then a hint read outside the lock: NONE can only be stale
/// if the creator is arming right now, and then the creator's
/// fence-separated re-check of the state (see `arm`) sees this node done
/// (the state was published before this fence) and disarms it itself. A
/// dying node takes the fence too: the fence-less variant (its creator
/// armed before releasing its reference) had no model that checks it, the
/// timer being outside loom.
pub(crate) fn disarm(node: &DeadlineNode) {
    crate::sync::fence(Ordering::SeqCst);
    // Acquire: pairs with the timer thread's Release store of NONE after
    // its last access to a node it popped (invariant 10).
    if node.timer.load(Ordering::Acquire) == NONE {
        return;
    }
    // Relaxed: under the lock.
    #[cfg(not(loom))]
    timer().disarm(|| node.timer.swap(NONE, Ordering::Relaxed));
}

/// The deadline passed: cancel with `DeadlineExceeded` and the node's
/// cause.
///
/// # Safety
/// `node` is held by `held` (acquired by the timer).
pub(crate) unsafe fn fire(node: NonNull<DeadlineNode>, held: NodeRef) {
    // SAFETY: held.
    let d = unsafe { node.as_ref() };
    // SAFETY: the cause is only taken when the node dies, and we hold it.
    let cause = d.cause.with_mut(|c| unsafe { (*c).clone() });
    // SAFETY: held.
    unsafe { cancel::cancel(node.cast(), Error::DeadlineExceeded, cause) };
    drop(held);
}

/// Fires `ctx`'s own deadline now (the loom and test hook behind
/// `__private::fire_deadline`). False if `ctx` has no deadline node.
pub(crate) fn fire_context(ctx: &RawContext) -> bool {
    let Some(node) = ctx.node() else {
        return false;
    };
    if node.header().kind != super::Kind::Deadline {
        return false;
    }
    let held = node.clone();
    // SAFETY: `held` keeps the node alive; the kind was checked.
    unsafe { fire(node.ptr().cast(), held) };
    true
}
