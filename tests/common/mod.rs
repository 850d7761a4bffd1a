//! Helpers shared by the integration tests.
//!
//! Every test binary includes this module with `mod common;` and uses only
//! part of it.
#![allow(dead_code)]

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread;
use std::time::Duration;

/// Runs `f` on its own thread and panics if it has not finished after `secs`
/// seconds, so that a hang fails the test instead of blocking CI.
///
/// A panic inside `f` is propagated to the caller with its original payload.
pub fn with_watchdog<F: FnOnce() + Send + 'static>(secs: u64, f: F) {
    // Miri is orders of magnitude slower than native code.
    let secs = if cfg!(miri) {
        secs.saturating_mul(20)
    } else {
        secs
    };
    let (tx, rx) = mpsc::channel::<()>();
    let body = thread::Builder::new()
        .name("watchdog-body".into())
        .spawn(move || {
            f();
            // The receiver is gone only if the watchdog already fired.
            let _ = tx.send(());
        })
        .expect("failed to spawn the watched thread");
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => {
            if let Err(payload) = body.join() {
                std::panic::resume_unwind(payload);
            }
        }
        Err(RecvTimeoutError::Disconnected) => match body.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => unreachable!("the watched closure returned without reporting"),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("watchdog: the test did not finish within {secs} s (hang or lost wake-up?)")
        }
    }
}

/// Spawns `f` on a thread with the given stack size and returns its result,
/// propagating a panic.
pub fn run_with_stack<T, F>(stack_size: usize, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let handle = thread::Builder::new()
        .name("small-stack".into())
        .stack_size(stack_size)
        .spawn(f)
        .expect("failed to spawn a small-stack thread");
    match handle.join() {
        Ok(value) => value,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// A small error type for causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestError(pub &'static str);

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test error: {}", self.0)
    }
}

impl std::error::Error for TestError {}

/// An error carrying a number, for causes given by many threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedError(pub usize);

impl fmt::Display for NumberedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "numbered error {}", self.0)
    }
}

impl std::error::Error for NumberedError {}

/// A value whose `Drop` increments a shared counter.
#[derive(Debug)]
pub struct DropCounter {
    counter: Arc<AtomicUsize>,
}

impl DropCounter {
    /// Returns a new value and the counter its drop increments.
    pub fn new() -> (DropCounter, Arc<AtomicUsize>) {
        let counter = Arc::new(AtomicUsize::new(0));
        (
            DropCounter {
                counter: Arc::clone(&counter),
            },
            counter,
        )
    }

    /// Returns a new value sharing an existing counter.
    pub fn with_counter(counter: &Arc<AtomicUsize>) -> DropCounter {
        DropCounter {
            counter: Arc::clone(counter),
        }
    }
}

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// An error (usable as a cause) whose `Drop` increments a shared counter.
#[derive(Debug)]
pub struct DropCountingError(pub DropCounter);

impl DropCountingError {
    pub fn new() -> (DropCountingError, Arc<AtomicUsize>) {
        let (counter, count) = DropCounter::new();
        (DropCountingError(counter), count)
    }
}

impl fmt::Display for DropCountingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("drop-counting error")
    }
}

impl std::error::Error for DropCountingError {}

/// A waker that counts how often it was woken.
#[derive(Debug, Default)]
pub struct CountingWaker {
    wakes: AtomicUsize,
}

impl CountingWaker {
    pub fn new() -> Arc<CountingWaker> {
        Arc::new(CountingWaker::default())
    }

    pub fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }

    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(Arc::clone(self))
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Reads a counter.
pub fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}
