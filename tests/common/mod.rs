//! Helpers shared by the integration tests.
//!
//! Every test binary includes this module with `mod common;` and uses only
//! part of it.
#![allow(dead_code)]

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread;
use std::time::Duration;

/// Runs `f` on its own thread and panics if it has not finished after `secs`
/// seconds, so that a hang fails the test instead of blocking CI.
///
/// A panic inside `f` is propagated to the caller with its original payload.
pub fn with_watchdog<F: FnOnce() + Send + 'static>(secs: u64, f: F) {
    // Miri is orders of magnitude slower than native code.
    let secs = if cfg!(miri) {
        secs.saturating_mul(20)
    } else {
        secs
    };
    let (tx, rx) = mpsc::channel::<()>();
    let body = thread::Builder::new()
        .name("watchdog-body".into())
        .spawn(move || {
            f();
            // The receiver is gone only if the watchdog already fired.
            let _ = tx.send(());
        })
        .expect("failed to spawn the watched thread");
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => {
            if let Err(payload) = body.join() {
                std::panic::resume_unwind(payload);
            }
        }
        Err(RecvTimeoutError::Disconnected) => match body.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => unreachable!("the watched closure returned without reporting"),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("watchdog: the test did not finish within {secs} s (hang or lost wake-up?)")
        }
    }
}

/// Spawns `f` on a thread with the given stack size and returns its result,
/// propagating a panic.
pub fn run_with_stack<T, F>(stack_size: usize, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let handle = thread::Builder::new()
        .name("small-stack".into())
        .stack_size(stack_size)
        .spawn(f)
        .expect("failed to spawn a small-stack thread");
    match handle.join() {
        Ok(value) => value,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// A small error type for causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestError(pub &'static str);

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test error: {}", self.0)
    }
}

impl std::error::Error for TestError {}

/// An error carrying a number, for causes given by many threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedError(pub usize);

impl fmt::Display for NumberedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "numbered error {}", self.0)
    }
}

impl std::error::Error for NumberedError {}

/// A value whose `Drop` increments a shared counter.
#[derive(Debug)]
pub struct DropCounter {
    counter: Arc<AtomicUsize>,
}

impl DropCounter {
    /// Returns a new value and the counter its drop increments.
    pub fn new() -> (DropCounter, Arc<AtomicUsize>) {
        let counter = Arc::new(AtomicUsize::new(0));
        (
            DropCounter {
                counter: Arc::clone(&counter),
            },
            counter,
        )
    }

    /// Returns a new value sharing an existing counter.
    pub fn with_counter(counter: &Arc<AtomicUsize>) -> DropCounter {
        DropCounter {
            counter: Arc::clone(counter),
        }
    }
}

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// An error (usable as a cause) whose `Drop` increments a shared counter.
#[derive(Debug)]
pub struct DropCountingError(pub DropCounter);

impl DropCountingError {
    pub fn new() -> (DropCountingError, Arc<AtomicUsize>) {
        let (counter, count) = DropCounter::new();
        (DropCountingError(counter), count)
    }
}

impl fmt::Display for DropCountingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("drop-counting error")
    }
}

impl std::error::Error for DropCountingError {}

/// A waker that counts how often it was woken.
#[derive(Debug, Default)]
pub struct CountingWaker {
    wakes: AtomicUsize,
}

impl CountingWaker {
    pub fn new() -> Arc<CountingWaker> {
        Arc::new(CountingWaker::default())
    }

    pub fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }

    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(Arc::clone(self))
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Reads a counter.
pub fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

