//! The firing pool: the threads (`ctxtree-fire`) that run expired
//! deadlines' cancellations, so that user code (`after_func` callbacks,
//! wakers) never runs on the timer thread and can never delay another
//! deadline.
//!
//! The timer thread only pops expired entries and [`submit`](Firing::submit)s
//! them here. A worker takes one job at a time from a FIFO queue. The rule
//! that keeps firing punctual whatever the jobs do is the **stall rule**
//! ([`check_stall`](Firing::check_stall), applied by the timer thread on
//! each turn): if jobs are queued and no worker has taken one for
//! [`STALL_US`], every worker is busy (or blocked in user code), so the
//! timer starts one more. A job therefore waits at most about `STALL_US`
//! plus the time to start a thread, however many jobs block. Go gets the
//! same effect by running every `AfterFunc` in its own goroutine; threads
//! are dearer, so this pool starts them only when the ones it has are stuck.
//!
//! Idle workers exit after [`IDLE_EXIT`], except the last one (so a steady
//! trickle of deadlines does not start a thread each time). Before a worker
//! goes idle it runs [`Job::idle`]: the deadline glue uses it to flush the
//! thread's epoch bag and node-block cache, which would otherwise sit on a
//! sleeping thread.
//!
//! The queue is one mutex and one condition variable: this is not the
//! lock-free core (no derive, cancel or drop ever takes it), only the
//! hand-off between the timer thread and its workers, and it is modelled
//! under loom (`loom-tests/tests/loom_firing.rs`).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::sync::{Arc, Condvar, Mutex, MutexGuard};

/// How long queued jobs may go untaken before the timer starts another
/// worker, in microseconds.
pub(crate) const STALL_US: u64 = 1_000;

/// How long a worker with nothing to do waits before it exits (the last
/// worker never does).
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// The name of the pool's threads.
pub(crate) const WORKER_NAME: &str = "ctxtree-fire";

/// What the pool runs.
pub(crate) trait Job: Send + 'static {
    /// Runs the job on a worker thread, with no lock held. A panic is
    /// reported on stderr; the worker keeps serving.
    fn run(self);

    /// Called on a worker that ran jobs and found the queue empty, before
    /// it sleeps (no lock held).
    fn idle();
}

struct Queue<J> {
    jobs: VecDeque<J>,
    /// Jobs taken by workers since the pool was made (the progress the
    /// stall rule watches).
    taken: u64,
    /// `(taken, since)`: the value of `taken` the stall rule last saw
    /// change, and the time (µs) it saw it.
    watch: (u64, u64),
    /// Workers waiting on `ready`.
    idle: usize,
    /// Workers started and not exited (or being started).
    live: usize,
    /// Set by [`Firing::close`]: workers exit once the queue is empty.
    closed: bool,
}

/// The queue of expired entries and the workers that fire them (a handle:
/// the workers hold the same shared state).
pub(crate) struct Firing<J> {
    shared: Arc<Shared<J>>,
}

struct Shared<J> {
    queue: Mutex<Queue<J>>,
    ready: Condvar,
}

impl<J: Job> Firing<J> {
    /// An empty pool; its first worker starts with the first job.
    pub(crate) fn new() -> Self {
        let shared = Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                taken: 0,
                watch: (0, 0),
                idle: 0,
                live: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        };
        Firing {
            shared: Arc::new(shared),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<J>> {
        self.shared.lock()
    }

    /// Queues `jobs` (expired at `now_us`) and wakes or starts workers for
    /// them.
    pub(crate) fn submit(&self, now_us: u64, jobs: impl IntoIterator<Item = J>) {
        let mut q = self.lock();
        if q.jobs.is_empty() {
            // The stall period of these jobs starts now.
            q.watch = (q.taken, now_us);
        }
        let before = q.jobs.len();
        q.jobs.extend(jobs);
        let added = q.jobs.len() - before;
        // Each idle worker takes one job per wake-up and then loops over the
        // queue, so waking one per job (at most every idle one) is enough;
        // busy workers come back to the queue by themselves, and the stall
        // rule covers those that do not.
        for _ in 0..added.min(q.idle) {
            self.shared.ready.notify_one();
        }
        let start = added > 0 && q.live == 0;
        if start {
            q.live += 1;
        }
        drop(q);
        if start {
            self.start_worker();
        }
    }

    /// The stall rule, applied by the timer thread at `now_us`: if jobs are
    /// queued and none was taken for [`STALL_US`] while no worker was idle,
    /// starts another worker. Returns whether jobs are still queued (then
    /// the caller checks again within [`STALL_US`]).
    pub(crate) fn check_stall(&self, now_us: u64) -> bool {
        let mut q = self.lock();
        if q.jobs.is_empty() {
            return false;
        }
        let mut start = false;
        if q.taken != q.watch.0 {
            q.watch = (q.taken, now_us);
        } else if now_us.saturating_sub(q.watch.1) >= STALL_US && q.idle == 0 {
            q.watch = (q.taken, now_us);
            q.live += 1;
            start = true;
        }
        drop(q);
        if start {
            self.start_worker();
        }
        true
    }

    /// Makes every worker exit once the queue is empty (loom models end
    /// this way; the crate's global pool lives as long as the process).
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.shared.ready.notify_all();
    }

    /// Starts a worker already counted in `live`.
    fn start_worker(&self) {
        let shared = Arc::clone(&self.shared);
        let spawned = crate::sync::thread::Builder::new()
            .name(WORKER_NAME.into())
            .spawn(move || shared.work());
        if let Err(e) = spawned {
            // Out of threads: the jobs wait for a worker already running,
            // and the stall rule tries again.
            self.lock().live -= 1;
            eprintln!("ctxtree: cannot start a deadline firing thread: {e}");
        }
    }
}

impl<J: Job> Shared<J> {
    fn lock(&self) -> MutexGuard<'_, Queue<J>> {
        // No job runs under this lock (jobs run after it is released), so a
        // poisoned lock means a bug here: keep serving.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A worker's loop.
    fn work(&self) {
        let mut ran = false;
        let mut q = self.lock();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                q.taken += 1;
                drop(q);
                ran = true;
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| job.run())) {
                    report_panic(&*panic);
                }
                q = self.lock();
                continue;
            }
            if q.closed {
                q.live -= 1;
                return;
            }
            if ran {
                ran = false;
                drop(q);
                J::idle();
                q = self.lock();
                continue;
            }
            q.idle += 1;
            let (guard, waited) = self
                .ready
                .wait_timeout(q, IDLE_EXIT)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q = guard;
            q.idle -= 1;
            if waited.timed_out() && q.jobs.is_empty() && q.live > 1 {
                q.live -= 1;
                return;
            }
        }
    }
}

/// Reports a job's panic on stderr (the job's cancellation completed before
/// or despite it).
fn report_panic(panic: &(dyn std::any::Any + Send)) {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string panic>".into());
    eprintln!(
        "{WORKER_NAME}: a callback or waker panicked during a deadline cancellation \
         (the cancellation completed): {msg}"
    );
}
