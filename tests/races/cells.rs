//! The axes of the race matrix, the product of them, and what each cell
//! builds, does and checks.
//!
//! Every case is a fresh little tree, built by the builder thread:
//!
//! ```text
//! G (grandparent, cancellable)
//! └── P (parent, cancellable)
//!     └── N (the node: with_cancel, or a merge with another root Q, or a
//!         │  deadline node)
//!         └── the shape's subtree, reached through the *target* context
//!            that thread A owns (N itself, or a value layer on N)
//! ```
//!
//! Thread B cancels where the landing says (or fires N's deadline; or the
//! timer thread does), thread A does the action to the target and then
//! drops everything it owns, in one of three orders. The builder keeps only
//! counters, so the last drop of every node happens on A or B (or inside
//! the walk), never on the builder.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

use ctxtree::{__private, AfterFunc, CancelHandle, Cause, Context, Done, Error};

use super::harness::{self, spin, Budget, Patience, Report, Rng, TimerPlan};

// ---- The axes ---------------------------------------------------------------

/// What hangs under the node whose subtree is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// N alone.
    Leaf,
    /// A pending `Done` registered on the target (a waiter entry in N's
    /// list), owned by A and dropped with the target.
    Waiter,
    /// An `after_func` on the target; A owns its `AfterFunc`.
    AfterFunc,
    /// A child of the target and a grandchild under it, owned by A.
    Children,
    /// A child C of the target whose list holds only a marked grandchild:
    /// two grandchildren were made, the older dropped (marked, not at the
    /// head, so it stays linked) then the newer (unlinked at the head).
    /// A owns C (issue 9 §1: the drain's immediate free of the grandchild).
    MarkedGrandchild,
    /// A value layer on N (the target) and a cancellable child under it.
    Value,
    /// N is `P.merge(&Q)` with Q the root of another tree.
    Merged,
    /// N is a deadline node (its timer armed: far away unless the timer
    /// thread is the landing) with a child and a grandchild under it, owned
    /// by A, so that a firing has a list to walk into.
    Deadline,
    /// N (and its older siblings) hang under the builder's proxy of P
    /// (`__private::install_proxy`, docs/SCALING.md), with a child and a
    /// grandchild under N owned by A; B also holds P itself and drops it
    /// after its landing: the kill (P's last observer emptying its slots)
    /// races A's drops and the walk.
    Proxied,
}

/// Where the cancellation lands (who walks into the subtree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landing {
    /// B cancels N's own handle.
    Node,
    /// B cancels P.
    Parent,
    /// B cancels G.
    Grandparent,
    /// B cancels Q, N's merge partner.
    MergePartner,
    /// B fires N's deadline through `__private::fire_deadline` (the code
    /// the timer thread runs, at the barrier's precision).
    FireHook,
    /// The timer thread fires N's deadline (a real, short deadline).
    Timer,
}

/// How A waits in [`Action::WaitDrop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitKind {
    /// `wait()`.
    Thread,
    /// `wait_timeout(long)`.
    Timeout,
    /// `futures::executor::block_on(done())`.
    Future,
    /// `block_on(run_until_done(pending))`.
    RunUntilDone,
}

/// What a task waker registered on the target does from inside its `wake`
/// ([`Action::Reenter`], issue 9 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reentry {
    /// Cancels N.
    CancelSelf,
    /// Cancels P.
    CancelParent,
    /// Cancels a context of another tree.
    CancelUnrelated,
    /// Derives a child of the target and drops it.
    Derive,
    /// Drops the waker's own clone of the target.
    Drop,
    /// Polls a new `done()` on the target and calls `wait_timeout(0)`.
    PollNewDone,
}

/// What thread A does to the target (then it drops all it owns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Drops at once.
    Drop,
    /// Spins on `is_done()` until the target is done, then drops at once:
    /// the tightest "woken waiter drops its context" there is.
    WatchDrop,
    /// Waits until done, checks the outcome, drops.
    WaitDrop(WaitKind),
    /// Derives a child of the target and drops it.
    DeriveDrop,
    /// Polls a new `done()` once and drops it.
    PollDoneOnce,
    /// `stop()`s the `AfterFunc`.
    StopAfterFunc,
    /// Cancels another node of the same tree: N (or P when B cancels N).
    CancelOther,
    /// Reads `err()`, `cause()` and `value()`.
    Read,
    /// A waker registered on the target re-enters the crate when woken; A
    /// waits, then drops.
    Reenter(Reentry),
    /// Moves N's deadline later (`set_deadline`): with the timer landing,
    /// a little past the deadline it races (the move against the timer's
    /// claim); else from far to farther.
    MoveLater,
    /// Moves N's deadline earlier, to within 200 µs from now: the timer
    /// fires it, racing B's landing (and the drops).
    MoveEarlier,
    /// Arms a timeout child of the target, due within 300 µs, in A's own
    /// timer shard, while the timer thread scans or sleeps (a sleeping
    /// thread must be woken for it, invariant 10s) and B's landing
    /// cancels the target; waits for the child, checks it was done in
    /// time, drops it.
    ArmShort,
}

