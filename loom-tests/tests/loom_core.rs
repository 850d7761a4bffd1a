//! loom models of the core races. Each model runs 2 loom threads (plus
//! the main thread where noted), asserts the outcome, and checks that every
//! node is freed when the model ends.
//!
//! Run with `.ci/loom.sh` (it sets `--cfg loom --cfg crossbeam_loom` and
//! `LOOM_MAX_PREEMPTIONS`).
#![cfg(loom)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctxtree::{__private, Context, Error};
use loom::thread;
use loom_tests::{model, model_capped, Tracked};

/// The bound of the four largest models (three walkers or merges racing):
/// at bound 4 they take 57 to 126 s each, 60 % of the binary's time, and
/// no broken variant of `loom-tests/broken/` needs more than 3 to fail a
/// model (docs/VERIFICATION.md).
const CAPPED: usize = 3;

/// `ctx.with_value(Tracked)`, consuming `ctx` so that only the value layer
/// keeps it alive.
fn with_tracked(ctx: Context, drops: &Arc<AtomicUsize>) -> Context {
    ctx.with_value(Tracked(drops.clone()))
}

fn cause_str(ctx: &Context) -> String {
    ctx.cause().expect("done implies a cause").to_string()
}

#[test]
fn derive_racing_cancel_parent_yields_a_done_child() {
    model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let p = parent.clone();
        let t = thread::spawn(move || {
            let (child, _h) = p.with_cancel();
            child
        });
        cancel.cancel_with_cause("stop");
        let child = t.join().unwrap();
        assert_eq!(child.err(), Err(Error::Canceled));
        assert!(Arc::ptr_eq(
            &child.cause().unwrap(),
            &parent.cause().unwrap()
        ));
    });
}

#[test]
fn drop_child_racing_cancel_parent_frees_the_child() {
    model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (parent, cancel) = Context::background().with_cancel();
        let (child, h) = parent.with_cancel();
        // Shadowing would keep the first `child` alive: replace it.
        let child = with_tracked(child, &drops);
        let t = thread::spawn(move || {
            drop(child);
            drop(h);
        });
        cancel.cancel();
        t.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(parent.is_done());
    });
}

#[test]
fn drop_value_child_racing_cancel_parent_drops_the_value() {
    model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (parent, cancel) = Context::background().with_cancel();
        let (child, h) = parent.with_cancel();
        let valued = child.with_value(Tracked(drops.clone()));
        drop(child);
        let t = thread::spawn(move || {
            drop(valued);
            drop(h);
        });
        cancel.cancel();
        t.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(parent.is_done());
    });
}

#[test]
fn blocking_wait_racing_cancel_is_woken() {
    model(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let c = ctx.clone();
        let t = thread::spawn(move || c.wait());
        cancel.cancel();
        assert_eq!(t.join().unwrap(), Error::Canceled);
    });
}

#[test]
fn async_done_racing_cancel_is_woken() {
    model(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let done = ctx.done();
        let t = thread::spawn(move || loom::future::block_on(done));
        cancel.cancel_with_cause("bye");
        assert_eq!(t.join().unwrap(), Error::Canceled);
    });
}

#[test]
fn two_waiters_racing_lazy_event_publication_are_both_woken() {
    model(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let (c1, c2) = (ctx.clone(), ctx.clone());
        let t1 = thread::spawn(move || c1.wait());
        let t2 = thread::spawn(move || loom::future::block_on(c2.done()));
        cancel.cancel();
        assert_eq!(t1.join().unwrap(), Error::Canceled);
        assert_eq!(t2.join().unwrap(), Error::Canceled);
    });
}

/// Capped at bound 3 (see [`CAPPED`]).
#[test]
fn concurrent_cancels_first_wins_and_descendants_agree() {
    model_capped(CAPPED, || {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let (child, cancel_child) = parent.with_cancel();
        let (grandchild, _g) = child.with_cancel();
        let t = thread::spawn(move || cancel_parent.cancel_with_cause("parent"));
        cancel_child.cancel_with_cause("child");
        t.join().unwrap();
        assert_eq!(cause_str(&parent), "parent");
        let c = child.cause().unwrap();
        assert!(c.to_string() == "parent" || c.to_string() == "child");
        assert!(Arc::ptr_eq(&c, &grandchild.cause().unwrap()));
        if c.to_string() == "parent" {
            assert!(Arc::ptr_eq(&c, &parent.cause().unwrap()));
        }
    });
}