/// A counting global allocator for the binaries that count bytes
/// (`tests/leaks.rs`, `tests/soak.rs`, `tests/server_soak.rs`), which
/// register it with
/// `#[global_allocator] static A: common::counting::Counting = common::counting::Counting;`.
///
/// It works in release builds (unlike `__private::live_claims`, which
/// exists only with debug assertions), so the ASan run (`--release`) still
/// checks that every node is freed. Each allocation made by a *tracked*
/// thread carries a tag in a small header, and the tagged bytes still
/// allocated are counted whichever thread frees them, so memory the crate
/// frees later through the epoch or on the timer thread is accounted for,
/// and libtest's own allocations are not.
pub mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicIsize, Ordering};
    use std::time::Duration;

    use ctxtree::Context;

    /// Makes what the crate allocates once per process, so that a count
    /// started afterwards sees only the workload: the epoch collector and
    /// this thread's epoch handle, the timer thread and its wheel's slab
    /// (grown to `deadlines` entries at once, more than the workload
    /// holds), the two default causes (`Arc::new(err)`, made on first use).
    pub fn warm_up(deadlines: usize) {
        let held: Vec<_> = (0..deadlines)
            .map(|_| Context::background().with_timeout(Duration::from_secs(3600)))
            .collect();
        drop(held);
        // The loop above grew this thread's shard only.
        ctxtree::__private::reserve_timers(deadlines);
        let (ctx, handle) = Context::background().with_cancel();
        let _ = ctx.wait_timeout(Duration::ZERO);
        handle.cancel();
        let _ = ctx.cause();
        let _ = Context::background().with_timeout(Duration::ZERO).0.cause();
        ctxtree::__private::flush_epoch();
    }

    /// Bytes allocated by tracked threads and not yet freed.
    static TRACKED_BYTES: AtomicIsize = AtomicIsize::new(0);
    /// Header tag of a tracked allocation.
    const TAG: usize = 0x50a4_d00d_5eed_0002;

    std::thread_local! {
        static TRACKING: Cell<bool> = const { Cell::new(false) };
    }

    fn tracking() -> bool {
        TRACKING.try_with(Cell::get).unwrap_or(false)
    }

    /// Counts the current thread's allocations from now on.
    pub fn track_this_thread() {
        let _ = TRACKING.try_with(|t| t.set(true));
    }

    /// Stops counting the current thread's allocations (their frees are
    /// still counted).
    pub fn untrack_this_thread() {
        let _ = TRACKING.try_with(|t| t.set(false));
    }

    /// Bytes allocated by tracked threads and not yet freed.
    pub fn tracked_bytes() -> isize {
        // SeqCst: read after joins / channel hand-offs; the strongest
        // ordering keeps the reasoning trivial in a test.
        TRACKED_BYTES.load(Ordering::SeqCst)
    }

    /// The allocator: `System` with a tag word in front of every block.
    pub struct Counting;

    impl Counting {
        /// Room in front of the block for the tag, keeping the alignment.
        fn offset(layout: Layout) -> usize {
            layout.align().max(2 * std::mem::size_of::<usize>())
        }

        fn outer(layout: Layout) -> Option<Layout> {
            let off = Self::offset(layout);
            Layout::from_size_align(layout.size().checked_add(off)?, off).ok()
        }

        /// # Safety
        /// `base` is null or a fresh block of `outer(layout)`.
        unsafe fn finish(base: *mut u8, layout: Layout, tracked: bool) -> *mut u8 {
            if base.is_null() {
                return base;
            }
            let off = Self::offset(layout);
            // SAFETY: the block has `off` bytes in front of the user part,
            // and `off` is a multiple of usize's alignment.
            unsafe {
                let user = base.add(off);
                user.cast::<usize>()
                    .sub(1)
                    .write(if tracked { TAG } else { 0 });
                if tracked {
                    // Relaxed: a statistic; readers synchronise through
                    // joins and channels before reading it.
                    TRACKED_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
                }
                user
            }
        }

        /// # Safety
        /// `ptr` came from this allocator.
        unsafe fn tracked_block(ptr: *mut u8) -> bool {
            // SAFETY: the tag word precedes every block we hand out.
            unsafe { ptr.cast::<usize>().sub(1).read() == TAG }
        }
    }

    // SAFETY: delegates to `System` with a larger layout and hands out a
    // correctly aligned interior pointer; dealloc/realloc undo the offset.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let Some(outer) = Self::outer(layout) else {
                return std::ptr::null_mut();
            };
            // SAFETY: forwarded with a non-zero size; `finish` gets a fresh
            // block of `outer`.
            unsafe { Self::finish(System.alloc(outer), layout, tracking()) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let Some(outer) = Self::outer(layout) else {
                return std::ptr::null_mut();
            };
            // SAFETY: as above.
            unsafe { Self::finish(System.alloc_zeroed(outer), layout, tracking()) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `alloc` with `layout`, so `outer`
            // exists and the block starts `offset` bytes before it.
            unsafe {
                if Self::tracked_block(ptr) {
                    // Relaxed: as in `finish`.
                    TRACKED_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
                }
                let outer = Self::outer(layout).unwrap_unchecked();
                System.dealloc(ptr.sub(Self::offset(layout)), outer);
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // A moved block keeps the tag of the block it came from.
            // SAFETY: `ptr` came from `alloc` with `layout`; the new layout
            // is valid per the `GlobalAlloc` contract.
            unsafe {
                let tracked = Self::tracked_block(ptr);
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let Some(outer) = Self::outer(new_layout) else {
                    return std::ptr::null_mut();
                };
                let new = Self::finish(System.alloc(outer), new_layout, tracked);
                if !new.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }
}

/// Runs `ctxtree::__private::flush_epoch()` on a deadline firing thread
/// (`ctxtree-fire`), from an `after_func` callback of a deadline context the
/// timer fires, and waits (at most `limit`) until it ran. Firing threads
/// drop the last reference to nodes they fired, so they can keep freed node
/// blocks in their per-thread cache (they also flush it themselves whenever
/// their queue empties); a leak check that counts allocated bytes empties
/// that cache this way. Returns false if the callback did not run on a
/// firing thread in time.
pub fn flush_timer_thread(limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let (tx, rx) = mpsc::channel::<bool>();
        // Long enough that the context is not done when the callback is
        // registered (else it would run here, on this thread).
        let (ctx, _handle) = ctxtree::Context::background().with_timeout(Duration::from_millis(5));
        let af = ctx.after_func(move || {
            let on_timer = thread::current().name() == Some("ctxtree-fire");
            if on_timer {
                ctxtree::__private::flush_epoch();
            }
            let _ = tx.send(on_timer);
        });
        let got = rx.recv_timeout(limit);
        drop((ctx, af));
        match got {
            Ok(true) => return true,
            Ok(false) | Err(_) => continue,
        }
    }
    false
}