impl Shape {
    pub const ALL: [Shape; 9] = [
        Shape::Leaf,
        Shape::Waiter,
        Shape::AfterFunc,
        Shape::Children,
        Shape::MarkedGrandchild,
        Shape::Value,
        Shape::Merged,
        Shape::Deadline,
        Shape::Proxied,
    ];

    fn name(self) -> &'static str {
        match self {
            Shape::Leaf => "leaf",
            Shape::Waiter => "waiter",
            Shape::AfterFunc => "after-func",
            Shape::Children => "children",
            Shape::MarkedGrandchild => "marked-grandchild",
            Shape::Value => "value",
            Shape::Merged => "merged",
            Shape::Deadline => "deadline",
            Shape::Proxied => "proxied",
        }
    }
}

impl Landing {
    pub const ALL: [Landing; 6] = [
        Landing::Node,
        Landing::Parent,
        Landing::Grandparent,
        Landing::MergePartner,
        Landing::FireHook,
        Landing::Timer,
    ];

    fn name(self) -> &'static str {
        match self {
            Landing::Node => "node",
            Landing::Parent => "parent",
            Landing::Grandparent => "grandparent",
            Landing::MergePartner => "merge-partner",
            Landing::FireHook => "fire-hook",
            Landing::Timer => "timer",
        }
    }

    /// The error and cause tag a walk from here leaves.
    fn outcome(self) -> (Error, Tag) {
        match self {
            Landing::FireHook | Landing::Timer => (Error::DeadlineExceeded, Tag::Deadline),
            _ => (Error::Canceled, Tag::B),
        }
    }
}

impl Action {
    pub const ALL: [Action; 20] = [
        Action::Drop,
        Action::WatchDrop,
        Action::WaitDrop(WaitKind::Thread),
        Action::WaitDrop(WaitKind::Timeout),
        Action::WaitDrop(WaitKind::Future),
        Action::WaitDrop(WaitKind::RunUntilDone),
        Action::DeriveDrop,
        Action::PollDoneOnce,
        Action::StopAfterFunc,
        Action::CancelOther,
        Action::Read,
        Action::Reenter(Reentry::CancelSelf),
        Action::Reenter(Reentry::CancelParent),
        Action::Reenter(Reentry::CancelUnrelated),
        Action::Reenter(Reentry::Derive),
        Action::Reenter(Reentry::Drop),
        Action::Reenter(Reentry::PollNewDone),
        Action::MoveLater,
        Action::MoveEarlier,
        Action::ArmShort,
    ];

    fn name(self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::WatchDrop => "watch-drop",
            Action::WaitDrop(WaitKind::Thread) => "wait-drop",
            Action::WaitDrop(WaitKind::Timeout) => "wait-timeout-drop",
            Action::WaitDrop(WaitKind::Future) => "done-future-drop",
            Action::WaitDrop(WaitKind::RunUntilDone) => "run-until-done-drop",
            Action::DeriveDrop => "derive-drop",
            Action::PollDoneOnce => "poll-done-once",
            Action::StopAfterFunc => "stop-after-func",
            Action::CancelOther => "cancel-other",
            Action::Read => "read",
            Action::Reenter(Reentry::CancelSelf) => "waker-cancels-self",
            Action::Reenter(Reentry::CancelParent) => "waker-cancels-parent",
            Action::Reenter(Reentry::CancelUnrelated) => "waker-cancels-unrelated",
            Action::Reenter(Reentry::Derive) => "waker-derives",
            Action::Reenter(Reentry::Drop) => "waker-drops",
            Action::Reenter(Reentry::PollNewDone) => "waker-polls-new-done",
            Action::MoveLater => "move-deadline-later",
            Action::MoveEarlier => "move-deadline-earlier",
            Action::ArmShort => "arm-short-timeout",
        }
    }
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub shape: Shape,
    pub landing: Landing,
    pub action: Action,
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.shape.name(),
            self.landing.name(),
            self.action.name()
        )
    }
}

impl Cell {
    /// Why this combination cannot be built, if it cannot. The only
    /// impossible combinations: a landing or an action that needs a part
    /// the shape does not have.
    pub fn impossible(&self) -> Option<&'static str> {
        match (self.shape, self.landing, self.action) {
            (s, Landing::MergePartner, _) if s != Shape::Merged => {
                Some("only a merge node has a merge partner")
            }
            (s, Landing::FireHook | Landing::Timer, _)
                if s != Shape::Deadline && s != Shape::Proxied =>
            {
                Some("only a deadline node (N, or P in the proxied shape) has a timer to fire")
            }
            (s, _, Action::StopAfterFunc) if s != Shape::AfterFunc => {
                Some("only the after-func shape has an AfterFunc to stop")
            }
            (s, _, Action::MoveLater | Action::MoveEarlier) if s != Shape::Deadline => {
                Some("only a deadline node has a deadline to move")
            }
            _ => None,
        }
    }

    /// True for the re-entrant waker column (issue 9 §5), run by its own
    /// test, `race_matrix_reentrant_wakers` (it deadlocked before wakers
    /// ran with nothing held).
    pub fn reentrant(&self) -> bool {
        matches!(self.action, Action::Reenter(_))
    }

    /// The (error, cause tag) pairs the target may end with.
    fn allowed(&self) -> Vec<(Error, Tag)> {
        let mut v = vec![self.landing.outcome()];
        if self.action == Action::CancelOther {
            v.push((Error::Canceled, Tag::A));
        }
        if self.action == Action::MoveEarlier {
            v.push((Error::DeadlineExceeded, Tag::Deadline));
        }
        v.dedup();
        v
    }
}