/// Capped at bound 3 (see [`CAPPED`]).
#[test]
fn every_descendant_is_done_when_a_losing_cancel_returns() {
    model_capped(CAPPED, || {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, _c) = parent.with_cancel();
        let (grandchild, _g) = child.with_cancel();
        let other = cancel.clone();
        let t = thread::spawn(move || {
            other.cancel();
            // Whichever cancel won, this one returns only once the whole
            // subtree is done (helping).
            assert!(grandchild.is_done());
        });
        cancel.cancel();
        assert!(child.is_done());
        t.join().unwrap();
    });
}

#[test]
fn err_and_cause_never_disagree_while_cancelling() {
    model(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let c = ctx.clone();
        let t = thread::spawn(move || cancel.cancel_with_cause("why"));
        for _ in 0..2 {
            let done = c.is_done();
            let err = c.err();
            let cause = c.cause();
            if done {
                assert!(err.is_err());
            }
            if err.is_err() {
                assert_eq!(cause.expect("err implies cause").to_string(), "why");
            }
        }
        t.join().unwrap();
        assert_eq!(cause_str(&ctx), "why");
    });
}

#[test]
fn stop_racing_cancel_exactly_one_wins() {
    model(|| {
        let ran = Arc::new(AtomicUsize::new(0));
        let (ctx, cancel) = Context::background().with_cancel();
        let r = ran.clone();
        let af = ctx.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let t = thread::spawn(move || af.stop());
        cancel.cancel();
        let stopped = t.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst) + usize::from(stopped), 1);
    });
}

#[test]
fn after_func_registered_racing_cancel_runs_once() {
    model(|| {
        let ran = Arc::new(AtomicUsize::new(0));
        let (ctx, cancel) = Context::background().with_cancel();
        let r = ran.clone();
        let c = ctx.clone();
        let t = thread::spawn(move || {
            drop(c.after_func(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }));
        });
        cancel.cancel();
        t.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    });
}

/// Capped at bound 3 (see [`CAPPED`]).
#[test]
fn merge_with_both_parents_cancelled_concurrently_takes_one_outcome() {
    model_capped(CAPPED, || {
        let (a, cancel_a) = Context::background().with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let (m, _h) = a.merge(&b);
        let t = thread::spawn(move || cancel_a.cancel_with_cause("a"));
        cancel_b.cancel_with_cause("b");
        t.join().unwrap();
        let c = m.cause().unwrap();
        assert!(Arc::ptr_eq(&c, &a.cause().unwrap()) || Arc::ptr_eq(&c, &b.cause().unwrap()));
    });
}

#[test]
fn merge_dropped_racing_parent_cancel_leaves_nothing_behind() {
    model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (a, _cancel_a) = Context::background().with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let (m, h) = a.merge(&b);
        let m = with_tracked(m, &drops);
        let t = thread::spawn(move || {
            drop(m);
            drop(h);
        });
        cancel_b.cancel();
        t.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(!a.is_done());
    });
}

#[test]
fn deadline_firing_racing_manual_cancel_is_consistent() {
    model(|| {
        let far = Instant::now() + Duration::from_secs(3600);
        let (ctx, cancel) = Context::background().with_deadline_cause(far, "slow");
        let (child, _c) = ctx.with_cancel();
        let timer_view = ctx.clone();
        let t = thread::spawn(move || assert!(__private::fire_deadline(&timer_view)));
        cancel.cancel();
        t.join().unwrap();
        match ctx.err() {
            Err(Error::DeadlineExceeded) => assert_eq!(cause_str(&ctx), "slow"),
            Err(Error::Canceled) => assert_eq!(cause_str(&ctx), "context canceled"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(Arc::ptr_eq(&child.cause().unwrap(), &ctx.cause().unwrap()));
    });
}

#[test]
fn cancel_chain_racing_drop_of_the_middle_reaches_the_leaf() {
    model(|| {
        let (root, cancel) = Context::background().with_cancel();
        let (mid, mid_h) = root.with_cancel();
        let (leaf, _l) = mid.with_cancel();
        let t = thread::spawn(move || {
            drop(mid);
            drop(mid_h);
        });
        cancel.cancel();
        t.join().unwrap();
        assert!(leaf.is_done());
        assert!(Arc::ptr_eq(&leaf.cause().unwrap(), &root.cause().unwrap()));
    });
}

#[test]
fn cancel_root_racing_drop_of_the_rest_of_the_chain_frees_it() {
    model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (root, cancel) = Context::background().with_cancel();
        let (mid, mid_h) = root.with_cancel();
        let (leaf, leaf_h) = mid.with_cancel();
        let leaf = with_tracked(leaf, &drops);
        let t = thread::spawn(move || {
            drop((leaf, leaf_h));
            drop((mid, mid_h));
        });
        cancel.cancel();
        t.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(root.is_done());
    });
}

