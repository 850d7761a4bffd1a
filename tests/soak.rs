//! A randomized soak on a shared tree, for a fixed wall time.
//!
//! `CTXTREE_SOAK_SECS` (default 2.5 s, so `cargo test` stays fast) sets the
//! time. The run is a sequence of rounds until that time is spent:
//!
//! - **free-form rounds** (~300 ms each): 2-4 threads (a new set each round,
//!   so per-thread caches and epoch handles come and go) work on nodes
//!   picked at random from one shared pool rooted at the round's root:
//!   derive (`with_cancel`, `with_timeout`/`with_deadline` of 1 µs to 5 ms
//!   and sometimes an hour, with and without a cause, `with_value`,
//!   `merge`, `without_cancel`), cancel (`cancel`, `cancel_with_cause`, a
//!   dropped guard), drop contexts and handles, wait (thread `wait`,
//!   `wait_timeout`, `wait_deadline`, `done()` through
//!   `futures::executor::block_on`, `run_until_done`, `done()` futures kept
//!   and polled later), `after_func` (kept and stopped, or its handle
//!   dropped at once) and reads. The real timer thread fires the short
//!   deadlines while the threads drop the subtrees. One thread per round
//!   is a *canceller* (it cancels far more often and never blocks for
//!   long); a thread about to block on a child puts the child's parent (or
//!   grandparent) in a *hot* list that cancels pick first, so the parent is
//!   cancelled while the thread waits, and the waiter drops its child right
//!   after waking: the shape of issue 9's use-after-free;
//! - **model rounds** (~1/4 of the time): the reference-model harness of
//!   `tests/model/` (`model::run_threads`, as `tests/stress.rs` uses
//!   it) on random inputs, which checks outcomes, causes and reachability
//!   exactly against its shared-forest model.
//!
//! Checked in free-form rounds: every wait returns (the watchdog) with the
//! context's `err()`; `err()`/`cause()`/`is_done()` agree and a cause names
//! the right error; a `DeadlineExceeded` is never early; a child derived
//! from a done context is done on creation with its cause; when `cancel`
//! returns, the node, a child derived just before and every pool node it
//! reaches are done; a pending `done()` that was polled is woken; every
//! `after_func` runs at most once, exactly once if its context was
//! cancelled and it was not stopped, and `stop()` agrees; every value and
//! every callback closure is dropped. After every round (everything
//! dropped): no timer entry armed, and every node freed: the crate's own
//! counters in debug builds (`__private::live_claims`,
//! `__private::allocated_nodes`) and, in every build (the ASan run is
//! `--release`), the bytes allocated by the round's threads and not freed,
//! counted by a global allocator in this binary
//! (`common::counting::Counting`). Each thread and the test end with
//! `__private::flush_epoch()` so no epoch garbage is left queued at exit
//! for LeakSanitizer to report.
//!
//! Reproduce a run's random choices (not its timing) with
//! `CTXTREE_SOAK_SEED=<seed printed by the run>`.

mod common;
mod model;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::counting::{track_this_thread, tracked_bytes, untrack_this_thread};
use common::{with_watchdog, DropCounter};
use ctxtree::{AfterFunc, CancelHandle, Context, Error};
use model::{Tag, WatchedDone};

#[global_allocator]
static ALLOC: common::counting::Counting = common::counting::Counting;

/// The soak's wall time.
fn soak_time() -> Duration {
    let secs = std::env::var("CTXTREE_SOAK_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(2.5);
    Duration::from_secs_f64(secs.min(24.0 * 3600.0))
}

fn seed() -> u64 {
    std::env::var("CTXTREE_SOAK_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            t | 1
        })
}

/// A small deterministic generator (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    /// 1 µs to ~5 ms, log-uniform (as many sub-millisecond as longer).
    fn short(&mut self) -> Duration {
        let exp = self.below(13) as u32; // 2^0 .. 2^12 µs
        let base = 1u64 << exp;
        Duration::from_micros(base + self.next() % base)
    }
}

/// A value attached with `with_value`; its drop is counted.
#[allow(dead_code)]
struct Val {
    id: u64,
    _drop: DropCounter,
}

