//! The contexts and handles a run holds ("slots"), and how an op's slot
//! number picks one: shared by both drivers.

use ctxtree::{CancelHandle, Context};

use super::ops::Parent;
use super::reference::Origin;

/// A context the run holds (until `DropCtx`), its handle (until
/// `DropHandle`), and the model node they belong to. A slot is removed
/// when both are gone.
pub(crate) struct Slot {
    pub(crate) node: usize,
    pub(crate) ctx: Option<Context>,
    pub(crate) handle: Option<CancelHandle>,
}

/// The slot an op's number `n` names: modulo the number of slots.
pub(crate) fn pick(slots: &[Slot], n: u8) -> Option<usize> {
    (!slots.is_empty()).then(|| usize::from(n) % slots.len())
}

/// The context slot `n` holds, and its node.
pub(crate) fn slot_ctx(slots: &[Slot], n: u8) -> Option<(Context, usize)> {
    let slot = &slots[pick(slots, n)?];
    slot.ctx.clone().map(|c| (c, slot.node))
}

/// The context a derivation from `p` starts at and where that is in the
/// model (`Slot` with no slots: background); `None` if the slot holds only
/// a handle.
pub(crate) fn parent_of(slots: &[Slot], p: Parent) -> Option<(Context, Origin)> {
    match p {
        Parent::Background => Some((Context::background(), Origin::Background)),
        Parent::Todo => Some((Context::todo(), Origin::Todo)),
        Parent::Slot(n) => match pick(slots, n) {
            None => Some((Context::background(), Origin::Background)),
            Some(i) => {
                let slot = &slots[i];
                slot.ctx.clone().map(|c| (c, Origin::Node(slot.node)))
            }
        },
    }
}

/// Takes the context (`ctx`) or the handle of slot `i` out, removing the
/// slot once both are gone; the caller drops what it gets.
pub(crate) fn take_part(
    slots: &mut Vec<Slot>,
    i: usize,
    ctx: bool,
) -> (Option<Context>, Option<CancelHandle>) {
    let slot = &mut slots[i];
    let taken = if ctx {
        (slot.ctx.take(), None)
    } else {
        (None, slot.handle.take())
    };
    if slot.ctx.is_none() && slot.handle.is_none() {
        slots.swap_remove(i);
    }
    taken
}
