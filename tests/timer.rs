//! The timer thread is started lazily: only once a deadline is used.
//!
//! This is its own test binary so the process is fresh, and it holds a
//! single test so that nothing else in the process starts the timer first.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use ctxtree::Context;

const TIMER_THREAD_NAME: &str = "ctxtree-timer";

/// Names of this process's threads, from `/proc/self/task/*/comm`.
fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return names;
    };
    for task in tasks.flatten() {
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            names.push(comm.trim_end().to_owned());
        }
    }
    names
}

fn timer_thread_exists() -> bool {
    thread_names().iter().any(|n| n == TIMER_THREAD_NAME)
}

#[test]
fn timer_thread_is_started_only_once_a_deadline_is_used() {
    if cfg!(miri) || !Path::new("/proc/self/task").is_dir() || thread_names().is_empty() {
        return;
    }
    assert!(!timer_thread_exists(), "no timer thread at process start");

    // Everything but deadlines.
    let root = Context::background().with_value(1u32);
    let (a, ha) = root.with_cancel();
    let (b, hb) = Context::todo().with_cancel();
    let (m, _hm) = a.merge(&b);
    let detached = m.without_cancel();
    let (child, _hc) = detached.with_cancel();
    let _af = m.after_func(|| {});
    let _af2 = child.after_func(|| {});
    let done = m.done();
    ha.cancel();
    hb.cancel_with_cause("done");
    assert!(m.is_done());
    assert_eq!(futures::executor::block_on(done), ctxtree::Error::Canceled);
    drop(child);
    assert!(
        !timer_thread_exists(),
        "the timer thread must not start without a deadline; threads: {:?}",
        thread_names()
    );

    // Now use a deadline: the timer thread must appear. Its name is set by
    // the thread itself once it runs, so allow it some time.
    let (timed, _ht) = Context::background().with_timeout(Duration::from_secs(3600));
    let give_up = Instant::now() + Duration::from_secs(10);
    while !timer_thread_exists() && Instant::now() < give_up {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(
        timer_thread_exists(),
        "a pending deadline needs the timer thread; threads: {:?}",
        thread_names()
    );
    assert!(!timed.is_done());
}
