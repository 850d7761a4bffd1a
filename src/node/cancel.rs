//! The cancellation walk.
//!
//! `cancel` publishes the outcome in the node's state word (the
//! linearisation point of a cancel, invariant 1), then walks the subtree
//! with an explicit work list — never recursion, so a chain of any depth is
//! cancelled in constant stack space. For each node taken from the work
//! list it seals the node's children list (invariant 3), publishes the
//! borrowed outcome in every live child, wakes the node's waiters and
//! collects its pending callbacks.
//!
//! **Helping** (invariant 9): a child found already done (by its own
//! handle, its timer, another parent of a merge, or a concurrent canceller)
//! is still walked, with its own outcome, so every descendant is done when
//! `cancel` returns even if the thread that cancelled that child has not
//! finished its own walk.
//!
//! Wakers and callbacks run after the walk, with nothing internal held:
//! the wakers event-listener calls inside `Event::notify` only record their
//! wake-up in the walk's `WakeScope` (see `wait::wake_list`), performed once
//! the walk has dropped its pin. A panic in either does not stop the others:
//! the walk is finished first and the first panic is resumed at the end.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use super::callback::{self, CallbackNode};
use super::claims::WalkGuard;
use super::header::NodeView;
use super::state::Snapshot;
use super::wait::WakeScope;
use super::{as_cancel, link, timer_glue, CancelNode, Header, Kind, NodeRef};
use crate::error::{Cause, Error};
use crate::sync::LazyGuard;

/// Cancels `node` with `err` and `cause` (first cancellation wins) and
/// returns once the node and every descendant are done.
///
/// # Safety
/// The caller holds a reference to `node`.
pub(crate) unsafe fn cancel(node: NonNull<CancelNode>, err: Error, cause: Option<Cause>) {
    let done = Snapshot::new_owned(err, cause);
    // SAFETY: the caller holds the node.
    let word = match unsafe { node.as_ref() }.state.try_finish(done) {
        Ok(word) => word,
        Err(current) => {
            // Lost the race (or cancelled twice): our record was never
            // published. Still help, so the subtree is done on return,
            // unless a finished walk already guarantees it.
            // SAFETY: never published.
            unsafe { done.free_if_owned() };
            // SAFETY: the caller holds the node.
            if unsafe { node.as_ref() }.children.is_complete() {
                return;
            }
            current
        }
    };
    // SAFETY: forwarded.
    unsafe { walk(node, word) };
}

/// Makes `node` done with `word` (a borrowed outcome of an ancestor) and
/// walks it, as if that ancestor's walk had reached it.
///
/// # Safety
/// The caller holds a reference to `node` and keeps the owner of `word`'s
/// record alive through it.
pub(crate) unsafe fn finish_with(node: NonNull<CancelNode>, word: Snapshot) {
    // SAFETY: the caller holds the node.
    let word = match unsafe { node.as_ref() }.state.try_finish(word) {
        Ok(word) | Err(word) => word,
    };
    // SAFETY: forwarded.
    unsafe { walk(node, word) };
}

/// Collects the first panic of user code and keeps going.
#[derive(Default)]
struct Panics(Option<Box<dyn Any + Send>>);

impl Panics {
    fn run(&mut self, f: impl FnOnce()) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
            self.0.get_or_insert(payload);
        }
    }
}

