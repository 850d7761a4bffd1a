//! W9_memory: heap bytes and allocations per live cancellable child, with a
//! counting global allocator (in its own binary so the other benches run on
//! the plain system allocator).
//!
//! For each implementation: a live parent, a `Vec` for the handles
//! allocated up front, then 100,000 children derived and kept alive. Bytes
//! are the sizes *requested* from the allocator (malloc's own per-chunk
//! overhead is not included, for any implementation); the handles' inline
//! size in the user's `Vec` is reported separately. ctxtree's epoch garbage
//! is flushed before each reading.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use ctxtree::Context;
use support::{mutex_port, record, stats};
use tokio_util::sync::CancellationToken;

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; the counters are side effects.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BYTES.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: usize = 100_000;

fn snapshot() -> (isize, usize) {
    // Flush until the deferred frees stop arriving: each flush collects a
    // bounded number of epoch bags.
    let mut last = BYTES.load(Ordering::Relaxed);
    let mut stable = 0;
    for _ in 0..100_000 {
        ctxtree::__private::flush_epoch();
        let now = BYTES.load(Ordering::Relaxed);
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
        if stable == 3 {
            break;
        }
    }
    (
        BYTES.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed),
    )
}

/// Derives `N` children of a fresh parent with `derive` into a
/// pre-allocated Vec. Returns (bytes per child, allocations per child,
/// bytes still held after the children are dropped with the parent live,
/// bytes still held after the parent is dropped too).
fn measure<P, T>(parent: impl FnOnce() -> P, derive: impl Fn(&P) -> T) -> (f64, f64, isize, isize) {
    let p = parent();
    let mut kids: Vec<T> = Vec::with_capacity(N);
    let handles = (N * std::mem::size_of::<T>()) as isize;
    let (b0, a0) = snapshot();
    for _ in 0..N {
        kids.push(derive(&p));
    }
    let (b1, a1) = snapshot();
    drop(kids);
    let (b2, _) = snapshot();
    drop(p);
    let (b3, _) = snapshot();
    (
        (b1 - b0) as f64 / N as f64,
        (a1 - a0) as f64 / N as f64,
        b2 - b0 + handles,
        b3 - b0 + handles,
    )
}

fn main() {
    support::reset("memory");
    let before = snapshot().0;
    let out = [
        (
            "ctxtree",
            measure(
                || Context::background().with_cancel(),
                |(p, _)| p.with_cancel(),
            ),
            std::mem::size_of::<(Context, ctxtree::CancelHandle)>(),
        ),
        (
            "tokio-util",
            measure(CancellationToken::new, |p| p.child_token()),
            std::mem::size_of::<CancellationToken>(),
        ),
        (
            "mutex-port",
            measure(
                || mutex_port::Ctx::background().with_cancel(),
                |(p, _)| p.with_cancel(),
            ),
            std::mem::size_of::<(mutex_port::Ctx, mutex_port::CancelFn)>(),
        ),
    ];
    for (imp, (bytes, allocs, held, left), handle) in out {
        record("memory", "W9_memory/bytes", imp, "B/child", stats(&[bytes]));
        record(
            "memory",
            "W9_memory/allocs",
            imp,
            "allocs/child",
            stats(&[allocs]),
        );
        record(
            "memory",
            "W9_memory/handle_bytes",
            imp,
            "B/child",
            stats(&[handle as f64]),
        );
        println!(
            "  {imp}: after dropping the children, {held} bytes still held while the parent lives; \
             {left} after the parent is dropped"
        );
    }
    println!(
        "  net heap change over the whole run: {} bytes",
        snapshot().0 - before
    );
}