/// The cause given to `cancel_with_cause` (`deadline: false`) and to
/// `with_*_cause` deadlines (`deadline: true`).
fn tag(id: u64, deadline: bool) -> Tag {
    Tag {
        id: id as u32,
        deadline,
    }
}

/// One pool node.
#[derive(Clone)]
struct Entry {
    ctx: Context,
    handle: Option<CancelHandle>,
    /// Ids of the cancellable nodes whose cancellation reaches this one
    /// (its own id included if it is cancellable): the ancestors through
    /// `with_*`/`merge`, cut by `without_cancel`.
    reach: Arc<Vec<u64>>,
    depth: u32,
}

/// An `after_func` whose handle is kept (it may be stopped).
struct Kept {
    ctx: Context,
    af: AfterFunc,
    runs: Arc<AtomicUsize>,
    stopped: bool,
    reach: Arc<Vec<u64>>,
}

/// An `after_func` whose handle was dropped at once.
struct Loose {
    runs: Arc<AtomicUsize>,
    reach: Arc<Vec<u64>>,
}

/// Counts over the whole run (printed at the end).
#[derive(Default)]
struct Stats {
    rounds: AtomicU64,
    model_runs: AtomicU64,
    ops: AtomicU64,
    derives: AtomicU64,
    deadlines: AtomicU64,
    cancels: AtomicU64,
    blocking_waits: AtomicU64,
    deadline_exceeded: AtomicU64,
    callbacks_run: AtomicU64,
    stops: AtomicU64,
    drops: AtomicU64,
}

