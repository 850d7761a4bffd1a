//! Waiting: blocking waits, the `Done` future and `run_until_done`.

mod common;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use common::{with_watchdog, CountingWaker, TestError};
use ctxtree::{Context, Done, Error};

const SHORT: Duration = Duration::from_millis(20);
const GENEROUS: Duration = Duration::from_secs(10);

fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut TaskContext::from_waker(waker))
}

fn poll_done(done: &mut Done, waker: &Waker) -> Poll<Error> {
    poll_once(Pin::new(done), waker)
}

fn cancel_later(handle: ctxtree::CancelHandle, after: Duration) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(after);
        handle.cancel();
    })
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// A future that fails the test if it is ever polled.
fn must_not_be_polled() -> impl Future<Output = ()> {
    std::future::poll_fn(|_| -> Poll<()> { panic!("the inner future must not be polled") })
}

// ---- blocking waits --------------------------------------------------------

#[test]
fn wait_returns_the_error_after_another_thread_cancels() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        let canceller = cancel_later(handle, SHORT);
        assert_eq!(ctx.wait(), Error::Canceled);
        assert!(ctx.is_done());
        canceller.join().unwrap();
    });
}

#[test]
fn wait_returns_at_once_when_already_done() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        handle.cancel();
        assert_eq!(ctx.wait(), Error::Canceled);
        let (expired, _h) = Context::background().with_timeout(Duration::ZERO);
        assert_eq!(expired.wait(), Error::DeadlineExceeded);
    });
}

#[test]
fn wait_on_a_child_returns_when_an_ancestor_is_cancelled() {
    with_watchdog(30, || {
        let (root, handle) = Context::background().with_cancel();
        let (child, _h) = root.with_value(1u8).with_cancel();
        let canceller = cancel_later(handle, SHORT);
        assert_eq!(child.wait(), Error::Canceled);
        canceller.join().unwrap();
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn wait_returns_deadline_exceeded_when_the_timer_fires() {
    with_watchdog(30, || {
        let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(30));
        assert_eq!(ctx.wait(), Error::DeadlineExceeded);
    });
}

#[test]
fn wait_timeout_returns_none_when_the_context_stays_live() {
    with_watchdog(30, || {
        let (ctx, _handle) = Context::background().with_cancel();
        assert_eq!(ctx.wait_timeout(SHORT), None);
        assert_eq!(ctx.wait_timeout(Duration::ZERO), None);
        assert_eq!(Context::background().wait_timeout(SHORT), None);
        assert!(!ctx.is_done());
    });
}

#[test]
fn wait_deadline_returns_none_when_the_context_stays_live() {
    with_watchdog(30, || {
        let (ctx, _handle) = Context::background().with_cancel();
        assert_eq!(ctx.wait_deadline(Instant::now() + SHORT), None);
        assert_eq!(ctx.wait_deadline(Instant::now()), None);
        let now = Instant::now();
        let past = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        assert_eq!(ctx.wait_deadline(past), None);
        assert_eq!(Context::todo().wait_deadline(Instant::now() + SHORT), None);
    });
}

#[test]
fn wait_timeout_does_not_return_none_before_the_timeout() {
    with_watchdog(30, || {
        let (ctx, _handle) = Context::background().with_cancel();
        let start = Instant::now();
        assert_eq!(ctx.wait_timeout(SHORT), None);
        assert!(start.elapsed() >= SHORT);
        let deadline = Instant::now() + SHORT;
        assert_eq!(ctx.wait_deadline(deadline), None);
        assert!(Instant::now() >= deadline);
    });
}

#[test]
fn wait_timeout_and_wait_deadline_return_the_error_when_already_done() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    assert_eq!(ctx.wait_timeout(Duration::ZERO), Some(Error::Canceled));
    assert_eq!(ctx.wait_timeout(GENEROUS), Some(Error::Canceled));
    assert_eq!(ctx.wait_deadline(Instant::now()), Some(Error::Canceled));
    let (expired, _h) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(
        expired.wait_timeout(Duration::ZERO),
        Some(Error::DeadlineExceeded)
    );
}

#[test]
fn wait_timeout_returns_the_error_when_cancelled_during_the_wait() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        let canceller = cancel_later(handle, SHORT);
        assert_eq!(ctx.wait_timeout(GENEROUS), Some(Error::Canceled));
        canceller.join().unwrap();
    });
}

