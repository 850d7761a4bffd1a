//! The two-thread driver: the same ops from two threads on one shared
//! forest, checking after every op what holds under any interleaving
//! (`thread_op.rs`), then at quiescence and after teardown.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};

use super::forest::Shared;
use super::ops::Op;
use super::probes::{armed_timers, cause_kind, flush_until_at_most, CauseKind};
use super::thread_op::{check_consistent, thread_op};

/// Called first thing on each harness thread, if set (tests/leaks.rs uses it
/// to mark the threads whose allocations its counting allocator tracks).
pub static THREAD_START_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Runs the ops of `input` from two threads on one forest (the input is
/// split in two halves, each decoded into one thread's ops). Panics on a
/// violated invariant, a leaked node, value or timer entry.
pub fn run_threads(input: &[u8]) {
    let (a, b) = input.split_at(input.len() / 2);
    run_threads_ops(Op::decode_all(a), Op::decode_all(b));
}

/// [`run_threads`] on already decoded ops.
pub fn run_threads_ops(a: Vec<Op>, b: Vec<Op>) {
    let live_before = flush_until_at_most(0);
    let timers_before = armed_timers();
    let shared = Arc::new(Shared::new());
    let barrier = Arc::new(Barrier::new(2));
    let spawn = |name: &str, ops: Vec<Op>| {
        let shared = Arc::clone(&shared);
        let barrier = Arc::clone(&barrier);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Some(hook) = THREAD_START_HOOK.get() {
                    hook();
                }
                let mut dones = Vec::new();
                barrier.wait();
                for op in ops {
                    thread_op(&shared, op, &mut dones);
                    for (ctx, m) in &shared.held() {
                        check_consistent(&shared, ctx, *m);
                    }
                }
                dones
            })
            .expect("spawn a harness thread")
    };
    let t1 = spawn("t1", a);
    let t2 = spawn("t2", b);
    let r1 = t1.join();
    let r2 = t2.join();
    let dones = match (r1, r2) {
        (Ok(mut d1), Ok(d2)) => {
            d1.extend(d2);
            d1
        }
        (Err(p), _) | (_, Err(p)) => std::panic::resume_unwind(p),
    };
    // Quiescent: no wake-up was lost.
    for d in &dones {
        if d.done.owes_wake() {
            assert!(
                d.done.wakes() > 0,
                "a pending done() of node {} {:?} was not woken; log:\n{}",
                d.node,
                d.done.ctx,
                shared.dump_log()
            );
        }
    }
    drop(dones);
    // Quiescent: every context a done one reaches is done, and carries the
    // same cause Arc as the node its tag cancelled (when that one is held).
    let ctxs = shared.held();
    let reach: Vec<Vec<bool>> = {
        let f = shared.lock();
        ctxs.iter().map(|(_, m)| f.cancel_reach(*m)).collect()
    };
    for (i, (ctx, m)) in ctxs.iter().enumerate() {
        check_consistent(&shared, ctx, *m);
        if ctx.is_done() {
            for (other, om) in &ctxs {
                if reach[i][*om] {
                    assert!(other.is_done(), "node {om} {other:?} under done node {m}");
                }
            }
        }
        if let Some(CauseKind::Tag(tag)) = ctx.cause().as_ref().and_then(cause_kind) {
            let target = shared.lock().tags.get(&tag.id).copied();
            if let Some(t) = target {
                for (other, om) in &ctxs {
                    if *om == t {
                        let theirs = other.cause().expect("the tag's target is done");
                        assert!(
                            Arc::ptr_eq(&theirs, &ctx.cause().unwrap()),
                            "node {m} and its canceller {t} have different cause Arcs"
                        );
                    }
                }
            }
        }
    }
    drop(ctxs);
    teardown(&shared, live_before, timers_before);
}

/// Cancels every root and stops every callback: each callback ran or was
/// stopped exactly once, every value is dropped, no timer entry and
/// (debug builds) no node is left.
fn teardown(shared: &Shared, live_before: isize, timers_before: usize) {
    let mut f = std::mem::take(&mut *shared.lock());
    for h in &f.roots {
        h.cancel();
    }
    for (i, cb) in f.cbs.iter_mut().enumerate() {
        let stopped_now = cb.handle.take().is_some_and(|h| h.stop());
        let runs = cb.runs.load(Ordering::SeqCst);
        let stops = usize::from(cb.stopped) + usize::from(stopped_now);
        assert_eq!(
            runs + stops,
            1,
            "callback {i}: ran {runs} times and was stopped {stops} times"
        );
    }
    let made = f.values_made;
    drop(f);
    assert_eq!(
        shared.values_dropped.load(Ordering::SeqCst),
        made,
        "every value is dropped once the forest is"
    );
    assert_eq!(
        armed_timers(),
        timers_before,
        "teardown: timer entries left"
    );
    let live = flush_until_at_most(live_before);
    assert!(live <= live_before, "{} nodes leaked", live - live_before);
}
