//! The operation-sequence harness and its reference model, shared by the
//! property tests (`tests/model_proptest.rs`) and the fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, which include this file with `#[path]`).
//!
//! Input is a byte string decoded into [`Op`]s (derive of every kind,
//! cancel with or without cause, guards, deadline expiry, drops,
//! `after_func`/`stop`, `done()` futures, zero-timeout waits, Debug). Two
//! executors run them:
//!
//! - [`run_single`]: one thread, on a forest of at most [`MAX_SLOTS`] live
//!   contexts, against a simple reference model. After every step it
//!   compares every live context's `is_done`/`err`/`cause` (the cause by
//!   `Arc::ptr_eq` to the one Arc of the cancellation that reached it),
//!   `deadline`, values, callback runs, waker wake-ups, dropped values
//!   (exactly the unreachable ones) and armed timers with the model; at
//!   the end everything is torn down and every node must be freed.
//! - [`run_threads`]: the same ops from two threads on one shared forest,
//!   checking what holds under every interleaving: `err`/`cause`/`is_done`
//!   agree and are monotone, a cause names a cancellation of an
//!   ancestor-or-self, every descendant is done when `cancel` returns,
//!   every callback runs or is stopped exactly once, and nothing leaks.
//!
//! The model uses only far-future deadlines (never reached during a run),
//! deadlines already passed, `Duration::ZERO` and unrepresentable ones;
//! expiry is driven by `__private::fire_deadline`, so runs are
//! deterministic.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

use ctxtree::{AfterFunc, CancelHandle, Cause, Context, Done, Error};

/// Most contexts held in the forest's slots at once.
pub const MAX_SLOTS: usize = 16;
/// Most `after_func` registrations and `done()` futures tracked at once.
const MAX_CALLBACKS: usize = 16;
const MAX_DONES: usize = 8;
/// Ops decoded from one input at most (per thread for `run_threads`).
pub const MAX_OPS: usize = 256;

// ---- operations ---------------------------------------------------------------

/// Where a derivation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    Background,
    Todo,
    /// The n-th live slot (modulo the number of live slots).
    Slot(u8),
}

/// The deadline argument of a deadline derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineArg {
    /// `with_timeout(Duration::ZERO)`: done on creation.
    ZeroTimeout,
    /// `with_deadline(base - k s)`: in the past, done on creation.
    Past(u8),
    /// `with_deadline(base)`, `base` being the run's start: done on creation.
    AtBase,
    /// `with_timeout(Duration::MAX)`: unrepresentable, a plain child.
    MaxTimeout,
    /// `with_deadline(base + 100 years)`.
    Huge,
    /// `with_deadline(base + i64::MAX / 2 s)`: near `Instant`'s limit.
    Extreme,
    /// `with_deadline(base + 1 h + k s)`.
    Far(u8),
    /// `with_timeout(1_000_000 s)`.
    FarTimeout,
}

/// One step of a run. Slot and entry numbers are taken modulo the number
/// of live slots/entries; an op with nothing to act on is a no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    WithCancel(Parent),
    WithDeadline(Parent, DeadlineArg, bool),
    WithValue(Parent, u8),
    WithoutCancel(Parent),
    Merge(Parent, Parent),
    Cancel(u8),
    CancelWithCause(u8),
    /// `handle.clone().drop_guard()` dropped at once: cancels.
    GuardDrop(u8),
    /// `handle.clone().drop_guard().disarm()`: does not cancel.
    GuardDisarm(u8),
    /// `__private::fire_deadline`.
    FireDeadline(u8),
    DropCtx(u8),
    DropHandle(u8),
    AfterFunc(u8),
    StopAfterFunc(u8),
    DropAfterFunc(u8),
    NewDone(u8),
    PollDone(u8),
    DropDone(u8),
    /// `wait_timeout(Duration::ZERO)`, or `wait_deadline(base)` if the flag.
    WaitZero(u8, bool),
    /// `wait()` if the model says done, else `wait_timeout(1 µs)`.
    WaitIfDone(u8),
    Debug(u8),
}

fn parent(b: u8) -> Parent {
    match b % 18 {
        16 => Parent::Background,
        17 => Parent::Todo,
        n => Parent::Slot(n),
    }
}

fn deadline_arg(b: u8) -> DeadlineArg {
    let k = b >> 3;
    match b % 8 {
        0 => DeadlineArg::ZeroTimeout,
        1 => DeadlineArg::Past(k),
        2 => DeadlineArg::AtBase,
        3 => DeadlineArg::MaxTimeout,
        4 => DeadlineArg::Huge,
        5 => DeadlineArg::Extreme,
        6 => DeadlineArg::Far(k),
        _ => DeadlineArg::FarTimeout,
    }
}

impl Op {
    /// Decodes one op from the front of `input`; `None` at the end.
    pub fn decode(input: &mut &[u8]) -> Option<Op> {
        let mut next = || -> Option<u8> {
            let (&b, rest) = input.split_first()?;
            *input = rest;
            Some(b)
        };
        let code = next()?;
        let a = next().unwrap_or(0);
        Some(match code % 24 {
            0 | 1 => Op::WithCancel(parent(a)),
            2 => {
                let b = next().unwrap_or(0);
                Op::WithDeadline(parent(a), deadline_arg(b), code & 0x80 != 0)
            }
            3 => Op::WithValue(parent(a), code >> 6),
            4 => Op::WithoutCancel(parent(a)),
            5 | 6 => Op::Merge(parent(a), parent(next().unwrap_or(0))),
            7 | 8 => Op::Cancel(a),
            9 => Op::CancelWithCause(a),
            10 => Op::GuardDrop(a),
            11 => Op::GuardDisarm(a),
            12 => Op::FireDeadline(a),
            13 => Op::DropCtx(a),
            14 => Op::DropHandle(a),
            15 => Op::AfterFunc(a),
            16 => Op::StopAfterFunc(a),
            17 => Op::DropAfterFunc(a),
            18 => Op::NewDone(a),
            19 => Op::PollDone(a),
            20 => Op::DropDone(a),
            21 => Op::WaitZero(a, code & 0x80 != 0),
            22 => Op::WaitIfDone(a),
            _ => Op::Debug(a),
        })
    }

