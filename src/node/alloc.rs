//! Allocating and freeing node memory.
//!
//! Every node kind is allocated by [`alloc`](fn@alloc) and freed by [`free`], once
//! its last claim is gone (`claims`). 64-byte nodes come from the thread's
//! block cache (`cache`).

use std::alloc::Layout;
use std::ptr::NonNull;

use super::claims::{count_claims, release_uncounted_claim};
use super::{cache, callback, wait};
use super::{
    CancelNode, DeadlineNode, ForwardNode, Header, Kind, MergeNode, ValueNode, FLAG_PROXY,
};
use crate::sync::Ordering;

/// Nodes allocated and not yet freed (given back to the allocator or to
/// the thread's block cache), process-wide; loom and debug builds only.
/// Unlike [`LIVE_CLAIMS`](super::claims::LIVE_CLAIMS), a node whose last claim sits in an epoch bag
/// still counts: it measures retained memory.
#[cfg(any(loom, debug_assertions))]
pub(crate) static ALLOCATED_NODES: std::sync::atomic::AtomicIsize =
    std::sync::atomic::AtomicIsize::new(0);

#[inline]
#[cfg_attr(not(any(loom, debug_assertions)), allow(unused_variables))]
fn count_allocated(delta: isize) {
    // Relaxed: a statistic for tests, read after the threads it counts
    // have been joined or have signalled through a channel.
    #[cfg(any(loom, debug_assertions))]
    ALLOCATED_NODES.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
}

/// Allocates a node (every node kind goes through here, or through
/// [`alloc_proxy`], and [`free`]). 64-byte nodes come from the thread's
/// block cache (`cache`).
pub(crate) fn alloc<T>(node: T) -> NonNull<T> {
    let node = if cache::serves::<T>() {
        let block = cache::alloc().cast::<T>();
        // SAFETY: a fresh block with `T`'s size and alignment, ours alone.
        unsafe { block.as_ptr().write(node) };
        block
    } else {
        NonNull::from(Box::leak(Box::new(node)))
    };
    counted(node)
}

/// Allocates a proxy (`node::proxy`; `FLAG_PROXY` set in its header) on
/// cache lines of its own, never from the block cache: [`free`] gives it
/// back with the same layout.
pub(crate) fn alloc_proxy(node: CancelNode) -> NonNull<CancelNode> {
    debug_assert!(node.header.flags & FLAG_PROXY != 0);
    let layout = own_lines::<CancelNode>();
    // SAFETY: a node layout has a non-zero size.
    let block = NonNull::new(unsafe { std::alloc::alloc(layout) })
        .unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        .cast::<CancelNode>();
    // SAFETY: a fresh block with room for a `CancelNode`, aligned for it,
    // ours alone.
    unsafe { block.as_ptr().write(node) };
    counted(block)
}

/// Counts a freshly placed node and its claims.
#[inline]
fn counted<T>(node: NonNull<T>) -> NonNull<T> {
    // SAFETY: every node type starts with a `Header` (`#[repr(C)]`).
    let claims = unsafe { node.cast::<Header>().as_ref() }
        .claims
        .load(Ordering::Relaxed);
    count_claims(isize::from(claims as i16));
    count_allocated(1);
    node
}

/// The layout of a proxy: `T` on cache lines no other block shares. Each
/// shard's derives and drops write their proxy's `refs` and list head on
/// every operation; proxies of one parent are often made one after the
/// other, by one thread, and would otherwise share a line (false sharing
/// between the very cores the proxies keep apart, docs/SCALING.md).
/// `memalign` is slow, but a parent gets at most one proxy per shard.
fn own_lines<T>() -> Layout {
    Layout::new::<T>()
        .align_to(64)
        .expect("64 is a power of two")
        .pad_to_align()
}

/// Frees a node nobody else can reach, now, whatever claims it still has
/// (never published, or never linked and dead).
///
/// # Safety
/// As for [`free`].
pub(crate) unsafe fn free_unreachable(h: NonNull<Header>) {
    // SAFETY: valid until freed below.
    let claims = unsafe { h.as_ref() }.claims.load(Ordering::Relaxed);
    count_claims(-isize::from(claims as i16));
    // SAFETY: forwarded.
    unsafe { free(h) };
}

/// Frees a node's memory, running the drop glue of its concrete type.
///
/// # Safety
/// Nobody can reach `h` any more, and `h` came from [`alloc`](fn@alloc) of the type
/// its kind names.
pub(super) unsafe fn free(h: NonNull<Header>) {
    count_allocated(-1);
    #[cfg(loom)]
    {
        // SAFETY: valid until now (under loom the memory is never given
        // back, see `drop_and_dealloc`).
        let header = unsafe { h.as_ref() };
        header.assert_not_freed();
        header
            .freed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // SAFETY: per the contract, the kind names the allocation's type.
    unsafe {
        match h.as_ref().kind {
            Kind::Cancel => drop_and_dealloc::<CancelNode>(h),
            Kind::Deadline => drop_and_dealloc::<DeadlineNode>(h),
            Kind::Merge => drop_and_dealloc::<MergeNode>(h),
            Kind::Value => drop_and_dealloc::<ValueNode>(h),
            Kind::Detached => drop_and_dealloc::<Header>(h),
            Kind::Forward => {
                let target = h.cast::<ForwardNode>().as_ref().target;
                drop_and_dealloc::<ForwardNode>(h);
                // The forwarder's claim on its merge node (uncounted, see
                // `derive::merge`): a walker that reached the merge through
                // the forwarder relied on it, and nobody can reach the
                // forwarder any more (invariant 5).
                release_uncounted_claim(target.cast());
            }
            Kind::Callback => drop_and_dealloc::<callback::CallbackNode>(h),
            Kind::Waiters => drop_and_dealloc::<wait::WaitersNode>(h),
        }
    }
}

/// Drops a node of type `T` and gives its memory back. Under loom the
/// memory is kept (leaked) so that `Header::freed` stays readable and a
/// late traverser fails the model instead of reading freed memory unseen.
///
/// # Safety
/// As for [`free`]; `T` is the node's type.
unsafe fn drop_and_dealloc<T>(h: NonNull<Header>) {
    #[cfg(not(loom))]
    // SAFETY: valid until freed below; `flags` never changes once published.
    if unsafe { h.as_ref() }.flags & FLAG_PROXY != 0 {
        // SAFETY: allocated by `alloc::<T>` with `own_lines::<T>()` (its
        // header had `FLAG_PROXY`), last use.
        unsafe {
            std::ptr::drop_in_place(h.cast::<T>().as_ptr());
            std::alloc::dealloc(h.cast().as_ptr(), own_lines::<T>());
        }
    } else if cache::serves::<T>() {
        // SAFETY: allocated by `alloc::<T>` from the block cache (the
        // caller's contract); last use, so drop the node and return the
        // block.
        unsafe {
            std::ptr::drop_in_place(h.cast::<T>().as_ptr());
            cache::free(h.cast());
        }
    } else {
        // SAFETY: allocated by `alloc::<T>` as a `Box` (the caller's
        // contract), last use.
        drop(unsafe { Box::from_raw(h.cast::<T>().as_ptr()) });
    }
    #[cfg(loom)]
    // SAFETY: as above; the allocation itself is leaked on purpose.
    unsafe {
        std::ptr::drop_in_place(h.cast::<T>().as_ptr())
    };
}
