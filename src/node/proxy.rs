//! Proxies: per-shard stand-ins for a contended parent (docs/SCALING.md,
//! invariants 13, 13k).
//!
//! When two cores derive from one parent `P` at once, every derive and drop
//! writes `P`'s cache line (its `refs` and its list head). Once a push on
//! `P`'s list finds the head changed under it, the deriving thread gives
//! its shard a *proxy*: a hidden cancellable child of `P` (`FLAG_PROXY`),
//! linked in `P`'s list like any child. Later derives from `P` on that shard
//! link their child under the proxy instead, and the child holds the proxy:
//! its writes land on the proxy's line, which only that shard writes.
//! Nothing else changes: `P`'s walk reaches the proxy and goes on into its
//! list, the proxy borrows `P`'s outcome, and its children borrow the same
//! record.
//!
//! **Lifetime.** `P` keeps each proxy through its slot (one observer
//! reference on the proxy); each proxy keeps `P` through a *hold* (a
//! [`HOLD`](super::refs::HOLD) in the high bits of `P`'s `refs`, not an observer reference).
//! When `P`'s last observer goes while holds remain, nobody can derive from
//! `P` any more (a derive runs on an observer of `P`), and observers never
//! come back (the timer and merge detaches take a hold then): that release
//! then empties the slots (the *kill*, [`kill`]) and releases their
//! references. The proxies in the slots keep `P` alive until then: every
//! hold left is one of them. Each proxy then dies when its last child
//! does, and releases its hold; the release that empties the word makes
//! `P` die, as any node does.
//!
//! **Slots** live behind `P`'s waiter entry (`WaitersNode::proxies`), which
//! lives as long as `P`'s memory: one slot per shard (`thread_shard`),
//! each empty, `BUSY` ([`busy`]) while its one installer builds the proxy (or for
//! good, if `P` turned out done), or a proxy.

use std::alloc::{self, Layout};
use std::ptr::{self, NonNull};

use super::header::as_cancel;
use super::raw::RawContext;
use super::refs::NodeRef;
use super::wait::{entry_of, WaitersNode};
use super::{derive, CancelNode, Header};
use crate::sync::{thread_shard, AtomicPtr, Ordering};

/// At most this many proxies per parent (the holds' bits of `refs` count
/// up to 255). Under loom there is one shard.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) const MAX_SHARDS: usize = 64;

/// A slot being filled by its installer, or left so because the parent was
/// done: no proxy, and none will be installed. Never a node's address
/// (nodes are 8-aligned).
fn busy() -> *mut CancelNode {
    ptr::without_provenance_mut(1)
}

/// The slot value as a proxy, if it is one.
fn proxy_in(value: *mut CancelNode) -> Option<NonNull<CancelNode>> {
    NonNull::new(value).filter(|p| p.as_ptr() != busy())
}

/// Slots per parent: one per shard. Below two shards there is nothing to
/// spread, so no proxy is made (outside loom, whose models use one shard
/// for every thread, so that installs race).
pub(crate) fn shards() -> usize {
    #[cfg(loom)]
    {
        1
    }
    #[cfg(not(loom))]
    {
        static SHARDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let n = *SHARDS.get_or_init(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SHARDS))
        });
        if n < 2 {
            0
        } else {
            n
        }
    }
}

/// A parent's slots: `shards()` words, allocated on first use.
pub(crate) struct Slots(AtomicPtr<AtomicPtr<CancelNode>>);

impl Slots {
    pub(crate) fn new() -> Slots {
        Slots(AtomicPtr::new(ptr::null_mut()))
    }

    /// The slot array, if allocated.
    fn get(&self) -> Option<&[AtomicPtr<CancelNode>]> {
        // Acquire: pairs with the AcqRel publication in `get_or_make`.
        let p = NonNull::new(self.0.load(Ordering::Acquire))?;
        // SAFETY: published arrays have `shards()` initialised slots and
        // live as long as `self` (freed in `Drop`).
        Some(unsafe { std::slice::from_raw_parts(p.as_ptr(), shards()) })
    }

    fn get_or_make(&self) -> &[AtomicPtr<CancelNode>] {
        if let Some(slots) = self.get() {
            return slots;
        }
        let fresh = alloc_slots();
        // AcqRel: Release publishes the array; Acquire reads a winner's.
        if let Err(_winner) =
            self.0
                .compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: ours, never published.
            unsafe { free_slots(fresh) };
        }
        self.get().unwrap_or_default()
    }
}