    /// Decodes a whole input (at most [`MAX_OPS`] ops).
    pub fn decode_all(mut input: &[u8]) -> Vec<Op> {
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS {
            match Op::decode(&mut input) {
                Some(op) => ops.push(op),
                None => break,
            }
        }
        ops
    }
}

// ---- values, causes, wakers ---------------------------------------------------

/// Sets its flag when dropped.
#[derive(Debug)]
pub struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        assert!(
            !self.0.swap(true, Ordering::SeqCst),
            "a value was dropped twice"
        );
    }
}

/// Value keys: three distinct types.
#[derive(Debug)]
pub struct Key<const N: usize>(pub u32, DropFlag);

const KEYS: usize = 3;

/// A cause that names the cancellation it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub id: u32,
    pub deadline: bool,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag {} (deadline: {})", self.id, self.deadline)
    }
}

impl std::error::Error for Tag {}

/// What a cause should be: a `Tag`, or the default `Arc::new(err)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CauseKind {
    Tag(Tag),
    Default(Error),
}

fn cause_kind(cause: &Cause) -> Option<CauseKind> {
    if let Some(tag) = cause.downcast_ref::<Tag>() {
        return Some(CauseKind::Tag(*tag));
    }
    cause
        .downcast_ref::<Error>()
        .map(|e| CauseKind::Default(*e))
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_done(done: &mut Done, waker: &Arc<CountingWaker>) -> Poll<Error> {
    let waker = Waker::from(Arc::clone(waker));
    Pin::new(done).poll(&mut std::task::Context::from_waker(&waker))
}

/// The body of every `after_func` callback: the context must be observably
/// done, a child derived now is done on creation with the same outcome,
/// and it must run at most once.
fn callback_body(ctx: Context, runs: Arc<AtomicUsize>) -> impl FnOnce() + Send + 'static {
    move || {
        assert!(ctx.is_done(), "after_func ran before {ctx:?} was done");
        let (child, _handle) = ctx.with_cancel();
        assert_eq!(child.err(), ctx.err(), "child derived inside a callback");
        assert!(
            Arc::ptr_eq(&child.cause().unwrap(), &ctx.cause().unwrap()),
            "child derived inside a callback shares the cause"
        );
        assert_eq!(runs.fetch_add(1, Ordering::SeqCst), 0, "callback ran twice");
    }
}

// ---- environment ---------------------------------------------------------------

/// Flushes the epoch until the crate's live node count is at most `limit`
/// (debug builds; elsewhere there is no counter and this returns at once).
pub fn flush_until_at_most(limit: isize) -> isize {
    #[cfg(debug_assertions)]
    {
        for _ in 0..2_000 {
            let live = ctxtree::__private::live_nodes();
            if live <= limit {
                return live;
            }
            ctxtree::__private::flush_epoch();
            std::thread::yield_now();
        }
        ctxtree::__private::live_nodes()
    }
    #[cfg(not(debug_assertions))]
    {
        ctxtree::__private::flush_epoch();
        limit
    }
}

/// Deadlines of one run, from its start instant.
#[derive(Clone, Copy)]
struct Clock {
    base: Instant,
}

/// A deadline known up to the interval of the call that computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dl {
    lo: Instant,
    hi: Instant,
}

impl Dl {
    fn exact(t: Instant) -> Dl {
        Dl { lo: t, hi: t }
    }
    fn contains(&self, t: Instant) -> bool {
        self.lo <= t && t <= self.hi
    }
    /// `self < other`, which the construction of the runs always decides.
    fn less(&self, other: &Dl) -> bool {
        if self.hi < other.lo {
            true
        } else if self.lo >= other.hi {
            false
        } else {
            panic!("model ambiguity: deadlines {self:?} and {other:?} overlap")
        }
    }
    fn min(a: Option<Dl>, b: Option<Dl>) -> Option<Dl> {
        match (a, b) {
            (Some(a), Some(b)) if a == b => Some(a),
            (Some(a), Some(b)) => Some(if a.less(&b) { a } else { b }),
            (x, y) => x.or(y),
        }
    }
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base: Instant::now(),
        }
    }

    /// Calls the library's deadline constructor for `arg` and returns the
    /// new context, its handle and the deadline asked for (an interval for
    /// the `now`-relative ones; `None` when unrepresentable).
    fn derive(
        &self,
        parent: &Context,
        arg: DeadlineArg,
        cause: Option<Tag>,
    ) -> (Context, CancelHandle, Option<Dl>, bool) {
        let abs = |t: Instant| {
            let (c, h) = match cause {
                Some(tag) => parent.with_deadline_cause(t, tag),
                None => parent.with_deadline(t),
            };
            (c, h, Some(Dl::exact(t)))
        };
        let rel = |d: Duration| {
            let lo = Instant::now();
            let (c, h) = match cause {
                Some(tag) => parent.with_timeout_cause(d, tag),
                None => parent.with_timeout(d),
            };
            let hi = Instant::now();
            let dl = lo.checked_add(d).map(|lo| Dl {
                lo,
                hi: hi.checked_add(d).unwrap_or(lo),
            });
            (c, h, dl)
        };
        let secs = Duration::from_secs;
        let (c, h, dl) = match arg {
            DeadlineArg::ZeroTimeout => rel(Duration::ZERO),
            DeadlineArg::Past(k) => abs(self
                .base
                .checked_sub(secs(1 + u64::from(k)))
                .unwrap_or(self.base)),
            DeadlineArg::AtBase => abs(self.base),
            DeadlineArg::MaxTimeout => {
                let (c, h) = match cause {
                    Some(tag) => parent.with_timeout_cause(Duration::MAX, tag),
                    None => parent.with_timeout(Duration::MAX),
                };
                (c, h, None)
            }
            DeadlineArg::Huge => abs(self.base + secs(100 * 365 * 86_400)),
            DeadlineArg::Extreme => abs(self
                .base
                .checked_add(secs(i64::MAX as u64 / 2))
                .unwrap_or(self.base + secs(1 << 40))),
            DeadlineArg::Far(k) => abs(self.base + secs(3600 + u64::from(k))),
            DeadlineArg::FarTimeout => rel(secs(1_000_000)),
        };
        let expired = matches!(
            arg,
            DeadlineArg::ZeroTimeout | DeadlineArg::Past(_) | DeadlineArg::AtBase
        );
        (c, h, dl, expired)
    }
}

