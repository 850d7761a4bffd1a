//! The sync shim: the only module of the crate that names `std::sync`,
//! `loom`, `crossbeam_epoch` or `event_listener` for the concurrent core.
//!
//! Under `cfg(loom)` (always together with `cfg(crossbeam_loom)`, see
//! `docs/VERIFICATION.md`) every atomic, fence, cell, epoch guard and event
//! comes from loom or from the loom builds of crossbeam-epoch and
//! event-listener, so a loom model explores every interleaving of the core.
//! Outside loom the same names are the std / crossbeam / event-listener
//! types with no wrapper cost.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8};

pub(crate) use std::sync::atomic::Ordering;

/// Threads, for the park/unpark of blocking waits (`node::wait`): loom's
/// under loom, so a model explores that handshake.
#[cfg(loom)]
pub(crate) use loom::thread;
#[cfg(not(loom))]
pub(crate) use std::thread;

/// The store-buffering handshake of a list push and a cancel: one thread
/// does a SeqCst read-modify-write of word X then a SeqCst load of word Y,
/// the other the same with X and Y swapped; at least one load sees the
/// other thread's write. Outside loom, the SeqCst operations alone give
/// this (all SeqCst operations are in one total order), at no cost on x86
/// where a SeqCst load is a plain load. Loom does not model SeqCst accesses,
/// only SeqCst fences, so under loom this is a SeqCst fence placed between
/// the two operations, the equivalent fence-based form of the same
/// handshake, and the models check the algorithm against it.
#[inline(always)]
pub(crate) fn sc_handshake() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// std's `Arc`, for user-facing values that loom need not model (task
/// wakers; causes use `std::sync::Arc` through the public `Cause` type).
pub(crate) use std::sync::Arc as UserArc;

pub(crate) use crossbeam_epoch::Guard;
pub(crate) use event_listener::{Event, EventListener, Listener};

/// Pins the current thread to the epoch collector used by the core.
///
/// Outside loom this is crossbeam's process-wide default collector. Under
/// loom there is no default collector (it would outlive a model), so each
/// model execution gets a fresh `Collector` through `loom::lazy_static!` and
/// each loom thread its own registered handle.
#[cfg(not(loom))]
#[inline]
pub(crate) fn pin() -> Guard {
    crossbeam_epoch::pin()
}

#[cfg(loom)]
pub(crate) fn pin() -> Guard {
    loom::lazy_static! {
        static ref COLLECTOR: crossbeam_epoch::Collector = crossbeam_epoch::Collector::new();
    }
    loom::thread_local! {
        static HANDLE: crossbeam_epoch::LocalHandle = COLLECTOR.register();
    }
    HANDLE.with(|handle| handle.pin())
}

/// Cancellation walks in flight: counted from just before a walk's first
/// list traversal to its end, so that a dying node can tell that no walker
/// can be inside its sealed list (see `ChildList::drain`).
#[cfg(not(loom))]
fn walks() -> &'static std::sync::atomic::AtomicUsize {
    static WALKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    &WALKS
}

#[cfg(loom)]
fn walks() -> &'static loom::sync::atomic::AtomicUsize {
    loom::lazy_static! {
        static ref WALKS: loom::sync::atomic::AtomicUsize = loom::sync::atomic::AtomicUsize::new(0);
    }
    &WALKS
}

/// The pin of a cancellation walk, taken lazily, which also counts the walk
/// in `walks()` while it lasts.
pub(crate) struct WalkGuard {
    pin: LazyGuard,
    counted: bool,
}

impl WalkGuard {
    pub(crate) fn new() -> Self {
        WalkGuard {
            pin: LazyGuard::new(),
            counted: false,
        }
    }

    /// Pins and counts the walk (once), before it traverses a list.
    ///
    /// The walker's half of a store-buffering handshake with
    /// [`no_walk_in_flight`]: SeqCst increment, then a SeqCst fence before
    /// any list load. Either the dying thread's load sees the increment, or
    /// every list load of this walk sees the mark the dying node set on
    /// itself before its fence, so the walk never enters its list.
    pub(crate) fn traverse(&mut self) -> &Guard {
        if !self.counted {
            self.counted = true;
            walks().fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
        self.pin.get()
    }

    /// The pin alone, for removals (sweeps announce themselves on the list).
    pub(crate) fn pin(&mut self) -> &mut LazyGuard {
        &mut self.pin
    }
}

impl Drop for WalkGuard {
    fn drop(&mut self) {
        if self.counted {
            // Release: every access of the walk happens before a dying
            // thread's Acquire load that reads the count back at zero.
            walks().fetch_sub(1, Ordering::Release);
        }
    }
}

/// True if no cancellation walk is in flight, for a dying node that has
/// marked itself in its parent's list (see [`WalkGuard::traverse`]). A walk
/// that starts later cannot enter the node's list: it sees the mark.
pub(crate) fn no_walk_in_flight() -> bool {
    fence(Ordering::SeqCst);
    // Acquire (via SeqCst): reading zero synchronises with every walk's
    // Release decrement (a release sequence of read-modify-writes).
    walks().load(Ordering::SeqCst) == 0
}

/// An epoch pin taken on first use: paths that usually need no pin (a
/// derive-then-drop, a cancel with no children) never pay for one.
pub(crate) struct LazyGuard(Option<Guard>);

impl LazyGuard {
    pub(crate) fn new() -> Self {
        LazyGuard(None)
    }

    /// The pin, taken now if not yet.
    pub(crate) fn get(&mut self) -> &Guard {
        self.0.get_or_insert_with(pin)
    }
}

/// An `UnsafeCell` with loom's closure-based access API, so loom can check
/// that no two threads touch the cell at once.
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(
    #[cfg(not(loom))] std::cell::UnsafeCell<T>,
    #[cfg(loom)] loom::cell::UnsafeCell<T>,
);

impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        #[cfg(not(loom))]
        return UnsafeCell(std::cell::UnsafeCell::new(value));
        #[cfg(loom)]
        return UnsafeCell(loom::cell::UnsafeCell::new(value));
    }

    /// Runs `f` with a raw pointer to the contents.
    ///
    /// The caller is responsible for the aliasing rules when dereferencing
    /// the pointer; loom checks them in models.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(loom))]
        return f(self.0.get());
        #[cfg(loom)]
        return self.0.with_mut(f);
    }
}

/// Spins politely in a CAS retry loop (a plain hint outside loom, a yield
/// to the scheduler under loom so a model cannot spin forever).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