#[test]
fn drop_child_racing_derive_sibling_keeps_the_list_intact() {
    model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let (first, first_h) = parent.with_cancel();
        let t = thread::spawn(move || {
            drop(first);
            drop(first_h);
        });
        let (second, _s) = parent.with_cancel();
        t.join().unwrap();
        cancel.cancel();
        assert!(second.is_done());
    });
}

/// Under loom the sweep threshold is 1: dropping the oldest child (not at
/// the head) sweeps the list while the newest is unlinked at the head and
/// freed at once. The head unlink must see the sweep's `SWEEPING` tag (or
/// the sweep must start after it); a freed entry read by the sweep is a
/// use-after-free loom reports as an access to a dropped object.
#[test]
fn sweep_racing_head_unlink_frees_each_entry_once() {
    model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (parent, cancel) = Context::background().with_cancel();
        let (old, ho) = parent.with_cancel();
        let (mid, _hm) = parent.with_cancel();
        let (new, hn) = parent.with_cancel();
        let old = with_tracked(old, &drops);
        let new = with_tracked(new, &drops);
        let t = thread::spawn(move || drop((old, ho)));
        drop((new, hn));
        t.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        cancel.cancel();
        assert!(mid.is_done());
    });
}

/// The merge's forwarder is pushed into b's list while b is cancelled:
/// either b's walk sees it or the merge sees b done after the push (the
/// push/cancel handshake); never neither.
#[test]
fn merge_created_racing_cancel_of_b_ends_with_bs_outcome() {
    model(|| {
        let (a, _cancel_a) = Context::background().with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let t = thread::spawn(move || cancel_b.cancel_with_cause("b"));
        let (m, _h) = a.merge(&b);
        t.join().unwrap();
        assert!(m.is_done());
        assert_eq!(cause_str(&m), "b");
    });
}

/// Capped at bound 3 (see [`CAPPED`]).
#[test]
fn nodes_freed_while_the_canceller_walks_the_list() {
    model_capped(CAPPED, || {
        let drops = Arc::new(AtomicUsize::new(0));
        let (parent, cancel) = Context::background().with_cancel();
        let (a, ha) = parent.with_cancel();
        let (b, hb) = parent.with_cancel();
        let a = with_tracked(a, &drops);
        let b = with_tracked(b, &drops);
        let t = thread::spawn(move || {
            drop((a, ha));
            drop((b, hb));
        });
        cancel.cancel();
        t.join().unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    });
}

// ---- Walkers reaching a child whose owner drops it (issue 9) ----------------
//
// A cancellation walk reads the cancelled node's list, makes a child done,
// and only then goes into that child's own list. If the child's owner drops
// it in between (a waiter woken by the child's new state, a thread that
// simply lets go of it, ...), the child dies and drains its own list. The
// drain frees the entries at once only when no walk is counted in flight:
// so the walk must be counted before it reads the first list, the root's
// included (DESIGN.md invariant 5a). Each model below failed with "use
// after free" when the root's list was read uncounted (commit e6b4972).

/// A thread waits on a child; woken by the parent's cancel (its re-check
/// sees the child done), it drops the child while the walk goes on.
#[test]
fn waiter_on_a_child_dropped_after_waking_while_the_parent_is_cancelled() {
    model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, h) = parent.with_cancel();
        let t = thread::spawn(move || {
            assert_eq!(child.wait(), Error::Canceled);
            drop((child, h));
        });
        cancel.cancel();
        t.join().unwrap();
        assert!(parent.is_done());
    });
}

/// Same with a `done()` future: the task drops the child once it is ready.
#[test]
fn done_future_on_a_child_dropped_after_waking_while_the_parent_is_cancelled() {
    model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, h) = parent.with_cancel();
        let t = thread::spawn(move || {
            assert_eq!(loom::future::block_on(child.done()), Error::Canceled);
            drop((child, h));
        });
        cancel.cancel_with_cause("bye");
        t.join().unwrap();
        assert_eq!(cause_str(&parent), "bye");
    });
}

/// No waiter at all: the child's list holds only a marked grandchild (it
/// was not at the head when dropped, and no sweep was due), which the
/// child's death frees at once unless a walk is counted.
#[test]
fn child_holding_only_a_marked_grandchild_dropped_while_the_parent_is_cancelled() {
    model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, hc) = parent.with_cancel();
        // Five grandchildren, the oldest dropped first: that removal sweeps
        // (the threshold is 1 under loom) and sets the next threshold to
        // half the 4 live entries, so the next non-head drop stays marked.
        let mut g: Vec<_> = (0..5).map(|_| child.with_cancel()).collect();
        drop(g.remove(0)); // swept
        drop(g.remove(0)); // marked, not at the head: stays in the list
        while let Some(newest) = g.pop() {
            drop(newest); // unlinked at the head
        }
        let t = thread::spawn(move || drop((child, hc)));
        cancel.cancel();
        t.join().unwrap();
        assert!(parent.is_done());
    });
}