/// Every combination of the three axes, impossible ones included (the
/// runner skips those, see [`Cell::impossible`]).
pub fn product() -> Vec<Cell> {
    let mut cells = Vec::new();
    for shape in Shape::ALL {
        for landing in Landing::ALL {
            for action in Action::ALL {
                cells.push(Cell {
                    shape,
                    landing,
                    action,
                });
            }
        }
    }
    cells
}

// ---- Counters ---------------------------------------------------------------

/// Made/dropped counts of one kind of user object.
#[derive(Default)]
pub struct Pair {
    made: AtomicUsize,
    dropped: AtomicUsize,
}

impl Pair {
    fn check(&self, what: &str) -> Result<(), String> {
        // SeqCst: read after the threads that count have been joined or
        // have reported through a channel; any ordering would do.
        let made = self.made.load(Ordering::SeqCst);
        let dropped = self.dropped.load(Ordering::SeqCst);
        if made == dropped {
            Ok(())
        } else {
            Err(format!("{what}: {made} made, {dropped} dropped"))
        }
    }
}

/// What one cell made of user objects, and what was dropped.
#[derive(Default)]
pub struct Tally {
    causes: Pair,
    values: Pair,
    callbacks: Pair,
    /// Wakes of re-entrant wakers, over the whole cell.
    reentered: AtomicUsize,
}

/// Counts its making and its drop in one of the tally's pairs.
struct Counted {
    tally: Arc<Tally>,
    pair: fn(&Tally) -> &Pair,
}

impl Counted {
    fn new(tally: &Arc<Tally>, pair: fn(&Tally) -> &Pair) -> Counted {
        pair(tally).made.fetch_add(1, Ordering::SeqCst);
        Counted {
            tally: Arc::clone(tally),
            pair,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.pair)(&self.tally)
            .dropped
            .fetch_add(1, Ordering::SeqCst);
    }
}

/// Who gave a cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    /// Thread B's cancel.
    B,
    /// Thread A's cancel ([`Action::CancelOther`]).
    A,
    /// The deadline node's own cause.
    Deadline,
    /// A re-entrant waker's cancel.
    Waker,
}

/// A cause that says who gave it, in which round, and counts its drop.
#[derive(Debug)]
struct Tagged {
    tag: Tag,
    round: usize,
    _count: Counted,
}

impl fmt::Debug for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counted")
    }
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} in round {}", self.tag, self.round)
    }
}

impl std::error::Error for Tagged {}

fn cause(tag: Tag, round: usize, tally: &Arc<Tally>) -> Tagged {
    Tagged {
        tag,
        round,
        _count: Counted::new(tally, |t| &t.causes),
    }
}

/// The value of the value layer: a word to read back, and a drop count.
struct Payload {
    round: usize,
    _count: Counted,
}

/// Per-case results the sides record and the batch check reads.
#[derive(Default)]
pub struct Slot {
    /// Runs of the after_func callback.
    ran: AtomicUsize,
    /// `stop()` returned true.
    stopped: AtomicBool,
    /// Wakes of the waiter shape's registered `Done`.
    wakes: AtomicUsize,
    /// Wakes of the re-entrant waker.
    reentered: AtomicUsize,
    /// The deadline a move set (`set_deadline` returned true), timer
    /// landing.
    moved_to: Mutex<Option<Instant>>,
    /// When the firing woke the move's probe ([`WakeClock`]).
    woke_at: Mutex<Option<Instant>>,
    /// The probe's `Done`, kept past A's drops in half the rounds of the
    /// timer landing, so that the firing happens and its time is checked
    /// (in the other half the node dies with A's drops, racing the move
    /// and the timer).
    kept: Mutex<Option<Done>>,
}

/// A task waker that records when it is first woken.
struct WakeClock(Arc<Slot>);

impl Wake for WakeClock {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let mut at = self
            .0
            .woke_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        at.get_or_insert_with(Instant::now);
    }
}

/// A task waker that counts its wakes in a slot.
struct SlotWaker(Arc<Slot>);

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

// ---- Case parts ---------------------------------------------------------------