#[test]
fn wait_deadline_returns_the_error_when_cancelled_during_the_wait() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        let canceller = cancel_later(handle, SHORT);
        assert_eq!(
            ctx.wait_deadline(Instant::now() + GENEROUS),
            Some(Error::Canceled)
        );
        canceller.join().unwrap();
    });
}

#[test]
fn wait_timeout_with_duration_max_returns_when_cancelled() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        let canceller = cancel_later(handle, SHORT);
        assert_eq!(ctx.wait_timeout(Duration::MAX), Some(Error::Canceled));
        canceller.join().unwrap();
    });
}

#[test]
fn every_waiting_thread_is_woken() {
    let threads = if cfg!(miri) { 4 } else { 32 };
    with_watchdog(60, move || {
        let (ctx, handle) = Context::background().with_cancel();
        let started = Arc::new(Barrier::new(threads + 1));
        let waiters: Vec<_> = (0..threads)
            .map(|i| {
                let ctx = ctx.clone();
                let started = Arc::clone(&started);
                thread::spawn(move || {
                    started.wait();
                    match i % 3 {
                        0 => Some(ctx.wait()),
                        1 => ctx.wait_timeout(Duration::from_secs(3600)),
                        _ => ctx.wait_deadline(Instant::now() + Duration::from_secs(3600)),
                    }
                })
            })
            .collect();
        started.wait();
        thread::sleep(SHORT);
        handle.cancel();
        for w in waiters {
            assert_eq!(w.join().unwrap(), Some(Error::Canceled));
        }
    });
}

#[test]
fn a_wait_racing_with_cancel_never_loses_the_wake_up() {
    let rounds = if cfg!(miri) { 5 } else { 2_000 };
    with_watchdog(120, move || {
        for i in 0..rounds {
            let (ctx, handle) = Context::background().with_cancel();
            let (child, _ch) = ctx.with_cancel();
            let barrier = Arc::new(Barrier::new(2));
            let b = Arc::clone(&barrier);
            let waiter = thread::spawn(move || {
                b.wait();
                if i % 2 == 0 {
                    child.wait()
                } else {
                    child.wait_timeout(Duration::from_secs(3600)).unwrap()
                }
            });
            barrier.wait();
            handle.cancel();
            assert_eq!(waiter.join().unwrap(), Error::Canceled);
        }
    });
}

#[test]
fn one_thread_waiting_again_and_again_never_loses_the_wake_up() {
    // The same thread blocks on one context after another: a wake-up meant
    // for an earlier wait may reach a later one (as a spurious unpark).
    let rounds = if cfg!(miri) { 5 } else { 2_000 };
    with_watchdog(120, move || {
        let (tx, rx) = std::sync::mpsc::channel::<ctxtree::CancelHandle>();
        let (ctx_tx, ctx_rx) = std::sync::mpsc::channel::<Context>();
        let canceller = thread::spawn(move || {
            for handle in rx {
                handle.cancel();
            }
        });
        let waiter = thread::spawn(move || {
            for (i, ctx) in ctx_rx.into_iter().enumerate() {
                let err = if i % 2 == 0 {
                    ctx.wait()
                } else {
                    ctx.wait_deadline(Instant::now() + Duration::from_secs(3600))
                        .unwrap()
                };
                assert_eq!(err, Error::Canceled);
            }
        });
        for _ in 0..rounds {
            let (ctx, handle) = Context::background().with_cancel();
            ctx_tx.send(ctx).unwrap();
            tx.send(handle).unwrap();
        }
        drop((tx, ctx_tx));
        waiter.join().unwrap();
        canceller.join().unwrap();
    });
}

#[test]
fn a_blocked_wait_ignores_spurious_unparks() {
    with_watchdog(60, || {
        let (ctx, handle) = Context::background().with_cancel();
        let returned = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..2)
            .map(|i| {
                let ctx = ctx.clone();
                let returned = Arc::clone(&returned);
                thread::spawn(move || {
                    let err = if i == 0 {
                        Some(ctx.wait())
                    } else {
                        ctx.wait_timeout(Duration::from_secs(3600))
                    };
                    returned.fetch_add(1, Ordering::SeqCst);
                    err
                })
            })
            .collect();
        thread::sleep(SHORT);
        for _ in 0..100 {
            for w in &waiters {
                w.thread().unpark();
            }
            thread::yield_now();
        }
        thread::sleep(SHORT);
        assert_eq!(returned.load(Ordering::SeqCst), 0, "unparked, not done");
        handle.cancel();
        for w in waiters {
            assert_eq!(w.join().unwrap(), Some(Error::Canceled));
        }
    });
}

