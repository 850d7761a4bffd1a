//! loom models of the timer's firing pool (`src/timer/firing.rs`,
//! invariant 10b in docs/DESIGN.md): a submitted job is always run, and a
//! job blocked in user code never keeps another queued job from running
//! (the stall rule starts another worker).
//!
//! The pool is driven through `__private::FiringPool` with explicit
//! microsecond times, standing in for the timer thread's clock; loom's
//! condition variable never times out, so idle workers do not exit here.
//!
//! Run with `.ci/loom.sh` (it sets `--cfg loom --cfg crossbeam_loom`).
#![cfg(loom)]

use ctxtree::__private::FiringPool;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use loom_tests::model;

/// A count that threads can wait on.
#[derive(Default)]
struct Count {
    n: Mutex<usize>,
    changed: Condvar,
}

impl Count {
    fn add(&self) {
        *self.n.lock().unwrap() += 1;
        self.changed.notify_all();
    }

    fn wait_for(&self, at_least: usize) {
        let mut n = self.n.lock().unwrap();
        while *n < at_least {
            n = self.changed.wait(n).unwrap();
        }
    }
}

/// Two jobs, submitted from two threads while the first job's worker may
/// be anywhere between taking it, finding the queue empty and going to
/// sleep: both run. A submit that does not wake an idle worker leaves the
/// second job queued forever (loom reports the deadlock).
///
/// Broken variant: `loom-tests/broken/firing-submit-no-wake.patch`.
#[test]
fn jobs_submitted_while_the_worker_idles_all_run() {
    model(|| {
        let pool = Arc::new(FiringPool::new());
        let ran = Arc::new(Count::default());

        let r = ran.clone();
        pool.submit(0, move || r.add());
        let (p, r) = (pool.clone(), ran.clone());
        let other = thread::spawn(move || p.submit(0, move || r.add()));

        ran.wait_for(2);
        other.join().unwrap();
        pool.close();
    });
}

/// Job A blocks in "user code" until job B has run; both are queued, and A
/// has been taken by the pool's only worker. The timer thread applies the
/// stall rule at the next two stall periods: the first sees A taken (the
/// queue made progress), the second sees no progress and must start a
/// worker for B. Without the stall rule's spawn, A's worker is stuck and B
/// never runs (deadlock).
///
/// Broken variant: `loom-tests/broken/firing-no-stall-spawn.patch`.
#[test]
fn a_blocked_job_does_not_hold_up_the_queue() {
    model(|| {
        let pool = Arc::new(FiringPool::new());
        let a_started = Arc::new(Count::default());
        let b_ran = Arc::new(Count::default());

        let (a, b) = (a_started.clone(), b_ran.clone());
        pool.submit(0, move || {
            a.add();
            b.wait_for(1);
        });
        let b = b_ran.clone();
        pool.submit(0, move || b.add());

        a_started.wait_for(1);
        for period in 1..=2 {
            pool.check_stall(period * FiringPool::STALL_US);
        }
        b_ran.wait_for(1);
        pool.close();
    });
}