/// Thread A's part of a case.
pub struct PartA {
    round: usize,
    target: Context,
    /// Descendants of the target (children, marked, value, deadline shapes).
    below: Vec<Context>,
    /// The waiter shape's registered `Done`.
    waiter: Option<Done>,
    after: Option<AfterFunc>,
    /// What [`Action::CancelOther`] cancels.
    other: Option<CancelHandle>,
    /// N's handle, for [`Action::MoveLater`] and [`Action::MoveEarlier`].
    mover: Option<CancelHandle>,
    /// The `Done` registered with a re-entrant waker.
    reentrant: Option<Done>,
    slot: Arc<Slot>,
}

/// Thread B's part of a case.
pub struct PartB {
    round: usize,
    cancel: Option<CancelHandle>,
    fire: Option<Context>,
    /// Older siblings of N (the first `parent_siblings`), then of the
    /// shape's child.
    siblings: Vec<Context>,
    parent_siblings: usize,
    /// P itself (the proxied shape), dropped after the landing.
    parent: Option<Context>,
    /// B's cancel covers P's subtree, N's siblings included.
    cancels_parent: bool,
}

/// Polls `fut` once with `waker`.
fn poll_once<F: Future + Unpin>(fut: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut std::task::Context::from_waker(waker))
}

/// Builds one case of `cell` for `round`; `deadline` is N's deadline in the
/// deadline shape.
fn build(
    cell: Cell,
    round: usize,
    deadline: Instant,
    rng: &mut Rng,
    tally: &Arc<Tally>,
) -> (PartA, PartB, Arc<Slot>) {
    let slot = Arc::new(Slot::default());
    let (g, gh) = Context::background().with_cancel();
    // In the proxied shape the timer landings fire P's deadline: the timer
    // reaches P through `try_acquire` while B's drop of P (the kill) and
    // A's drops race it, so it may find P's observers gone and take a hold
    // (invariant 13k).
    let p_fires =
        cell.shape == Shape::Proxied && matches!(cell.landing, Landing::FireHook | Landing::Timer);
    let (p, ph) = if p_fires {
        g.with_deadline_cause(deadline, cause(Tag::Deadline, round, tally))
    } else {
        g.with_cancel()
    };
    drop(g);
    // Proxies need two CPUs (outside loom); on one, the shape is the
    // children shape.
    let proxied = cell.shape == Shape::Proxied && __private::install_proxy(&p);
    // Older siblings of N (owned by B; usually 0 to 3, one case in four up
    // to 31): the walk of P visits N first and then them, so the time
    // between the walk reaching N and entering N's list varies from case
    // to case, from nothing to about a microsecond.
    let n_siblings = match rng.below(4) {
        0 => rng.below(32),
        _ => rng.below(4),
    };
    let mut siblings: Vec<Context> = (0..n_siblings).map(|_| p.with_cancel().0).collect();
    let parent_siblings = siblings.len();
    let mut partner = None;
    let (n, nh) = match cell.shape {
        Shape::Merged => {
            let (q, qh) = Context::background().with_cancel();
            partner = Some(qh);
            p.merge(&q)
        }
        Shape::Deadline => p.with_deadline_cause(deadline, cause(Tag::Deadline, round, tally)),
        _ => p.with_cancel(),
    };
    if proxied {
        assert!(
            __private::is_proxied(&n),
            "{cell}: N is not under the proxy"
        );
        let text = format!("{n:?}");
        assert_eq!(
            text.matches(".With").count(),
            3,
            "{cell}: the proxy shows in {text}"
        );
    }
    let parent = (cell.shape == Shape::Proxied).then(|| p.clone());
    let fire =
        (cell.landing == Landing::FireHook).then(|| if p_fires { p.clone() } else { n.clone() });
    drop(p);
    let target = match cell.shape {
        Shape::Value => n.with_value(Payload {
            round,
            _count: Counted::new(tally, |t| &t.values),
        }),
        _ => n.clone(),
    };
    let mut a = PartA {
        round,
        target,
        below: Vec::new(),
        waiter: None,
        after: None,
        other: None,
        mover: None,
        reentrant: None,
        slot: Arc::clone(&slot),
    };
    if matches!(
        cell.shape,
        Shape::Children | Shape::MarkedGrandchild | Shape::Value | Shape::Deadline | Shape::Proxied
    ) {
        // The same one level down, for the child the shape adds.
        siblings.extend((0..rng.below(4)).map(|_| a.target.with_cancel().0));
    }
    match cell.shape {
        Shape::Waiter => {
            let mut done = a.target.done();
            let waker = Waker::from(Arc::new(SlotWaker(Arc::clone(&slot))));
            assert!(poll_once(&mut done, &waker).is_pending());
            a.waiter = Some(done);
        }
        Shape::AfterFunc => {
            let (slot, count) = (Arc::clone(&slot), Counted::new(tally, |t| &t.callbacks));
            a.after = Some(a.target.after_func(move || {
                slot.ran.fetch_add(1, Ordering::SeqCst);
                drop(count);
            }));
        }
        Shape::Children | Shape::Deadline | Shape::Proxied => {
            let (c, _) = a.target.with_cancel();
            let (gc, _) = c.with_cancel();
            a.below = vec![c, gc];
        }
        Shape::MarkedGrandchild => {
            let (c, _) = a.target.with_cancel();
            let older = c.with_cancel();
            let newer = c.with_cancel();
            drop(older); // not the head: marked, stays linked
            drop(newer); // the head: unlinked at once
            a.below = vec![c];
        }
        Shape::Value => {
            let (w, _) = a.target.with_cancel();
            a.below = vec![w];
        }
        Shape::Leaf | Shape::Merged => {}
    }
    let mut b = PartB {
        round,
        cancel: None,
        fire: None,
        siblings,
        parent_siblings,
        parent,
        cancels_parent: matches!(cell.landing, Landing::Parent | Landing::Grandparent),
    };
    match cell.landing {
        Landing::Node => b.cancel = Some(nh.clone()),
        Landing::Parent => b.cancel = Some(ph.clone()),
        Landing::Grandparent => b.cancel = Some(gh.clone()),
        Landing::MergePartner => b.cancel = partner.take(),
        Landing::FireHook => b.fire = fire,
        Landing::Timer => {}
    }
    if cell.action == Action::CancelOther {
        a.other = Some(if cell.landing == Landing::Node {
            ph.clone()
        } else {
            nh.clone()
        });
    }
    if matches!(cell.action, Action::MoveLater | Action::MoveEarlier) {
        a.mover = Some(nh.clone());
    }
    if let Action::Reenter(op) = cell.action {
        let waker = Arc::new(Reentrant {
            op,
            round,
            slot: Arc::clone(&slot),
            tally: Arc::clone(tally),
            handle: match op {
                Reentry::CancelSelf => Some(nh.clone()),
                Reentry::CancelParent => Some(ph.clone()),
                Reentry::CancelUnrelated => {
                    let (u, uh) = Context::background().with_cancel();
                    let (_below_u, _) = u.with_cancel();
                    Some(uh)
                }
                _ => None,
            },
            ctx: Mutex::new(match op {
                Reentry::Derive | Reentry::Drop | Reentry::PollNewDone => Some(a.target.clone()),
                _ => None,
            }),
        });
        let mut done = a.target.done();
        let polled = poll_once(&mut done, &Waker::from(waker));
        // Only a real deadline can have passed already (a slow build).
        assert!(polled.is_pending() || cell.landing == Landing::Timer);
        a.reentrant = Some(done);
    }
    (a, b, slot)
}

