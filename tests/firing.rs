//! Deadline expiry runs on the firing threads (`ctxtree-fire`), never on the
//! timer thread: user code that a deadline's cancellation runs (callbacks,
//! wakers) cannot make an unrelated deadline late, however long it blocks.
//!
//! Timing margins are generous (seconds where the expected figure is
//! milliseconds) and every test runs under a watchdog: a timer stalled by
//! user code fails these tests instead of hanging them.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::task::{Context as TaskContext, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use common::with_watchdog;
use ctxtree::Context;

/// A waker whose `wake` blocks until the gate opens.
struct BlockingWaker {
    gate: Arc<Barrier>,
    woken: mpsc::Sender<()>,
}

impl Wake for BlockingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.woken.send(());
        self.gate.wait();
    }
}

#[test]
fn blocked_callbacks_and_wakers_do_not_delay_an_unrelated_deadline() {
    if cfg!(miri) {
        return;
    }
    with_watchdog(60, || {
        const BLOCKED: usize = 8;
        // Opened at the end: every blocked callback and waker, plus us.
        let gate = Arc::new(Barrier::new(2 * BLOCKED + 1));
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let mut keep = Vec::new();
        for i in 0..BLOCKED {
            // Expiring contexts whose callbacks block.
            let (ctx, h) = Context::background().with_timeout(Duration::from_millis(10 + i as u64));
            let (gate2, tx) = (gate.clone(), started_tx.clone());
            let af = ctx.after_func(move || {
                let _ = tx.send(());
                gate2.wait();
            });
            keep.push((ctx, h, Some(af), None));
            // Expiring contexts whose waiters' wakers block.
            let (ctx, h) = Context::background().with_timeout(Duration::from_millis(10 + i as u64));
            let waker = Waker::from(Arc::new(BlockingWaker {
                gate: gate.clone(),
                woken: started_tx.clone(),
            }));
            let mut done = Box::pin(ctx.done());
            let pending = done
                .as_mut()
                .poll(&mut TaskContext::from_waker(&waker))
                .is_pending();
            assert!(pending, "a 10 ms deadline is not done yet");
            keep.push((ctx, h, None, Some(done)));
        }
        // Every blocking callback and waker is now running, and blocked.
        for _ in 0..2 * BLOCKED {
            started_rx
                .recv_timeout(Duration::from_secs(20))
                .expect("every expiring context's callback or waker ran");
        }
        // An unrelated deadline must still fire on time.
        let start = Instant::now();
        let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(30));
        let (tx, rx) = mpsc::channel::<Instant>();
        let _af = ctx.after_func(move || {
            let _ = tx.send(Instant::now());
        });
        let fired = rx.recv_timeout(Duration::from_secs(10));
        // Release the blocked ones before asserting, so a failure ends.
        gate.wait();
        let fired = fired.expect("the unrelated deadline fired while others' user code blocked");
        let late = fired.duration_since(start);
        assert!(
            late >= Duration::from_millis(30) && late < Duration::from_secs(3),
            "the unrelated 30 ms deadline fired after {late:?}"
        );
        drop(keep);
    });
}

#[test]
fn a_burst_of_expiries_all_fire_and_run_their_callbacks() {
    if cfg!(miri) {
        return;
    }
    with_watchdog(60, || {
        const N: usize = 2_000;
        let ran = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<()>();
        let mut keep = Vec::with_capacity(N);
        for i in 0..N {
            let (ctx, h) =
                Context::background().with_timeout(Duration::from_millis(5 + (i % 7) as u64));
            let (ran, tx) = (ran.clone(), tx.clone());
            let af = ctx.after_func(move || {
                if ran.fetch_add(1, Ordering::Relaxed) + 1 == N {
                    let _ = tx.send(());
                }
            });
            keep.push((ctx, h, af));
        }
        rx.recv_timeout(Duration::from_secs(30))
            .expect("all 2,000 callbacks ran");
        for (ctx, _, _) in &keep {
            assert_eq!(ctx.err(), Err(ctxtree::Error::DeadlineExceeded));
        }
        assert_eq!(ran.load(Ordering::Relaxed), N);
    });
}

#[test]
fn expiry_runs_callbacks_on_a_firing_thread_and_manual_cancel_on_the_canceller() {
    if cfg!(miri) {
        return;
    }
    with_watchdog(60, || {
        let name = || thread::current().name().map(str::to_owned);
        // Deadline expiry: a firing thread.
        let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(5));
        let (tx, rx) = mpsc::channel();
        let _af = ctx.after_func(move || {
            let _ = tx.send(name());
        });
        let on = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(on.as_deref(), Some("ctxtree-fire"));

        // Manual cancel of a deadline context: the cancelling thread.
        let (ctx, h) = Context::background().with_timeout(Duration::from_secs(3600));
        let (tx, rx) = mpsc::channel();
        let _af = ctx.after_func(move || {
            let _ = tx.send(name());
        });
        thread::Builder::new()
            .name("canceller".into())
            .spawn(move || h.cancel())
            .unwrap()
            .join()
            .unwrap();
        let on = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(on.as_deref(), Some("canceller"));
    });
}