/// The layout of a slot array: `shards()` words on cache lines of their
/// own. Every derive through a proxy reads the array, so a block another
/// thread writes must not share its line (docs/SCALING.md, false sharing).
fn slots_layout() -> Layout {
    Layout::array::<AtomicPtr<CancelNode>>(shards())
        .and_then(|l| l.align_to(64))
        .map(|l| l.pad_to_align())
        .expect("a few words")
}

/// A fresh slot array, every slot empty.
fn alloc_slots() -> *mut AtomicPtr<CancelNode> {
    let layout = slots_layout();
    // SAFETY: the layout has a non-zero size (`shards() >= 1` once a
    // parent has slots).
    let p = unsafe { alloc::alloc(layout) }.cast::<AtomicPtr<CancelNode>>();
    if p.is_null() {
        alloc::handle_alloc_error(layout);
    }
    for i in 0..shards() {
        // SAFETY: within the allocation, suitably aligned, not yet
        // initialised.
        unsafe { p.add(i).write(AtomicPtr::new(ptr::null_mut())) };
    }
    p
}

/// Frees a slot array made by [`alloc_slots`].
///
/// # Safety
/// `p` came from [`alloc_slots`] and nobody else uses it.
unsafe fn free_slots(p: *mut AtomicPtr<CancelNode>) {
    // SAFETY: `shards()` initialised slots, ours alone (the contract).
    unsafe { ptr::drop_in_place(ptr::slice_from_raw_parts_mut(p, shards())) };
    // SAFETY: allocated with this layout.
    unsafe { alloc::dealloc(p.cast(), slots_layout()) };
}

impl Drop for Slots {
    fn drop(&mut self) {
        // Relaxed: the owner is being freed; nobody else reads the word.
        let p = self.0.load(Ordering::Relaxed);
        if !p.is_null() {
            debug_assert!(
                self.get()
                    .unwrap_or_default()
                    .iter()
                    .all(|s| proxy_in(s.load(Ordering::Relaxed)).is_none()),
                "a parent freed with a proxy in a slot"
            );
            // SAFETY: published by `get_or_make` from `alloc_slots`; we are
            // the last user (the owner is being freed).
            unsafe { free_slots(p) };
        }
    }
}

/// The node a derive from `parent` links under on this thread's shard: a
/// counted reference to the shard's proxy, if `parent`'s node has one.
#[inline]
pub(crate) fn for_derive(parent: &RawContext) -> Option<NodeRef> {
    let scope = parent.scope_ref()?;
    // Acquire: pairs with the publication of the waiter entry.
    let entry = NonNull::new(scope.waiters.load(Ordering::Acquire))?;
    if scope.state.load().is_done() {
        // A child of a done node is done on creation (Go: a context
        // derived from a done one is done at once), from the node's own
        // word: its proxies may not have been reached by the walk yet,
        // e.g. when an `after_func` of the node derives (invariant 13d).
        return None;
    }
    // SAFETY: published entries live as long as their owner, which
    // `parent` holds.
    unsafe { shard_proxy(parent, entry.as_ref()) }
}

/// # Safety
/// `entry` is the waiter entry of `parent`'s scope.
#[cold]
unsafe fn shard_proxy(parent: &RawContext, entry: &WaitersNode) -> Option<NodeRef> {
    if !is_own_scope(parent) {
        return None;
    }
    let slots = entry.proxies.get()?;
    let slot = &slots[thread_shard(slots.len())];
    // Acquire: pairs with the installer's Release store, so the proxy is
    // seen fully built.
    let mut value = slot.load(Ordering::Acquire);
    if value.is_null() {
        // The node is contended (it has slots) and this shard still writes
        // its line: give the shard its own proxy now.
        fill(parent, slot);
        // Acquire: as above.
        value = slot.load(Ordering::Acquire);
    }
    let proxy = proxy_in(value)?;
    // SAFETY: the slot holds a reference to the proxy until a kill, and no
    // kill runs while `parent` (an observer of the slot's owner) is held
    // (invariant 13k).
    Some(unsafe { NodeRef::acquire(proxy.cast()) })
}