fn armed_timers() -> usize {
    ctxtree::__private::armed_timers()
}

// ---- the reference model (single thread) ------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cancel,
    Deadline,
    Merge,
    Value(usize),
    Detached,
}

impl Kind {
    fn cancellable(self) -> bool {
        matches!(self, Kind::Cancel | Kind::Deadline | Kind::Merge)
    }
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    err: Error,
    cause: CauseKind,
    /// The cancellation that set it: every node it reached shares one Arc.
    id: usize,
}

struct MNode {
    kind: Kind,
    /// Nearest cancellable ancestor-or-self.
    scope: Option<usize>,
    /// Nodes this one holds alive (parent, and a merge's other parent).
    holds: Vec<usize>,
    /// Scopes whose cancellation reaches this (cancellable) node.
    from: Vec<usize>,
    outcome: Option<Outcome>,
    deadline: Option<Dl>,
    /// The deadline node's cause.
    dcause: Option<Tag>,
    values: [Option<u32>; KEYS],
    todo: bool,
    dropped: Option<Arc<AtomicBool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CbState {
    Pending,
    Ran,
    Stopped,
}

struct Cb {
    /// The context it was registered on (captured by the callback).
    node: usize,
    scope: Option<usize>,
    state: CbState,
    runs: Arc<AtomicUsize>,
    handle: Option<AfterFunc>,
}

struct DoneEntry {
    node: usize,
    fut: Done,
    waker: Arc<CountingWaker>,
    polled_pending: bool,
}

struct Slot {
    node: usize,
    ctx: Option<Context>,
    handle: Option<CancelHandle>,
}

struct Single {
    clock: Clock,
    nodes: Vec<MNode>,
    slots: Vec<Slot>,
    /// Handles of nodes no cancellation of another node can reach: kept
    /// until teardown, which cancels them so every callback ends.
    roots: Vec<(usize, CancelHandle)>,
    cbs: Vec<Cb>,
    dones: Vec<DoneEntry>,
    /// The cause Arc first seen for each cancellation.
    causes: HashMap<usize, Cause>,
    cancellations: usize,
    tags: u32,
    timers_before: usize,
    step: usize,
    op: Option<Op>,
}

/// Runs `input` on one thread against the reference model. Panics on the
/// first difference.
pub fn run_single(input: &[u8]) {
    let ops = Op::decode_all(input);
    run_single_ops(&ops);
}

/// [`run_single`] on already decoded ops.
pub fn run_single_ops(ops: &[Op]) {
    let live_before = flush_until_at_most(0);
    let mut s = Single {
        clock: Clock::new(),
        nodes: Vec::new(),
        slots: Vec::new(),
        roots: Vec::new(),
        cbs: Vec::new(),
        dones: Vec::new(),
        causes: HashMap::new(),
        cancellations: 0,
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
struct At(usize, Option<Op>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(op) => write!(f, "step {} ({op:?})", self.0),
            None => write!(f, "teardown"),
        }
    }
}

impl Single {
    fn at(&self) -> At {
        At(self.step, self.op)
    }

    fn pick_slot(&self, n: u8) -> Option<usize> {
        (!self.slots.is_empty()).then(|| usize::from(n) % self.slots.len())
    }

    /// The parent context and its model node (`None` for the roots).
    fn parent(&self, p: Parent) -> Option<(Context, Option<usize>)> {
        match p {
            Parent::Background => Some((Context::background(), None)),
            Parent::Todo => Some((Context::todo(), None)),
            Parent::Slot(n) => {
                let Some(i) = self.pick_slot(n) else {
                    return Some((Context::background(), None));
                };
                let slot = &self.slots[i];
                slot.ctx.clone().map(|c| (c, Some(slot.node)))
            }
        }
    }

    fn scope(&self, m: Option<usize>) -> Option<usize> {
        m.and_then(|m| self.nodes[m].scope)
    }

    fn outcome_of(&self, m: Option<usize>) -> Option<Outcome> {
        self.scope(m).and_then(|s| self.nodes[s].outcome)
    }

    fn new_tag(&mut self, deadline: bool) -> Tag {
        self.tags += 1;
        Tag {
            id: self.tags,
            deadline,
        }
    }

    fn new_outcome(&mut self, err: Error, cause: CauseKind) -> Outcome {
        self.cancellations += 1;
        Outcome {
            err,
            cause,
            id: self.cancellations,
        }
    }

