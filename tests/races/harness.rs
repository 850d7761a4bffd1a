//! The racing machinery of the race matrix (`tests/races.rs`): a budget read
//! from the environment, a small generator, a calibrated busy spin, a
//! two-party spin barrier, and two runners.
//!
//! [`race_pairs`]: the calling thread (the *builder*) makes the cases in
//! batches of [`Budget::batch`]; two persistent threads, A and B, take one
//! case each per round, meet at the barrier, spin a random number of
//! iterations and act. Allocation (builder), cancellation (B) and the last
//! drop (A or B) thus happen on three different threads, with every
//! relative timing from "A long before B" to "B long before A".
//!
//! [`race_timer`]: the walker is the crate's timer thread. The builder makes
//! small batches whose deadlines all fall at one instant a few milliseconds
//! ahead; thread A starts acting at a random offset around that instant.
//!
//! Neither runner knows what a case is: the cells (`cells.rs`) give the
//! closures that build, act and check.

use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long and how hard each cell races. Read from the environment:
///
/// - `CTXTREE_RACE_MS`: time per cell in milliseconds (default 40);
/// - `CTXTREE_RACE_MIN_ROUNDS`: rounds per cell at least, whatever the
///   time (default 1000: one batch)...
/// - `CTXTREE_RACE_MAX_MS`: ...unless the cell has run this long (default
///   five times `CTXTREE_RACE_MS`): on a machine busy with other work the
///   racers wait for cores and rounds get slow, and the run stays bounded
///   (the summary counts the cells cut short);
/// - `CTXTREE_RACE_BATCH`: cases built per batch (default 1000);
/// - `CTXTREE_RACE_SEED`: base seed of the generators (default fixed);
/// - `CTXTREE_RACE_CELLS`: comma-separated substrings; only cells whose
///   name contains one of them run (default: all);
/// - `CTXTREE_RACE_VERBOSE`: set (to anything but `0`) to print one line
///   per cell.
#[derive(Clone, Debug)]
pub struct Budget {
    pub time: Duration,
    pub min_rounds: usize,
    pub max_time: Duration,
    pub batch: usize,
    pub seed: u64,
    pub filter: Vec<String>,
    pub verbose: bool,
}

impl Budget {
    pub fn from_env() -> Budget {
        fn num(name: &str, default: u64) -> u64 {
            match std::env::var(name) {
                Ok(s) => s
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={s:?} is not a number")),
                Err(_) => default,
            }
        }
        let filter = std::env::var("CTXTREE_RACE_CELLS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let ms = num("CTXTREE_RACE_MS", 40);
        Budget {
            time: Duration::from_millis(ms),
            min_rounds: num("CTXTREE_RACE_MIN_ROUNDS", 1000) as usize,
            max_time: Duration::from_millis(num("CTXTREE_RACE_MAX_MS", ms.saturating_mul(5))),
            batch: (num("CTXTREE_RACE_BATCH", 1000) as usize).max(1),
            seed: num("CTXTREE_RACE_SEED", 0x9E37_79B9_7F4A_7C15),
            filter,
            verbose: std::env::var("CTXTREE_RACE_VERBOSE").is_ok_and(|v| v != "0"),
        }
    }

    /// True if the cell named `name` passes the `CTXTREE_RACE_CELLS` filter.
    pub fn selects(&self, name: &str) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|f| name.contains(f.as_str()))
    }

    /// True while a cell that has run `rounds` rounds for `elapsed` must
    /// go on with another batch.
    pub fn more(&self, rounds: usize, elapsed: Duration) -> bool {
        (rounds < self.min_rounds || elapsed < self.time) && elapsed < self.max_time
    }

    /// Seconds the watchdog gives one cell: its longest run plus a margin
    /// for the last batch (at a pessimistic 10 ms a round: a sanitizer on a
    /// machine with more runnable threads than cores) and the checks.
    pub fn watchdog_secs(&self) -> u64 {
        60 + self.max_time.max(self.time).as_secs() + (self.batch as u64 * 10) / 1000
    }
}