#[test]
fn deadline_waits_time_out_while_other_threads_wait_on_the_same_context() {
    with_watchdog(60, || {
        let (ctx, handle) = Context::background().with_cancel();
        let blocked = {
            let ctx = ctx.clone();
            thread::spawn(move || ctx.wait())
        };
        let timed: Vec<_> = (0..4)
            .map(|_| {
                let ctx = ctx.clone();
                thread::spawn(move || {
                    let start = Instant::now();
                    let deadline = start + SHORT;
                    let got = ctx.wait_deadline(deadline);
                    (got, Instant::now() >= deadline)
                })
            })
            .collect();
        for t in timed {
            assert_eq!(t.join().unwrap(), (None, true));
        }
        assert!(!blocked.is_finished(), "the context is still live");
        // A timed-out wait left no registration behind that would confuse a
        // later one: waiting again, then cancelling, wakes every waiter.
        let again = {
            let ctx = ctx.clone();
            thread::spawn(move || ctx.wait_timeout(Duration::from_secs(3600)))
        };
        thread::sleep(SHORT);
        handle.cancel();
        assert_eq!(blocked.join().unwrap(), Error::Canceled);
        assert_eq!(again.join().unwrap(), Some(Error::Canceled));
    });
}

#[test]
fn a_thread_blocked_on_a_context_cancelled_by_a_waker_is_woken() {
    // Cancelling `a` wakes a task whose waker cancels `b`: `b`'s waiters
    // are notified from inside the notification of `a`'s.
    struct CancelOnWake(std::sync::Mutex<Option<ctxtree::CancelHandle>>);

    impl Wake for CancelOnWake {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            if let Some(handle) = self.0.lock().unwrap().take() {
                handle.cancel();
            }
        }
    }

    with_watchdog(60, || {
        let (a, cancel_a) = Context::background().with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let on_a = {
            let a = a.clone();
            thread::spawn(move || a.wait())
        };
        let on_b: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || b.wait())
            })
            .collect();
        let waker = Waker::from(Arc::new(CancelOnWake(std::sync::Mutex::new(Some(
            cancel_b,
        )))));
        let mut done = a.done();
        assert_eq!(poll_done(&mut done, &waker), Poll::Pending);
        thread::sleep(SHORT);
        cancel_a.cancel();
        assert_eq!(on_a.join().unwrap(), Error::Canceled);
        for t in on_b {
            assert_eq!(t.join().unwrap(), Error::Canceled);
        }
        assert_eq!(b.err(), Err(Error::Canceled));
        assert_eq!(poll_done(&mut done, &waker), Poll::Ready(Error::Canceled));
    });
}

#[test]
fn a_wait_in_a_thread_local_destructor_is_woken() {
    struct WaitOnDrop(
        Option<(Context, bool)>,
        std::sync::mpsc::Sender<Option<Error>>,
    );

    impl Drop for WaitOnDrop {
        fn drop(&mut self) {
            if let Some((ctx, with_deadline)) = self.0.take() {
                let got = if with_deadline {
                    ctx.wait_deadline(Instant::now() + Duration::from_secs(3600))
                } else {
                    Some(ctx.wait())
                };
                let _ = self.1.send(got);
            }
        }
    }

    std::thread_local! {
        static GUARD: std::cell::RefCell<Option<WaitOnDrop>> =
            const { std::cell::RefCell::new(None) };
    }

    with_watchdog(60, || {
        for with_deadline in [false, true] {
            let (ctx, handle) = Context::background().with_cancel();
            let (tx, rx) = std::sync::mpsc::channel();
            let t = thread::spawn(move || {
                GUARD.with(|g| *g.borrow_mut() = Some(WaitOnDrop(Some((ctx, with_deadline)), tx)));
                // A blocking wait after GUARD was first used: the crate's
                // own thread-locals are then destroyed before GUARD's
                // destructor waits (reverse registration order on the
                // common platforms).
                let (other, _keep) = Context::background().with_cancel();
                assert_eq!(other.wait_timeout(Duration::from_millis(1)), None);
            });
            thread::sleep(SHORT);
            handle.cancel();
            assert_eq!(rx.recv().unwrap(), Some(Error::Canceled));
            t.join().unwrap();
        }
    });
}

// ---- Done: manual polling --------------------------------------------------

