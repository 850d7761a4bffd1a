//! Memory claims and reclamation (invariant 5).
//!
//! `claims` counts who may still touch a node's *memory*: one for "alive"
//! (released at death) and one per list the node is linked in (released by
//! whoever unlinks it). The last claim frees the node: at once when no
//! traverser can rely on it, else through the epoch
//! ([`release_claims_later`]). The walk counter ([`WalkGuard`]) lets a
//! dying node tell that no cancellation walk can be inside its list.

use std::ptr::NonNull;

use super::alloc::free;
use super::Header;
use crate::sync::{fence, global_usize, Guard, LazyGuard, Ordering};

/// Releases `n` memory claims now; the last one frees the node.
///
/// Freeing at once is sound because every claim that a traverser may be
/// relying on is released only after that traverser unpinned
/// ([`release_claims_later`]), so when the count reaches zero nobody can
/// reach the node (invariant 5).
///
/// # Safety
/// The caller owns `n` claims on `h` and no traverser relies on them.
pub(crate) unsafe fn release_claims(h: NonNull<Header>, n: u16) {
    count_claims(-isize::from(n as i16));
    // AcqRel: as in `release_uncounted_claim`.
    // SAFETY: we hold claims, so the memory is valid.
    if unsafe { h.as_ref() }.claims.fetch_sub(n, Ordering::AcqRel) == n {
        // SAFETY: no claim is left: nobody can reach the node.
        unsafe { free(h) };
    }
}

/// Releases one memory claim on each of `nodes` once every thread pinned
/// now has unpinned: for claims a pinned traverser may still rely on (entries
/// unlinked from a list that others may be walking or sweeping). One
/// deferred function for the whole batch: a dying node that drains a large
/// list pays for one `defer`, not one per entry.
///
/// # Safety
/// The caller owns one claim on each node.
pub(crate) unsafe fn release_claims_later(nodes: Unlinked, guard: &Guard) {
    let batch = match nodes {
        Unlinked::None => return,
        Unlinked::One(h) => Batch::One(SendPtr(h)),
        Unlinked::Many(v) => Batch::Many(v.into_iter().map(SendPtr).collect()),
    };
    let len = batch.len();
    count_claims(-(len as isize));
    // SAFETY: the claims keep the nodes valid until the closure runs; it
    // runs once, after every thread pinned now has unpinned.
    unsafe {
        guard.defer_unchecked(move || {
            let batch = batch;
            match batch {
                Batch::One(p) => release_uncounted_claim(p.0),
                Batch::Many(v) => v.into_iter().for_each(|p| release_uncounted_claim(p.0)),
            }
        })
    };
    retention::deferred(len, guard);
}

/// Bounds the retired node memory a thread keeps out of reach of the other
/// threads' collections.
///
/// A deferred function sits in the deferring thread's local bag, which
/// crossbeam-epoch hands to the global queue only when it is full (64
/// functions) or when the thread flushes or exits: a thread that retired a
/// large batch and then went idle would keep every node of it allocated,
/// since no other thread can run its bag. So each thread counts the
/// entries it deferred since its last flush, and flushes (moving the bag
/// to the global queue, where any thread's collection runs it) once they
/// reach the threshold ([`FLUSH_AFTER`](retention::FLUSH_AFTER)). A thread
/// then keeps at most that many retired entries in its bag (invariant 6a in
/// docs/DESIGN.md). A flush only changes *when* crossbeam runs what it was
/// handed, never whether, so it cannot free early.
///
/// Under loom the count is a loom thread-local and the threshold is off
/// (`usize::MAX`) unless a model sets it with
/// `__private::loom_flush_after`: a flush adds a collection, and so
/// interleavings, to every model that defers; the retention model
/// (`loom-tests/tests/loom_retention.rs`) turns it on.
pub(crate) mod retention {
    use crate::sync::Guard;

    /// Entries a thread may keep deferred in its local bag.
    #[cfg(not(loom))]
    pub(super) const FLUSH_AFTER: usize = 64;

    /// Under loom: the threshold a model chose (see the module docs). A
    /// plain std atomic on purpose: it is configuration, written before
    /// the model runs, not a step of the modelled protocol.
    #[cfg(loom)]
    pub(crate) static FLUSH_AFTER: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(usize::MAX);

