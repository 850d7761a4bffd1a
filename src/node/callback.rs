//! `after_func` registrations: list entries of their context's scope.
//!
//! Each entry has one atomic `state` that the canceller and `stop()` race
//! on: `PENDING → RUNNING` (the canceller won: it runs `f`) or
//! `PENDING → STOPPED` (`stop()` won: it drops `f`). Exactly one
//! compare-exchange succeeds (invariant 11). While pending, the entry holds
//! a reference to its owner, so a registered callback keeps its node linked
//! even if every handle was dropped.
//!
//! Claims: one for the `AfterFunc` handle, one for the owner's list.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use super::children::HeadClaim;
use super::{release_claims, CancelNode, Header, Kind, NodeRef, FLAG_LINKED};
use crate::sync::{AtomicU8, LazyGuard, Ordering, UnsafeCell};

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;
const RAN: u8 = 3;

type Callback = Box<dyn FnOnce() + Send + 'static>;

#[repr(C)]
pub(crate) struct CallbackNode {
    header: Header,
    state: AtomicU8,
    /// The scope the entry is registered with; a counted reference while
    /// `PENDING` and linked.
    owner: Option<NonNull<CancelNode>>,
    /// Taken by whichever side wins `state`.
    f: UnsafeCell<Option<Callback>>,
}

/// Registers `f` on `scope` (`None`: a context that is never done). Returns
/// the entry (with the handle's claim), or `None` if `f` already ran
/// because the scope is done.
pub(crate) fn register(
    scope: Option<NonNull<CancelNode>>,
    f: Callback,
) -> Option<NonNull<CallbackNode>> {
    let node = CallbackNode {
        header: Header::new(Kind::Callback, 0, 1, 0),
        state: AtomicU8::new(PENDING),
        owner: None,
        f: UnsafeCell::new(Some(f)),
    };
    let node = super::alloc(node);
    let Some(scope) = scope else {
        // Never done: nothing to link; `stop()` still answers true once.
        return Some(node);
    };
    // SAFETY: the caller's context keeps `scope` alive.
    let s = unsafe { scope.as_ref() };
    if !s.state.load().is_done() {
        // SAFETY: unpublished: plain writes.
        unsafe {
            let n = &mut *node.as_ptr();
            n.header.flags = FLAG_LINKED;
            super::set_claims(&n.header, 2);
            n.owner = Some(NodeRef::acquire(scope.cast()).into_raw().cast());
        }
        // SAFETY: valid and unpublished, claims include the list's.
        if unsafe { s.children.push(node.cast()) }.is_ok() {
            // The push/cancel handshake (see `ChildList::push`): the scope
            // may be done with its list left open, and then no walker may
            // ever see this entry. Race for it like a walker would.
            // SAFETY: linked: its claims keep it valid; the handle's claim
            // is ours.
            if s.state.load_after_push().is_done() && claim_for_run(unsafe { node.as_ref() }) {
                let mut panic = None;
                // SAFETY: we won the run claim.
                unsafe {
                    run_claimed(node, &mut |f| {
                        if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
                            panic = Some(p);
                        }
                    })
                };
                if let Some(p) = panic {
                    resume_unwind(p);
                }
            }
            return Some(node);
        }
        // Sealed: the scope is done. Undo (still unpublished).
        // SAFETY: unpublished.
        unsafe {
            let n = &mut *node.as_ptr();
            n.header.flags = 0;
            super::set_claims(&n.header, 1);
            if let Some(owner) = n.owner.take() {
                drop(NodeRef::from_raw(owner.cast()));
            }
        }
    }
    // Done: run `f` now, on the calling thread.
    // SAFETY: unpublished, so the entry and `f` are ours.
    let f = unsafe { (*node.as_ptr()).f.with_mut(|f| (*f).take()) };
    // SAFETY: never published: nobody else can reach it.
    unsafe { super::free_unreachable(node.cast()) };
    if let Some(f) = f {
        f();
    }
    None
}

/// The canceller's side of the race. True if it must run the callback.
pub(crate) fn claim_for_run(cb: &CallbackNode) -> bool {
    // AcqRel: Acquire to see `f` as registered; Release so `stop()` losing
    // sees that the callback is taken.
    cb.state
        .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// Runs a callback whose run claim we won, then retires the entry and the
/// reference it held on its owner.
///
/// # Safety
/// `claim_for_run` returned true for `cb` on this thread, and the entry's
/// claims keep it valid (the owner's list holds one until it is unlinked,
/// which needs the mark we add below).
pub(crate) unsafe fn run_claimed(cb: NonNull<CallbackNode>, run: &mut dyn FnMut(Callback)) {
    // SAFETY: valid per the contract.
    let c = unsafe { cb.as_ref() };
    // SAFETY: winning the state race gives exclusive access to `f`.
    let f = c.f.with_mut(|f| unsafe { (*f).take() });
    if let Some(f) = f {
        run(f);
    }
    // Release: pairs with `stop()`'s Acquire failure path.
    c.state.store(RAN, Ordering::Release);
    // The owner is done. Its list is sealed (`remove_marked` does nothing:
    // the owner unlinks the entry when it dies), unless it was empty when
    // walked and this entry came later (see `ChildList::push`).
    leave_owner(c);
    if let Some(owner) = c.owner {
        // SAFETY: the reference the pending entry held.
        drop(unsafe { NodeRef::from_raw(owner.cast()) });
    }
}

/// `AfterFunc::stop`.
pub(crate) fn stop(cb: &CallbackNode) -> bool {
    // AcqRel: see `claim_for_run`.
    if cb
        .state
        .compare_exchange(PENDING, STOPPED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return false;
    }
    // SAFETY: winning the state race gives exclusive access to `f`.
    drop(cb.f.with_mut(|f| unsafe { (*f).take() }));
    if let Some(owner) = cb.owner {
        leave_owner(cb);
        // SAFETY: the reference the pending entry held.
        drop(unsafe { NodeRef::from_raw(owner.cast()) });
    }
    true
}

/// Drops the `AfterFunc` handle's claim.
///
/// # Safety
/// Called once per handle.
pub(crate) unsafe fn release_handle(cb: NonNull<CallbackNode>) {
    // SAFETY: the handle's claim keeps the entry valid.
    let c = unsafe { cb.as_ref() };
    if c.owner.is_none() {
        // Never linked (a context that is never done): the handle is the
        // only way to reach the entry, so drop `f` now rather than when the
        // epoch frees the memory.
        // SAFETY: unlinked, so no other thread can touch `f`.
        drop(c.f.with_mut(|f| unsafe { (*f).take() }));
    }
    // SAFETY: the handle's claim; a traverser relies on the list's claim,
    // not on this one (invariant 5).
    unsafe { release_claims(cb.cast(), 1) };
}

/// Marks the entry and takes it out of its owner's list (if linked).
fn leave_owner(c: &CallbackNode) {
    if let Some(owner) = c.owner {
        if c.header.next.mark() {
            // SAFETY: the pending entry (whose reference the caller has not
            // released yet) holds the owner, so the list is alive; the entry
            // is linked there and now marked. `Release`: nothing comes back.
            let _ = unsafe {
                owner.as_ref().children.remove_marked(
                    NonNull::from(&c.header),
                    &mut LazyGuard::new(),
                    HeadClaim::Release,
                )
            };
        }
    }
}