#[test]
fn done_completes_on_the_first_poll_when_already_done() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    let waker = CountingWaker::new().waker();
    assert_eq!(
        poll_done(&mut ctx.done(), &waker),
        Poll::Ready(Error::Canceled)
    );
    let (expired, _h) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(
        poll_done(&mut expired.done(), &waker),
        Poll::Ready(Error::DeadlineExceeded)
    );
}

#[test]
fn done_created_before_cancel_completes_after_it() {
    let (ctx, handle) = Context::background().with_cancel();
    let mut done = ctx.done();
    handle.cancel();
    let waker = CountingWaker::new().waker();
    assert_eq!(poll_done(&mut done, &waker), Poll::Ready(Error::Canceled));
}

#[test]
fn pending_done_is_woken_by_cancel_and_then_ready() {
    let (ctx, handle) = Context::background().with_cancel();
    let mut done = ctx.done();
    let counting = CountingWaker::new();
    assert_eq!(poll_done(&mut done, &counting.waker()), Poll::Pending);
    assert_eq!(counting.wakes(), 0);
    handle.cancel();
    assert!(counting.wakes() >= 1, "cancel must wake the pending Done");
    assert_eq!(
        poll_done(&mut done, &counting.waker()),
        Poll::Ready(Error::Canceled)
    );
}

#[test]
fn pending_done_wakes_the_most_recent_waker() {
    let (ctx, handle) = Context::background().with_cancel();
    let mut done = ctx.done();
    let first = CountingWaker::new();
    let second = CountingWaker::new();
    assert_eq!(poll_done(&mut done, &first.waker()), Poll::Pending);
    assert_eq!(poll_done(&mut done, &second.waker()), Poll::Pending);
    handle.cancel();
    assert!(second.wakes() >= 1);
    assert_eq!(
        poll_done(&mut done, &second.waker()),
        Poll::Ready(Error::Canceled)
    );
}

#[test]
fn done_of_background_stays_pending() {
    let waker = CountingWaker::new();
    let mut done = Context::background().done();
    for _ in 0..3 {
        assert_eq!(poll_done(&mut done, &waker.waker()), Poll::Pending);
    }
    let mut detached = Context::background()
        .with_cancel()
        .0
        .without_cancel()
        .done();
    assert_eq!(poll_done(&mut detached, &waker.waker()), Poll::Pending);
    assert_eq!(waker.wakes(), 0);
}

#[test]
fn dropping_a_pending_done_releases_its_waker() {
    let (ctx, handle) = Context::background().with_cancel();
    let dropped_waiter = CountingWaker::new();
    let n = if cfg!(miri) { 20 } else { 10_000 };
    for _ in 0..n {
        let mut done = ctx.done();
        assert_eq!(poll_done(&mut done, &dropped_waiter.waker()), Poll::Pending);
        drop(done);
        assert_eq!(
            Arc::strong_count(&dropped_waiter),
            1,
            "the dropped Done must not keep its waker"
        );
    }
    let live_waiter = CountingWaker::new();
    let mut live = ctx.done();
    assert_eq!(poll_done(&mut live, &live_waiter.waker()), Poll::Pending);
    handle.cancel();
    assert_eq!(
        dropped_waiter.wakes(),
        0,
        "a dropped Done must not be woken"
    );
    assert!(live_waiter.wakes() >= 1);
}

#[test]
fn dropping_a_pending_run_until_done_releases_its_waker() {
    let (ctx, handle) = Context::background().with_cancel();
    let dropped_waiter = CountingWaker::new();
    for _ in 0..100 {
        let mut fut = Box::pin(ctx.run_until_done(std::future::pending::<()>()));
        assert!(poll_once(fut.as_mut(), &dropped_waiter.waker()).is_pending());
        drop(fut);
        assert_eq!(Arc::strong_count(&dropped_waiter), 1);
    }
    handle.cancel();
    assert_eq!(dropped_waiter.wakes(), 0);
}

struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("deliberate waker panic");
    }

    fn wake_by_ref(self: &Arc<Self>) {
        panic!("deliberate waker panic");
    }
}

