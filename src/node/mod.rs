//! The context tree's nodes: layout, reference counting and death.
//!
//! Every derived context is one heap node. All node types start with the
//! same [`Header`] (`#[repr(C)]`, first field), so a `NonNull<Header>` can
//! point at any of them and `Header::kind` says which one it is.
//!
//! Two counts live in the header:
//! - `refs` counts *observers*: handles ([`raw::RawContext`], hence
//!   `Context` clones and `Done` futures), `CancelHandle`s (and guards),
//!   child nodes (each child holds its parent), pending `after_func`
//!   callbacks, and a timer that is firing. When it
//!   reaches zero the node *dies*: user data (values, causes) is dropped at
//!   once and the node leaves its parent's list.
//! - `claims` counts who may still touch the node's *memory*: one for
//!   "alive" (released at death) and one per list the node is linked in
//!   (released by whoever unlinks it). The memory is freed through the epoch
//!   when the last claim goes (invariant 5).
//!
//! The numbered invariants are listed in `docs/DESIGN.md`.

pub(crate) mod cache;
pub(crate) mod callback;
pub(crate) mod cancel;
pub(crate) mod children;
pub(crate) mod derive;
pub(crate) mod raw;
pub(crate) mod state;
pub(crate) mod timer_glue;
pub(crate) mod values;
pub(crate) mod wait;

use std::any::{Any, TypeId};
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::time::Instant;

use self::children::{ChildList, Link};
use self::raw::RawContext;
use self::state::{Snapshot, StateWord};
use crate::error::Cause;
use crate::sync::{
    AtomicPtr, AtomicU16, AtomicU32, AtomicU64, Guard, LazyGuard, Ordering, UnsafeCell,
};

/// What a node is. Stored once, before the node is published.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Kind {
    /// `with_cancel` ([`CancelNode`]).
    Cancel,
    /// `with_deadline` / `with_timeout` ([`DeadlineNode`]).
    Deadline,
    /// `merge` ([`MergeNode`]).
    Merge,
    /// `with_value` ([`ValueNode`]).
    Value,
    /// `without_cancel` (a bare [`Header`]).
    Detached,
    /// The second list entry of a merge ([`ForwardNode`]).
    Forward,
    /// An `after_func` registration ([`callback::CallbackNode`]).
    Callback,
    /// The waiter event of a node ([`wait::WaitersNode`]).
    Waiters,
}

/// Header flag: the root of this node's chain is `todo()` (`RawContext::root(true)`).
pub(crate) const FLAG_TODO: u8 = 0b01;
/// Header flag: the node was pushed onto its parent's list.
pub(crate) const FLAG_LINKED: u8 = 0b10;

/// The common prefix of every node.
#[repr(C)]
pub(crate) struct Header {
    /// Observers (see the module docs). Unused (0) for list-only entries.
    pub(crate) refs: AtomicU32,
    /// Memory claims (see the module docs).
    pub(crate) claims: AtomicU16,
    pub(crate) kind: Kind,
    /// `FLAG_*` bits, written before the node is published, then read-only.
    pub(crate) flags: u8,
    /// Link in the owner's children list (list entries only).
    pub(crate) next: Link,
    /// Strong reference to the parent node (`None` under a root).
    pub(crate) parent: Option<NonNull<Header>>,
    /// Nearest strict ancestor that is a value or merge node: value lookup
    /// skips every other layer (invariant 7).
    pub(crate) up_values: Option<NonNull<Header>>,
    /// Under loom, nodes are not deallocated but flagged here, so that a
    /// list traversal reaching a freed entry fails the model (loom itself
    /// does not see use-after-free). A std atomic: no scheduling point.
    #[cfg(loom)]
    pub(crate) freed: std::sync::atomic::AtomicBool,
}

impl Header {
    /// Fails the loom model if this node was already freed.
    #[inline]
    pub(crate) fn assert_not_freed(&self) {
        #[cfg(loom)]
        assert!(
            !self.freed.load(std::sync::atomic::Ordering::SeqCst),
            "use after free: a list traversal reached a freed entry"
        );
    }
}

