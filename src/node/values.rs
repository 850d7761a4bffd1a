//! Reading up the chain: values, deadlines and the Debug text.
//!
//! Value lookup visits only value and merge nodes: every node records its
//! nearest value-or-merge strict ancestor (`Header::up_values`), so cancel,
//! deadline and `without_cancel` layers cost nothing (invariant 7). A merge
//! is a branch: `a`'s chain is searched first, then `b`'s.

use std::any::{Any, TypeId};
use std::fmt::{self, Write};
use std::ptr::NonNull;
use std::time::Instant;

use super::deadline_word;
use super::header::NodeView;
use super::{Header, Kind, FLAG_PROXY, FLAG_TODO};

/// The first node of `h`'s value chain: `h` itself if it holds a value or
/// branches, else its nearest such ancestor.
#[inline]
pub(crate) fn value_head(h: NonNull<Header>) -> Option<NonNull<Header>> {
    // SAFETY: the caller holds `h`.
    let header = unsafe { h.as_ref() };
    match header.kind {
        Kind::Value | Kind::Merge => Some(h),
        _ => header.up_values,
    }
}

/// Finds the nearest value of type `T` at or above `start`.
///
/// # Safety
/// The caller holds `start` (hence its ancestors) for `'a`.
pub(crate) unsafe fn lookup<'a, T: Any + Send + Sync>(
    start: Option<NonNull<Header>>,
) -> Option<&'a T> {
    let want = TypeId::of::<T>();
    let mut cur = start;
    // `b` sides of merges still to search; empty unless merges are met.
    let mut branches: Vec<NonNull<Header>> = Vec::new();
    loop {
        let h = cur.or_else(|| branches.pop())?;
        // SAFETY: an ancestor of a held node is alive for `'a`.
        let header = unsafe { h.as_ref() };
        // SAFETY: as above.
        match unsafe { Header::view(h) } {
            NodeView::Value(v) => {
                if v.type_id == want {
                    let value: &'a (dyn Any + Send + Sync) = &*v.value;
                    return value.downcast_ref::<T>();
                }
                cur = header.up_values;
            }
            NodeView::Merge(m) => {
                if let Some(b) = m.other.value_head() {
                    branches.push(b);
                }
                cur = header.up_values;
            }
            _ => cur = header.up_values,
        }
    }
}

/// The deadline in force at `h`: the earliest deadline of the deadline
/// nodes from `h` up to the first merge (with its minimum, computed at its
/// creation), `without_cancel` node or root. Without moves
/// (`set_deadline`) the nearest deadline node is that minimum (Go's rule
/// installs only earlier deadlines), as in Go; with moves, a descendant
/// derived before its ancestor's move sees the move when it is earlier
/// than its own deadline. Until the first move in the process the walk
/// stops at the nearest deadline node, as before moves existed.
///
/// # Safety
/// The caller holds `h`.
pub(crate) unsafe fn deadline(mut cur: Option<NonNull<Header>>) -> Option<Instant> {
    let mut min: Option<Instant> = None;
    let earliest = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    while let Some(h) = cur {
        // SAFETY: ancestors of a held node are alive.
        match unsafe { Header::view(h) } {
            NodeView::Deadline(d) => {
                min = earliest(min, d.deadline.get());
                if !deadline_word::any_moved() {
                    // No deadline ever moved: the nearest is the earliest.
                    return min;
                }
            }
            NodeView::Merge(m) => return earliest(min, m.deadline),
            NodeView::Detached(_) => return min,
            _ => {}
        }
        // SAFETY: as above.
        cur = unsafe { h.as_ref() }.parent;
    }
    min
}

/// Writes Go's `String()` of the chain ending at `node`.
///
/// # Safety
/// The caller holds `node`.
pub(crate) unsafe fn describe(
    f: &mut fmt::Formatter<'_>,
    node: Option<NonNull<Header>>,
    todo: bool,
) -> fmt::Result {
    let mut chain: Vec<NonNull<Header>> = Vec::new();
    let mut cur = node;
    while let Some(h) = cur {
        chain.push(h);
        // SAFETY: ancestors of a held node are alive.
        cur = unsafe { h.as_ref() }.parent;
    }
    let todo = match node {
        // SAFETY: held.
        Some(h) => unsafe { h.as_ref() }.flags & FLAG_TODO != 0,
        None => todo,
    };
    f.write_str(if todo {
        "context.TODO"
    } else {
        "context.Background"
    })?;
    for h in chain.into_iter().rev() {
        // SAFETY: alive, as above.
        if unsafe { h.as_ref() }.flags & FLAG_PROXY != 0 {
            // Hidden: a stand-in of its parent (`node::proxy`).
            continue;
        }
        // SAFETY: alive, as above.
        match unsafe { Header::view(h) } {
            NodeView::Cancel(_) => f.write_str(".WithCancel")?,
            NodeView::Deadline(d) => match d.deadline.get() {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    write!(f, ".WithDeadline({d:?} [{left:?}])")?;
                }
                None => f.write_str(".WithDeadline(never)")?,
            },
            NodeView::Value(v) => write!(f, ".WithValue({})", v.type_name)?,
            NodeView::Detached(_) => f.write_str(".WithoutCancel")?,
            NodeView::Merge(m) => {
                f.write_str(".Merge(")?;
                fmt::Debug::fmt(&*m.other, f)?;
                f.write_char(')')?;
            }
            NodeView::Forward(_) | NodeView::Callback(_) | NodeView::Waiters(_) => {}
        }
    }
    Ok(())
}