#[test]
fn a_panicking_waker_does_not_prevent_other_waiters_and_descendants() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        let (child, _ch) = ctx.with_cancel();
        let before_waker = CountingWaker::new();
        let after_waker = CountingWaker::new();
        let child_waker = CountingWaker::new();
        let mut before = ctx.done();
        let mut bad = ctx.done();
        let mut after = ctx.done();
        let mut on_child = child.done();
        assert!(poll_done(&mut before, &before_waker.waker()).is_pending());
        assert!(poll_done(&mut bad, &Waker::from(Arc::new(PanickingWaker))).is_pending());
        assert!(poll_done(&mut after, &after_waker.waker()).is_pending());
        assert!(poll_done(&mut on_child, &child_waker.waker()).is_pending());
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let _af = ctx.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let (woken_tx, woken_rx) = std::sync::mpsc::channel();
        let thread_waiter = {
            let ctx = ctx.clone();
            thread::spawn(move || woken_tx.send(ctx.wait()).unwrap())
        };
        // Let the thread block in wait(), registered after the bad waker.
        thread::sleep(Duration::from_millis(50));

        let cancel_panicked = catch_unwind(AssertUnwindSafe(|| handle.cancel())).is_err();
        // Gather every observation before asserting, so that a failure is
        // reported as itself and not as a panic while unwinding.
        let thread_woken = woken_rx.recv_timeout(Duration::from_secs(5));
        let observed = (
            ctx.is_done(),
            child.is_done(),
            ran.load(Ordering::SeqCst),
            before_waker.wakes() >= 1,
            after_waker.wakes() >= 1,
            child_waker.wakes() >= 1,
        );
        let drops_ok = catch_unwind(AssertUnwindSafe(move || {
            drop((before, bad, after, on_child));
        }))
        .is_ok();

        assert!(cancel_panicked, "the waker's panic resumes from cancel()");
        assert_eq!(
            observed,
            (true, true, 1, true, true, true),
            "(ctx done, child done, callbacks run, waker before / after the panicking one \
             woken, child's waker woken)"
        );
        assert_eq!(
            thread_woken,
            Ok(Error::Canceled),
            "a thread blocked in wait() must be woken despite the panicking waker"
        );
        thread_waiter.join().unwrap();
        assert!(
            drops_ok,
            "dropping Done futures after a waker panicked must not panic"
        );
    });
}

#[test]
fn done_futures_work_normally_after_a_waker_panicked_during_cancel() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        let mut bad = ctx.done();
        assert!(poll_done(&mut bad, &Waker::from(Arc::new(PanickingWaker))).is_pending());
        let _ = catch_unwind(AssertUnwindSafe(|| handle.cancel()));
        let waker = CountingWaker::new().waker();
        let fresh = catch_unwind(AssertUnwindSafe(|| {
            let mut fresh = ctx.done();
            poll_done(&mut fresh, &waker)
        }));
        let drop_bad = catch_unwind(AssertUnwindSafe(move || drop(bad))).is_ok();
        assert_eq!(fresh.ok(), Some(Poll::Ready(Error::Canceled)));
        assert!(
            drop_bad,
            "dropping the Done whose waker panicked must not panic"
        );
    });
}

#[test]
fn a_pending_done_holds_one_waker_reference_until_woken() {
    let (ctx, handle) = Context::background().with_cancel();
    let counting = CountingWaker::new();
    let waker = counting.waker();
    let mut done = ctx.done();
    assert_eq!(poll_done(&mut done, &waker), Poll::Pending);
    assert_eq!(poll_done(&mut done, &waker), Poll::Pending);
    assert_eq!(
        Arc::strong_count(&counting),
        3,
        "the test's two plus one for the registration, however often polled"
    );
    handle.cancel();
    assert_eq!(counting.wakes(), 1);
    assert_eq!(poll_done(&mut done, &waker), Poll::Ready(Error::Canceled));
    assert_eq!(
        Arc::strong_count(&counting),
        2,
        "a completed Done keeps no reference"
    );
    drop((done, waker));
    assert_eq!(Arc::strong_count(&counting), 1);
}

/// A hand-made waker whose clones have another vtable (`CLONED`) than the
/// original (`ORIGINAL`), both over an `Arc<AtomicUsize>` counting wakes.
mod vtable_switching {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{RawWaker, RawWakerVTable, Waker};

