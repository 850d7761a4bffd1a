//! An open (never cancelled) parent does not keep the memory of children
//! that went away: the sweep threshold cannot be missed (invariant 6 in
//! docs/DESIGN.md). Found by the W9 memory benchmark: 100,000 children
//! dropped in creation order used to stay allocated until the parent died.
//!
//! Its own test binary: it reads the process-wide claim counter.

use ctxtree::{__private, Context};

#[cfg(debug_assertions)]
#[test]
fn children_dropped_in_creation_order_do_not_stay_allocated_under_a_live_parent() {
    let n = if cfg!(miri) { 500 } else { 100_000 };
    let (parent, _cancel) = Context::background().with_cancel();
    __private::flush_epoch();
    let before = __private::live_claims();
    let children: Vec<_> = (0..n).map(|_| parent.with_cancel()).collect();
    assert!(__private::live_claims() >= before + 2 * n as isize);
    drop(children); // oldest first: all but the newest are deep in the list
    __private::flush_epoch();
    let left = __private::live_claims() - before;
    // At most MIN_SWEEP (64) dead entries, each holding its list claim.
    assert!(
        left <= 64,
        "{left} node claims still held after dropping {n} children"
    );
    assert!(!parent.is_done());
}
