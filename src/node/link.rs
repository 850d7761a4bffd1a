//! Taking nodes out of their parents' lists: a node leaving its parent's
//! list (when it dies, or once done), a merge's forwarder leaving `b`'s, and
//! the detach of a done node (invariant 9).

use std::ptr::NonNull;

use super::children::{HeadClaim, ListClaim};
use super::raw::RawContext;
use super::{scope_of, CancelNode, ForwardNode, Header, FLAG_LINKED};
use crate::sync::LazyGuard;

/// Marks `h`'s link in its parent's scope list and unlinks it if cheap
/// (invariant 6). No-op if it was never linked or is already marked.
///
/// With [`HeadClaim::HandBack`], returns [`ListClaim::HandedBack`] if the
/// list's claim on `h` is handed back to the caller instead of being
/// released (unlinked at the head with no sweep running): a dying node then
/// releases both of its claims with one operation.
///
/// # Safety
/// The caller holds `h`'s parent (directly or through `h`'s reference).
pub(crate) unsafe fn leave_parent(
    h: NonNull<Header>,
    guard: &mut LazyGuard,
    head_claim: HeadClaim,
) -> ListClaim {
    // SAFETY: the caller keeps `h` valid.
    let header = unsafe { h.as_ref() };
    if header.flags & FLAG_LINKED == 0 || !header.next.mark() {
        return ListClaim::NotOurs;
    }
    let owner = header.parent.and_then(scope_of);
    match owner {
        // SAFETY: the parent (hence its scope) is held by the caller; `h`
        // is linked there and now marked.
        Some(owner) => unsafe { owner.as_ref().children.remove_marked(h, guard, head_claim) },
        None => ListClaim::NotOurs,
    }
}

/// Takes a merge's forwarder out of `b`'s list.
///
/// # Safety
/// The caller holds a claim on `f` and keeps `other` (hence its scope) alive.
pub(crate) unsafe fn leave_forwarder(
    f: NonNull<ForwardNode>,
    other: &RawContext,
    guard: &mut LazyGuard,
) {
    // SAFETY: the caller holds a claim.
    if unsafe { f.as_ref() }.header.next.mark() {
        if let Some(scope) = other.scope {
            // SAFETY: `other` keeps the scope alive; `f` is linked there and
            // now marked. `Release`: nothing comes back.
            let _ = unsafe {
                scope
                    .as_ref()
                    .children
                    .remove_marked(f.cast(), guard, HeadClaim::Release)
            };
        }
    }
}

/// A done node leaves its lists, once its whole subtree is done
/// (invariant 9): like Go's `removeChild`, a cancelled child does not stay
/// in its parent's list until it is dropped.
///
/// # Safety
/// The caller holds a reference to `node`.
pub(crate) unsafe fn detach(node: NonNull<CancelNode>, guard: &mut LazyGuard) {
    // A clean head unlink hands the list's claim back: the node releases it
    // with its alive claim when it dies (one atomic operation fewer).
    // SAFETY: held by the caller.
    let list_claim = unsafe { leave_parent(node.cast(), guard, HeadClaim::HandBack) };
    if list_claim == ListClaim::HandedBack {
        // SAFETY: `leave_parent` handed the list's claim back for this entry.
        unsafe { node.as_ref().header.next.set_claim_returned() };
    }
    // SAFETY: held by the caller.
    if let Some(m) = unsafe { Header::as_merge(node.cast()) } {
        if let Some(f) = m.forwarder {
            // SAFETY: the merge holds its claim on `f` and `other` while
            // alive.
            unsafe { leave_forwarder(f, &m.other, guard) };
        }
    }
}