/// A cancellable node (`with_cancel`); also the prefix of deadline and merge
/// nodes. 64 bytes on 64-bit targets.
#[repr(C)]
pub(crate) struct CancelNode {
    pub(crate) header: Header,
    pub(crate) state: StateWord,
    pub(crate) children: ChildList,
    /// The lazily created waiter entry (also linked in `children`).
    pub(crate) waiters: AtomicPtr<wait::WaitersNode>,
}

/// `with_deadline`: a cancel node with a timer.
#[repr(C)]
pub(crate) struct DeadlineNode {
    pub(crate) cancel: CancelNode,
    pub(crate) deadline: Instant,
    /// The armed timer's id bits; only read or written under the wheel lock.
    pub(crate) timer: AtomicU64,
    /// The cause given to `with_deadline_cause`; taken when the node dies.
    pub(crate) cause: UnsafeCell<Option<Cause>>,
}

/// `merge`: a cancel node linked under `a` (its parent) and, through its
/// forwarder, under `b`.
#[repr(C)]
pub(crate) struct MergeNode {
    pub(crate) cancel: CancelNode,
    /// The second parent (`b`), held strongly; taken when the node dies.
    pub(crate) other: ManuallyDrop<RawContext>,
    /// The entry in `b`'s scope's list, if any.
    pub(crate) forwarder: Option<NonNull<ForwardNode>>,
    /// `min(a.deadline(), b.deadline())`, computed at creation.
    pub(crate) deadline: Option<Instant>,
}

/// `with_value`.
#[repr(C)]
pub(crate) struct ValueNode {
    pub(crate) header: Header,
    /// Nearest cancellable ancestor (what `is_done` reads).
    pub(crate) scope: Option<NonNull<CancelNode>>,
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) value: Box<dyn Any + Send + Sync>,
}

/// The entry a merge node puts in its second parent's list.
#[repr(C)]
pub(crate) struct ForwardNode {
    pub(crate) header: Header,
    pub(crate) target: NonNull<CancelNode>,
}

// SAFETY: nodes are shared between threads by design; every field that is
// written after publication is an atomic or an `UnsafeCell` whose accesses
// are serialised by the protocol documented at its use; user data inside is
// `Send + Sync` (values, causes) or `Send` and only touched by one thread at
// a time (callbacks).
unsafe impl Send for Header {}
// SAFETY: see above.
unsafe impl Sync for Header {}