    /// Adds a derived node; `handle` for the cancellable kinds.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        kind: Kind,
        parent: Option<usize>,
        other: Option<Option<usize>>,
        ctx: Context,
        handle: Option<CancelHandle>,
        deadline: Option<Dl>,
        own: Option<Outcome>,
        dcause: Option<Tag>,
        dropped: Option<Arc<AtomicBool>>,
    ) {
        let id = self.nodes.len();
        let mut holds: Vec<usize> = parent.into_iter().collect();
        holds.extend(other.flatten());
        let pscope = self.scope(parent);
        let oscope = other.and_then(|o| self.scope(o));
        let mut from: Vec<usize> = Vec::new();
        if kind.cancellable() {
            from.extend(pscope);
            if kind == Kind::Merge {
                from.extend(oscope);
            }
        }
        // A child of a done context is done on creation with its outcome
        // (a merge: a's if a is done, else b's); else its own expiry.
        let inherited = if kind.cancellable() {
            self.outcome_of(parent)
                .or_else(|| other.and_then(|o| self.outcome_of(o)))
                .or(own)
        } else {
            None
        };
        let mut values = parent.map_or([None; KEYS], |p| self.nodes[p].values);
        if let Some(Some(o)) = other {
            for (k, v) in values.iter_mut().enumerate() {
                *v = v.or(self.nodes[o].values[k]);
            }
        }
        let todo = match parent {
            Some(p) => self.nodes[p].todo,
            None => false, // set by the caller for `todo()` parents
        };
        let scope = match kind {
            Kind::Cancel | Kind::Deadline | Kind::Merge => Some(id),
            Kind::Value(_) => pscope,
            Kind::Detached => None,
        };
        self.nodes.push(MNode {
            kind,
            scope,
            holds,
            from: from.clone(),
            outcome: inherited,
            deadline,
            dcause,
            values,
            todo,
            dropped,
        });
        if kind.cancellable() && from.is_empty() {
            let h = handle.clone().expect("cancellable nodes have handles");
            self.roots.push((id, h));
        }
        if self.slots.len() < MAX_SLOTS {
            self.slots.push(Slot {
                node: id,
                ctx: Some(ctx),
                handle,
            });
        }
    }

    fn derive(&mut self, op: Op) {
        let todo_root = |p: Parent| p == Parent::Todo;
        match op {
            Op::WithCancel(p) => {
                let Some((pc, pm)) = self.parent(p) else {
                    return;
                };
                let (c, h) = pc.with_cancel();
                let dl = pm.and_then(|m| self.nodes[m].deadline);
                self.add(Kind::Cancel, pm, None, c, Some(h), dl, None, None, None);
            }
            Op::WithDeadline(p, arg, with_cause) => {
                let Some((pc, pm)) = self.parent(p) else {
                    return;
                };
                let tag = with_cause.then(|| self.new_tag(true));
                let (c, h, asked, expired) = self.clock.derive(&pc, arg, tag);
                let pdl = pm.and_then(|m| self.nodes[m].deadline);
                let own_deadline = match (asked, pdl) {
                    (Some(d), None) => Some(d),
                    (Some(d), Some(pd)) if d.less(&pd) => Some(d),
                    _ => None,
                };
                if let Some(d) = own_deadline {
                    let own = expired.then(|| {
                        let cause =
                            tag.map_or(CauseKind::Default(Error::DeadlineExceeded), CauseKind::Tag);
                        self.new_outcome(Error::DeadlineExceeded, cause)
                    });
                    self.add(
                        Kind::Deadline,
                        pm,
                        None,
                        c,
                        Some(h),
                        Some(d),
                        own,
                        tag,
                        None,
                    );
                } else {
                    self.add(Kind::Cancel, pm, None, c, Some(h), pdl, None, None, None);
                }
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
                let dl = pm.and_then(|m| self.nodes[m].deadline);
                let before = self.nodes.len();
                self.add(
                    Kind::Value(k),
                    pm,
                    None,
                    c,
                    None,
                    dl,
                    None,
                    None,
                    Some(flag),
                );
                self.nodes[before].values[k] = Some(v);
            }
            Op::WithoutCancel(p) => {
                let Some((pc, pm)) = self.parent(p) else {
                    return;
                };
                let c = pc.without_cancel();
                self.add(Kind::Detached, pm, None, c, None, None, None, None, None);
            }
            Op::Merge(a, b) => {
                let (Some((ac, am)), Some((bc, bm))) = (self.parent(a), self.parent(b)) else {
                    return;
                };
                let (c, h) = ac.merge(&bc);
                let dl = Dl::min(
                    am.and_then(|m| self.nodes[m].deadline),
                    bm.and_then(|m| self.nodes[m].deadline),
                );
                self.add(Kind::Merge, am, Some(bm), c, Some(h), dl, None, None, None);
            }
            _ => unreachable!(),
        }
        // (Every arm above that derived nothing returned early.)
        let new = self.nodes.len() - 1;
        let root_todo = match op {
            Op::WithCancel(p)
            | Op::WithDeadline(p, ..)
            | Op::WithValue(p, _)
            | Op::WithoutCancel(p)
            | Op::Merge(p, _) => todo_root(p),
            _ => false,
        };
        if root_todo {
            self.nodes[new].todo = true;
        }
    }