/// A task waker that re-enters the crate when woken (issue 9 §5).
struct Reentrant {
    op: Reentry,
    round: usize,
    slot: Arc<Slot>,
    tally: Arc<Tally>,
    handle: Option<CancelHandle>,
    ctx: Mutex<Option<Context>>,
}

impl Wake for Reentrant {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.slot.reentered.fetch_add(1, Ordering::SeqCst);
        self.tally.reentered.fetch_add(1, Ordering::SeqCst);
        let ctx = || self.ctx.lock().unwrap_or_else(PoisonError::into_inner);
        match self.op {
            Reentry::CancelSelf | Reentry::CancelParent | Reentry::CancelUnrelated => {
                if let Some(h) = &self.handle {
                    h.cancel_with_cause(cause(Tag::Waker, self.round, &self.tally));
                }
            }
            Reentry::Derive => {
                let target = ctx().clone();
                if let Some(target) = target {
                    let (child, h) = target.with_cancel();
                    assert!(child.is_done(), "a child derived in a wake is not done");
                    drop((child, h, target));
                }
            }
            Reentry::Drop => {
                let target = ctx().take();
                drop(target);
            }
            Reentry::PollNewDone => {
                let target = ctx().clone();
                if let Some(target) = target {
                    let mut done = target.done();
                    let waker = futures::task::noop_waker();
                    assert!(poll_once(&mut done, &waker).is_ready());
                    assert!(target.wait_timeout(Duration::ZERO).is_some());
                    drop((done, target));
                }
            }
        }
    }
}

// ---- The sides ----------------------------------------------------------------

/// The longest a woken waiter may take ([`WaitKind::Timeout`]); the
/// watchdog fires long before, this only keeps the wait bounded.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// How late the `ArmShort` child may fire: the timer's resolution is 1 ms,
/// but the timer and firing threads compete with three spinning threads
/// for two cores (and the sanitizers slow everything).
const ARM_SHORT_LATE: Duration = Duration::from_secs(5);

/// Spins of [`Action::WatchDrop`] before it gives up: B cancels within a
/// few microseconds of the barrier, this is seconds (the watchdog is the
/// real bound).
const WATCH_LIMIT: u32 = 1 << 30;

/// Checks that `ctx` is done with an allowed outcome from `round`, and
/// that `err()` and `cause()` agree; returns the cause.
fn check_done(cell: Cell, ctx: &Context, round: usize, what: &str) -> Cause {
    let err = match ctx.err() {
        Err(e) => e,
        Ok(()) => panic!("{cell}: {what} is not done"),
    };
    let cause = ctx
        .cause()
        .unwrap_or_else(|| panic!("{cell}: {what} is done ({err}) with no cause"));
    let tagged = cause
        .downcast_ref::<Tagged>()
        .unwrap_or_else(|| panic!("{cell}: {what}'s cause is not ours: {cause}"));
    assert_eq!(
        tagged.round, round,
        "{cell}: {what}'s cause is another round's"
    );
    assert!(
        cell.allowed().contains(&(err, tagged.tag)),
        "{cell}: {what} ended with {err:?} and cause {:?}, expected one of {:?}",
        tagged.tag,
        cell.allowed()
    );
    cause
}

