//! One op of the two-thread driver on the shared forest, with the checks
//! that hold right after it whatever the other thread does.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use ctxtree::Context;

use super::checks::{check_reads, WatchedDone};
use super::forest::{SCb, Shared};
use super::ops::Op;
use super::probes::{callback_body, CauseKind, Counted};
use super::slots;
use super::{MAX_CALLBACKS, MAX_DONES, MAX_SLOTS};

/// A `done()` future a thread made, and the node of its context.
pub(crate) struct ThreadDone {
    pub(crate) node: usize,
    pub(crate) done: WatchedDone,
}

/// Checks what holds of one context under any interleaving: its reads
/// agree (`check_reads`), and a tagged cause names a cancellation of an
/// ancestor-or-self.
pub(crate) fn check_consistent(shared: &Shared, ctx: &Context, m: usize) {
    if let Some((_, CauseKind::Tag(tag))) = check_reads(ctx) {
        let f = shared.lock();
        if let Some(&target) = f.tags.get(&tag.id) {
            assert!(
                f.is_ancestor_or_self(target, m),
                "{ctx:?} (node {m}) carries {tag}, which cancelled node {target}, not an ancestor"
            );
        }
    }
}

fn slot_ctx(shared: &Shared, n: u8) -> Option<(Context, usize)> {
    slots::slot_ctx(&shared.lock().slots, n)
}

/// After a cancel of `m` returned: every context it reaches is done.
fn descendants_are_done(shared: &Shared, m: usize) {
    let ctxs: Vec<(Context, usize)> = {
        let f = shared.lock();
        let hit = f.cancel_reach(m);
        f.slots
            .iter()
            .filter(|s| hit[s.node])
            .filter_map(|s| s.ctx.clone().map(|c| (c, s.node)))
            .collect()
    };
    for (ctx, j) in ctxs {
        assert!(
            ctx.is_done(),
            "node {j} {ctx:?} is not done after the cancel of its ancestor {m} returned"
        );
    }
}