impl Stats {
    fn add(c: &AtomicU64) {
        // Relaxed: statistics, read after the threads are joined.
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Pool size of a free-form round.
const POOL: usize = 48;
/// Deepest chain a derive extends (deeper picks derive from the root).
const MAX_DEPTH: u32 = 24;
/// Kept `after_func` handles per round at most.
const MAX_KEPT: usize = 256;
/// Waiters' parents kept for cancels at most.
const MAX_HOT: usize = 16;
/// `done()` futures a thread keeps across operations.
const MAX_DONES: usize = 4;

/// A free-form round's shared state.
struct Round {
    pool: Mutex<Vec<Entry>>,
    kept: Mutex<Vec<Kept>>,
    /// Parents of children threads wait on: cancelled first.
    hot: Mutex<Vec<(Context, CancelHandle)>>,
    loose: Mutex<Vec<Loose>>,
    root_id: u64,
    next_id: AtomicU64,
    values_made: AtomicUsize,
    values_dropped: Arc<AtomicUsize>,
    closures_made: AtomicUsize,
    closures_dropped: Arc<AtomicUsize>,
    stats: Arc<Stats>,
    end: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Round {
    fn id(&self) -> u64 {
        // Relaxed: unique ids only.
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn pick(&self, rng: &mut Rng) -> Entry {
        let p = lock(&self.pool);
        p[rng.below(p.len())].clone()
    }

    fn root(&self) -> Entry {
        lock(&self.pool)[0].clone()
    }

    /// Adds `e`, replacing a random non-root entry when full (the old one
    /// is dropped here, outside the lock).
    fn push(&self, e: Entry, rng: &mut Rng) {
        let gone = {
            let mut p = lock(&self.pool);
            if p.len() < POOL {
                p.push(e);
                None
            } else {
                let k = 1 + rng.below(p.len() - 1);
                Some(std::mem::replace(&mut p[k], e))
            }
        };
        drop(gone);
    }
}

/// What holds of one context at any time, whatever races with the reads:
/// the harness's checks (`model::check_reads`: the reads agree, the cause
/// matches the error), and a `DeadlineExceeded` is never early (the real
/// timer fires deadlines here).
fn check_consistent(ctx: &Context) {
    if let Some((Error::DeadlineExceeded, _)) = model::check_reads(ctx) {
        if let Some(d) = ctx.deadline() {
            assert!(Instant::now() >= d, "{ctx:?}: deadline exceeded early");
        }
    }
}

/// A result of a wait agrees with the context.
fn check_waited(ctx: &Context, got: Error, stats: &Stats) {
    assert_eq!(ctx.err(), Err(got), "{ctx:?}: wait result vs err()");
    if got == Error::DeadlineExceeded {
        Stats::add(&stats.deadline_exceeded);
    }
    check_consistent(ctx);
}

/// Checks a kept `done()` before dropping it: pending and now done means
/// its waker must have been called.
fn settle_kept(d: WatchedDone) {
    if d.owes_wake() {
        // The waker may be called on the cancelling thread just after the
        // context is observably done; give it a bounded moment.
        let start = Instant::now();
        while d.wakes() == 0 && start.elapsed() < Duration::from_secs(10) {
            thread::yield_now();
        }
        assert!(
            d.wakes() > 0,
            "a pending done() of {:?} was never woken",
            d.ctx
        );
    }
}

/// One worker of a free-form round. The `canceller` (one per round) never
/// blocks for long and cancels much more often, so waiters' parents are
/// cancelled while they wait; the others mostly derive, wait and drop.
fn worker(round: &Round, mut rng: Rng, canceller: bool) {
    let stats = &*round.stats;
    let mut dones: Vec<WatchedDone> = Vec::new();
    let mut i = 0u64;
    while Instant::now() < round.end {
        i += 1;
        Stats::add(&stats.ops);
        let roll = if canceller && rng.chance(50) {
            30
        } else {
            rng.below(100)
        };
        match roll {
            0..=27 => derive(round, &mut rng),
            28..=36 => cancel(round, &mut rng, i, canceller),
            37..=45 => {
                // Drop a whole entry, or only its handle.
                let gone = {
                    let mut p = lock(&round.pool);
                    if p.len() < 2 {
                        None
                    } else {
                        let k = 1 + rng.below(p.len() - 1);
                        if rng.chance(70) {
                            Some((Some(p.swap_remove(k)), None))
                        } else {
                            Some((None, p[k].handle.take()))
                        }
                    }
                };
                Stats::add(&stats.drops);
                drop(gone);
            }
            46..=63 => wait(round, &mut rng, &mut dones, canceller),
            64..=75 => after_func(round, &mut rng),
            76..=79 => {
                let mut kept = lock(&round.kept);
                if !kept.is_empty() {
                    let k = rng.below(kept.len());
                    let cb = &mut kept[k];
                    if cb.af.stop() {
                        assert!(!cb.stopped, "stop() returned true twice");
                        assert_eq!(cb.runs.load(Ordering::SeqCst), 0, "stopped after running");
                        cb.stopped = true;
                        Stats::add(&stats.stops);
                    }
                }
            }
            80..=87 => {
                // Keep, poll or drop `done()` futures across operations.
                if dones.len() < MAX_DONES && rng.chance(50) {
                    let ctx = round.pick(&mut rng).ctx;
                    let mut d = WatchedDone::new(ctx);
                    d.poll();
                    dones.push(d);
                } else if !dones.is_empty() {
                    let k = rng.below(dones.len());
                    if rng.chance(50) {
                        dones[k].poll();
                    } else {
                        settle_kept(dones.swap_remove(k));
                    }
                }
            }
            _ => {
                let e = round.pick(&mut rng);
                check_consistent(&e.ctx);
                if let Some(v) = e.ctx.value::<Val>() {
                    assert!(v.id < round.next_id.load(Ordering::Relaxed));
                }
                if rng.chance(5) {
                    let text = format!("{:?}", e.ctx);
                    assert!(text.starts_with("context."), "{text}");
                }
            }
        }
    }
    for d in dones {
        settle_kept(d);
    }
    // No epoch garbage or cached block left behind by this thread.
    ctxtree::__private::flush_epoch();
}

fn derive(round: &Round, rng: &mut Rng) {
    let stats = &*round.stats;
    let mut parent = round.pick(rng);
    if parent.depth >= MAX_DEPTH {
        parent = round.root();
    }
    let parent_was_done = parent.ctx.is_done();
    let id = round.id();
    let with_id = |r: &[u64]| {
        let mut v = r.to_vec();
        v.push(id);
        Arc::new(v)
    };
    Stats::add(&stats.derives);
    let entry = match rng.below(7) {
        0 | 1 => {
            let (ctx, h) = parent.ctx.with_cancel();
            if parent_was_done {
                assert!(ctx.is_done(), "{ctx:?} under a done parent");
                assert_eq!(ctx.err(), parent.ctx.err());
                assert!(Arc::ptr_eq(
                    &ctx.cause().unwrap(),
                    &parent.ctx.cause().unwrap()
                ));
            }
            Entry {
                ctx,
                handle: Some(h),
                reach: with_id(&parent.reach),
                depth: parent.depth + 1,
            }
        }
        2 | 3 => {
            Stats::add(&stats.deadlines);
            let d = if rng.chance(90) {
                rng.short()
            } else if rng.chance(50) {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            };
            let (ctx, h) = match rng.below(4) {
                0 => parent.ctx.with_timeout(d),
                1 => parent.ctx.with_deadline(Instant::now() + d),
                2 => parent.ctx.with_timeout_cause(d, tag(id, true)),
                _ => parent
                    .ctx
                    .with_deadline_cause(Instant::now() + d, tag(id, true)),
            };
            if parent_was_done {
                assert!(ctx.is_done(), "{ctx:?}: done on creation");
            } else if d.is_zero() && !ctx.is_done() {
                // Like Go: under an earlier parent deadline (passed, not yet
                // fired) the child is a plain child that inherits it.
                assert!(
                    ctx.deadline().is_some_and(|t| t <= Instant::now()),
                    "{ctx:?}: a zero timeout not done on creation"
                );
            }
            Entry {
                ctx,
                handle: Some(h),
                reach: with_id(&parent.reach),
                depth: parent.depth + 1,
            }
        }
        4 => {
            round.values_made.fetch_add(1, Ordering::SeqCst);
            let ctx = parent.ctx.with_value(Val {
                id,
                _drop: DropCounter::with_counter(&round.values_dropped),
            });
            assert_eq!(ctx.value::<Val>().map(|v| v.id), Some(id));
            if parent_was_done {
                assert!(ctx.is_done(), "{ctx:?} under a done parent");
                assert!(Arc::ptr_eq(
                    &ctx.cause().unwrap(),
                    &parent.ctx.cause().unwrap()
                ));
            }
            let (ctx, handle, reach) = if rng.chance(50) {
                let (c, h) = ctx.with_cancel();
                (c, Some(h), with_id(&parent.reach))
            } else {
                (ctx, None, Arc::clone(&parent.reach))
            };
            Entry {
                ctx,
                handle,
                reach,
                depth: parent.depth + 1,
            }
        }
        5 => {
            let other = round.pick(rng);
            let (ctx, h) = parent.ctx.merge(&other.ctx);
            if parent_was_done {
                assert!(ctx.is_done(), "{ctx:?} merged with a done context");
                assert!(Arc::ptr_eq(
                    &ctx.cause().unwrap(),
                    &parent.ctx.cause().unwrap()
                ));
            }
            let mut reach: Vec<u64> = parent
                .reach
                .iter()
                .chain(other.reach.iter())
                .copied()
                .collect();
            reach.sort_unstable();
            reach.dedup();
            reach.push(id);
            Entry {
                ctx,
                handle: Some(h),
                reach: Arc::new(reach),
                depth: parent.depth.max(other.depth) + 1,
            }
        }
        _ => {
            let ctx = parent.ctx.without_cancel();
            assert!(!ctx.is_done() && ctx.deadline().is_none(), "{ctx:?}");
            let (ctx, handle, reach) = if rng.chance(50) {
                let (c, h) = ctx.with_cancel();
                (c, Some(h), Arc::new(vec![id]))
            } else {
                (ctx, None, Arc::new(Vec::new()))
            };
            Entry {
                ctx,
                handle,
                reach,
                depth: parent.depth + 1,
            }
        }
    };
    check_consistent(&entry.ctx);
    round.push(entry, rng);
}

fn cancel(round: &Round, rng: &mut Rng, i: u64, canceller: bool) {
    if rng.chance(if canceller { 90 } else { 30 }) {
        let hot = {
            let mut hot = lock(&round.hot);
            (!hot.is_empty()).then(|| {
                let k = rng.below(hot.len());
                hot.swap_remove(k)
            })
        };
        if let Some((ctx, h)) = hot {
            Stats::add(&round.stats.cancels);
            match rng.below(3) {
                0 => h.cancel(),
                1 => h.cancel_with_cause(tag(i, false)),
                _ => drop(h.drop_guard()),
            }
            assert!(ctx.is_done(), "{ctx:?} not done after its cancel returned");
            check_consistent(&ctx);
            return;
        }
    }
    let e = round.pick(rng);
    let Some(h) = e.handle.clone() else { return };
    // The root ends the round: leave it to the teardown.
    let Some(&own) = e.reach.last() else { return };
    if own == round.root_id {
        return;
    }
    Stats::add(&round.stats.cancels);
    let child = e.ctx.with_cancel().0;
    match rng.below(3) {
        0 => h.cancel(),
        1 => h.cancel_with_cause(tag(i, false)),
        _ => drop(h.drop_guard()),
    }
    assert!(
        e.ctx.is_done(),
        "{:?} not done after its cancel returned",
        e.ctx
    );
    assert!(
        child.is_done(),
        "a child of {:?} not done after cancel",
        e.ctx
    );
    assert_eq!(child.err(), e.ctx.err());
    assert!(
        Arc::ptr_eq(&child.cause().unwrap(), &e.ctx.cause().unwrap()),
        "a child's cause is its parent's"
    );
    check_consistent(&e.ctx);
    // Every pool node this cancel reaches is done.
    let reached: Vec<Context> = lock(&round.pool)
        .iter()
        .filter(|x| x.reach.contains(&own))
        .map(|x| x.ctx.clone())
        .collect();
    for ctx in &reached {
        assert!(
            ctx.is_done(),
            "{ctx:?} not done after its ancestor {:?} was cancelled",
            e.ctx
        );
        check_consistent(ctx);
    }
}

fn wait(round: &Round, rng: &mut Rng, dones: &mut [WatchedDone], canceller: bool) {
    let stats = &*round.stats;
    let e = round.pick(rng);
    // Something that is surely done soon: a short-deadline child of the
    // picked node (the picked node itself if its own deadline is close).
    let soon = |rng: &mut Rng| -> Context {
        match e.ctx.deadline() {
            Some(d) if d <= Instant::now() + Duration::from_millis(5) && rng.chance(50) => {
                e.ctx.clone()
            }
            _ if rng.chance(70) => {
                // Issue 9's shape: the waiter's parent (or grandparent) goes
                // to `hot`, which cancels pick first, so it is cancelled
                // while this thread waits, and the waiter drops its child
                // right after waking. A deadline ends the wait otherwise.
                let (p, ph) = e.ctx.with_cancel();
                let mid = if rng.chance(30) {
                    p.with_cancel().0
                } else {
                    p.clone()
                };
                let mid = if rng.chance(30) {
                    mid.with_value(7u32)
                } else {
                    mid
                };
                let backup = if rng.chance(50) {
                    rng.short()
                } else {
                    Duration::from_millis(20)
                };
                let c = mid.with_timeout(backup).0;
                let mut hot = lock(&round.hot);
                if hot.len() < MAX_HOT {
                    hot.push((p, ph));
                }
                c
            }
            _ => {
                let (c, h) = e.ctx.with_timeout(rng.short());
                if rng.chance(30) {
                    // Give the handle to the pool: another thread may cancel
                    // it while this one waits.
                    let mut reach = e.reach.to_vec();
                    reach.push(round.id());
                    round.push(
                        Entry {
                            ctx: c.clone(),
                            handle: Some(h),
                            reach: Arc::new(reach),
                            depth: e.depth + 1,
                        },
                        rng,
                    );
                }
                c
            }
        }
    };
    let kind = if canceller {
        4 + rng.below(4)
    } else {
        rng.below(8)
    };
    match kind {
        0 | 1 => {
            let c = soon(rng);
            Stats::add(&stats.blocking_waits);
            let got = c.wait();
            check_waited(&c, got, stats);
        }
        2 => {
            let c = soon(rng);
            Stats::add(&stats.blocking_waits);
            let got = futures::executor::block_on(c.done());
            check_waited(&c, got, stats);
        }
        3 => {
            let c = soon(rng);
            Stats::add(&stats.blocking_waits);
            let got = futures::executor::block_on(c.run_until_done(std::future::pending::<()>()));
            check_waited(&c, got.expect_err("a pending future cannot finish"), stats);
        }
        4 => {
            let was_done = e.ctx.is_done();
            let got = futures::executor::block_on(e.ctx.run_until_done(async { 7u8 }));
            match got {
                Ok(v) => {
                    assert_eq!(v, 7);
                    assert!(
                        !was_done,
                        "run_until_done polled its future on a done context"
                    );
                }
                Err(err) => check_waited(&e.ctx, err, stats),
            }
        }
        5 => {
            let t = if rng.chance(30) {
                Duration::ZERO
            } else {
                rng.short() / 4
            };
            if let Some(err) = e.ctx.wait_timeout(t) {
                check_waited(&e.ctx, err, stats);
            }
        }
        6 => {
            let at = Instant::now() + rng.short() / 4;
            if let Some(err) = e.ctx.wait_deadline(at) {
                check_waited(&e.ctx, err, stats);
            }
        }
        _ => {
            // Poll a fresh `done()` once and drop it (a registration
            // removed while cancels race with it), or poll a kept one.
            if !dones.is_empty() && rng.chance(50) {
                let k = rng.below(dones.len());
                dones[k].poll();
            } else {
                // (`poll` checks a pending result against `is_done`.)
                if let Some(err) = WatchedDone::new(e.ctx.clone()).poll() {
                    check_waited(&e.ctx, err, stats);
                }
            }
        }
    }
}

fn after_func(round: &Round, rng: &mut Rng) {
    let e = round.pick(rng);
    let runs = Arc::new(AtomicUsize::new(0));
    let stats = Arc::clone(&round.stats);
    // A callback whose handle is dropped can only end by running, so only
    // nodes the root's cancel reaches get one (else a deadline of an hour
    // would keep it, and its node, armed past the round).
    let under_root = e.reach.contains(&round.root_id);
    let keep = !under_root || rng.chance(50);
    if keep && lock(&round.kept).len() >= MAX_KEPT {
        return;
    }
    round.closures_made.fetch_add(1, Ordering::SeqCst);
    let dropped = DropCounter::with_counter(&round.closures_dropped);
    if keep {
        // The harness's body: the context is done, a child derived now is
        // done with the same cause, and it runs at most once.
        let body = model::callback_body(e.ctx.clone(), Arc::clone(&runs));
        let af = e.ctx.after_func(move || {
            let _dropped = dropped;
            body();
            Stats::add(&stats.callbacks_run);
        });
        lock(&round.kept).push(Kept {
            ctx: e.ctx,
            af,
            runs,
            stopped: false,
            reach: e.reach,
        });
    } else {
        // No context captured: the node must not keep itself alive.
        let r = Arc::clone(&runs);
        let af = e.ctx.after_func(move || {
            let _dropped = dropped;
            assert_eq!(r.fetch_add(1, Ordering::SeqCst), 0, "callback ran twice");
            Stats::add(&stats.callbacks_run);
        });
        drop(af);
        lock(&round.loose).push(Loose {
            runs,
            reach: e.reach,
        });
    }
}

/// Waits (bounded) until `runs` is 1: a callback the timer thread started
/// may still be running when the teardown looks.
fn ran_once(runs: &AtomicUsize) -> usize {
    let start = Instant::now();
    while runs.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(10) {
        thread::yield_now();
    }
    runs.load(Ordering::SeqCst)
}

/// One free-form round of `len` on `threads` threads; returns after the
/// teardown checks, with every context dropped.
fn free_form_round(stats: &Arc<Stats>, rng: &mut Rng, threads: usize, len: Duration) {
    let (root, root_handle) = if rng.chance(30) {
        Context::background().with_value(0u64).with_cancel()
    } else {
        Context::background().with_cancel()
    };
    let round = Arc::new(Round {
        pool: Mutex::new(vec![Entry {
            ctx: root.clone(),
            handle: Some(root_handle.clone()),
            reach: Arc::new(vec![0]),
            depth: 0,
        }]),
        kept: Mutex::default(),
        hot: Mutex::default(),
        loose: Mutex::default(),
        root_id: 0,
        next_id: AtomicU64::new(1),
        values_made: AtomicUsize::new(0),
        values_dropped: Arc::new(AtomicUsize::new(0)),
        closures_made: AtomicUsize::new(0),
        closures_dropped: Arc::new(AtomicUsize::new(0)),
        stats: Arc::clone(stats),
        end: Instant::now() + len,
    });
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let round = Arc::clone(&round);
            let seed = rng.next() ^ t as u64;
            thread::Builder::new()
                .name(format!("soak-{t}"))
                .spawn(move || {
                    track_this_thread();
                    worker(&round, Rng::new(seed), t == 0);
                })
                .expect("spawn a soak thread")
        })
        .collect();
    let mut panicked = None;
    for w in workers {
        if let Err(p) = w.join() {
            panicked.get_or_insert(p);
        }
    }
    if let Some(p) = panicked {
        std::panic::resume_unwind(p);
    }

    // Teardown: the root's cancel reaches every node derived under it
    // (not those under a `without_cancel`).
    root_handle.cancel();
    let pool = std::mem::take(&mut *lock(&round.pool));
    for e in &pool {
        check_consistent(&e.ctx);
        if e.reach.contains(&round.root_id) {
            assert!(e.ctx.is_done(), "{:?} survived the root's cancel", e.ctx);
            assert!(e.ctx.wait_timeout(Duration::ZERO).is_some());
        }
    }
    // Cancel the rest, then every kept callback ran or was stopped once.
    for e in &pool {
        if let Some(h) = &e.handle {
            h.cancel();
        }
    }
    let kept = std::mem::take(&mut *lock(&round.kept));
    for (k, cb) in kept.iter().enumerate() {
        let done_before = cb.ctx.is_done();
        let stopped_now = cb.af.stop();
        assert!(!(cb.stopped && stopped_now), "callback {k}: stopped twice");
        if done_before && !cb.stopped {
            assert!(
                !stopped_now,
                "callback {k}: stopped after its context was done"
            );
        }
        let runs = if cb.stopped || stopped_now {
            cb.runs.load(Ordering::SeqCst)
        } else {
            ran_once(&cb.runs)
        };
        let stops = usize::from(cb.stopped) + usize::from(stopped_now);
        assert_eq!(
            runs + stops,
            1,
            "callback {k}: ran {runs} times, stopped {stops} times"
        );
        if cb.reach.contains(&round.root_id) {
            assert!(cb.ctx.is_done());
        }
    }
    drop(std::mem::take(&mut *lock(&round.hot)));
    let loose = std::mem::take(&mut *lock(&round.loose));
    for (k, cb) in loose.iter().enumerate() {
        let runs = if cb.reach.contains(&round.root_id) {
            ran_once(&cb.runs)
        } else {
            cb.runs.load(Ordering::SeqCst)
        };
        if cb.reach.contains(&round.root_id) {
            assert_eq!(
                runs, 1,
                "dropped-handle callback {k} under the cancelled root"
            );
        } else {
            assert!(runs <= 1, "dropped-handle callback {k} ran {runs} times");
        }
    }
    drop((pool, kept, loose, root, root_handle));
    // Every value and every callback closure is dropped once the contexts
    // that can reach them are (the last drop may be a timer callback's).
    let start = Instant::now();
    loop {
        let values = (
            round.values_made.load(Ordering::SeqCst),
            round.values_dropped.load(Ordering::SeqCst),
        );
        let closures = (
            round.closures_made.load(Ordering::SeqCst),
            round.closures_dropped.load(Ordering::SeqCst),
        );
        if values.0 == values.1 && closures.0 == closures.1 {
            break;
        }
        assert!(
            values.1 <= values.0 && closures.1 <= closures.0,
            "dropped more than made: values {values:?}, closures {closures:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not dropped after the round: values (made, dropped) {values:?}, \
             closures {closures:?}"
        );
        ctxtree::__private::flush_epoch();
        thread::yield_now();
    }
    Stats::add(&stats.rounds);
}

/// A round of the reference-model harness on random inputs for `len`.
fn model_round(stats: &Stats, rng: &mut Rng, len: Duration) {
    let end = Instant::now() + len;
    while Instant::now() < end {
        let n = 64 + rng.below(448);
        let input: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        model::run_threads(&input);
        Stats::add(&stats.model_runs);
    }
}

/// Everything the round allocated is freed, no timer entry is armed and
/// (debug builds) the crate's node counters are back where they were.
fn check_nothing_left(baseline: isize, what: &str) {
    untrack_this_thread();
    assert_eq!(
        ctxtree::__private::armed_timers(),
        0,
        "{what}: timer entries left armed"
    );
    let start = Instant::now();
    let mut n = 0u32;
    let left = loop {
        ctxtree::__private::flush_epoch();
        let left = tracked_bytes() - baseline;
        if left <= 0 {
            break left;
        }
        n += 1;
        if n % 64 == 0 {
            // Node blocks the timer thread freed sit in its block cache.
            common::flush_timer_thread(Duration::from_secs(5));
        } else {
            thread::yield_now();
        }
        if start.elapsed() > Duration::from_secs(20) {
            break left;
        }
    };
    assert_eq!(
        left, 0,
        "{what}: {left} bytes allocated by the round were never freed"
    );
    #[cfg(debug_assertions)]
    {
        let live = model::flush_until_at_most(0);
        assert_eq!(live, 0, "{what}: {live} node claims left");
        let start = Instant::now();
        while ctxtree::__private::allocated_nodes() > 0 && start.elapsed() < Duration::from_secs(20)
        {
            ctxtree::__private::flush_epoch();
            thread::yield_now();
        }
        assert_eq!(
            ctxtree::__private::allocated_nodes(),
            0,
            "{what}: nodes left allocated"
        );
    }
}

/// What is allocated once per process (the epoch collector, the timer
/// thread and its wheel's slab, the default causes), made before counting.
fn warm_up() {
    common::counting::warm_up(20_000);
    assert!(
        common::flush_timer_thread(Duration::from_secs(10)),
        "the timer thread runs callbacks"
    );
    ctxtree::__private::flush_epoch();
}

/// The soak: see the module documentation.
#[test]
fn randomized_soak_on_a_shared_tree_keeps_the_contract_and_frees_everything() {
    let total = soak_time();
    let seed = seed();
    // The time, plus generous room for the checks between rounds (and for
    // a sanitizer build); a hang fails the test.
    let limit = 120 + 3 * total.as_secs();
    with_watchdog(limit, move || {
        let _ = model::THREAD_START_HOOK.set(track_this_thread);
        warm_up();
        let stats = Arc::new(Stats::default());
        let mut rng = Rng::new(seed);
        let start = Instant::now();
        let mut free_form = Duration::ZERO;
        let mut modelled = Duration::ZERO;
        while start.elapsed() < total {
            let left = total.saturating_sub(start.elapsed());
            ctxtree::__private::flush_epoch();
            let baseline = tracked_bytes();
            track_this_thread();
            let t0 = Instant::now();
            if rng.chance(75) {
                let threads = 2 + rng.below(3);
                let len = Duration::from_millis(200 + rng.below(200) as u64).min(left);
                free_form_round(&stats, &mut rng, threads, len);
                free_form += t0.elapsed();
                check_nothing_left(baseline, "free-form round");
            } else {
                model_round(&stats, &mut rng, Duration::from_millis(150).min(left));
                modelled += t0.elapsed();
                check_nothing_left(baseline, "model round");
            }
        }
        let s = &*stats;
        println!(
            "soak: seed {seed}, {:.2} s ({:.2} s free-form in {} rounds, {:.2} s model in {} runs): \
             {} ops, {} derives ({} deadlines), {} cancels, {} blocking waits, \
             {} deadline-exceeded waits, {} callbacks run, {} stops, {} drops",
            start.elapsed().as_secs_f64(),
            free_form.as_secs_f64(),
            Stats::get(&s.rounds),
            modelled.as_secs_f64(),
            Stats::get(&s.model_runs),
            Stats::get(&s.ops),
            Stats::get(&s.derives),
            Stats::get(&s.deadlines),
            Stats::get(&s.cancels),
            Stats::get(&s.blocking_waits),
            Stats::get(&s.deadline_exceeded),
            Stats::get(&s.callbacks_run),
            Stats::get(&s.stops),
            Stats::get(&s.drops),
        );
        assert!(
            Stats::get(&s.rounds) + Stats::get(&s.model_runs) > 0,
            "the soak ran nothing"
        );
        ctxtree::__private::flush_epoch();
    });
    // And on the test thread: nothing of ours queued at exit.
    ctxtree::__private::flush_epoch();
}
