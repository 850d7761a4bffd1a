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
pub(crate) use std::sync::atomic::{
    fence, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
};

pub(crate) use std::sync::atomic::Ordering;

/// The loom stand-in of the timer's lock (`node::timer_glue`, models of
/// movable deadlines): loom's mutex, one per model execution.
#[cfg(loom)]
pub(crate) use loom::{lazy_static, sync::Mutex as LoomMutex};

/// Threads, for the park/unpark of blocking waits (`node::wait`): loom's
/// under loom, so a model explores that handshake.
#[cfg(loom)]
pub(crate) use loom::thread;
#[cfg(not(loom))]
pub(crate) use std::thread;

// The timer's firing pool (`timer::firing`), modelled under loom: its shared
// queue and the workers' sleep.
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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

/// The calling thread's shard among `count` (the timer's wheels, a
/// contended parent's proxies). On Linux the CPU the thread runs on
/// (`sched_getcpu`, a read of the thread's rseq area on glibc ≥ 2.35), so
/// two threads that run at the same moment take different shards, whatever
/// threads came and went before (round robin per thread, the fallback, let
/// two short-lived threads share one shard half the time). Only spreads
/// work: any value below `count` is correct, so it is not modelled.
pub(crate) fn thread_shard(count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    #[cfg(all(target_os = "linux", not(loom), not(miri)))]
    {
        // SAFETY: no preconditions; returns -1 if the CPU is unknown.
        let cpu = unsafe { libc::sched_getcpu() };
        if let Ok(cpu) = usize::try_from(cpu) {
            return cpu % count;
        }
    }
    round_robin_shard(count)
}

/// A shard picked round robin on the thread's first call, then kept.
fn round_robin_shard(count: usize) -> usize {
    use std::cell::Cell;
    /// Round-robin source of threads' shards.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD
        .try_with(|s| {
            let mine = s.get();
            if mine < count {
                return mine;
            }
            // Relaxed: only spreads threads; any value is correct.
            let mine = NEXT.fetch_add(1, Ordering::Relaxed) % count;
            s.set(mine);
            mine
        })
        // During thread-local destruction: any shard will do.
        .unwrap_or(0)
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

/// Declares `fn $name() -> &'static AtomicUsize`, a process-wide counter
/// of the core (the walk count, `node::claims`): a plain `static` outside
/// loom; under loom, whose atomics cannot be `static`, one per model
/// execution (`loom::lazy_static!`).
macro_rules! global_usize {
    ($(#[$attr:meta])* fn $name:ident) => {
        $(#[$attr])*
        #[cfg(not(loom))]
        fn $name() -> &'static $crate::sync::AtomicUsize {
            static COUNT: $crate::sync::AtomicUsize = $crate::sync::AtomicUsize::new(0);
            &COUNT
        }

        $(#[$attr])*
        #[cfg(loom)]
        fn $name() -> &'static $crate::sync::AtomicUsize {
            loom::lazy_static! {
                static ref COUNT: $crate::sync::AtomicUsize = $crate::sync::AtomicUsize::new(0);
            }
            &COUNT
        }
    };
}
pub(crate) use global_usize;

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
