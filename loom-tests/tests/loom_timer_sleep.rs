//! loom models of the timer thread's sleep word (`src/timer/sleep.rs`,
//! invariant 10s in docs/DESIGN.md): an arm in any shard, racing the timer
//! thread's scan of the shards, is never missed, so the thread never
//! sleeps past an entry armed earlier than its target.
//!
//! The shards are loom mutexes over the times armed in them; the timer
//! thread scans them one lock at a time, as `Timer::run` does. Time is
//! virtual: a sleep whose target is below `HORIZON` ends by itself (the
//! thread "wakes" at the target and fires what is due), a sleep at or past
//! it (or with nothing armed) is a `park` that only an unpark ends. An
//! entry before the horizon missed by the protocol leaves the thread
//! parked and the model deadlocks (loom reports it).
//!
//! Run with `.ci/loom.sh` (it sets `--cfg loom --cfg crossbeam_loom`).
#![cfg(loom)]

use ctxtree::__private::TimerSleep;
use loom::sync::{Arc, Mutex};
use loom::thread;
use loom_tests::model;

/// Sleeps at or past this are only ended by an unpark.
const HORIZON: u64 = 100;

/// The shards (each the times armed in it) and the sleep word.
struct Timer {
    shards: Vec<Mutex<Vec<u64>>>,
    sleep: TimerSleep,
}

impl Timer {
    fn new(shards: usize, armed: &[(usize, u64)]) -> Arc<Self> {
        let t = Timer {
            shards: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
            sleep: TimerSleep::new(),
        };
        for &(shard, at) in armed {
            t.shards[shard].lock().unwrap().push(at);
        }
        Arc::new(t)
    }

    /// An arm: insert under the shard's lock, then the sleep word.
    fn arm(&self, timer: &thread::Thread, shard: usize, at: u64) {
        self.shards[shard].lock().unwrap().push(at);
        if self.sleep.notify(at) {
            timer.unpark();
        }
    }

    /// The timer thread, until it has fired `expect` entries (all before
    /// the horizon).
    fn run(&self, expect: usize) {
        let mut fired = 0;
        let mut now = 0;
        while fired < expect {
            self.sleep.begin_scan();
            let mut next: Option<u64> = None;
            for shard in &self.shards {
                let mut armed = shard.lock().unwrap();
                let before = armed.len();
                armed.retain(|&at| at > now);
                fired += before - armed.len();
                next = armed.iter().copied().chain(next).min();
            }
            if fired == expect {
                break;
            }
            if !self.sleep.finish_scan(next) {
                continue;
            }
            match next {
                Some(at) if at < HORIZON => now = at,
                _ => thread::park(),
            }
        }
    }
}

/// One entry past the horizon is armed; the thread scans and goes to
/// sleep while another thread arms an earlier entry in the other shard:
/// the thread must be woken for it, wherever the arm falls in the scan.
///
/// Broken variants: `loom-tests/broken/timer-sleep-ignores-scanning.patch`,
/// `loom-tests/broken/timer-sleep-store-not-cas.patch`.
#[test]
fn an_earlier_arm_wakes_the_sleeping_thread() {
    model(|| {
        let timer = Timer::new(2, &[(0, HORIZON)]);
        let t = timer.clone();
        let th = thread::spawn(move || t.run(1));
        timer.arm(th.thread(), 1, 50);
        th.join().unwrap();
    });
}

/// Nothing armed; two threads arm in two shards while the timer thread
/// scans, sleeps until the first, fires it, and sleeps again: both fire.
#[test]
fn arms_in_two_shards_both_fire() {
    model(|| {
        let timer = Timer::new(2, &[]);
        let t = timer.clone();
        let th = thread::spawn(move || t.run(2));
        let handle = th.thread().clone();
        let t = timer.clone();
        let other = thread::spawn(move || t.arm(&handle, 0, 60));
        timer.arm(th.thread(), 1, 50);
        other.join().unwrap();
        th.join().unwrap();
    });
}