impl Header {
    pub(crate) fn new(kind: Kind, refs: u32, claims: u16, flags: u8) -> Header {
        Header {
            refs: AtomicU32::new(refs),
            claims: AtomicU16::new(claims),
            kind,
            flags,
            next: Link::new(),
            parent: None,
            up_values: None,
            #[cfg(loom)]
            freed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl CancelNode {
    pub(crate) fn new(header: Header, initial: Snapshot) -> CancelNode {
        CancelNode {
            header,
            state: StateWord::new(initial),
            children: if initial.is_done() {
                ChildList::new_sealed()
            } else {
                ChildList::new()
            },
            waiters: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

/// Views a header as the cancel node it starts, if it is one.
#[inline]
pub(crate) fn as_cancel(h: NonNull<Header>) -> Option<NonNull<CancelNode>> {
    // SAFETY: `kind` is immutable after publication; the caller holds the
    // node (a reference or a pin).
    match unsafe { h.as_ref() }.kind {
        Kind::Cancel | Kind::Deadline | Kind::Merge => Some(h.cast()),
        _ => None,
    }
}

/// The nearest cancellable ancestor-or-self: whose state `is_done` reads
/// and whose list a child registers in.
#[inline]
pub(crate) fn scope_of(h: NonNull<Header>) -> Option<NonNull<CancelNode>> {
    // SAFETY: the caller holds the node; kinds are immutable.
    match unsafe { h.as_ref() }.kind {
        Kind::Cancel | Kind::Deadline | Kind::Merge => Some(h.cast()),
        // SAFETY: the kind says this is a `ValueNode`.
        Kind::Value => unsafe { h.cast::<ValueNode>().as_ref() }.scope,
        _ => None,
    }
}

/// A counted reference to a node's observers (`refs`).
pub(crate) struct NodeRef(NonNull<Header>);

// SAFETY: see `Header`'s impls: nodes are designed to be shared.
unsafe impl Send for NodeRef {}
// SAFETY: as above.
unsafe impl Sync for NodeRef {}

impl NodeRef {
    /// Takes over one already counted reference.
    ///
    /// # Safety
    /// `h` is a live node and the caller gives up one counted reference.
    pub(crate) unsafe fn from_raw(h: NonNull<Header>) -> NodeRef {
        NodeRef(h)
    }

    /// Gives up ownership of the counted reference without releasing it.
    pub(crate) fn into_raw(self) -> NonNull<Header> {
        ManuallyDrop::new(self).0
    }

    #[inline]
    pub(crate) fn ptr(&self) -> NonNull<Header> {
        self.0
    }

    #[inline]
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: we hold a reference, so the node is alive.
        unsafe { self.0.as_ref() }
    }

    /// Adds a reference to a node the caller can prove alive.
    ///
    /// # Safety
    /// `h` is alive for the duration of the call (the caller holds a
    /// reference to it or to a descendant).
    pub(crate) unsafe fn acquire(h: NonNull<Header>) -> NodeRef {
        // Relaxed: like `Arc::clone`, a new reference is made from an
        // existing one, which already orders everything it needs.
        // SAFETY: alive by the caller's contract.
        let old = unsafe { h.as_ref() }.refs.fetch_add(1, Ordering::Relaxed);
        if old >= u32::MAX / 2 {
            // Like `Arc`: billions of live handles to one node mean leaked
            // handles; wrapping around would free a node in use.
            std::process::abort();
        }
        NodeRef(h)
    }

    /// Adds a reference unless the node is already dead (refs == 0): how
    /// the timer reaches a node it does not own.
    ///
    /// # Safety
    /// `h`'s memory is valid (the caller holds a claim, a pin or the lock
    /// that keeps it from being freed).
    pub(crate) unsafe fn try_acquire(h: NonNull<Header>) -> Option<NodeRef> {
        // SAFETY: valid by the caller's contract.
        let refs = &unsafe { h.as_ref() }.refs;
        let mut n = refs.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return None;
            }
            // Acquire on success: pairs with the Release of the decrements
            // so we see the node as its last users left it. Never from 0:
            // a dead node stays dead (invariant 8).
            match refs.compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Some(NodeRef(h)),
                Err(actual) => n = actual,
            }
        }
    }
}

impl Clone for NodeRef {
    #[inline]
    fn clone(&self) -> Self {
        // SAFETY: we hold a reference.
        unsafe { NodeRef::acquire(self.0) }
    }
}

impl Drop for NodeRef {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own one counted reference.
        unsafe { release(self.0) }
    }
}

/// Releases one observer reference; when it was the last, the node dies,
/// and so on up the chain (see [`release_last`]).
///
/// # Safety
/// The caller owns one counted reference to `h`.
#[inline]
pub(crate) unsafe fn release(h: NonNull<Header>) {
    // SAFETY: forwarded.
    if unsafe { drop_ref(h) } {
        // SAFETY: we took the count to zero.
        unsafe { release_last(h) };
    }
}

/// Drops one reference; true if it was the last.
///
/// # Safety
/// The caller owns one counted reference to `h`.
#[inline]
unsafe fn drop_ref(h: NonNull<Header>) -> bool {
    // Release: our uses of the node happen before its death. The thread
    // that sees zero acquires in `release_last`.
    // SAFETY: we own a reference, so the node is alive.
    unsafe { h.as_ref() }.refs.fetch_sub(1, Ordering::Release) == 1
}

/// The last reference to `h` is gone: `h` dies, then the parents it held
/// are released, and so on. Iterative: a chain of any length is released in
/// constant stack space.
///
/// # Safety
/// `refs` of `h` just reached zero on this thread.
#[inline(never)]
unsafe fn release_last(h: NonNull<Header>) {
    let mut guard = LazyGuard::new();
    // Only merges release two parents; the stack stays empty otherwise.
    let mut pending: Vec<NonNull<Header>> = Vec::new();
    let mut next = Some(h);
    while let Some(h) = next.take().or_else(|| pending.pop()) {
        // Acquire load rather than an Acquire fence (as `Arc` does under
        // ThreadSanitizer, which does not model fences): it reads our own
        // decrement, which continues the release sequences of every earlier
        // decrement, so the dying thread sees every use of the node.
        // SAFETY: still alive: we are its last user.
        let _ = unsafe { h.as_ref() }.refs.load(Ordering::Acquire);
        // SAFETY: refs reached zero: we are the node's only user and it
        // dies exactly once (invariant 8).
        let [first, second] = unsafe { die(h, &mut guard) };
        // SAFETY: the dead node held one reference to each parent.
        next = first.filter(|&p| unsafe { drop_ref(p) });
        // SAFETY: as above.
        pending.extend(second.filter(|&p| unsafe { drop_ref(p) }));
    }
}

/// The node's observers are gone: drop its user data, leave the lists it is
/// in, and give up the "alive" claim. Returns the parents whose references
/// it held (the caller releases them).
///
/// # Safety
/// `refs` of `h` just reached zero on this thread.
unsafe fn die(h: NonNull<Header>, guard: &mut LazyGuard) -> [Option<NonNull<Header>>; 2] {
    // SAFETY: the node is alive until we release the alive claim.
    let header = unsafe { h.as_ref() };
    let parent = header.parent;
    match header.kind {
        Kind::Value | Kind::Detached => {
            // Never in a list and unknown to the timer: nobody else can reach
            // it, so free it now (this drops the value promptly).
            // SAFETY: the last reference is gone and no list links it.
            unsafe { free_with_claims(h) };
            [parent, None]
        }
        Kind::Cancel | Kind::Deadline | Kind::Merge => {
            let node = h.cast::<CancelNode>();
            // SAFETY: kind checked.
            let c = unsafe { node.as_ref() };
            let mut other = None;
            if header.kind == Kind::Deadline {
                // SAFETY: kind checked.
                let d = unsafe { node.cast::<DeadlineNode>().as_ref() };
                timer_glue::disarm(d);
                // SAFETY: dead: no handle can read the cause any more and a
                // timer that fired held a reference (invariant 8).
                drop(d.cause.with_mut(|c| unsafe { (*c).take() }));
            }
            if header.kind == Kind::Merge {
                // SAFETY: kind checked; dead, so `other` is ours to take.
                let m = unsafe { node.cast::<MergeNode>().as_ref() };
                if let Some(f) = m.forwarder {
                    // SAFETY: we hold the owner claim on the forwarder and
                    // `other` (which keeps its list's owner alive) is still
                    // held until after this call.
                    unsafe { derive::leave_forwarder(f, &m.other, guard) };
                    // SAFETY: the merge node's claim on its forwarder; any
                    // traverser that may still see it holds the list's claim
                    // or was deferred behind (invariant 5).
                    unsafe { release_claim(f.cast()) };
                }
                // SAFETY: taken exactly once, at death.
                let ctx = unsafe { std::ptr::read(&*m.other) };
                other = ctx.into_node_ptr();
            }
            // The record of an outcome this node owns: every node that could
            // borrow it is a descendant, and all of them are dead (they held
            // references to us) (invariant 2).
            // SAFETY: last use of the owned record.
            unsafe { c.state.load().free_if_owned() };
            // SAFETY: our parent reference is still held.
            let list_claim_free = unsafe { leave_parent(h, guard, true) };
            // The waiter entry is the one entry that does not hold a
            // reference to us: retire it with us.
            let waiters = NonNull::new(c.waiters.load(Ordering::Acquire));
            if let Some(w) = waiters {
                // SAFETY: we hold the owner's claim on it.
                unsafe { w.as_ref() }.header.next.mark();
            }
            // Everything left in our own list is now marked (every live
            // entry holds a reference to us): unlink it all.
            // SAFETY: we are the owner's dying thread.
            unsafe { c.children.drain(guard) };
            if let Some(w) = waiters {
                // SAFETY: the owner's claim on its waiter entry.
                unsafe { release_claim(w.cast()) };
            }
            // The alive claim, and the list's when it was handed back to us
            // (by `leave_parent` now, or by the detach after a cancel). A
            // traverser that can still see us keeps the list's claim, or its
            // release was deferred behind it (invariant 5).
            let ours = if list_claim_free || header.next.claim_returned() {
                2
            } else {
                1
            };
            // SAFETY: we own `ours` claims on `h` (see above).
            unsafe { release_claims(h, ours) };
            [parent, other]
        }
        Kind::Forward | Kind::Callback | Kind::Waiters => {
            debug_assert!(false, "list-only entries have no observers");
            [None, None]
        }
    }
}

/// Marks `h`'s link in its parent's scope list and unlinks it if cheap
/// (invariant 6). No-op if it was never linked or is already marked.
///
/// With `keep_claim`, returns true if the list's claim on `h` is handed
/// back to the caller instead of being released (unlinked at the head with
/// no sweep running): a dying node then releases both of its claims with
/// one operation.
///
/// # Safety
/// The caller holds `h`'s parent (directly or through `h`'s reference).
pub(crate) unsafe fn leave_parent(
    h: NonNull<Header>,
    guard: &mut LazyGuard,
    keep_claim: bool,
) -> bool {
    // SAFETY: the caller keeps `h` valid.
    let header = unsafe { h.as_ref() };
    if header.flags & FLAG_LINKED == 0 || !header.next.mark() {
        return false;
    }
    let owner = header.parent.and_then(scope_of);
    match owner {
        // SAFETY: the parent (hence its scope) is held by the caller; `h`
        // is linked there and now marked.
        Some(owner) => unsafe { owner.as_ref().children.remove_marked(h, guard, keep_claim) },
        None => false,
    }
}

/// Releases one memory claim now; the last one frees the node.
///
/// Freeing at once is sound because every claim that a traverser may be
/// relying on is released only after that traverser unpinned
/// (`release_claims_later`), so when the count reaches zero nobody can reach
/// the node (invariant 5).
///
/// # Safety
/// The caller owns one claim on `h` and no traverser relies on it.
pub(crate) unsafe fn release_claim(h: NonNull<Header>) {
    // SAFETY: forwarded.
    unsafe { release_claims(h, 1) };
}

/// Releases `n` claims at once (see [`release_claim`]).
///
/// # Safety
/// The caller owns `n` claims on `h` and no traverser relies on them.
pub(crate) unsafe fn release_claims(h: NonNull<Header>, n: u16) {
    count_claims(-isize::from(n as i16));
    // AcqRel: as in `drop_claim`.
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
                Batch::One(p) => drop_claim(p.0),
                Batch::Many(v) => v.into_iter().for_each(|p| drop_claim(p.0)),
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

/// # Safety
/// The caller owns one claim on `h` (already taken off the count).
unsafe fn drop_claim(h: NonNull<Header>) {
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

/// Nodes allocated and not yet freed (given back to the allocator or to
/// the thread's block cache), process-wide; loom and debug builds only.
/// Unlike [`LIVE_CLAIMS`], a node whose last claim sits in an epoch bag
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

#[inline]
#[cfg_attr(not(any(loom, debug_assertions)), allow(unused_variables))]
fn count_claims(delta: isize) {
    #[cfg(any(loom, debug_assertions))]
    LIVE_CLAIMS.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
}

/// Allocates a node (every node kind goes through here and [`free`]).
/// 64-byte nodes come from the thread's block cache (`cache`).
pub(crate) fn alloc<T>(node: T) -> NonNull<T> {
    let node = if cache::serves::<T>() {
        let block = cache::alloc().cast::<T>();
        // SAFETY: a fresh block with `T`'s size and alignment, ours alone.
        unsafe { block.as_ptr().write(node) };
        block
    } else {
        NonNull::from(Box::leak(Box::new(node)))
    };
    // SAFETY: every node type starts with a `Header` (`#[repr(C)]`).
    let claims = unsafe { node.cast::<Header>().as_ref() }
        .claims
        .load(Ordering::Relaxed);
    count_claims(isize::from(claims as i16));
    count_allocated(1);
    node
}

/// Sets the claims of a node that is not published yet.
pub(crate) fn set_claims(header: &Header, claims: u16) {
    // Relaxed load and store, no read-modify-write: the node is not
    // published yet (the publishing CAS orders it).
    let old = header.claims.load(Ordering::Relaxed);
    header.claims.store(claims, Ordering::Relaxed);
    count_claims(isize::from(claims as i16) - isize::from(old as i16));
}

/// Frees a node nobody else can reach, now, whatever claims it still has
/// (never published, or never linked and dead).
///
/// # Safety
/// As for [`free`].
pub(crate) unsafe fn free_with_claims(h: NonNull<Header>) {
    // SAFETY: valid until freed below.
    let claims = unsafe { h.as_ref() }.claims.load(Ordering::Relaxed);
    count_claims(-isize::from(claims as i16));
    // SAFETY: forwarded.
    unsafe { free(h) };
}

/// Frees a node's memory, running the drop glue of its concrete type.
///
/// # Safety
/// Nobody can reach `h` any more, and `h` came from [`alloc`] of the type
/// its kind names.
unsafe fn free(h: NonNull<Header>) {
    count_allocated(-1);
    #[cfg(loom)]
    {
        // SAFETY: valid until now (under loom the memory is never given
        // back, see `dispose`).
        let header = unsafe { h.as_ref() };
        header.assert_not_freed();
        header
            .freed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // SAFETY: per the contract, the kind names the allocation's type.
    unsafe {
        match h.as_ref().kind {
            Kind::Cancel => dispose::<CancelNode>(h),
            Kind::Deadline => dispose::<DeadlineNode>(h),
            Kind::Merge => dispose::<MergeNode>(h),
            Kind::Value => dispose::<ValueNode>(h),
            Kind::Detached => dispose::<Header>(h),
            Kind::Forward => {
                let target = h.cast::<ForwardNode>().as_ref().target;
                dispose::<ForwardNode>(h);
                // The forwarder's claim on its merge node (uncounted, see
                // `derive::merge`): a walker that reached the merge through
                // the forwarder relied on it, and nobody can reach the
                // forwarder any more (invariant 5).
                drop_claim(target.cast());
            }
            Kind::Callback => dispose::<callback::CallbackNode>(h),
            Kind::Waiters => dispose::<wait::WaitersNode>(h),
        }
    }
}

/// Drops a node of type `T` and gives its memory back. Under loom the
/// memory is kept (leaked) so that `Header::freed` stays readable and a
/// late traverser fails the model instead of reading freed memory unseen.
///
/// # Safety
/// As for [`free`]; `T` is the node's type.
unsafe fn dispose<T>(h: NonNull<Header>) {
    #[cfg(not(loom))]
    if cache::serves::<T>() {
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

/// Used by compile-time size checks in tests.
#[allow(dead_code)]
pub(crate) const CANCEL_NODE_SIZE: usize = std::mem::size_of::<CancelNode>();