/// Checks the target and every descendant A holds: done, same error,
/// the same cause `Arc`. `cancelled` says A's own cancel of an
/// ancestor-or-self returned, so the whole subtree is done already;
/// otherwise A only saw the target done while B's walk may still be on its
/// way down, and waits for each descendant first.
fn check_subtree(cell: Cell, a: &PartA, cancelled: bool) -> Error {
    let cause = check_done(cell, &a.target, a.round, "the target");
    let err = a.target.err().unwrap_err();
    for (i, c) in a.below.iter().enumerate() {
        if !cancelled {
            c.wait();
        }
        assert_eq!(c.err(), Err(err), "{cell}: descendant {i}'s error");
        let theirs = c.cause().expect("done without a cause");
        assert!(
            Arc::ptr_eq(&cause, &theirs),
            "{cell}: descendant {i} has another cause ({theirs}, the target has {cause})"
        );
    }
    err
}

/// Checks the value the target can see.
fn check_value(cell: Cell, ctx: &Context, round: usize) {
    match (cell.shape, ctx.value::<Payload>()) {
        (Shape::Value, Some(v)) => assert_eq!(v.round, round, "{cell}: another round's value"),
        (Shape::Value, None) => panic!("{cell}: the value is gone"),
        (_, None) => {}
        (_, Some(_)) => panic!("{cell}: a value where none was attached"),
    }
}