/// What one cell ran.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    pub rounds: usize,
    pub batches: usize,
    pub elapsed: Duration,
    /// Of `elapsed`, the time the racers were racing (between sending a
    /// batch and both reporting it done).
    pub racing: Duration,
    /// Barrier waits (two per round) that outlasted `Patience::SPIN` and
    /// yielded: the other racer was descheduled or blocked.
    pub yields: usize,
}

/// A xorshift generator: deterministic per seed, one per thread.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never zero (xorshift's fixed point).
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A spin length from a few to thousands of iterations, log-uniform:
    /// below `2^k` for `k` drawn uniformly in `0..=13`. Every scale of the
    /// distance between the two sides, from a few instructions to several
    /// microseconds, is then about as frequent as any other; a window of a
    /// hundred nanoseconds a few hundred nanoseconds off the barrier is hit
    /// far more often than with offsets drawn from a few fixed ranges.
    pub fn offset(&mut self) -> u64 {
        let k = self.below(14);
        self.below(1 << k)
    }
}

/// Busy-waits `n` steps of about a nanosecond each (optimised), on a
/// `black_box` counter: `spin_loop()` (PAUSE) made offsets erratic on this
/// kind of VM (docs/VERIFICATION.md, "Race matrix").
#[inline(never)]
pub fn spin(n: u64) {
    let mut x = 0u64;
    for _ in 0..n {
        x = black_box(x.wrapping_add(1));
    }
    black_box(x);
}

/// Spin-wait pacing: pure spinning for the first [`Patience::SPIN`], then
/// a `yield_now` every 1024 ticks. The other side is then descheduled or
/// blocked (a woken thread waiting for a core), and spinning on would only
/// keep it from running. Yielding early is worse: on a loaded machine a
/// yield can give the core away for a whole time slice, and the round it
/// happens in no longer races at all (yielding after 4096 spins made the
/// matrix miss the crash of issue 9, which it catches without).
pub struct Patience {
    ticks: u32,
    since: Option<Instant>,
    yielded: bool,
}

impl Patience {
    /// How long to spin before yielding.
    pub const SPIN: Duration = Duration::from_micros(50);

    pub fn new() -> Patience {
        Patience {
            ticks: 0,
            since: None,
            yielded: false,
        }
    }

    /// True once this wait has yielded.
    pub fn yielded(&self) -> bool {
        self.yielded
    }

    /// One turn of a spin-wait loop.
    #[inline]
    pub fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks % 1024 != 0 {
            return;
        }
        match self.since {
            None => self.since = Some(Instant::now()),
            Some(t) if t.elapsed() >= Self::SPIN => {
                self.yielded = true;
                thread::yield_now();
            }
            Some(_) => {}
        }
    }
}

/// A two-party barrier on one counter, reused round after round: at round
/// `r` each side adds one and spins until the counter reaches `2 (r + 1)`.
/// A side that panics raises `abort`, so the other stops spinning.
pub struct Barrier2 {
    arrived: AtomicUsize,
    abort: AtomicBool,
    /// Waits that had to yield (the other side was off its core).
    yields: AtomicUsize,
}

impl Barrier2 {
    pub fn new() -> Barrier2 {
        Barrier2 {
            arrived: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            yields: AtomicUsize::new(0),
        }
    }

    /// Waits for the other side at round `round`. False if it aborted.
    pub fn wait(&self, round: usize) -> bool {
        // AcqRel/Acquire: each side's actions of the previous round happen
        // before the other side leaves this round's barrier (the harness
        // relies on nothing more; the library's own ordering is under test).
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let target = 2 * (round + 1);
        let mut patience = Patience::new();
        while self.arrived.load(Ordering::Acquire) < target {
            // Relaxed: a stop flag; the panic it reports is propagated by
            // the thread join, which synchronises.
            if self.abort.load(Ordering::Relaxed) {
                return false;
            }
            patience.tick();
        }
        if patience.yielded() {
            // Relaxed: a statistic, read after the racers are joined.
            self.yields.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Raises `abort` if dropped while panicking.
    pub fn guard(&self) -> AbortGuard<'_> {
        AbortGuard(self)
    }
}

/// See [`Barrier2::guard`].
pub struct AbortGuard<'a>(&'a Barrier2);