    /// The model's side of a cancellation of `m` (first one wins).
    fn cancel_model(&mut self, m: usize, err: Error, cause: CauseKind) {
        if self.nodes[m].outcome.is_some() {
            return;
        }
        let out = self.new_outcome(err, cause);
        self.nodes[m].outcome = Some(out);
        // Parents precede children: one forward pass propagates.
        for j in m + 1..self.nodes.len() {
            let reached = self.nodes[j].outcome.is_none()
                && self.nodes[j]
                    .from
                    .iter()
                    .any(|&p| self.nodes[p].outcome.is_some_and(|o| o.id == out.id));
            if reached {
                self.nodes[j].outcome = Some(out);
            }
        }
        for cb in &mut self.cbs {
            if cb.state == CbState::Pending
                && cb
                    .scope
                    .is_some_and(|s| self.nodes[s].outcome.is_some_and(|o| o.id == out.id))
            {
                cb.state = CbState::Ran;
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::WithCancel(_)
            | Op::WithDeadline(..)
            | Op::WithValue(..)
            | Op::WithoutCancel(_)
            | Op::Merge(..) => {
                if self.slots.len() < MAX_SLOTS {
                    self.derive(op);
                }
            }
            Op::Cancel(n) | Op::CancelWithCause(n) | Op::GuardDrop(n) | Op::GuardDisarm(n) => {
                let Some(i) = self.pick_slot(n) else { return };
                let Some(h) = self.slots[i].handle.clone() else {
                    return;
                };
                let m = self.slots[i].node;
                match op {
                    Op::Cancel(_) => {
                        h.cancel();
                        self.cancel_model(m, Error::Canceled, CauseKind::Default(Error::Canceled));
                    }
                    Op::CancelWithCause(_) => {
                        let tag = self.new_tag(false);
                        h.cancel_with_cause(tag);
                        self.cancel_model(m, Error::Canceled, CauseKind::Tag(tag));
                    }
                    Op::GuardDrop(_) => {
                        drop(h.drop_guard());
                        self.cancel_model(m, Error::Canceled, CauseKind::Default(Error::Canceled));
                    }
                    _ => drop(h.drop_guard().disarm()),
                }
            }
            Op::FireDeadline(n) => {
                let Some(i) = self.pick_slot(n) else { return };
                let Some(ctx) = self.slots[i].ctx.clone() else {
                    return;
                };
                let m = self.slots[i].node;
                let fired = ctxtree::__private::fire_deadline(&ctx);
                let is_deadline = self.nodes[m].kind == Kind::Deadline;
                assert_eq!(
                    fired,
                    is_deadline,
                    "{}: fire_deadline on {ctx:?}",
                    self.at()
                );
                if is_deadline {
                    let cause = self.nodes[m]
                        .dcause
                        .map_or(CauseKind::Default(Error::DeadlineExceeded), CauseKind::Tag);
                    self.cancel_model(m, Error::DeadlineExceeded, cause);
                }
            }
            Op::DropCtx(n) | Op::DropHandle(n) => {
                let Some(i) = self.pick_slot(n) else { return };
                let slot = &mut self.slots[i];
                if matches!(op, Op::DropCtx(_)) {
                    slot.ctx = None;
                } else {
                    slot.handle = None;
                }
                if slot.ctx.is_none() && slot.handle.is_none() {
                    self.slots.swap_remove(i);
                }
            }
            Op::AfterFunc(n) => {
                if self.cbs.len() >= MAX_CALLBACKS {
                    return;
                }
                let Some(i) = self.pick_slot(n) else { return };
                let Some(ctx) = self.slots[i].ctx.clone() else {
                    return;
                };
                let m = self.slots[i].node;
                let runs = Arc::new(AtomicUsize::new(0));
                let af = ctx.after_func(callback_body(ctx.clone(), Arc::clone(&runs)));
                let scope = self.nodes[m].scope;
                let state = if self.outcome_of(Some(m)).is_some() {
                    CbState::Ran
                } else {
                    CbState::Pending
                };
                self.cbs.push(Cb {
                    node: m,
                    scope,
                    state,
                    runs,
                    handle: Some(af),
                });
            }
            Op::StopAfterFunc(n) | Op::DropAfterFunc(n) => {
                if self.cbs.is_empty() {
                    return;
                }
                let i = usize::from(n) % self.cbs.len();
                let cb = &mut self.cbs[i];
                let Some(handle) = cb.handle.as_ref() else {
                    return;
                };
                if matches!(op, Op::StopAfterFunc(_)) {
                    let expected = cb.state == CbState::Pending;
                    assert_eq!(handle.stop(), expected, "step {}: stop()", self.step);
                    if expected {
                        cb.state = CbState::Stopped;
                    }
                } else {
                    cb.handle = None;
                }
            }
            Op::NewDone(n) => {
                if self.dones.len() >= MAX_DONES {
                    return;
                }
                let Some(i) = self.pick_slot(n) else { return };
                let Some(ctx) = self.slots[i].ctx.as_ref() else {
                    return;
                };
                let m = self.slots[i].node;
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
                let Some((ctx, m)) = self.slot_ctx(n) else {
                    return;
                };
                let expected = self.outcome_of(Some(m)).map(|o| o.err);
                let got = if past {
                    ctx.wait_deadline(self.clock.base)
                } else {
                    ctx.wait_timeout(Duration::ZERO)
                };
                assert_eq!(got, expected, "{}: wait on {ctx:?}", self.at());
            }
            Op::WaitIfDone(n) => {
                let Some((ctx, m)) = self.slot_ctx(n) else {
                    return;
                };
                match self.outcome_of(Some(m)) {
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
                let Some((ctx, m)) = self.slot_ctx(n) else {
                    return;
                };
                self.check_debug(&ctx, m);
            }
        }
    }

    fn slot_ctx(&self, n: u8) -> Option<(Context, usize)> {
        let i = self.pick_slot(n)?;
        let slot = &self.slots[i];
        slot.ctx.clone().map(|c| (c, slot.node))
    }

    /// Polls a `done()` future and checks the result. True if pending.
    fn poll_checked(&self, m: usize, fut: &mut Done, waker: &Arc<CountingWaker>) -> bool {
        let expected = self.outcome_of(Some(m)).map(|o| o.err);
        match (poll_done(fut, waker), expected) {
            (Poll::Ready(e), Some(x)) => {
                assert_eq!(e, x, "{}: done() result", self.at());
                false
            }
            (Poll::Pending, None) => true,
            (got, want) => panic!("{}: done() polled {got:?}, model says {want:?}", self.at()),
        }
    }

    fn check_debug(&self, ctx: &Context, m: usize) {
        let text = format!("{ctx:?}");
        let node = &self.nodes[m];
        let prefix = if node.todo {
            "context.TODO"
        } else {
            "context.Background"
        };
        assert!(text.starts_with(prefix), "{}: Debug {text}", self.at());
        let ok = match node.kind {
            Kind::Cancel => text.ends_with(".WithCancel"),
            Kind::Deadline => text.contains(".WithDeadline(") && text.ends_with("])"),
            Kind::Merge => text.contains(".Merge(") && text.ends_with(')'),
            Kind::Value(k) => text.ends_with(&format!(
                ".WithValue({})",
                [
                    std::any::type_name::<Key<0>>(),
                    std::any::type_name::<Key<1>>(),
                    std::any::type_name::<Key<2>>(),
                ][k]
            )),
            Kind::Detached => text.ends_with(".WithoutCancel"),
        };
        assert!(ok, "{}: Debug of a {:?} node: {text}", self.at(), node.kind);
    }

    /// Model nodes some live handle, future or callback can still reach.
    fn reachable(&self) -> Vec<bool> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = Vec::new();
        stack.extend(self.slots.iter().map(|s| s.node));
        stack.extend(self.roots.iter().map(|r| r.0));
        stack.extend(self.dones.iter().map(|d| d.node));
        for cb in &self.cbs {
            // A pending callback holds its context (captured) and its scope
            // (as a registration); an unlinked one only until its handle
            // goes.
            if cb.state == CbState::Pending && (cb.scope.is_some() || cb.handle.is_some()) {
                stack.push(cb.node);
            }
        }
        while let Some(m) = stack.pop() {
            if !std::mem::replace(&mut seen[m], true) {
                stack.extend(self.nodes[m].holds.iter().copied());
            }
        }
        seen
    }

    fn check_ctx(&mut self, ctx: &Context, m: usize) {
        let at = self.at();
        let expected = self.outcome_of(Some(m));
        match expected {
            None => {
                assert!(!ctx.is_done(), "{at}: {ctx:?} (node {m}) should be live");
                assert_eq!(ctx.err(), Ok(()), "{at}: node {m}");
                assert!(ctx.cause().is_none(), "{at}: node {m} has a cause");
            }
            Some(o) => {
                assert!(ctx.is_done(), "{at}: {ctx:?} (node {m}) should be done");
                assert_eq!(ctx.err(), Err(o.err), "{at}: node {m} {ctx:?}");
                let cause = ctx.cause().expect("a done context has a cause");
                assert_eq!(cause_kind(&cause), Some(o.cause), "{at}: node {m} cause");
                let first = self.causes.entry(o.id).or_insert_with(|| cause.clone());
                assert!(
                    Arc::ptr_eq(first, &cause),
                    "{at}: node {m} {ctx:?}: not the same cause Arc as the rest of its cancellation"
                );
            }
        }
        let node = &self.nodes[m];
        match (node.deadline, ctx.deadline()) {
            (None, None) => {}
            (Some(d), Some(got)) if d.contains(got) => {}
            (want, got) => panic!("{at}: node {m} deadline {got:?}, model {want:?}"),
        }
        let values = [
            ctx.value::<Key<0>>().map(|k| k.0),
            ctx.value::<Key<1>>().map(|k| k.0),
            ctx.value::<Key<2>>().map(|k| k.0),
        ];
        assert_eq!(values, node.values, "{at}: node {m} values");
    }

    fn check(&mut self) {
        let live: Vec<(Context, usize)> = self
            .slots
            .iter()
            .filter_map(|s| s.ctx.clone().map(|c| (c, s.node)))
            .collect();
        for (ctx, m) in &live {
            self.check_ctx(ctx, *m);
        }
        drop(live);
        let at = self.at();
        for (i, cb) in self.cbs.iter().enumerate() {
            let runs = cb.runs.load(Ordering::SeqCst);
            let want = usize::from(cb.state == CbState::Ran);
            assert_eq!(runs, want, "{at}: callback {i} ({:?}) runs", cb.state);
        }
        for d in &self.dones {
            if d.polled_pending && self.outcome_of(Some(d.node)).is_some() {
                assert!(
                    d.waker.0.load(Ordering::SeqCst) > 0,
                    "{at}: a pending done() of node {} was not woken",
                    d.node
                );
            }
        }
        let reach = self.reachable();
        let mut armed = 0;
        for (m, node) in self.nodes.iter().enumerate() {
            if let Some(flag) = &node.dropped {
                assert_eq!(
                    flag.load(Ordering::SeqCst),
                    !reach[m],
                    "{at}: value of node {m} dropped != unreachable"
                );
            }
            if node.kind == Kind::Deadline && reach[m] && node.outcome.is_none() {
                armed += 1;
            }
        }
        assert_eq!(
            armed_timers(),
            self.timers_before + armed,
            "{at}: armed timers (cancelled or dropped deadlines disarm at once)"
        );
    }

    fn teardown(mut self, live_before: isize) {
        // Cancel every root: every callback on a cancellable scope runs.
        for (m, h) in std::mem::take(&mut self.roots) {
            h.cancel();
            self.cancel_model(m, Error::Canceled, CauseKind::Default(Error::Canceled));
            self.roots.push((m, h));
        }
        self.check();
        for (i, cb) in self.cbs.iter_mut().enumerate() {
            if let Some(h) = cb.handle.take() {
                let expected = cb.state == CbState::Pending;
                assert_eq!(h.stop(), expected, "teardown: stop() of callback {i}");
            }
            assert!(
                cb.state != CbState::Pending || cb.scope.is_none(),
                "teardown: model bug: callback {i} on a cancellable scope is still pending"
            );
        }
        let flags: Vec<Arc<AtomicBool>> = self
            .nodes
            .iter()
            .filter_map(|n| n.dropped.clone())
            .collect();
        let cbs: Vec<Arc<AtomicUsize>> = self.cbs.iter().map(|c| Arc::clone(&c.runs)).collect();
        let states: Vec<CbState> = self.cbs.iter().map(|c| c.state).collect();
        drop(self.dones);
        drop(self.slots);
        drop(self.roots);
        drop(self.cbs);
        for (i, f) in flags.iter().enumerate() {
            assert!(f.load(Ordering::SeqCst), "teardown: value {i} not dropped");
        }
        for (i, (runs, state)) in cbs.iter().zip(states).enumerate() {
            let want = usize::from(state == CbState::Ran);
            assert_eq!(runs.load(Ordering::SeqCst), want, "teardown: callback {i}");
        }
        assert_eq!(
            armed_timers(),
            self.timers_before,
            "teardown: every timer entry is removed"
        );
        let live = flush_until_at_most(live_before);
        assert!(
            live <= live_before,
            "teardown: {} nodes leaked",
            live - live_before
        );
    }
}

// ---- two threads on one forest --------------------------------------------------

/// What the shared forest knows about a node.
#[derive(Clone)]
struct SNode {
    cancellable: bool,
    scope: Option<usize>,
    /// Scopes whose cancellation reaches this node.
    from: Vec<usize>,
    /// Nodes held alive (for ancestor questions).
    holds: Vec<usize>,
}

struct SSlot {
    node: usize,
    ctx: Option<Context>,
    handle: Option<CancelHandle>,
}

struct SCb {
    runs: Arc<AtomicUsize>,
    stopped: bool,
    handle: Option<AfterFunc>,
}

#[derive(Default)]
struct Forest {
    nodes: Vec<SNode>,
    slots: Vec<SSlot>,
    roots: Vec<CancelHandle>,
    cbs: Vec<SCb>,
    /// Which node each tag's cancellation targets.
    tags: HashMap<u32, usize>,
    values_made: usize,
}

struct Shared {
    forest: Mutex<Forest>,
    /// What each thread did, in roughly the order it did it (printed when a
    /// quiescent check fails).
    log: Mutex<Vec<String>>,
    values_dropped: Arc<AtomicUsize>,
    tags: AtomicU32,
    clock: Clock,
}

/// A value that counts its drops in the shared forest.
struct Counted(Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn log(&self, what: String) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{name}: {what}"));
    }

