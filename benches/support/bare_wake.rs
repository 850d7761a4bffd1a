//! The rounds of W7 and W8 and W8's floor (`L_tokio_wake_1000`), shared by
//! `bulk.rs` and `profile.rs`: a thread blocked in a wait, the waiting
//! tasks, and a bare one-shot wake-all primitive with no library in
//! between.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Poll, Waker};
use std::time::Instant;

/// A bare one-shot wake-all primitive: a flag and a mutex-guarded waker
/// list. The limit for W8: tokio scheduling 1,000 woken tasks with nothing
/// but this in between.
#[derive(Default)]
pub struct Bare {
    flag: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

pub struct BareWait(pub Arc<Bare>, pub bool);

impl Future for BareWait {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<()> {
        if self.0.flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if !self.1 {
            self.0.wakers.lock().unwrap().push(cx.waker().clone());
            self.1 = true;
            if self.0.flag.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Bare {
    pub fn fire(&self) {
        self.flag.store(true, Ordering::Release);
        for w in std::mem::take(&mut *self.wakers.lock().unwrap()) {
            w.wake();
        }
    }
}

/// Tasks per W8 round.
pub const TASKS: usize = 1000;

/// A round's tasks, spawned and all registered on their wait.
pub struct Round {
    /// Tasks completed so far.
    pub finished: Arc<AtomicUsize>,
    /// Notified by the last task to complete.
    pub all_done: Arc<tokio::sync::Notify>,
    /// When the last task completed.
    pub end: Arc<Mutex<Option<Instant>>>,
}

/// On a current-thread runtime: spawns `TASKS` tasks awaiting
/// `make_wait()` and returns once every one of them has registered (each
/// increments `started` and registers in the same poll).
pub async fn spawn_waiters<W, F>(make_wait: W) -> Round
where
    W: Fn() -> F,
    F: Future + Send + 'static,
{
    let started = Arc::new(AtomicUsize::new(0));
    let round = Round {
        finished: Arc::new(AtomicUsize::new(0)),
        all_done: Arc::new(tokio::sync::Notify::new()),
        end: Arc::new(Mutex::new(None)),
    };
    for _ in 0..TASKS {
        let fut = make_wait();
        let (s, f, e, n) = (
            started.clone(),
            round.finished.clone(),
            round.end.clone(),
            round.all_done.clone(),
        );
        tokio::spawn(async move {
            s.fetch_add(1, Ordering::Relaxed);
            fut.await;
            if f.fetch_add(1, Ordering::Relaxed) + 1 == TASKS {
                *e.lock().unwrap() = Some(Instant::now());
                n.notify_one();
            }
        });
    }
    while started.load(Ordering::Relaxed) < TASKS {
        tokio::task::yield_now().await;
    }
    assert_eq!(round.finished.load(Ordering::Relaxed), 0);
    round
}

/// The runtime W8 runs on: tokio's current-thread runtime.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

/// W7's setup: spawns a thread that runs `wait` (which blocks), and
/// returns once that thread has had time to block for real (park in the
/// kernel).
pub fn spawn_blocked_waiter<W, R>(wait: W) -> std::thread::JoinHandle<R>
where
    W: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let ready = Arc::new(AtomicBool::new(false));
    let r2 = ready.clone();
    let waiter = std::thread::spawn(move || {
        r2.store(true, Ordering::Release);
        wait()
    });
    while !ready.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    std::thread::sleep(std::time::Duration::from_micros(300));
    waiter
}

/// W7's floor (`L_park_unpark`): a waiter that parks until a flag is set,
/// and the waker that sets it and unparks the waiter's thread.
pub fn bare_park_pair() -> (
    impl FnOnce() + Send + 'static,
    impl FnOnce(&std::thread::Thread),
) {
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    (
        move || {
            while !f2.load(Ordering::Acquire) {
                std::thread::park();
            }
        },
        move |t: &std::thread::Thread| {
            flag.store(true, Ordering::Release);
            t.unpark();
        },
    )
}
