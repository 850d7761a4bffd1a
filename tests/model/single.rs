//! The single-thread driver: runs ops on one thread, each on the library
//! and on the reference model, and compares the two after every step
//! (`compare.rs`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use ctxtree::{AfterFunc, CancelHandle, Cause, Context, Done, Error};

use super::clock::Clock;
use super::ops::{Op, Parent};
use super::probes::{
    armed_timers, callback_body, flush_until_at_most, CauseKind, CountingWaker, DropFlag, Key, Tag,
    KEYS,
};
use super::reference::{Model, Origin};
use super::slots::{self, Slot};
use super::{MAX_CALLBACKS, MAX_DONES, MAX_SLOTS};

/// The library side of an `after_func` registration (the model side is
/// `Model::callbacks`, at the same index).
pub(crate) struct Cb {
    pub(crate) runs: Arc<AtomicUsize>,
    pub(crate) handle: Option<AfterFunc>,
}

/// A `done()` future with the waker it was last polled with.
pub(crate) struct DoneEntry {
    pub(crate) node: usize,
    pub(crate) fut: Done,
    pub(crate) waker: Arc<CountingWaker>,
    pub(crate) polled_pending: bool,
}

pub(crate) struct Single {
    pub(crate) clock: Clock,
    pub(crate) model: Model,
    /// Most slots held at once (derivations beyond are skipped).
    pub(crate) max_slots: usize,
    pub(crate) slots: Vec<Slot>,
    /// Handles of the model's roots (`Model::is_root`): kept until
    /// teardown, which cancels them so every callback ends.
    pub(crate) roots: Vec<(usize, CancelHandle)>,
    pub(crate) cbs: Vec<Cb>,
    pub(crate) dones: Vec<DoneEntry>,
    /// The cause Arc first seen for each cancellation.
    pub(crate) causes: HashMap<usize, Cause>,
    pub(crate) tags: u32,
    pub(crate) timers_before: usize,
    pub(crate) step: usize,
    pub(crate) op: Option<Op>,
}

/// Runs `input` on one thread against the reference model. Panics on the
/// first difference.
pub fn run_single(input: &[u8]) {
    let ops = Op::decode_all(input);
    run_single_ops(&ops);
}

/// [`run_single`] on already decoded ops.
pub fn run_single_ops(ops: &[Op]) {
    run_single_ops_with_slots(ops, MAX_SLOTS);
}

/// [`run_single_ops`] holding up to `max_slots` contexts at once (larger
/// forests; slot numbers of ops reach the first 256 only).
pub fn run_single_ops_with_slots(ops: &[Op], max_slots: usize) {
    let live_before = flush_until_at_most(0);
    let mut s = Single {
        clock: Clock::new(),
        model: Model::default(),
        max_slots,
        slots: Vec::new(),
        roots: Vec::new(),
        cbs: Vec::new(),
        dones: Vec::new(),
        causes: HashMap::new(),
        tags: 0,
        timers_before: armed_timers(),
        step: 0,
        op: None,
    };
    for (step, &op) in ops.iter().enumerate() {
        s.step = step;
        s.op = Some(op);
        s.apply(op);
        s.check();
    }
    s.op = None;
    s.teardown(live_before);
}

/// Where a run is, for failure messages (formatted only on failure).
#[derive(Clone, Copy)]
pub(crate) struct At(usize, Option<Op>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(op) => write!(f, "step {} ({op:?})", self.0),
            None => write!(f, "teardown"),
        }
    }
}

impl Single {
    pub(crate) fn at(&self) -> At {
        At(self.step, self.op)
    }

    fn new_tag(&mut self, deadline: bool) -> Tag {
        self.tags += 1;
        Tag {
            id: self.tags,
            deadline,
        }
    }

    /// Holds a context the library derived as model node `id`.
    fn hold(&mut self, id: usize, ctx: Context, handle: Option<CancelHandle>) {
        if self.model.is_root(id) {
            let h = handle.clone().expect("cancellable nodes have handles");
            self.roots.push((id, h));
        }
        if self.slots.len() < self.max_slots {
            self.slots.push(Slot {
                node: id,
                ctx: Some(ctx),
                handle,
            });
        }
    }

    /// The context a derivation from `p` starts at, and its model origin.
    fn parent(&self, p: Parent) -> Option<(Context, Origin)> {
        slots::parent_of(&self.slots, p)
    }