/// The handshake alone, with nothing else to synchronise the two threads:
/// the dying child is not at the head of its parent's list and no sweep is
/// due, so its removal only marks it, and its drain's immediate free rests
/// on the store-buffering pair (the walk's count then fence then list read,
/// the child's mark then fence then count read). A walker reading the list
/// must see the mark, or the dying child must see the walk.
#[test]
fn child_not_at_the_head_dropped_while_the_parent_is_cancelled() {
    model(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let (oldest, ho) = parent.with_cancel();
        let (child, hc) = parent.with_cancel();
        let (newer, _hn) = parent.with_cancel();
        let n1 = parent.with_cancel();
        let n2 = parent.with_cancel();
        // Swept (threshold 1 under loom), with 4 live entries: the next
        // sweep is due at 2 dead entries.
        drop((oldest, ho));
        drop(n2); // unlinked at the head
        drop(n1); // unlinked at the head
        poll_once_pending(&child); // an entry for the drain to free
        let t = thread::spawn(move || drop((child, hc)));
        cancel.cancel();
        t.join().unwrap();
        assert!(newer.is_done());
    });
}

/// Through a merge's forwarder: the walker of `b` reaches the merge through
/// the forwarder in b's list; a waiter on the merge drops it after waking.
#[test]
fn merge_waiter_dropped_after_waking_while_b_is_cancelled() {
    model(|| {
        let (a, _cancel_a) = Context::background().with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let (m, h) = a.merge(&b);
        let t = thread::spawn(move || {
            assert_eq!(m.wait(), Error::Canceled);
            drop((m, h));
        });
        cancel_b.cancel_with_cause("b");
        t.join().unwrap();
        assert!(!a.is_done());
    });
}

/// The timer as the walker: a deadline fires while its subtree (a child
/// whose list holds the waiter entry a polled `done()` left behind) is
/// dropped.
#[test]
fn deadline_fires_while_its_subtree_is_dropped() {
    model(|| {
        let far = Instant::now() + Duration::from_secs(3600);
        let (d, hd) = Context::background().with_deadline_cause(far, "late");
        let (child, hc) = d.with_cancel();
        poll_once_pending(&child);
        let timer_view = d.clone();
        let t = thread::spawn(move || assert!(__private::fire_deadline(&timer_view)));
        drop((child, hc));
        drop((d, hd));
        t.join().unwrap();
    });
}

/// `AfterFunc::stop` racing the drop of its context: `stop` takes its entry
/// out of the owner's list while its pending entry still holds the owner.
/// Every remover holds the list's owner: that is what lets a dead node's
/// drain release its entries' claims without unlinking them.
#[test]
fn stop_racing_drop_of_its_context_frees_both() {
    model(|| {
        let ran = Arc::new(AtomicUsize::new(0));
        let (ctx, h) = Context::background().with_cancel();
        let r = ran.clone();
        let af = ctx.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let t = thread::spawn(move || af.stop());
        drop((ctx, h));
        assert!(t.join().unwrap(), "nothing cancelled the context");
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    });
}

// ---- Deferred frees under a walker ---------------------------------------------
//
// Loom's epoch collector rarely runs a deferred free before a model ends, so
// this model makes the thread that retired an entry flush the epoch at once:
// the entry must stay valid while the walker that may hold it is pinned.

/// A child dies while the walk is counted: its drain unlinks its waiter
/// entry and retires it through the epoch, then its thread flushes. Eight
/// pins and flushes make this the most expensive 2-thread model (45 s at
/// bound 2, 3 min at bound 3), and the unpinned walk fails it at bound 0:
/// it runs at bound 1 whatever the binary's bound.
#[test]
fn drained_entry_is_reclaimed_only_after_the_walker_unpins() {
    model_capped(1, || {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, hc) = parent.with_cancel();
        poll_once_pending(&child);
        let t = thread::spawn(move || {
            drop((child, hc));
            __private::flush_epoch();
        });
        cancel.cancel();
        t.join().unwrap();
    });
}

/// Polls `ctx.done()` once (it must be pending) and drops it: the context's
/// waiter entry stays in its list, owned by the context.
fn poll_once_pending(ctx: &Context) {
    let mut done = ctx.done();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(std::pin::Pin::new(&mut done).poll(&mut cx).is_pending());
}
