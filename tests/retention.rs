//! An open (never cancelled) parent does not keep the memory of children
//! that went away: the sweep threshold cannot be missed (invariant 6 in
//! docs/DESIGN.md). Found by the W9 memory benchmark: 100,000 children
//! dropped in creation order used to stay allocated until the parent died.
//!
//! Its own test binary: it reads the process-wide claim and node counters.

use std::sync::{Mutex, MutexGuard};

use ctxtree::{__private, Context};

/// The tests read process-wide counters: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(debug_assertions)]
#[test]
fn children_dropped_in_creation_order_do_not_stay_allocated_under_a_live_parent() {
    let _serial = serial();
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

/// A thread that retires a large batch of nodes and then idles must not keep
/// them: the deferred release has to reach a queue that other threads'
/// collections run (issue: retired memory stayed in an idle thread's local
/// epoch bag until it exited).
#[cfg(debug_assertions)]
#[test]
fn nodes_retired_by_a_thread_that_then_idles_are_reclaimed_by_others() {
    let _serial = serial();
    use std::sync::mpsc;
    let n = if cfg!(miri) { 500 } else { 100_000 };
    let (parent, _cancel) = Context::background().with_cancel();
    __private::flush_epoch();
    let before = __private::allocated_nodes();
    let (dropped_tx, dropped_rx) = mpsc::channel::<()>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let worker = {
        let parent = parent.clone();
        std::thread::spawn(move || {
            let children: Vec<_> = (0..n).map(|_| parent.with_cancel()).collect();
            drop(children); // oldest first: removals sweep
            drop(parent);
            dropped_tx.send(()).unwrap();
            // Idle (alive, not exiting) until the check is done.
            exit_rx.recv().unwrap();
        })
    };
    dropped_rx.recv().unwrap();
    // Only this thread pins from now on; each round lets the epoch advance
    // and runs what reached the global queue.
    let mut left = isize::MAX;
    for _ in 0..64 {
        __private::flush_epoch();
        left = __private::allocated_nodes() - before;
        if left <= 256 {
            break;
        }
    }
    exit_tx.send(()).unwrap();
    worker.join().unwrap();
    // The idle thread may keep up to FLUSH_AFTER (64) retired entries and
    // its block cache (32 blocks, freed memory: not counted); the sweep
    // threshold leaves up to 64 marked entries linked.
    assert!(
        left <= 256,
        "{left} of {n} nodes still allocated while their retiring thread idles"
    );
}
