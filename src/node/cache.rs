//! A small per-thread cache of node-sized memory blocks.
//!
//! Deriving and dropping a cancellable child allocates and frees one
//! 64-byte block each time, and the hot loops of a server do it on every
//! request. The system allocator's fast path costs about 150 instructions
//! per pair on glibc (callgrind, `benches/profile.rs`); a free block kept
//! by the thread costs a few loads and stores. The cache holds at most
//! [`CAPACITY`] blocks (2 KiB) per thread and gives them back when the
//! thread exits, so the memory a program holds is its live nodes plus at
//! most that much per thread.
//!
//! Only blocks with exactly the layout of [`CancelNode`] go through the
//! cache (cancellable nodes and anything else of that size and alignment);
//! other node kinds use the global allocator directly. Under loom the cache
//! is not used (nodes are never given back there, see `node::alloc::drop_and_dealloc`).
//! Nor under `--cfg ctxtree_sanitize` (`.ci/asan.sh`): a block parked here
//! and handed out again would hide a use-after-free from AddressSanitizer,
//! which only sees frees that reach the allocator.

// Under loom `drop_and_dealloc` keeps every node, so nothing is given back here.
#![cfg_attr(loom, allow(dead_code))]

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::ptr::{self, NonNull};

use super::CancelNode;

/// Blocks kept per thread.
pub(crate) const CAPACITY: u32 = 32;

/// The layout the cache serves.
const BLOCK: Layout = Layout::new::<CancelNode>();

/// A cached block: its first word links to the next one.
struct Free {
    next: *mut Free,
}

/// One thread's cache: an intrusive stack of free blocks.
struct Cache {
    top: Cell<*mut Free>,
    len: Cell<u32>,
}

impl Cache {
    /// Takes every block out and gives it back to the global allocator.
    fn drain(&self) {
        let mut p = self.top.replace(ptr::null_mut());
        self.len.set(0);
        while !p.is_null() {
            // SAFETY: every block on the stack is a live `BLOCK` allocation
            // that only this stack refers to.
            let next = unsafe { (*p).next };
            // SAFETY: allocated with `BLOCK` (see `alloc`).
            unsafe { alloc::dealloc(p.cast(), BLOCK) };
            p = next;
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.drain();
    }
}

std::thread_local! {
    static CACHE: Cache = const {
        Cache {
            top: Cell::new(ptr::null_mut()),
            len: Cell::new(0),
        }
    };
}

/// True if blocks for `T` go through the cache.
#[inline]
pub(crate) const fn serves<T>() -> bool {
    let l = Layout::new::<T>();
    l.size() == BLOCK.size() && l.align() == BLOCK.align() && !cfg!(any(loom, ctxtree_sanitize))
}

/// A block with `BLOCK`'s layout, from this thread's cache if it has one.
#[inline]
pub(crate) fn alloc() -> NonNull<u8> {
    let cached = CACHE
        .try_with(|c| {
            let top = c.top.get();
            if !top.is_null() {
                // SAFETY: a block on the stack is valid and ours alone.
                c.top.set(unsafe { (*top).next });
                c.len.set(c.len.get() - 1);
            }
            top
        })
        .unwrap_or(ptr::null_mut());
    if let Some(p) = NonNull::new(cached) {
        return p.cast();
    }
    // SAFETY: `BLOCK` has a non-zero size.
    let p = unsafe { alloc::alloc(BLOCK) };
    match NonNull::new(p) {
        Some(p) => p,
        None => alloc::handle_alloc_error(BLOCK),
    }
}

/// Gives a block back: kept by this thread if its cache has room.
///
/// # Safety
/// `p` was returned by [`alloc`](fn@alloc), its contents are dropped, and nobody
/// refers to it any more.
#[inline]
pub(crate) unsafe fn free(p: NonNull<u8>) {
    let kept = CACHE
        .try_with(|c| {
            let len = c.len.get();
            if len >= CAPACITY {
                return false;
            }
            let block = p.cast::<Free>().as_ptr();
            // SAFETY: the block is ours (the caller's contract) and large
            // and aligned enough for a `Free`.
            unsafe { block.write(Free { next: c.top.get() }) };
            c.top.set(block);
            c.len.set(len + 1);
            true
        })
        // The thread is exiting and its cache is gone.
        .unwrap_or(false);
    if !kept {
        // SAFETY: allocated with `BLOCK` (see `alloc`), no longer used.
        unsafe { alloc::dealloc(p.as_ptr(), BLOCK) };
    }
}

/// Gives every block this thread keeps back to the global allocator
/// (memory measurements and leak tests call it before counting).
pub(crate) fn flush() {
    let _ = CACHE.try_with(Cache::drain);
}