    fn dump_log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    fn lock(&self) -> MutexGuard<'_, Forest> {
        self.forest.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_tag(&self, deadline: bool, target: Option<usize>) -> Tag {
        let tag = Tag {
            id: self.tags.fetch_add(1, Ordering::Relaxed) + 1,
            deadline,
        };
        if let Some(t) = target {
            self.lock().tags.insert(tag.id, t);
        }
        tag
    }
}

impl Forest {
    fn pick(&self, n: u8) -> Option<usize> {
        (!self.slots.is_empty()).then(|| usize::from(n) % self.slots.len())
    }

    fn parent(&self, p: Parent) -> Option<(Context, Option<usize>)> {
        match p {
            Parent::Background => Some((Context::background(), None)),
            Parent::Todo => Some((Context::todo(), None)),
            Parent::Slot(n) => match self.pick(n) {
                None => Some((Context::background(), None)),
                Some(i) => {
                    let s = &self.slots[i];
                    s.ctx.clone().map(|c| (c, Some(s.node)))
                }
            },
        }
    }

    fn scope(&self, m: Option<usize>) -> Option<usize> {
        m.and_then(|m| self.nodes[m].scope)
    }

    /// Registers a node derived outside the lock.
    fn add(
        &mut self,
        cancellable: bool,
        detached: bool,
        parents: [Option<usize>; 2],
        ctx: Context,
        handle: Option<CancelHandle>,
    ) -> usize {
        let id = self.nodes.len();
        let from: Vec<usize> = if cancellable {
            let mut f: Vec<usize> = parents.iter().filter_map(|&p| self.scope(p)).collect();
            f.dedup();
            f
        } else {
            Vec::new()
        };
        let scope = if cancellable {
            Some(id)
        } else if detached {
            None
        } else {
            self.scope(parents[0])
        };
        if cancellable && from.is_empty() {
            self.roots
                .push(handle.clone().expect("cancellable nodes have handles"));
        }
        self.nodes.push(SNode {
            cancellable,
            scope,
            from,
            holds: parents.iter().flatten().copied().collect(),
        });
        if self.slots.len() < MAX_SLOTS {
            self.slots.push(SSlot {
                node: id,
                ctx: Some(ctx),
                handle,
            });
        }
        id
    }