    fn derive(&mut self, op: Op) {
        match op {
            Op::WithCancel(p) => {
                let Some((pc, pm)) = self.parent(p) else {
                    return;
                };
                let (c, h) = pc.with_cancel();
                let id = self.model.with_cancel(pm);
                self.hold(id, c, Some(h));
            }
            Op::WithDeadline(p, arg, with_cause) => {
                let Some((pc, pm)) = self.parent(p) else {
                    return;
                };
                let tag = with_cause.then(|| self.new_tag(true));
                let (c, h, asked, expired) = self.clock.derive(&pc, arg, tag);
                let id = self.model.with_deadline(pm, asked, expired, tag);
                self.hold(id, c, Some(h));
            }
            Op::WithValue(p, k) => {
                let Some((pc, pm)) = self.parent(p) else {
                    return;
                };
                let k = usize::from(k) % KEYS;
                let flag = Arc::new(AtomicBool::new(false));
                let v = self.step as u32;
                let d = DropFlag(Arc::clone(&flag));
                let c = match k {
                    0 => pc.with_value(Key::<0>(v, d)),
                    1 => pc.with_value(Key::<1>(v, d)),
                    _ => pc.with_value(Key::<2>(v, d)),
                };
                let id = self.model.with_value(pm, k, v, flag);
                self.hold(id, c, None);
            }
            Op::WithoutCancel(p) => {
                let Some((pc, pm)) = self.parent(p) else {
                    return;
                };
                let c = pc.without_cancel();
                let id = self.model.without_cancel(pm);
                self.hold(id, c, None);
            }
            Op::Merge(a, b) => {
                let (Some((ac, am)), Some((bc, bm))) = (self.parent(a), self.parent(b)) else {
                    return;
                };
                let (c, h) = ac.merge(&bc);
                let id = self.model.merge(am, bm);
                self.hold(id, c, Some(h));
            }
            _ => unreachable!(),
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::WithCancel(_)
            | Op::WithDeadline(..)
            | Op::WithValue(..)
            | Op::WithoutCancel(_)
            | Op::Merge(..) => {
                if self.slots.len() < self.max_slots {
                    self.derive(op);
                }
            }
            Op::Cancel(n) | Op::CancelWithCause(n) | Op::GuardDrop(n) | Op::GuardDisarm(n) => {
                let Some(i) = slots::pick(&self.slots, n) else {
                    return;
                };
                let Some(h) = self.slots[i].handle.clone() else {
                    return;
                };
                let m = self.slots[i].node;
                let canceled = CauseKind::Default(Error::Canceled);
                match op {
                    Op::Cancel(_) => {
                        h.cancel();
                        self.model.cancel(m, Error::Canceled, canceled);
                    }
                    Op::CancelWithCause(_) => {
                        let tag = self.new_tag(false);
                        h.cancel_with_cause(tag);
                        self.model.cancel(m, Error::Canceled, CauseKind::Tag(tag));
                    }
                    Op::GuardDrop(_) => {
                        drop(h.drop_guard());
                        self.model.cancel(m, Error::Canceled, canceled);
                    }
                    _ => drop(h.drop_guard().disarm()),
                }
            }
            Op::FireDeadline(n) => {
                let Some((ctx, m)) = slots::slot_ctx(&self.slots, n) else {
                    return;
                };
                let fired = ctxtree::__private::fire_deadline(&ctx);
                let is_deadline = self.model.fire_deadline(m);
                assert_eq!(
                    fired,
                    is_deadline,
                    "{}: fire_deadline on {ctx:?}",
                    self.at()
                );
            }
            Op::DropCtx(n) | Op::DropHandle(n) => {
                let Some(i) = slots::pick(&self.slots, n) else {
                    return;
                };
                drop(slots::take_part(
                    &mut self.slots,
                    i,
                    matches!(op, Op::DropCtx(_)),
                ));
            }
            Op::AfterFunc(n) => {
                if self.cbs.len() >= MAX_CALLBACKS {
                    return;
                }
                let Some((ctx, m)) = slots::slot_ctx(&self.slots, n) else {
                    return;
                };
                let runs = Arc::new(AtomicUsize::new(0));
                let af = ctx.after_func(callback_body(ctx.clone(), Arc::clone(&runs)));
                self.model.after_func(m);
                self.cbs.push(Cb {
                    runs,
                    handle: Some(af),
                });
            }
            Op::StopAfterFunc(n) | Op::DropAfterFunc(n) => {
                if self.cbs.is_empty() {
                    return;
                }
                let i = usize::from(n) % self.cbs.len();
                let Some(handle) = self.cbs[i].handle.as_ref() else {
                    return;
                };
                if matches!(op, Op::StopAfterFunc(_)) {
                    let stopped = handle.stop();
                    let expected = self.model.stop(i);
                    assert_eq!(stopped, expected, "step {}: stop()", self.step);
                } else {
                    self.cbs[i].handle = None;
                }
            }
            Op::NewDone(n) => {
                if self.dones.len() >= MAX_DONES {
                    return;
                }
                let Some((ctx, m)) = slots::slot_ctx(&self.slots, n) else {
                    return;
                };
                let mut fut = ctx.done();
                let waker = Arc::new(CountingWaker::default());
                let pending = self.poll_checked(m, &mut fut, &waker);
                self.dones.push(DoneEntry {
                    node: m,
                    fut,
                    waker,
                    polled_pending: pending,
                });
            }
            Op::PollDone(n) => {
                if self.dones.is_empty() {
                    return;
                }
                let i = usize::from(n) % self.dones.len();
                let mut d = self.dones.swap_remove(i);
                d.polled_pending = self.poll_checked(d.node, &mut d.fut, &d.waker);
                self.dones.push(d);
            }
            Op::DropDone(n) => {
                if !self.dones.is_empty() {
                    let i = usize::from(n) % self.dones.len();
                    self.dones.swap_remove(i);
                }
            }
            Op::WaitZero(n, past) => {
                let Some((ctx, m)) = slots::slot_ctx(&self.slots, n) else {
                    return;
                };
                let expected = self.model.outcome_of(Some(m)).map(|o| o.err);
                let got = if past {
                    ctx.wait_deadline(self.clock.base)
                } else {
                    ctx.wait_timeout(Duration::ZERO)
                };
                assert_eq!(got, expected, "{}: wait on {ctx:?}", self.at());
            }
            Op::WaitIfDone(n) => {
                let Some((ctx, m)) = slots::slot_ctx(&self.slots, n) else {
                    return;
                };
                match self.model.outcome_of(Some(m)) {
                    Some(o) => assert_eq!(ctx.wait(), o.err, "{}", self.at()),
                    None => assert_eq!(
                        ctx.wait_timeout(Duration::from_micros(1)),
                        None,
                        "{}",
                        self.at()
                    ),
                }
            }
            Op::Debug(n) => {
                let Some((ctx, m)) = slots::slot_ctx(&self.slots, n) else {
                    return;
                };
                self.check_debug(&ctx, m);
            }
        }
    }
}