/// True if `parent`'s node is its own scope (a cancellable node, not a
/// value layer over one): only such a node's children may go under its
/// proxies, since a child keeps only the node it hangs under.
fn is_own_scope(parent: &RawContext) -> bool {
    match (parent.node(), parent.scope_ptr()) {
        (Some(node), Some(scope)) => node.ptr() == scope.cast(),
        _ => false,
    }
}

/// Gives this thread's shard a proxy of `parent`'s node, unless it has one
/// (or one is being made), the node is done, or proxies are off. Returns
/// true if the shard has a proxy now.
pub(crate) fn install(parent: &RawContext) -> bool {
    if shards() == 0 || !is_own_scope(parent) {
        return false;
    }
    let Some(scope) = parent.scope_ref() else {
        return false;
    };
    if scope.state.load().is_done() {
        return false;
    }
    let slots = entry_of(scope).proxies.get_or_make();
    fill(parent, &slots[thread_shard(slots.len())])
}

/// Makes a proxy of `parent`'s node for `slot` unless the slot is taken.
/// Returns true if the slot holds a proxy now.
fn fill(parent: &RawContext, slot: &AtomicPtr<CancelNode>) -> bool {
    // Relaxed: the slots share cache lines that every derive on this
    // parent reads, so a taken slot is seen with a load, not a failed CAS
    // (which would take the line exclusive).
    let taken = !slot.load(Ordering::Relaxed).is_null();
    // Relaxed: BUSY publishes nothing; it only makes us the one installer
    // of this slot (invariant 13).
    if taken
        || slot
            .compare_exchange(
                ptr::null_mut(),
                busy(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
    {
        return proxy_in(slot.load(Ordering::Relaxed)).is_some();
    }
    match derive::proxy(parent) {
        Some(proxy) => {
            // Release: the proxy is fully built before a deriver sees it.
            slot.store(proxy.into_raw().as_ptr().cast(), Ordering::Release);
            true
        }
        // The node is done: the slot stays BUSY, nobody installs again.
        None => false,
    }
}

/// True if `ctx`'s node hangs under a proxy (for tests).
pub(crate) fn is_proxied(ctx: &RawContext) -> bool {
    ctx.node().and_then(|n| n.header().parent).is_some_and(|p| {
        // SAFETY: `ctx` holds its node, which holds its parent.
        unsafe { p.as_ref() }.flags & super::FLAG_PROXY != 0
    })
}

/// The kill (invariant 13k): `h`'s last observer is gone while proxies
/// still hold it. Empties every slot and releases the slot's reference to
/// its proxy; a proxy with no child left dies at once (and releases its
/// hold).
///
/// # Safety
/// The caller's release just took `h`'s observers from 1 to 0 while holds
/// remained. Every such hold is a proxy in one of `h`'s slots (a proxy
/// whose install failed released its hold before its installer's observer
/// reference went, and holds taken by `try_acquire` come later), and only
/// this kill releases the slots' references: so `h` stays alive until the
/// kill releases the first of them.
pub(crate) unsafe fn kill(h: NonNull<Header>) {
    // SAFETY: alive, by the contract.
    unsafe { h.as_ref() }.assert_not_freed();
    let Some(node) = as_cancel(h) else {
        return;
    };
    // SAFETY: alive, by the contract.
    let node = unsafe { node.as_ref() };
    // Acquire: pairs with the publication of the waiter entry.
    let Some(entry) = NonNull::new(node.waiters.load(Ordering::Acquire)) else {
        return;
    };
    // SAFETY: the entry lives as long as `h`.
    let Some(slots) = unsafe { entry.as_ref() }.proxies.get() else {
        return;
    };
    // Taken first, released after: the first release may let `h` go (its
    // proxy dying and dropping the last hold), so no slot is read after it.
    let mut taken: Vec<NodeRef> = Vec::new();
    for slot in slots {
        // AcqRel: exactly one kill takes each proxy (a swap, invariant
        // 13k); Acquire sees the proxy the installer published.
        if let Some(p) = proxy_in(slot.swap(ptr::null_mut(), Ordering::AcqRel)) {
            // SAFETY: the slot's reference, now ours.
            taken.push(unsafe { NodeRef::from_raw(p.cast()) });
        }
    }
    drop(taken);
}