/// Runs `op` from this thread: the library call outside the forest's lock,
/// the bookkeeping under it.
pub(crate) fn thread_op(shared: &Shared, op: Op, dones: &mut Vec<ThreadDone>) {
    match op {
        Op::WithCancel(p)
        | Op::WithDeadline(p, ..)
        | Op::WithValue(p, _)
        | Op::WithoutCancel(p)
        | Op::Merge(p, _) => {
            let (parent, other) = {
                let f = shared.lock();
                if f.slots.len() >= MAX_SLOTS {
                    return;
                }
                let other = match op {
                    Op::Merge(_, q) => slots::parent_of(&f.slots, q),
                    _ => None,
                };
                (slots::parent_of(&f.slots, p), other)
            };
            let Some((pc, pm)) = parent else { return };
            let pm = pm.node();
            let mut tag = None;
            let (ctx, handle, cancellable, detached, om) = match op {
                Op::WithCancel(_) => {
                    let (c, h) = pc.with_cancel();
                    (c, Some(h), true, false, None)
                }
                Op::WithDeadline(_, arg, with_cause) => {
                    tag = with_cause.then(|| shared.new_tag(true, None));
                    let (c, h, _, _) = shared.clock.derive(&pc, arg, tag);
                    (c, Some(h), true, false, None)
                }
                Op::WithValue(..) => {
                    shared.lock().values_made += 1;
                    let c = pc.with_value(Counted(Arc::clone(&shared.values_dropped)));
                    (c, None, false, false, None)
                }
                Op::WithoutCancel(_) => (pc.without_cancel(), None, false, true, None),
                Op::Merge(..) => {
                    let Some((oc, om)) = other else { return };
                    let (c, h) = pc.merge(&oc);
                    (c, Some(h), true, false, om.node())
                }
                _ => unreachable!(),
            };
            let mut f = shared.lock();
            let id = f.add(cancellable, detached, [pm, om], ctx, handle);
            drop(f);
            shared.log(format!("{op:?}: node {id} from {pm:?} and {om:?}"));
            let mut f = shared.lock();
            // A deadline cause names the node it was given to. (Until this
            // line a context carrying it is not in a slot, so not checked.)
            if let Some(tag) = tag {
                f.tags.insert(tag.id, id);
            }
        }
        Op::Cancel(n) | Op::CancelWithCause(n) | Op::GuardDrop(n) | Op::GuardDisarm(n) => {
            let (h, m) = {
                let f = shared.lock();
                let Some(i) = slots::pick(&f.slots, n) else {
                    return;
                };
                let Some(h) = f.slots[i].handle.clone() else {
                    return;
                };
                (h, f.slots[i].node)
            };
            shared.log(format!("{op:?} on node {m}"));
            match op {
                Op::Cancel(_) => h.cancel(),
                Op::CancelWithCause(_) => h.cancel_with_cause(shared.new_tag(false, Some(m))),
                Op::GuardDrop(_) => drop(h.drop_guard()),
                _ => {
                    drop(h.drop_guard().disarm());
                    return;
                }
            }
            descendants_are_done(shared, m);
        }
        Op::FireDeadline(n) => {
            let Some((ctx, m)) = slot_ctx(shared, n) else {
                return;
            };
            shared.log(format!("{op:?} on node {m}"));
            if ctxtree::__private::fire_deadline(&ctx) {
                assert!(ctx.is_done(), "{ctx:?}: fired deadline but not done");
                descendants_are_done(shared, m);
            }
        }
        Op::DropCtx(n) | Op::DropHandle(n) => {
            let taken = {
                let mut f = shared.lock();
                let Some(i) = slots::pick(&f.slots, n) else {
                    return;
                };
                slots::take_part(&mut f.slots, i, matches!(op, Op::DropCtx(_)))
            };
            // Dropped outside the lock: the drop races with the other thread.
            drop(taken);
        }
        Op::AfterFunc(n) => {
            let Some((ctx, _)) = slot_ctx(shared, n) else {
                return;
            };
            if shared.lock().cbs.len() >= 2 * MAX_CALLBACKS {
                return;
            }
            let runs = Arc::new(AtomicUsize::new(0));
            let af = ctx.after_func(callback_body(ctx.clone(), Arc::clone(&runs)));
            shared.lock().cbs.push(SCb {
                runs,
                stopped: false,
                handle: Some(af),
            });
        }
        Op::StopAfterFunc(n) | Op::DropAfterFunc(n) => {
            // Stop under the lock (so two threads never stop the same one and
            // the bookkeeping stays exact); cancels may run the callback
            // concurrently. Dropping the handle is left to teardown, which
            // needs it to stop the never-run ones.
            if matches!(op, Op::DropAfterFunc(_)) {
                return;
            }
            let mut f = shared.lock();
            if f.cbs.is_empty() {
                return;
            }
            let i = usize::from(n) % f.cbs.len();
            let cb = &mut f.cbs[i];
            if let Some(h) = &cb.handle {
                if h.stop() {
                    assert!(!cb.stopped, "stop() returned true twice");
                    cb.stopped = true;
                }
            }
        }
        Op::NewDone(n) => {
            let Some((ctx, m)) = slot_ctx(shared, n) else {
                return;
            };
            if dones.len() >= MAX_DONES {
                return;
            }
            let mut done = WatchedDone::new(ctx);
            done.poll();
            shared.log(format!(
                "done() on node {m}: pending {}",
                done.polled_pending()
            ));
            dones.push(ThreadDone { node: m, done });
        }
        Op::PollDone(n) => {
            if let Some(i) = (!dones.is_empty()).then(|| usize::from(n) % dones.len()) {
                let d = &mut dones[i];
                d.done.poll();
                shared.log(format!("polled done() of node {}", d.node));
            }
        }
        Op::DropDone(n) => {
            if !dones.is_empty() {
                let i = usize::from(n) % dones.len();
                dones.swap_remove(i);
            }
        }
        Op::WaitZero(n, past) => {
            let Some((ctx, _)) = slot_ctx(shared, n) else {
                return;
            };
            let got = if past {
                ctx.wait_deadline(shared.clock.base)
            } else {
                ctx.wait_timeout(Duration::ZERO)
            };
            if let Some(e) = got {
                assert_eq!(ctx.err(), Err(e), "{ctx:?}: wait result vs err()");
            }
        }
        Op::WaitIfDone(n) => {
            let Some((ctx, _)) = slot_ctx(shared, n) else {
                return;
            };
            if let Err(e) = ctx.err() {
                assert_eq!(ctx.wait(), e);
            }
        }
        Op::Debug(n) => {
            let Some((ctx, _)) = slot_ctx(shared, n) else {
                return;
            };
            let text = format!("{ctx:?}");
            assert!(text.starts_with("context."), "{text}");
        }
    }
}