    static ORIGINAL: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_raw);
    static CLONED: RawWakerVTable = RawWakerVTable::new(clone, wake, cloned_wake_by_ref, drop_raw);

    unsafe fn clone(data: *const ()) -> RawWaker {
        // SAFETY: `data` came from `Arc::into_raw` (see `waker`).
        unsafe { Arc::increment_strong_count(data.cast::<AtomicUsize>()) };
        RawWaker::new(data, &CLONED)
    }

    unsafe fn wake(data: *const ()) {
        // SAFETY: as above; the waker's reference is consumed.
        let count = unsafe { Arc::from_raw(data.cast::<AtomicUsize>()) };
        count.fetch_add(1, Ordering::SeqCst);
    }

    unsafe fn wake_by_ref(data: *const ()) {
        // SAFETY: as above; the reference stays the waker's.
        unsafe { &*data.cast::<AtomicUsize>() }.fetch_add(1, Ordering::SeqCst);
    }

    unsafe fn cloned_wake_by_ref(data: *const ()) {
        // SAFETY: as above (a distinct function, so the vtables differ).
        unsafe { &*data.cast::<AtomicUsize>() }.fetch_add(1, Ordering::Relaxed);
    }

    unsafe fn drop_raw(data: *const ()) {
        // SAFETY: as above; the waker's reference is released.
        drop(unsafe { Arc::from_raw(data.cast::<AtomicUsize>()) });
    }

    pub fn waker(count: &Arc<AtomicUsize>) -> Waker {
        let data = Arc::into_raw(count.clone()).cast::<()>();
        // SAFETY: the vtable's functions follow the `RawWaker` contract for
        // a data pointer from `Arc::into_raw`.
        unsafe { Waker::from_raw(RawWaker::new(data, &ORIGINAL)) }
    }
}

#[test]
fn a_waker_whose_clones_have_another_vtable_is_woken() {
    let (ctx, handle) = Context::background().with_cancel();
    let count = Arc::new(AtomicUsize::new(0));
    let waker = vtable_switching::waker(&count);
    let mut done = ctx.done();
    assert_eq!(poll_done(&mut done, &waker), Poll::Pending);
    handle.cancel();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(poll_done(&mut done, &waker), Poll::Ready(Error::Canceled));
    drop((done, waker));
    assert_eq!(Arc::strong_count(&count), 1, "every clone was released");
}

#[test]
fn a_cancel_in_a_thread_local_destructor_wakes_waiters() {
    struct CancelOnDrop(Option<ctxtree::CancelHandle>);

    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            if let Some(handle) = self.0.take() {
                handle.cancel();
            }
        }
    }

    std::thread_local! {
        static GUARD: std::cell::RefCell<Option<CancelOnDrop>> =
            const { std::cell::RefCell::new(None) };
    }

    let (ctx, handle) = Context::background().with_cancel();
    let counting = CountingWaker::new();
    let mut done = ctx.done();
    assert_eq!(poll_done(&mut done, &counting.waker()), Poll::Pending);
    thread::spawn(move || {
        GUARD.with(|g| *g.borrow_mut() = Some(CancelOnDrop(Some(handle))));
        // A cancel with a waiter on this thread, after GUARD was first used:
        // the crate's own thread-locals are then destroyed before GUARD's
        // destructor cancels (destructors run in reverse registration order
        // on the common platforms).
        let (other, other_handle) = Context::background().with_cancel();
        let mut other_done = other.done();
        let waker = CountingWaker::new().waker();
        assert_eq!(poll_done(&mut other_done, &waker), Poll::Pending);
        other_handle.cancel();
    })
    .join()
    .unwrap();
    assert_eq!(counting.wakes(), 1);
    assert_eq!(
        poll_done(&mut done, &counting.waker()),
        Poll::Ready(Error::Canceled)
    );
}

// ---- Done: executors -------------------------------------------------------

#[test]
fn done_completes_on_futures_block_on() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        let canceller = cancel_later(handle, SHORT);
        assert_eq!(futures::executor::block_on(ctx.done()), Error::Canceled);
        canceller.join().unwrap();
    });
}

#[test]
fn done_completes_on_a_tokio_current_thread_runtime() {
    with_watchdog(30, || {
        let rt = current_thread_runtime();
        let (ctx, handle) = Context::background().with_cancel();
        let err = rt.block_on(async move {
            let waiter = tokio::spawn({
                let ctx = ctx.clone();
                async move { ctx.done().await }
            });
            tokio::task::yield_now().await;
            handle.cancel();
            waiter.await.unwrap()
        });
        assert_eq!(err, Error::Canceled);
    });
}