    #[inline]
    fn threshold() -> usize {
        #[cfg(not(loom))]
        return FLUSH_AFTER;
        // Relaxed: configuration set before `loom::model` starts.
        #[cfg(loom)]
        return FLUSH_AFTER.load(std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(not(loom))]
    std::thread_local! {
        static SINCE_FLUSH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    #[cfg(loom)]
    loom::thread_local! {
        static SINCE_FLUSH: std::cell::Cell<usize> = std::cell::Cell::new(0);
    }

    /// `n` more entries were deferred through `guard`.
    #[inline]
    pub(super) fn deferred(n: usize, guard: &Guard) {
        // `try_with`: a thread-local destructor may drop a context after
        // this key is gone; then flush each time (rare, and correct).
        let due = SINCE_FLUSH
            .try_with(|c| {
                let total = c.get().saturating_add(n);
                let due = total >= threshold();
                c.set(if due { 0 } else { total });
                due
            })
            .unwrap_or(true);
        if due {
            guard.flush();
        }
    }
}

/// Entries unlinked by one sweep, whose list claims are released together
/// (see [`release_claims_later`]). No allocation for zero or one entry.
#[derive(Default)]
pub(crate) enum Unlinked {
    #[default]
    None,
    One(NonNull<Header>),
    Many(Vec<NonNull<Header>>),
}

impl Unlinked {
    pub(crate) fn push(&mut self, h: NonNull<Header>) {
        *self = match std::mem::take(self) {
            Unlinked::None => Unlinked::One(h),
            Unlinked::One(first) => Unlinked::Many(vec![first, h]),
            Unlinked::Many(mut v) => {
                v.push(h);
                Unlinked::Many(v)
            }
        };
    }
}

enum Batch {
    One(SendPtr),
    Many(Vec<SendPtr>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::One(_) => 1,
            Batch::Many(v) => v.len(),
        }
    }
}

/// Releases one claim that is not counted in [`LIVE_CLAIMS`] (the deferred
/// half of [`release_claims_later`], which counted it; the forwarder's claim
/// on its merge node, never counted); the last one frees the node.
///
/// # Safety
/// The caller owns one claim on `h`, already taken off the count (or never
/// on it), and no traverser relies on it.
pub(super) unsafe fn release_uncounted_claim(h: NonNull<Header>) {
    // AcqRel: Release so our accesses happen before the free; Acquire so
    // the freeing thread sees everyone else's.
    // SAFETY: we hold a claim, so the memory is valid.
    if unsafe { h.as_ref() }.claims.fetch_sub(1, Ordering::AcqRel) == 1 {
        // SAFETY: no claim is left: nobody can reach the node.
        unsafe { free(h) };
    }
}

struct SendPtr(NonNull<Header>);
// SAFETY: the pointer is only used to drop a claim on a node.
unsafe impl Send for SendPtr {}

/// Memory claims not yet released (or handed to the epoch for release).
/// Loom models and debug tests check it returns to its starting value:
/// that proves the claim protocol frees every node, crossbeam-epoch being
/// trusted to run what it is handed.
#[cfg(any(loom, debug_assertions))]
pub(crate) static LIVE_CLAIMS: std::sync::atomic::AtomicIsize =
    std::sync::atomic::AtomicIsize::new(0);

#[inline]
#[cfg_attr(not(any(loom, debug_assertions)), allow(unused_variables))]
pub(super) fn count_claims(delta: isize) {
    #[cfg(any(loom, debug_assertions))]
    LIVE_CLAIMS.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
}

/// Sets the claims of a node that is not published yet.
pub(crate) fn set_claims(header: &Header, claims: u16) {
    // Relaxed load and store, no read-modify-write: the node is not
    // published yet (the publishing CAS orders it).
    let old = header.claims.load(Ordering::Relaxed);
    header.claims.store(claims, Ordering::Relaxed);
    count_claims(isize::from(claims as i16) - isize::from(old as i16));
}

// ---- the walk count (invariant 5) ---------------------------------------

global_usize! {
    /// Cancellation walks in flight: counted from just before a walk's first
    /// list traversal to its end, so that a dying node can tell that no
    /// walker can be inside its sealed list (see `ChildList::drain`).
    fn walks
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
