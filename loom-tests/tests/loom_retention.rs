//! loom model of the retention flush (invariant 6a in docs/DESIGN.md): the
//! node releases a thread defers reach the queue that other threads'
//! collections run, even when that thread then idles.
//!
//! Run with `.ci/loom.sh` (it sets `--cfg loom --cfg crossbeam_loom`).
#![cfg(loom)]

use ctxtree::{__private, Context};
use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;

/// A thread derives two children of a shared, open parent and drops them
/// oldest first (the older one's removal goes through the list's sweep,
/// whose release is deferred through the epoch), then idles: alive, never
/// pinned again, until the main thread has checked. Meanwhile the main
/// thread derives and drops a child of its own. Once the thread idles and
/// the parent is gone, the main thread's collection must free every node:
/// the idle thread's deferred release was flushed to the global queue
/// (`__private::loom_flush_after(1)`: every deferral is flushed).
///
/// Broken variant: `loom-tests/broken/retention-no-flush.patch` (the
/// thread keeps its deferred releases in its local bag) fails it at
/// bound 0.
#[test]
fn nodes_retired_by_an_idle_thread_are_freed_by_another() {
    __private::loom_flush_after(1);
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.map_or(3, |b| b.min(3)));
    builder.check(|| {
        let before = __private::allocated_nodes();
        let (parent, cancel) = Context::background().with_cancel();
        let idle = Arc::new(AtomicBool::new(false));
        let exit = Arc::new(AtomicBool::new(false));
        let t = {
            let (p, idle, exit) = (parent.clone(), idle.clone(), exit.clone());
            thread::spawn(move || {
                let older = p.with_cancel();
                let newer = p.with_cancel();
                drop(older);
                drop(newer);
                drop(p);
                idle.store(true, SeqCst);
                while !exit.load(SeqCst) {
                    thread::yield_now();
                }
            })
        };
        drop(parent.with_cancel());
        while !idle.load(SeqCst) {
            thread::yield_now();
        }
        drop((parent, cancel));
        __private::flush_epoch();
        let left = __private::allocated_nodes() - before;
        exit.store(true, SeqCst);
        t.join().unwrap();
        assert_eq!(
            left, 0,
            "nodes retired by an idle thread were not freed by another thread's collection"
        );
    });
}
