//! Deadline nodes and the timer: arming, disarming and firing.
//!
//! The timer service (`crate::timer`) is generic and knows nothing of nodes;
//! this module owns its one instance and is the only code that connects the
//! two. The node's entry lives in one shard's wheel, behind that shard's
//! mutex ("the lock" below: an entry never changes shard, and its id names
//! the shard); the node keeps the id of its entry in
//! `DeadlineNode::timer`, written only under that lock. The
//! timer thread pops an entry, claims its deadline and acquires the node
//! (`try_acquire`, in `claim_step`) while still holding the lock, and a
//! dying node disarms under the same lock before its memory can be freed,
//! so the timer never touches a freed node (invariant 10). Under loom there is no timer
//! thread: models call [`fire`] from a loom thread, or turn on
//! `loom_timer`, a stand-in with the same lock protocol whose expiry
//! (`__private::expire_deadlines`) runs the timer's claim step.
//!
//! A deadline can move (`set_deadline`, invariant 10m): later with one CAS
//! on `DeadlineNode::deadline` (the entry stays armed at the old, earlier
//! time, and the claim re-arms it), earlier with the CAS and a re-arm
//! under the lock.

use std::ptr::NonNull;

use std::time::Instant;

use super::deadline_word::{self, Claimed, Moved};
use super::raw::RawContext;
use super::{cancel, DeadlineNode, TransientRef};
use crate::error::Error;
use crate::sync::Ordering;
#[cfg(not(loom))]
use crate::timer::Claim;

/// `DeadlineNode::timer` when no entry is armed.
pub(crate) const NONE: u64 = u64::MAX;

#[cfg(not(loom))]
const _: () = assert!(NONE == crate::timer::NONE_BITS);

/// A deadline node armed in the timer's wheel.
#[cfg(not(loom))]
#[derive(Clone, Copy)]
struct Armed(NonNull<DeadlineNode>);

// SAFETY: only dereferenced under the lock of its shard while the node is armed
// (invariant 10), or after acquiring it.
#[cfg(not(loom))]
unsafe impl Send for Armed {}

/// An expired deadline node, acquired by the timer thread, on its way to a
/// firing thread.
#[cfg(not(loom))]
pub(crate) struct Expired(NonNull<DeadlineNode>, TransientRef);

// SAFETY: the pointer is only dereferenced while the reference next to it
// keeps the node alive, and nodes are designed to be shared across threads.
#[cfg(not(loom))]
unsafe impl Send for Expired {}

#[cfg(not(loom))]
impl crate::timer::Expiry for Armed {
    type Fired = Expired;

    unsafe fn claim(self, now: Instant) -> Claim<Self, Self::Fired> {
        // SAFETY: the caller's contract (under the lock, armed until this
        // poll) is `claim_step`'s.
        match unsafe { claim_step(self.0, now) } {
            Step::Fire(held) => Claim::Fire(Expired(self.0, held)),
            Step::Rearm(at) => Claim::Rearm(at, self),
            Step::Skip => Claim::Skip,
        }
    }