    /// Nodes whose outcome the cancellation of `m` reaches (`m` included):
    /// cancellable descendants through `from`, and value nodes in scope.
    fn cancel_reach(&self, m: usize) -> Vec<bool> {
        let mut hit = vec![false; self.nodes.len()];
        hit[m] = true;
        for j in m + 1..self.nodes.len() {
            let n = &self.nodes[j];
            hit[j] = if n.cancellable {
                n.from.iter().any(|&p| hit[p])
            } else {
                n.scope.is_some_and(|s| hit[s])
            };
        }
        hit
    }

    /// Whether `a` is `b` or one of the nodes `b` holds, transitively.
    fn is_ancestor_or_self(&self, a: usize, b: usize) -> bool {
        let mut stack = vec![b];
        let mut seen = vec![false; self.nodes.len()];
        while let Some(x) = stack.pop() {
            if x == a {
                return true;
            }
            if !std::mem::replace(&mut seen[x], true) {
                stack.extend(self.nodes[x].holds.iter().copied());
            }
        }
        false
    }
}

/// Checks what holds of one context under any interleaving.
fn check_consistent(shared: &Shared, ctx: &Context, m: usize) {
    let err = ctx.err();
    let cause = ctx.cause();
    let done = ctx.is_done();
    let err2 = ctx.err();
    if let Err(e) = err {
        assert!(
            cause.is_some(),
            "{ctx:?}: err() is {e:?} but cause() is None"
        );
        assert!(done, "{ctx:?}: err() is {e:?} but is_done() is false later");
        assert_eq!(err2, err, "{ctx:?}: err() changed after done");
    }
    if let Some(cause) = cause {
        let e = err2.expect_err("cause() was Some, so err() must be Err later");
        match cause_kind(&cause) {
            Some(CauseKind::Default(d)) => assert_eq!(d, e, "{ctx:?}: default cause vs err"),
            Some(CauseKind::Tag(tag)) => {
                let want = if tag.deadline {
                    Error::DeadlineExceeded
                } else {
                    Error::Canceled
                };
                assert_eq!(e, want, "{ctx:?}: cause {tag} vs err");
                let f = shared.lock();
                if let Some(&target) = f.tags.get(&tag.id) {
                    assert!(
                        f.is_ancestor_or_self(target, m),
                        "{ctx:?} (node {m}) carries {tag}, which cancelled node {target}, not an ancestor"
                    );
                }
            }
            None => panic!("{ctx:?}: unknown cause {cause:?}"),
        }
    }
}