/// Walks the subtree of `root`, which is done with `word`.
///
/// # Safety
/// The caller holds a reference to `root`.
unsafe fn walk(root: NonNull<CancelNode>, word: Snapshot) {
    // A cancel or deadline node with nothing in its list (the common leaf
    // cancel): disarm its timer, leave the parent's list, done. No second
    // list to leave, nothing to wake or call, and no seal (a later pusher
    // sees the state done, see `ChildList::push`).
    // SAFETY: the caller holds `root`.
    let r = unsafe { root.as_ref() };
    // SAFETY: held by the caller.
    let leaf_kind = match unsafe { Header::view(root.cast()) } {
        NodeView::Cancel(_) => true,
        NodeView::Deadline(d) => {
            timer_glue::disarm(d);
            true
        }
        _ => false,
    };
    if leaf_kind && r.children.is_empty_after_finish() {
        // SAFETY: held by the caller.
        unsafe { link::detach(root, &mut LazyGuard::new()) };
        return;
    }
    let mut panics = Panics::default();
    let mut callbacks: Vec<NonNull<CallbackNode>> = Vec::new();
    // The wake-ups of the waiters notified by the walk, performed once the
    // walk holds nothing (unless a scope is already open on this thread:
    // then that one performs them).
    let wakeups = WakeScope::open();
    {
        let mut guard = WalkGuard::new();
        // The root is taken first without allocating: a leaf cancel never
        // touches the heap.
        let mut first = Some((root, word));
        let mut work: Vec<(NonNull<CancelNode>, Snapshot)> = Vec::new();
        // Merge nodes are reachable along two paths; walk each once per
        // cancellation and detach them once the whole walk is over.
        let mut merges: Vec<NonNull<CancelNode>> = Vec::new();
        while let Some((node, word)) = first.take().or_else(|| work.pop()) {
            // `root` is held by the caller; every other node came from a list
            // we traversed pinned and counted (invariant 5).
            // SAFETY: valid as just said.
            let c = unsafe { node.as_ref() };
            // SAFETY: valid, as above.
            if let Some(d) = unsafe { Header::as_deadline(node.cast()) } {
                timer_glue::disarm(d);
            }
            // Made done (by us or by whoever we help) with a SeqCst
            // compare-exchange: an empty list needs no seal (see
            // `ChildList::push`).
            if c.children.is_empty_after_finish() || c.children.is_complete() {
                // Nothing below it, or its own finished walk covered the
                // whole subtree.
                continue;
            }
            let child_word = word.borrowed();
            // Pin and count the walk before the first read of any list head,
            // the root's included (invariant 5). The count is the walker's
            // half of the handshake with a dying node's immediate drain: a
            // node that dies after this point sees the walk and retires its
            // entries through the epoch, one that died before is seen marked
            // in its parent's list and never entered. A node reached through
            // a list read before the count (the root's, unpinned) could die,
            // see no walk and free its entries under us.
            let pinned = guard.traverse();
            let sealed = c.children.seal();
            if sealed.is_empty() {
                continue;
            }
            let mut visit = |child: NonNull<CancelNode>| {
                // SAFETY: reached while pinned.
                let cc = unsafe { child.as_ref() };
                if cc.header.kind == Kind::Merge {
                    if merges.contains(&child) {
                        return;
                    }
                    merges.push(child);
                }
                match cc.state.try_finish(child_word) {
                    Ok(w) | Err(w) => work.push((child, w)),
                }
            };
            // SAFETY: pinned and counted before the head was read, until the
            // end of the walk (see `Sealed::for_each`).
            unsafe {
                sealed.for_each(pinned, |entry: NonNull<Header>| {
                    match Header::view(entry) {
                        NodeView::Cancel(_) | NodeView::Deadline(_) | NodeView::Merge(_) => {
                            if let Some(child) = as_cancel(entry) {
                                visit(child);
                            }
                        }
                        NodeView::Forward(f) => visit(f.target),
                        NodeView::Callback(cb) => {
                            if callback::claim_for_run(cb) {
                                callbacks.push(entry.cast());
                            }
                        }
                        NodeView::Waiters(w) => {
                            // Only records the wake-ups, in `wakeups`.
                            panics.run(|| w.notify_all());
                        }
                        NodeView::Value(_) | NodeView::Detached(_) => {
                            debug_assert!(false, "not a list entry")
                        }
                    }
                })
            };
        }
        // Every node of the subtree is done: record it, then let the root
        // and the merges leave their lists (invariant 9 needs this order).
        // SAFETY: the caller holds `root`.
        unsafe { root.as_ref() }.children.mark_complete();
        // SAFETY: the caller holds `root`; merges are pinned.
        unsafe { link::detach(root, guard.pin()) };
        for m in merges {
            if m == root {
                continue;
            }
            // SAFETY: pinned, so `m`'s memory is valid. A dead merge detached
            // itself when it died; a live one is held while we detach it.
            if let Some(held) = unsafe { NodeRef::try_acquire(m.cast()) } {
                // SAFETY: held.
                unsafe { link::detach(m, guard.pin()) };
                drop(held);
            }
        }
    }
    // No pin, no walk count, no list lock held: wake the woken (each under
    // `catch_unwind`), then run the callbacks.
    if let Some(payload) = wakeups.close() {
        panics.0.get_or_insert(payload);
    }
    for cb in callbacks {
        // SAFETY: we won the callback's run claim.
        unsafe { callback::run_claimed(cb, &mut |f| panics.run(f)) };
    }
    if let Some(payload) = panics.0 {
        resume_unwind(payload);
    }
}