#[test]
fn done_completes_on_a_tokio_current_thread_runtime_when_another_thread_cancels() {
    with_watchdog(30, || {
        let rt = current_thread_runtime();
        let (ctx, handle) = Context::background().with_cancel();
        let canceller = cancel_later(handle, SHORT);
        assert_eq!(rt.block_on(ctx.done()), Error::Canceled);
        canceller.join().unwrap();
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn done_completes_on_a_tokio_multi_thread_runtime() {
    with_watchdog(30, || {
        let rt = multi_thread_runtime();
        let (ctx, handle) = Context::background().with_cancel();
        let err = rt.block_on(async move {
            let waiter = tokio::spawn(async move { ctx.done().await });
            tokio::time::sleep(SHORT).await;
            handle.cancel();
            waiter.await.unwrap()
        });
        assert_eq!(err, Error::Canceled);
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn done_reports_deadline_exceeded_when_the_timer_fires() {
    with_watchdog(30, || {
        let rt = multi_thread_runtime();
        let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(30));
        let deadline = ctx.deadline().unwrap();
        let err = rt.block_on(async move { ctx.done().await });
        assert_eq!(err, Error::DeadlineExceeded);
        assert!(Instant::now() >= deadline);
    });
}

#[test]
fn done_completes_immediately_on_an_executor_when_already_done() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        handle.cancel_with_cause(TestError("x"));
        assert_eq!(futures::executor::block_on(ctx.done()), Error::Canceled);
        assert_eq!(
            current_thread_runtime().block_on(ctx.done()),
            Error::Canceled
        );
    });
}

#[test]
fn stored_done_moved_to_another_task_completes() {
    with_watchdog(30, || {
        let rt = current_thread_runtime();
        let (ctx, handle) = Context::background().with_cancel();
        let stored: Done = ctx.done();
        drop(ctx);
        let err = rt.block_on(async move {
            let task = tokio::spawn(stored);
            tokio::task::yield_now().await;
            handle.cancel();
            task.await.unwrap()
        });
        assert_eq!(err, Error::Canceled);
    });
}

#[test]
fn done_polled_on_one_task_then_moved_to_another_completes() {
    with_watchdog(30, || {
        let rt = current_thread_runtime();
        let (ctx, handle) = Context::background().with_cancel();
        let mut done = ctx.done();
        let waker = CountingWaker::new();
        assert_eq!(poll_done(&mut done, &waker.waker()), Poll::Pending);
        let err = rt.block_on(async move {
            let task = tokio::spawn(done);
            tokio::task::yield_now().await;
            handle.cancel();
            task.await.unwrap()
        });
        assert_eq!(err, Error::Canceled);
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_thousand_tasks_awaiting_done_all_wake() {
    with_watchdog(60, || {
        let rt = multi_thread_runtime();
        let (ctx, handle) = Context::background().with_cancel();
        let (child, _ch) = ctx.with_cancel();
        let results = rt.block_on(async move {
            let tasks: Vec<_> = (0..1_000)
                .map(|i| {
                    let waiting_on = if i % 2 == 0 {
                        ctx.clone()
                    } else {
                        child.clone()
                    };
                    tokio::spawn(async move { waiting_on.done().await })
                })
                .collect();
            tokio::time::sleep(SHORT).await;
            let canceller = thread::spawn(move || handle.cancel());
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            canceller.join().unwrap();
            results
        });
        assert_eq!(results.len(), 1_000);
        assert!(results.iter().all(|e| *e == Error::Canceled));
    });
}

#[test]
fn a_done_racing_with_cancel_never_loses_the_wake_up() {
    let rounds = if cfg!(miri) { 5 } else { 1_000 };
    with_watchdog(120, move || {
        for _ in 0..rounds {
            let (ctx, handle) = Context::background().with_cancel();
            let barrier = Arc::new(Barrier::new(2));
            let b = Arc::clone(&barrier);
            let canceller = thread::spawn(move || {
                b.wait();
                handle.cancel();
            });
            let done = ctx.done();
            barrier.wait();
            assert_eq!(futures::executor::block_on(done), Error::Canceled);
            canceller.join().unwrap();
        }
    });
}

// ---- run_until_done --------------------------------------------------------

#[test]
fn run_until_done_returns_err_without_polling_when_already_done() {
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    assert_eq!(
        futures::executor::block_on(ctx.run_until_done(must_not_be_polled())),
        Err(Error::Canceled)
    );
    let (expired, _h) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(
        futures::executor::block_on(expired.run_until_done(must_not_be_polled())),
        Err(Error::DeadlineExceeded)
    );
}

#[test]
fn run_until_done_returns_ok_when_the_future_completes() {
    let (ctx, _handle) = Context::background().with_cancel();
    assert_eq!(
        futures::executor::block_on(ctx.run_until_done(async { 7 })),
        Ok(7)
    );
    assert_eq!(
        futures::executor::block_on(Context::background().run_until_done(async { "x" })),
        Ok("x")
    );
    assert!(!ctx.is_done());
}

#[test]
fn run_until_done_returns_ok_for_a_future_that_completes_later_on_tokio() {
    with_watchdog(30, || {
        let rt = current_thread_runtime();
        let (ctx, _handle) = Context::background().with_timeout(Duration::from_secs(3600));
        let out = rt.block_on(async {
            ctx.run_until_done(async {
                tokio::time::sleep(SHORT).await;
                42
            })
            .await
        });
        assert_eq!(out, Ok(42));
    });
}

#[test]
fn run_until_done_returns_err_when_cancelled_while_pending() {
    with_watchdog(30, || {
        let (ctx, handle) = Context::background().with_cancel();
        let canceller = cancel_later(handle, SHORT);
        let out = futures::executor::block_on(ctx.run_until_done(std::future::pending::<u32>()));
        assert_eq!(out, Err(Error::Canceled));
        canceller.join().unwrap();
    });
}

#[test]
fn run_until_done_returns_err_when_cancelled_by_another_task_on_tokio() {
    with_watchdog(30, || {
        let rt = current_thread_runtime();
        let (ctx, handle) = Context::background().with_cancel();
        let out = rt.block_on(async move {
            let task = tokio::spawn(async move {
                ctx.run_until_done(tokio::time::sleep(Duration::from_secs(3600)))
                    .await
            });
            tokio::task::yield_now().await;
            handle.cancel();
            task.await.unwrap()
        });
        assert_eq!(out, Err(Error::Canceled));
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn run_until_done_returns_deadline_exceeded_when_the_timer_fires() {
    with_watchdog(30, || {
        let rt = multi_thread_runtime();
        let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(30));
        let out =
            rt.block_on(async move { ctx.run_until_done(std::future::pending::<()>()).await });
        assert_eq!(out, Err(Error::DeadlineExceeded));
    });
}

#[test]
fn run_until_done_polls_the_future_first_after_a_wake_up() {
    let (ctx, handle) = Context::background().with_cancel();
    let mut polls = 0;
    let inner = std::future::poll_fn(move |_| {
        polls += 1;
        if polls == 1 {
            Poll::Pending
        } else {
            Poll::Ready(42)
        }
    });
    let mut fut = Box::pin(ctx.run_until_done(inner));
    let waker = CountingWaker::new();
    assert!(poll_once(fut.as_mut(), &waker.waker()).is_pending());
    handle.cancel();
    assert!(waker.wakes() >= 1, "cancel must wake run_until_done");
    assert_eq!(poll_once(fut.as_mut(), &waker.waker()), Poll::Ready(Ok(42)));
}

#[test]
fn run_until_done_returns_ok_when_the_future_cancels_and_completes_in_the_same_poll() {
    let (ctx, handle) = Context::background().with_cancel();
    let inner = std::future::poll_fn(move |_| {
        handle.cancel();
        Poll::Ready("finished")
    });
    let out = futures::executor::block_on(ctx.run_until_done(inner));
    assert_eq!(out, Ok("finished"));
    assert!(ctx.is_done());
}

#[test]
fn run_until_done_returns_err_when_the_future_cancels_and_stays_pending() {
    let (ctx, handle) = Context::background().with_cancel();
    let inner = std::future::poll_fn(move |_| -> Poll<()> {
        handle.cancel();
        Poll::Pending
    });
    let mut fut = Box::pin(ctx.run_until_done(inner));
    let waker = CountingWaker::new();
    let mut result = Poll::Pending;
    for _ in 0..3 {
        result = poll_once(fut.as_mut(), &waker.waker());
        if result.is_ready() {
            break;
        }
    }
    assert_eq!(result, Poll::Ready(Err(Error::Canceled)));
}

#[test]
fn run_until_done_of_a_child_is_cancelled_by_its_ancestor() {
    with_watchdog(30, || {
        let (root, handle) = Context::background().with_cancel();
        let (a, _ha) = root.with_cancel();
        let (m, _hm) = a.merge(&Context::background());
        let canceller = cancel_later(handle, SHORT);
        let out = futures::executor::block_on(m.run_until_done(std::future::pending::<()>()));
        assert_eq!(out, Err(Error::Canceled));
        canceller.join().unwrap();
    });
}