    unsafe fn rearmed(self, bits: u64) {
        // SAFETY: armed, under the lock (the caller's contract): a dying
        // node cannot be freed before it takes the lock (invariant 10).
        let d = unsafe { self.0.as_ref() };
        // Relaxed: written and read under the lock.
        d.timer.store(bits, Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
impl crate::timer::firing::Job for Expired {
    fn run(self) {
        let Expired(node, held) = self;
        // SAFETY: `held` keeps the node alive.
        unsafe { fire(node, held) }
    }

    fn idle() {
        // This thread dropped the last reference to some of the nodes it
        // fired: hand their deferred frees to the epoch and their blocks
        // back to the allocator before sleeping, possibly for good.
        crate::sync::pin().flush();
        super::cache::flush();
    }
}

/// What the timer's claim step decided for a popped entry.
enum Step {
    /// The deadline passed and the claim won: fire (the reference keeps
    /// the node).
    Fire(TransientRef),
    /// The deadline moved later: insert the entry again at this instant;
    /// `timer` still holds the popped (now stale) id, so a dying node
    /// still takes the lock, and the caller records the new id.
    Rearm(Instant),
    /// Already claimed, or the node is dying: nothing to do.
    Skip,
}

/// The timer's claim step on an entry it has just popped at `now`, shared by the timer thread and the loom stand-in: a CAS
/// on the deadline word sets `FIRED` if the deadline has passed, else the
/// entry is re-armed where the deadline moved (invariant 10m). Only on
/// `Fire` does it `try_acquire` the node (a dead node is skipped), and on
/// `Fire` or `Skip` its last access is the Release store of `NONE`.
///
/// # Safety
/// Under the lock, `node`'s entry was armed until this poll.
unsafe fn claim_step(node: NonNull<DeadlineNode>, now: Instant) -> Step {
    // The entry was armed until this poll and its `timer` field still
    // holds the id, so a dying node takes the lock in `disarm` before it
    // can be freed (invariant 10).
    // SAFETY: valid while the timer holds the lock (the caller's contract)
    // and until we store NONE.
    let d = unsafe { node.as_ref() };
    d.cancel.header.assert_not_freed();
    let held = match d.deadline.claim(now) {
        Claimed::Later(at) => return Step::Rearm(at.unwrap_or_else(deadline_word::far)),
        // SAFETY: valid, as above. A dead node is skipped (its deadline
        // is claimed all the same: nobody can move it any more).
        Claimed::Fire => unsafe { super::NodeRef::try_acquire(node.cast()) },
        Claimed::Already => None,
    };
    // Release, and last: a dying thread whose Acquire hint read sees NONE
    // skips the lock and may free the node, so every access we make
    // without a reference happens before this store.
    d.timer.store(NONE, Ordering::Release);
    held.map_or(Step::Skip, Step::Fire)
}

/// The crate's timer (started by the first deadline that needs it).
#[cfg(not(loom))]
fn timer() -> &'static crate::timer::Timer<Armed> {
    static TIMER: std::sync::OnceLock<crate::timer::Timer<Armed>> = std::sync::OnceLock::new();
    TIMER.get_or_init(crate::timer::Timer::new)
}

/// Number of armed timer entries (for tests and benchmarks).
#[cfg(not(loom))]
pub(crate) fn armed() -> usize {
    timer().armed()
}

/// Lets every timer shard hold `n` entries without allocating (for tests
/// that count allocations).
#[cfg(not(loom))]
pub(crate) fn reserve(n: usize) {
    timer().reserve(n);
}

/// Arms the node's timer (under loom: in the stand-in, if a model turned it
/// on, else a no-op).
pub(crate) fn arm(node: &DeadlineNode) {
    #[cfg(not(loom))]
    {
        timer().arm(armed_at(node), Armed(NonNull::from(node)), |bits| {
            // Relaxed: written and read under the lock (the unlocked read in
            // `disarm` is a hint only).
            node.timer.store(bits, Ordering::Relaxed);
        });
    }
    #[cfg(loom)]
    {
        if !loom_timer::on() {
            return;
        }
        loom_timer::arm(node);
    }
    // SeqCst fence: pairs with the one in `disarm`. Either we see the
    // state done here, or the canceller sees our armed id there.
    crate::sync::fence(Ordering::SeqCst);
    if node.cancel.state.load().is_done() {
        // A parent's walk may have cancelled the node before it was
        // armed and found nothing to disarm.
        disarm(node);
    }
}

/// Disarms the node's timer if it is armed (a walk reaching a deadline
/// node, or the node dying).
///
/// SeqCst fence, then a hint read outside the lock: NONE can only be stale
/// if the creator is arming right now, and then the creator's
/// fence-separated re-check of the state (see `arm`) sees this node done
/// (the state was published before this fence) and disarms it itself. A
/// dying node takes the fence too: the fence-less variant (its creator
/// armed before releasing its reference) had no model that checks it, the
/// timer being outside loom.
pub(crate) fn disarm(node: &DeadlineNode) {
    crate::sync::fence(Ordering::SeqCst);
    // Acquire: pairs with the timer thread's Release store of NONE after
    // its last access to a node it popped (invariant 10).
    let hint = node.timer.load(Ordering::Acquire);
    if hint == NONE {
        return;
    }
    // Relaxed: under the shard's lock (the hint names the shard: an entry
    // never changes shard).
    #[cfg(not(loom))]
    timer().disarm(hint, || node.timer.swap(NONE, Ordering::Relaxed));
    #[cfg(loom)]
    loom_timer::disarm(node);
}

/// Moves the deadline of `node` to `at` (`None`: never): the
/// `CancelHandle::set_deadline` behind the handle. False, changing
/// nothing, if the node is done or the timer claimed its deadline first.
///
/// Later: one CAS on the word, no lock; the armed entry stays at its
/// earlier time and the timer's claim re-arms it (invariant 10m). Earlier:
/// the CAS, then the entry is moved under the lock (`rearm`), unless
/// it is no longer armed (fired, or disarmed by a cancel or the death).
pub(crate) fn set_deadline(node: &DeadlineNode, at: Option<Instant>) -> bool {
    if node.cancel.state.load().is_done() {
        return false;
    }
    match node.deadline.try_move(at) {
        Moved::Fired => false,
        Moved::Later => true,
        Moved::Earlier => {
            rearm(node);
            true
        }
    }
}

/// Moves the node's armed entry to its (earlier) deadline, under the timer
/// lock; nothing if no entry is armed (`timer` is `NONE`: the timer popped
/// it, or a cancel or the death disarmed it, and must not be undone).
fn rearm(node: &DeadlineNode) {
    // Relaxed hint: the arm's store of the id happens before any handle of
    // the node exists, and a later value is a re-armed id of the same shard
    // or NONE (no entry: nothing to move, as `rearm_target` would find).
    #[cfg(not(loom))]
    timer().rearm(node.timer.load(Ordering::Relaxed), || rearm_target(node));
    #[cfg(loom)]
    loom_timer::rearm(node);
}

/// Under the lock: the id bits of the node's armed entry and the
/// instant to re-arm it at, or `None` if no entry is armed (shared by the
/// timer and the loom stand-in).
fn rearm_target(node: &DeadlineNode) -> Option<(u64, Instant)> {
    // Relaxed: under the lock, like every write of `timer`.
    let bits = node.timer.load(Ordering::Relaxed);
    (bits != NONE).then(|| (bits, armed_at(node)))
}

/// Where the node's entry is armed for its current deadline.
fn armed_at(node: &DeadlineNode) -> Instant {
    node.deadline.get().unwrap_or_else(deadline_word::far)
}

/// The deadline passed: cancel with `DeadlineExceeded` and the node's
/// cause.
///
/// # Safety
/// `node` is held by `held` (acquired by the timer).
pub(crate) unsafe fn fire(node: NonNull<DeadlineNode>, held: TransientRef) {
    // SAFETY: held.
    let d = unsafe { node.as_ref() };
    // SAFETY: the cause is only taken when the node dies, and we hold it.
    let cause = d.cause.with_mut(|c| unsafe { (*c).clone() });
    // SAFETY: held.
    unsafe { cancel::cancel(node.cast(), Error::DeadlineExceeded, cause) };
    drop(held);
}

/// Fires `ctx`'s own deadline now (the loom and test hook behind
/// `__private::fire_deadline`). False if `ctx` has no deadline node.
pub(crate) fn fire_context(ctx: &RawContext) -> bool {
    let Some(node) = ctx.node() else {
        return false;
    };
    if node.header().kind != super::Kind::Deadline {
        return false;
    }
    let held = TransientRef::from(node.clone());
    // SAFETY: `held` keeps the node alive; the kind was checked.
    unsafe { fire(node.ptr().cast(), held) };
    true
}

/// The timer under loom (`cfg(loom)`): no thread and no wheel, but the
/// same lock protocol, so models can race moves, cancels and drops against
/// the claim step. Off unless a model turns it on
/// (`__private::loom_timer`): the other models keep their state space.
#[cfg(loom)]
pub(crate) mod loom_timer {
    use std::ptr::NonNull;

    use std::time::Instant;

    use super::{armed_at, claim_step, fire, rearm_target, Step, NONE};
    use crate::node::DeadlineNode;
    use crate::sync::{LoomMutex, Ordering};

    /// Set before `loom::model` (a std atomic: no scheduling point).
    pub(crate) static ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    pub(crate) fn on() -> bool {
        ON.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An armed entry: its id, its node, its time.
    struct Entry {
        id: u64,
        node: NonNull<DeadlineNode>,
        at: Instant,
    }

    #[derive(Default)]
    struct Wheel {
        next_id: u64,
        armed: Vec<Entry>,
    }

    struct Shared(LoomMutex<Wheel>);

    // SAFETY: the node pointers are only dereferenced under the lock while
    // armed (invariant 10), as in the real timer.
    unsafe impl Send for Shared {}
    // SAFETY: as above.
    unsafe impl Sync for Shared {}

    crate::sync::lazy_static! {
        static ref WHEEL: Shared = Shared(LoomMutex::new(Wheel::default()));
    }

    fn lock() -> loom::sync::MutexGuard<'static, Wheel> {
        WHEEL
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    impl Wheel {
        fn insert(&mut self, node: NonNull<DeadlineNode>, at: Instant) -> u64 {
            let id = self.next_id;
            self.next_id += 1;
            self.armed.push(Entry { id, node, at });
            id
        }
    }

    pub(super) fn arm(node: &DeadlineNode) {
        let mut w = lock();
        let id = w.insert(NonNull::from(node), armed_at(node));
        // Relaxed: under the lock.
        node.timer.store(id, Ordering::Relaxed);
    }

    pub(super) fn disarm(node: &DeadlineNode) {
        let mut w = lock();
        // Relaxed: under the lock.
        let id = node.timer.swap(NONE, Ordering::Relaxed);
        w.armed.retain(|e| e.id != id);
    }

    pub(super) fn rearm(node: &DeadlineNode) {
        let mut w = lock();
        let Some((id, at)) = rearm_target(node) else {
            return;
        };
        // As the wheel: removed and inserted again under a new id; an id
        // no longer armed changes nothing.
        let Some(i) = w.armed.iter().position(|e| e.id == id) else {
            return;
        };
        let e = w.armed.swap_remove(i);
        let new = w.insert(e.node, at);
        // Relaxed: under the lock.
        node.timer.store(new, Ordering::Relaxed);
    }

    /// The timer's poll at `now`: pops every entry armed at or before it,
    /// runs the claim step on each under the lock, then fires the winners
    /// with the lock released. Returns how many fired.
    pub(crate) fn expire(now: Instant) -> usize {
        let mut fired = Vec::new();
        {
            let mut w = lock();
            let (due, keep): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut w.armed)
                .into_iter()
                .partition(|e| e.at <= now);
            w.armed = keep;
            for e in due {
                // SAFETY: under the lock, armed until this poll.
                match unsafe { claim_step(e.node, now) } {
                    Step::Fire(held) => fired.push((e.node, held)),
                    Step::Rearm(at) => {
                        let id = w.insert(e.node, at);
                        // SAFETY: armed, under the lock.
                        let d = unsafe { e.node.as_ref() };
                        d.cancel.header.assert_not_freed();
                        // Relaxed: under the lock.
                        d.timer.store(id, Ordering::Relaxed);
                    }
                    Step::Skip => {}
                }
            }
        }
        let n = fired.len();
        for (node, held) in fired {
            // SAFETY: `held` keeps the node alive.
            unsafe { fire(node, held) };
        }
        n
    }

    /// Entries armed in the stand-in.
    pub(crate) fn armed() -> usize {
        lock().armed.len()
    }
}