/// Thread A's side of a round. Its random choices are made before it acts.
/// Between the action and the drops stand only a random spin (none in half
/// the rounds) and, in one round in four, the deep checks: the window in
/// which a walk is inside a node its owner drops can be a few tens of
/// nanoseconds wide, at a distance from the wake-up that depends on what
/// the walk still has to do (the crash of issue 9 needed the dying
/// thread's check of the walk count to fall just before the walker's
/// count), so the drop must come at once or after a spread of delays.
fn side_a(cell: Cell, mut a: PartA, rng: &mut Rng, tally: &Arc<Tally>) {
    let deep = rng.below(4) == 0;
    let after = if rng.below(2) == 0 { 0 } else { rng.offset() };
    let order = rng.below(3);
    let reads = rng.below(4);
    let seen: Option<Error> = match cell.action {
        Action::Drop => None,
        Action::WatchDrop => {
            let mut spins = 0u32;
            let mut patience = Patience::new();
            while !a.target.is_done() {
                spins += 1;
                assert!(spins < WATCH_LIMIT, "{cell}: the target never became done");
                patience.tick();
            }
            None
        }
        Action::WaitDrop(kind) => Some(match kind {
            WaitKind::Thread => a.target.wait(),
            WaitKind::Timeout => a
                .target
                .wait_timeout(WAIT_LIMIT)
                .unwrap_or_else(|| panic!("{cell}: wait_timeout was never woken")),
            WaitKind::Future => futures::executor::block_on(a.target.done()),
            WaitKind::RunUntilDone => {
                let pending = std::future::pending::<()>();
                match futures::executor::block_on(a.target.run_until_done(pending)) {
                    Err(e) => e,
                    Ok(()) => unreachable!("pending() completed"),
                }
            }
        }),
        Action::DeriveDrop => {
            let was_done = a.target.is_done();
            let (child, h) = a.target.with_cancel();
            if was_done {
                assert!(child.is_done(), "{cell}: child of a done context not done");
            }
            if deep && was_done {
                assert_eq!(
                    child.err(),
                    a.target.err(),
                    "{cell}: child of a done context"
                );
                let (mine, theirs) = (child.cause(), a.target.cause());
                assert!(
                    Arc::ptr_eq(&mine.expect("no cause"), &theirs.expect("no cause")),
                    "{cell}: a child derived from a done context has another cause"
                );
                check_value(cell, &child, a.round);
            }
            drop((h, child));
            None
        }
        Action::PollDoneOnce => {
            let mut done = a.target.done();
            let polled = poll_once(&mut done, &futures::task::noop_waker());
            drop(done);
            match polled {
                Poll::Ready(e) => Some(e),
                Poll::Pending => None,
            }
        }
        Action::StopAfterFunc => {
            let stopped = a.after.as_ref().expect("after-func shape").stop();
            a.slot.stopped.store(stopped, Ordering::SeqCst);
            None
        }
        Action::CancelOther => {
            let other = a.other.as_ref().expect("built for cancel-other");
            other.cancel_with_cause(cause(Tag::A, a.round, tally));
            // Both N and P are ancestors-or-self of the target.
            Some(
                a.target
                    .err()
                    .expect_err("done after cancelling an ancestor-or-self"),
            )
        }
        Action::Read => {
            let mut last = None;
            for _ in 0..=reads {
                let (e, c) = (a.target.err(), a.target.cause());
                assert!(
                    e.is_ok() || c.is_some(),
                    "{cell}: err() then cause(): Err, None"
                );
                let (c, e) = (a.target.cause(), a.target.err());
                assert!(
                    c.is_none() || e.is_err(),
                    "{cell}: cause() then err(): Some, Ok"
                );
                let (d, e) = (a.target.is_done(), a.target.err());
                assert!(!d || e.is_err(), "{cell}: is_done() then err(): true, Ok");
                let (e, d) = (a.target.err(), a.target.is_done());
                assert!(e.is_ok() || d, "{cell}: err() then is_done(): Err, false");
                check_value(cell, &a.target, a.round);
                last = e.err();
            }
            last
        }
        Action::Reenter(_) => Some(a.target.wait()),
        Action::ArmShort => {
            let due = Instant::now() + Duration::from_nanos(rng.below(300_000));
            // One under the target (its walk races the arm and the
            // disarm); one round in eight, one on its own too: only the
            // timer can end it, so a missed wake-up shows (the timer then
            // sleeps until its previous target, far away or never, unless
            // something else wakes it). Not every round: each waits for
            // the timer's next 1 ms tick.
            let (child, handle) = a.target.with_deadline(due);
            if rng.below(8) == 0 {
                let (alone, _h) = Context::background().with_deadline(due);
                let fired = alone.wait_timeout(ARM_SHORT_LATE);
                let late = Instant::now().saturating_duration_since(due);
                assert_eq!(
                    fired,
                    Some(Error::DeadlineExceeded),
                    "{cell}: a short timeout did not fire within {ARM_SHORT_LATE:?} ({late:?} late)"
                );
            }
            assert!(
                child.wait_timeout(WAIT_LIMIT).is_some(),
                "{cell}: a short timeout under the target never ended"
            );
            drop((handle, child));
            None
        }
        Action::MoveLater | Action::MoveEarlier => {
            let h = a.mover.as_ref().expect("built for a move");
            let to = if cell.action == Action::MoveLater {
                let current = a.target.deadline().expect("a deadline node");
                current + Duration::from_nanos(1 + rng.below(2_000_000))
            } else {
                Instant::now() + Duration::from_nanos(rng.below(200_000))
            };
            // A probe woken by the firing: its wake time is checked
            // against the moved deadline (`check_batch`).
            let probe = cell.landing == Landing::Timer;
            let mut done = a.target.done();
            if probe {
                let waker = Waker::from(Arc::new(WakeClock(Arc::clone(&a.slot))));
                let _ = poll_once(&mut done, &waker);
            }
            let moved = h.set_deadline(to);
            if moved && probe {
                *a.slot
                    .moved_to
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(to);
            }
            if probe && rng.below(2) == 0 {
                *a.slot.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(done);
            } else {
                a.waiter = Some(done);
            }
            // N has a deadline node of its own: refused only once done, or
            // once the timer has claimed it (then it is done as soon as
            // the firing's cancellation completes).
            if !moved && !a.target.is_done() {
                assert!(
                    a.target.wait_timeout(WAIT_LIMIT).is_some(),
                    "{cell}: set_deadline refused on a context that never became done"
                );
            }
            // Never done by the timer before the moved deadline (the fire
            // hook fires regardless of the time).
            if moved
                && cell.landing != Landing::FireHook
                && a.target.err() == Err(Error::DeadlineExceeded)
            {
                assert!(
                    Instant::now() >= to,
                    "{cell}: fired before the moved deadline"
                );
            }
            None
        }
    };
    spin(after);
    if let (Some(err), true) = (seen, deep) {
        let cancelled = cell.action == Action::CancelOther;
        assert_eq!(
            err,
            check_subtree(cell, &a, cancelled),
            "{cell}: the error seen"
        );
        check_value(cell, &a.target, a.round);
    }
    drop_all(a, order);
    if let Some(err) = seen {
        assert!(
            cell.allowed().iter().any(|&(e, _)| e == err),
            "{cell}: saw {err:?}, expected one of {:?}",
            cell.allowed()
        );
    }
}

/// Drops everything A owns, in one of three orders.
fn drop_all(a: PartA, order: u64) {
    let PartA {
        target,
        below,
        waiter,
        after,
        other,
        mover,
        reentrant,
        slot,
        round: _,
    } = a;
    drop(mover);
    match order {
        0 => {
            drop(target);
            drop(below);
            drop((waiter, after, other, reentrant));
        }
        1 => {
            drop((reentrant, other, after, waiter));
            drop(below);
            drop(target);
        }
        _ => {
            below.into_iter().rev().for_each(drop);
            drop(target);
            drop((after, waiter, reentrant, other));
        }
    }
    drop(slot);
}