/// A `done()` future a thread made, with its context and waker.
struct ThreadDone {
    node: usize,
    ctx: Context,
    fut: Done,
    waker: Arc<CountingWaker>,
    /// The last poll returned `Pending`: a wake-up is owed once done. (A
    /// later poll that returned `Ready` settles it: a poll racing with the
    /// cancel may see done and drop its listener before the notifier gets
    /// to it, and that is fine.)
    polled_pending: bool,
}

fn thread_op(shared: &Shared, op: Op, dones: &mut Vec<ThreadDone>) {
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
                    Op::Merge(_, q) => f.parent(q),
                    _ => None,
                };
                (f.parent(p), other)
            };
            let Some((pc, pm)) = parent else { return };
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
                    (c, Some(h), true, false, om)
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
                let Some(i) = f.pick(n) else { return };
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
                let Some(i) = f.pick(n) else { return };
                let slot = &mut f.slots[i];
                let taken = if matches!(op, Op::DropCtx(_)) {
                    (slot.ctx.take(), None)
                } else {
                    (None, slot.handle.take())
                };
                if slot.ctx.is_none() && slot.handle.is_none() {
                    f.slots.swap_remove(i);
                }
                taken
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
            let mut fut = ctx.done();
            let waker = Arc::new(CountingWaker::default());
            let was_done = ctx.is_done();
            let polled_pending = match poll_done(&mut fut, &waker) {
                Poll::Ready(e) => {
                    assert_eq!(Err(e), ctx.err(), "done() result");
                    false
                }
                Poll::Pending => {
                    assert!(!was_done, "done() pending on a done context");
                    true
                }
            };
            shared.log(format!("done() on node {m}: pending {polled_pending}"));
            dones.push(ThreadDone {
                node: m,
                ctx,
                fut,
                waker,
                polled_pending,
            });
        }
        Op::PollDone(n) => {
            if let Some(i) = (!dones.is_empty()).then(|| usize::from(n) % dones.len()) {
                let d = &mut dones[i];
                let was_done = d.ctx.is_done();
                match poll_done(&mut d.fut, &d.waker) {
                    Poll::Ready(e) => {
                        assert_eq!(Err(e), d.ctx.err(), "done() result");
                        d.polled_pending = false;
                    }
                    Poll::Pending => {
                        assert!(!was_done, "done() pending on a done context");
                        d.polled_pending = true;
                    }
                }
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

fn slot_ctx(shared: &Shared, n: u8) -> Option<(Context, usize)> {
    let f = shared.lock();
    let i = f.pick(n)?;
    f.slots[i].ctx.clone().map(|c| (c, f.slots[i].node))
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
    let shared = Arc::new(Shared {
        forest: Mutex::new(Forest::default()),
        log: Mutex::new(Vec::new()),
        values_dropped: Arc::new(AtomicUsize::new(0)),
        tags: AtomicU32::new(0),
        clock: Clock::new(),
    });
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
                    let ctxs: Vec<(Context, usize)> = {
                        let f = shared.lock();
                        f.slots
                            .iter()
                            .filter_map(|s| s.ctx.clone().map(|c| (c, s.node)))
                            .collect()
                    };
                    for (ctx, m) in &ctxs {
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
        if d.polled_pending && d.ctx.is_done() {
            assert!(
                d.waker.0.load(Ordering::SeqCst) > 0,
                "a pending done() of node {} {:?} was not woken; log:\n{}",
                d.node,
                d.ctx,
                shared.dump_log()
            );
        }
    }
    drop(dones);
    // Quiescent: every context a done one reaches is done, and carries the
    // same cause Arc as the node its tag cancelled (when that one is held).
    let (ctxs, reach): (Vec<(Context, usize)>, Vec<Vec<bool>>) = {
        let f = shared.lock();
        let ctxs: Vec<_> = f
            .slots
            .iter()
            .filter_map(|s| s.ctx.clone().map(|c| (c, s.node)))
            .collect();
        let reach = ctxs.iter().map(|(_, m)| f.cancel_reach(*m)).collect();
        (ctxs, reach)
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
    // Teardown: cancel every root, stop every callback.
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