impl Drop for AbortGuard<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.abort.store(true, Ordering::Relaxed);
        }
    }
}

/// Joins `handle`, re-raising its panic with the original payload.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(v) => v,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// Races cases made by `build` in batches: `side_a` on thread A and
/// `side_b` on thread B, one case per round, each after the shared barrier
/// and a random spin. After each batch (both sides done with it, so every
/// case part is dropped) `check` gets the batch's check data. Runs whole
/// batches until `budget.time` has passed and at least `budget.min_rounds`
/// rounds ran, or `budget.max_time` has passed.
pub fn race_pairs<A, B, K>(
    budget: &Budget,
    seed: u64,
    mut build: impl FnMut(usize, &mut Rng) -> (A, B, K),
    side_a: impl Fn(A, &mut Rng) + Sync,
    side_b: impl Fn(B, &mut Rng) + Sync,
    mut check: impl FnMut(Vec<K>),
) -> Report
where
    A: Send,
    B: Send,
{
    let barrier = Barrier2::new();
    let start = Instant::now();
    let mut report = Report::default();
    thread::scope(|s| {
        let (to_a, from_builder_a) = mpsc::channel::<Vec<A>>();
        let (to_b, from_builder_b) = mpsc::channel::<Vec<B>>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (barrier, side_a, side_b) = (&barrier, &side_a, &side_b);
        let done_a = done_tx.clone();
        let a = thread::Builder::new()
            .name("race-a".into())
            .spawn_scoped(s, move || {
                let _abort = barrier.guard();
                let mut rng = Rng::new(seed ^ 0xA);
                let mut round = 0;
                for batch in from_builder_a {
                    for case in batch {
                        if !barrier.wait(round) {
                            return;
                        }
                        spin(rng.offset());
                        side_a(case, &mut rng);
                        round += 1;
                    }
                    if done_a.send(()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn race-a");
        let done_b = done_tx;
        let b = thread::Builder::new()
            .name("race-b".into())
            .spawn_scoped(s, move || {
                let _abort = barrier.guard();
                let mut rng = Rng::new(seed ^ 0xB);
                let mut round = 0;
                for batch in from_builder_b {
                    for case in batch {
                        if !barrier.wait(round) {
                            return;
                        }
                        spin(rng.offset());
                        side_b(case, &mut rng);
                        round += 1;
                    }
                    if done_b.send(()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn race-b");

        let mut rng = Rng::new(seed);
        let builder = panic::catch_unwind(AssertUnwindSafe(|| {
            while budget.more(report.rounds, start.elapsed()) {
                let (mut va, mut vb, mut vk) = (
                    Vec::with_capacity(budget.batch),
                    Vec::with_capacity(budget.batch),
                    Vec::with_capacity(budget.batch),
                );
                for i in 0..budget.batch {
                    let (pa, pb, k) = build(report.rounds + i, &mut rng);
                    va.push(pa);
                    vb.push(pb);
                    vk.push(k);
                }
                let sent = Instant::now();
                if to_a.send(va).is_err() || to_b.send(vb).is_err() {
                    return; // a racer died: its join reports why
                }
                if done_rx.recv().is_err() || done_rx.recv().is_err() {
                    return;
                }
                report.racing += sent.elapsed();
                report.rounds += budget.batch;
                report.batches += 1;
                check(vk);
            }
        }));
        drop((to_a, to_b));
        // A racer's panic first: it is the cause of anything the builder saw.
        join(a);
        join(b);
        if let Err(payload) = builder {
            panic::resume_unwind(payload);
        }
    });
    report.elapsed = start.elapsed();
    report.yields = barrier.yields.load(Ordering::Relaxed);
    report
}

/// Cases of [`race_timer`]: built for one shared deadline.
pub struct TimerPlan {
    /// Cases per batch (they share one deadline).
    pub batch: usize,
    /// How far ahead of its build the batch's deadline lies, at least
    /// (twice the previous batch's build time if that is more). A build
    /// can still overrun it (the thread preempted): cases whose deadline
    /// passed before they were complete are raced all the same.
    pub lead: Duration,
    /// A starts acting at the deadline plus a random offset in
    /// `-window/2 .. window/2`.
    pub window: Duration,
    /// How long the timer may take to finish a batch's firings after A is
    /// done with it (the check is retried until then).
    pub settle: Duration,
}

/// Races thread A against the crate's timer thread: `build` makes a batch
/// of cases whose deadlines are all the `Instant` it is given, A acts on
/// them one by one from a random instant around that deadline (random
/// spins in between), then the builder runs `finish` on each case's
/// remaining part and `check` on the batch, retrying `check` (an `Err` is
/// "not yet") until `plan.settle` has passed.
pub fn race_timer<A, B, K>(
    budget: &Budget,
    plan: &TimerPlan,
    seed: u64,
    mut build: impl FnMut(usize, Instant, &mut Rng) -> (A, B, K),
    side_a: impl Fn(A, &mut Rng) + Sync,
    mut finish: impl FnMut(B),
    mut check: impl FnMut(&[K]) -> Result<(), String>,
) -> Report
where
    A: Send,
{
    let start = Instant::now();
    let mut report = Report::default();
    thread::scope(|s| {
        let (to_a, from_builder) = mpsc::channel::<(Instant, Vec<A>)>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let side_a = &side_a;
        let window = plan.window;
        let a = thread::Builder::new()
            .name("race-a".into())
            .spawn_scoped(s, move || {
                let mut rng = Rng::new(seed ^ 0xA);
                for (deadline, batch) in from_builder {
                    let half = window / 2;
                    let offset = Duration::from_nanos(rng.below(window.as_nanos() as u64 + 1));
                    let at = (deadline - half) + offset;
                    // Sleep most of the way (cheap for the other workers),
                    // spin the last stretch (precise).
                    let far = at.saturating_duration_since(Instant::now());
                    if far > Duration::from_micros(500) {
                        thread::sleep(far - Duration::from_micros(300));
                    }
                    while Instant::now() < at {
                        spin(64);
                    }
                    for case in batch {
                        spin(rng.offset());
                        side_a(case, &mut rng);
                    }
                    if done_tx.send(()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn race-a");

        let mut rng = Rng::new(seed);
        let builder = panic::catch_unwind(AssertUnwindSafe(|| {
            // The deadline must lie beyond the batch's build: twice the
            // last build's time (slow under a sanitizer), at least `lead`.
            let mut build_time = Duration::ZERO;
            while budget.more(report.rounds, start.elapsed()) {
                let built = Instant::now();
                let deadline = built + plan.lead.max(build_time * 2);
                let (mut va, mut vb, mut vk) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..plan.batch {
                    let (pa, pb, k) = build(report.rounds + i, deadline, &mut rng);
                    va.push(pa);
                    vb.push(pb);
                    vk.push(k);
                }
                build_time = built.elapsed();
                let sent = Instant::now();
                if to_a.send((deadline, va)).is_err() || done_rx.recv().is_err() {
                    return;
                }
                report.racing += sent.elapsed();
                vb.into_iter().for_each(&mut finish);
                let settled_by = Instant::now() + plan.settle;
                loop {
                    match check(&vk) {
                        Ok(()) => break,
                        Err(e) if Instant::now() >= settled_by => {
                            panic!("after {:?}: {e}", plan.settle)
                        }
                        Err(_) => thread::sleep(Duration::from_micros(200)),
                    }
                }
                report.rounds += plan.batch;
                report.batches += 1;
            }
        }));
        drop(to_a);
        join(a);
        if let Err(payload) = builder {
            panic::resume_unwind(payload);
        }
    });
    report.elapsed = start.elapsed();
    report
}