/// Thread B's side of a round: the landing.
fn side_b(cell: Cell, b: PartB, tally: &Arc<Tally>) {
    if let Some(h) = &b.cancel {
        h.cancel_with_cause(cause(Tag::B, b.round, tally));
    }
    if let Some(n) = &b.fire {
        assert!(__private::fire_deadline(n), "not a deadline context");
    }
    if b.cancels_parent {
        // Every descendant is done when `cancel` returns.
        for s in &b.siblings[..b.parent_siblings] {
            assert!(
                s.is_done(),
                "{cell}: a sibling of N is not done after cancel"
            );
        }
    }
    // The proxied shape: usually P's last observer, so this drop is the
    // kill, racing A.
    drop(b.parent);
}

/// Per-case and per-tally checks after a batch; `Err` says what is off.
fn check_batch(cell: Cell, slots: &[Arc<Slot>], tally: &Tally) -> Result<(), String> {
    for (i, s) in slots.iter().enumerate() {
        let ran = s.ran.load(Ordering::SeqCst);
        if cell.shape == Shape::AfterFunc {
            let want = usize::from(!s.stopped.load(Ordering::SeqCst));
            if ran != want {
                return Err(format!(
                    "case {i}: the callback ran {ran} times, expected {want}"
                ));
            }
        }
        let wakes = s.wakes.load(Ordering::SeqCst);
        if wakes > 1 {
            return Err(format!("case {i}: a waiter was woken {wakes} times"));
        }
        let reentered = s.reentered.load(Ordering::SeqCst);
        if reentered > 1 {
            return Err(format!("case {i}: a waker re-entered {reentered} times"));
        }
        let lock = |m: &Mutex<Option<Instant>>| *m.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = s
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        match (lock(&s.moved_to), lock(&s.woke_at)) {
            (Some(to), Some(woke)) if woke < to => {
                // Not "not yet": a contract broken.
                panic!(
                    "{cell}: case {i} fired {:?} before the deadline it was moved to",
                    to - woke
                );
            }
            (Some(_), None) if kept => {
                return Err(format!("case {i}: the moved deadline has not fired yet"));
            }
            // Checked (or nothing to check): let N die, so that its cause
            // is dropped before the tally's check below.
            _ => drop(s.kept.lock().unwrap_or_else(PoisonError::into_inner).take()),
        }
    }
    tally.causes.check("causes")?;
    tally.values.check("values")?;
    tally.callbacks.check("callbacks")?;
    Ok(())
}

/// Armed timers and (debug builds) live node claims must come back to
/// where they were before the cell; the timer thread may still be
/// finishing a firing, so this waits a little.
fn check_settled(cell: Cell, base: Baseline) {
    let by = Instant::now() + Duration::from_secs(5);
    loop {
        let now = Baseline::now();
        if now == base {
            return;
        }
        if Instant::now() >= by {
            panic!("{cell}: not back to the start after the cell: {base:?} before, {now:?} after");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Process-wide counts that every cell must leave as it found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baseline {
    armed_timers: usize,
    /// `__private::live_claims()`: debug builds only.
    live_claims: Option<isize>,
}

impl Baseline {
    pub fn now() -> Baseline {
        #[cfg(debug_assertions)]
        let live_claims = Some(__private::live_claims());
        #[cfg(not(debug_assertions))]
        let live_claims = None;
        Baseline {
            armed_timers: __private::armed_timers(),
            live_claims,
        }
    }
}

// ---- Running a cell -------------------------------------------------------------

/// Deadline far enough away never to fire during a cell.
const FAR: Duration = Duration::from_secs(3600);

/// Runs one cell for its budget; panics with the cell's name on a broken
/// contract. The caller runs it under a watchdog.
pub fn run(cell: Cell, budget: &Budget) -> Report {
    let base = Baseline::now();
    let tally = Arc::new(Tally::default());
    let seed = budget.seed ^ hash(&cell.to_string());
    let report = if cell.landing == Landing::Timer {
        let plan = TimerPlan {
            batch: 128,
            lead: Duration::from_millis(3),
            window: Duration::from_millis(2),
            settle: Duration::from_secs(5),
        };
        harness::race_timer(
            budget,
            &plan,
            seed,
            |round, deadline, rng| build(cell, round, deadline, rng, &tally),
            |a, rng| side_a(cell, a, rng, &tally),
            drop,
            |slots| check_batch(cell, slots, &tally),
        )
    } else {
        harness::race_pairs(
            budget,
            seed,
            |round, rng| build(cell, round, Instant::now() + FAR, rng, &tally),
            |a, rng| side_a(cell, a, rng, &tally),
            |b, _| side_b(cell, b, &tally),
            |slots| {
                if let Err(e) = check_batch(cell, &slots, &tally) {
                    panic!("{cell}: {e}");
                }
                // Every deadline is far away and every node is gone.
                let armed = __private::armed_timers();
                assert_eq!(armed, base.armed_timers, "{cell}: timers left armed");
            },
        )
    };
    check_settled(cell, base);
    if cell.reentrant() {
        let n = tally.reentered.load(Ordering::SeqCst);
        assert!(n > 0, "{cell}: no re-entrant waker was ever woken");
    }
    report
}

/// FNV-1a, to give each cell its own seed.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
