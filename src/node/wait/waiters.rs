//! A node's waiter event.
//!
//! The waiter [`Event`] of a node is created on the first `done()` or
//! `wait*()` (most contexts never allocate one) and published twice: by a
//! compare-exchange on `CancelNode::waiters`, so every waiter finds the same
//! event, and as an entry of the node's children list, so the canceller
//! finds it while walking (no extra atomic on the cancel path).
//!
//! Lost wake-ups are excluded by check → listen → fence → re-check
//! (invariant 12): a waiter inserts its listener, issues a SeqCst fence and
//! re-reads the state word; the notifier (the canceller walking the list, or
//! the waiter that found the list already sealed) publishes the state before
//! `Event::notify`, which starts with a SeqCst fence. Either the waiter's
//! re-check sees done, or the notifier sees the listener.

use std::mem::size_of;
use std::panic::resume_unwind;
use std::ptr;

use super::wake_list::WakeScope;

use crate::node::proxy::Slots;
use crate::node::{release_claims, CancelNode, Header, Kind, FLAG_LINKED};
use crate::sync::{fence, Event, EventListener, Ordering};

/// The list entry that carries a node's waiter event, and its proxy slots
/// (`node::proxy`). Claims: one for the owner, one for the list.
///
/// 128 bytes, with `proxies` at offset 64: every derive through a proxy
/// reads that word, and in a 16-byte aligned block of 128 bytes, whatever
/// cache line holds offset 64 lies inside the block. So no block another
/// thread writes on every operation shares its line (false sharing,
/// docs/SCALING.md); the rest of that line is this entry's read-mostly
/// words and padding.
#[repr(C)]
pub(crate) struct WaitersNode {
    pub(crate) header: Header,
    event: Event,
    _before: [u8; PAD_BEFORE],
    /// The owner's proxies, one slot per shard (allocated on first use).
    pub(crate) proxies: Slots,
    _after: [u8; PAD_AFTER],
}

/// Padding that puts `proxies` at offset 64 (under loom, whose atomics are
/// larger, wherever it falls: false sharing is not modelled there).
const PAD_BEFORE: usize = 64usize.saturating_sub(size_of::<Header>() + size_of::<Event>());
/// Padding after `proxies` up to 128 bytes.
const PAD_AFTER: usize = 64usize.saturating_sub(size_of::<Slots>());

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::offset_of!(WaitersNode, proxies) == 64);
    assert!(size_of::<WaitersNode>() == 128);
};

impl WaitersNode {
    /// Wakes every listener, once nothing internal is held.
    ///
    /// Plain `notify`, not a relaxed variant: its leading SeqCst fence is
    /// the notifier's half of invariant 12. (`notify_additional` would walk
    /// the same entries: every listener is unnotified until this call, and
    /// the per-listener cost is the same.)
    ///
    /// The wakers event-listener calls inside `notify` only record their
    /// wake-up in this thread's [`WakeScope`]: the cancellation walk's, if
    /// one is running here (it wakes them after the walk), else a scope
    /// opened here, which wakes them once `notify` has returned (released
    /// its lock). A waker's panic then resumes here, as from a cancel.
    pub(crate) fn notify_all(&self) {
        let scope = WakeScope::open();
        self.event.notify(usize::MAX);
        if let Some(payload) = scope.close() {
            resume_unwind(payload);
        }
    }
}

/// The scope's waiter entry, created and published on first use (by a
/// waiter, or by a contended derive for the proxy slots).
pub(crate) fn entry_of(scope: &CancelNode) -> &WaitersNode {
    // Acquire: pairs with the AcqRel publication below.
    let current = scope.waiters.load(Ordering::Acquire);
    if !current.is_null() {
        // SAFETY: published entries live as long as their owner.
        return unsafe { &*current };
    }
    entry_slow(scope)
}

#[cold]
fn entry_slow(scope: &CancelNode) -> &WaitersNode {
    let fresh = crate::node::alloc(WaitersNode {
        header: Header::new(Kind::Waiters, 0, 2, FLAG_LINKED),
        event: Event::new(),
        _before: [0; PAD_BEFORE],
        proxies: Slots::new(),
        _after: [0; PAD_AFTER],
    });
    // AcqRel: Release publishes the entry; Acquire reads a winner's.
    match scope.waiters.compare_exchange(
        ptr::null_mut(),
        fresh.as_ptr(),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Err(winner) => {
            // SAFETY: ours, never published.
            unsafe { crate::node::free_unreachable(fresh.cast()) };
            // SAFETY: published entries live as long as their owner.
            unsafe { &*winner }
        }
        Ok(_) => {
            let entry = fresh.cast::<Header>();
            // SAFETY: valid as above.
            let w = unsafe { fresh.as_ref() };
            // SAFETY: valid; claims include the list's.
            let linked = unsafe { scope.children.push(entry) }.is_ok();
            if !linked {
                // Already done (sealed): never linked.
                w.header.next.mark();
                // SAFETY: the list's claim, never used.
                unsafe { release_claims(entry, 1) };
            }
            // Linked, but the push/cancel handshake says the scope is done
            // (a walker found its list empty, see `ChildList::push`): no
            // walker will notify this event. Either way, whoever listened
            // meanwhile is woken here (a waker's panic resumes in this
            // waiter, which did the cancellation's work); later listeners
            // see done on their re-check.
            if !linked || scope.state.load_after_push().is_done() {
                w.notify_all();
            }
            // SAFETY: published entries live as long as their owner.
            unsafe { &*fresh.as_ptr() }
        }
    }
}

/// Registers a listener on `scope` for a waiter that has just seen it live.
pub(crate) fn listen(scope: &CancelNode) -> EventListener {
    let listener = entry_of(scope).event.listen();
    // SeqCst: the waiter's half of invariant 12 (the notifier's half is the
    // fence at the start of `Event::notify`).
    fence(Ordering::SeqCst);
    listener
}
