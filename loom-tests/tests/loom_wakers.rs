//! loom models of the deferred wake-up of task wakers (DESIGN.md §5, §8).
//!
//! A task's waker is registered with event-listener as a guard that, woken
//! inside `Event::notify` (under the event's list lock, in a cancellation
//! walk), only records the wake-up in the notifying thread's `WakeScope`;
//! the walk performs it once it holds nothing. These models race a task's
//! `Done` against a cancellation and check that
//! - no wake-up is lost: the task, parked until its waker unparks it, is
//!   woken (loom reports a deadlock otherwise), and
//! - a waker that re-enters the crate from `wake` (cancels its own context
//!   or the parent, drops or polls the woken `Done`) does not deadlock:
//!   called under the list lock it would take that lock again (loom's mutex
//!   reports the deadlock).
//!
//! Run with `.ci/loom.sh` (it sets `--cfg loom --cfg crossbeam_loom` and
//! `LOOM_MAX_PREEMPTIONS`).
#![cfg(loom)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};

use ctxtree::{__private, CancelHandle, Context, Done, Error};
use loom::sync::Mutex;
use loom::thread;
use loom_tests::model;

/// What a waker does, once, when first woken.
type Action = Box<dyn FnOnce() + Send>;

/// A task's waker: counts its wake-ups, runs its action on the first, and
/// unparks the task's thread.
struct TaskWaker {
    task: thread::Thread,
    wakes: loom::sync::atomic::AtomicUsize,
    action: Mutex<Option<Action>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SeqCst: read by the model's final checks after the joins.
        self.wakes.fetch_add(1, Ordering::SeqCst);
        let action = self.action.lock().unwrap().take();
        if let Some(action) = action {
            action();
        }
        self.task.unpark();
    }
}

/// Polls `done` on this thread as a task with `waker` until it completes,
/// parking between polls: a lost wake-up leaves it parked forever, which
/// loom reports as a deadlock. The `Done` sits in `slot` so that the waker
/// can reach it (and take it away: then `None`).
fn run_task(slot: &Mutex<Option<Done>>, waker: &Waker) -> Option<Error> {
    loop {
        let mut guard = slot.lock().unwrap();
        let done = guard.as_mut()?;
        let polled = Pin::new(done).poll(&mut TaskContext::from_waker(waker));
        drop(guard);
        match polled {
            Poll::Ready(err) => return Some(err),
            Poll::Pending => thread::park(),
        }
    }
}

/// The task side of a model: a thread that waits on `ctx` with a waker
/// whose action is `action(slot)`. Returns the task's thread and its
/// waker (once made).
fn spawn_task(
    ctx: &Context,
    action: impl FnOnce(Arc<Mutex<Option<Done>>>) + Send + 'static,
) -> (thread::JoinHandle<Option<Error>>, Shown) {
    let done = ctx.done();
    let shown = Arc::new(Mutex::new(None));
    let shown2 = shown.clone();
    let t = thread::spawn(move || {
        let slot = Arc::new(Mutex::new(Some(done)));
        let for_action = slot.clone();
        let waker = Arc::new(TaskWaker {
            task: thread::current(),
            wakes: loom::sync::atomic::AtomicUsize::new(0),
            action: Mutex::new(Some(Box::new(move || action(for_action)))),
        });
        *shown2.lock().unwrap() = Some(waker.clone());
        run_task(&slot, &Waker::from(waker))
    });
    (t, shown)
}

/// The task's waker, shown to the main thread once the task made it.
type Shown = Arc<Mutex<Option<Arc<TaskWaker>>>>;

fn wakes(shown: &Shown) -> usize {
    shown
        .lock()
        .unwrap()
        .as_ref()
        .map_or(0, |w| w.wakes.load(Ordering::SeqCst))
}

/// The task waits on `ctx` while the main thread cancels it; the waker
/// cancels `ctx` again and its parent. Woken inside the notify, the second
/// cancel's helping walk would notify `ctx`'s event again under its own
/// lock.
#[test]
fn waker_cancelling_its_context_and_parent_racing_cancel() {
    model(|| {
        let (parent, parent_h) = Context::background().with_cancel();
        let (ctx, ctx_h) = parent.with_cancel();
        let (again, parent_again) = (ctx_h.clone(), parent_h.clone());
        let (t, shown) = spawn_task(&ctx, move |_slot| {
            again.cancel();
            parent_again.cancel();
        });
        ctx_h.cancel();
        assert_eq!(t.join().unwrap(), Some(Error::Canceled));
        // Woken at most once; the parent is cancelled iff it was.
        let n = wakes(&shown);
        assert!(n <= 1, "woken {n} times");
        assert_eq!(parent.is_done(), n == 1);
    });
}

/// The waker takes the woken `Done` away and drops it (its listener leaves
/// the event: under the list lock that would re-take it), with its context.
#[test]
fn waker_dropping_the_woken_done_racing_cancel_of_the_parent() {
    model(|| {
        let (parent, parent_h) = Context::background().with_cancel();
        let (ctx, ctx_h) = parent.with_cancel();
        let (t, shown) = spawn_task(&ctx, |slot| {
            let taken = slot.lock().unwrap().take();
            drop(taken);
        });
        drop((ctx, ctx_h));
        parent_h.cancel();
        let outcome = t.join().unwrap();
        match wakes(&shown) {
            // Registered, woken, its `Done` dropped by the waker.
            1 => assert_eq!(outcome, None),
            // Saw the parent done before registering.
            0 => assert_eq!(outcome, Some(Error::Canceled)),
            n => panic!("woken {n} times"),
        }
    });
}

/// The outer cancel is the deadline firing (the timer thread's path); the
/// waker polls the woken `Done` inline (an executor that polls from `wake`)
/// and cancels the context's own handle.
#[test]
fn waker_polling_the_woken_done_racing_deadline_firing() {
    model(|| {
        let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        let (ctx, ctx_h) = Context::background().with_deadline(far);
        let handle: CancelHandle = ctx_h.clone();
        let (t, shown) = spawn_task(&ctx, move |slot| {
            if let Some(done) = slot.lock().unwrap().as_mut() {
                let polled =
                    Pin::new(done).poll(&mut TaskContext::from_waker(&Waker::from(Arc::new(Noop))));
                assert_eq!(polled, Poll::Ready(Error::DeadlineExceeded));
            }
            handle.cancel();
        });
        assert!(__private::fire_deadline(&ctx));
        assert_eq!(t.join().unwrap(), Some(Error::DeadlineExceeded));
        assert!(wakes(&shown) <= 1);
        drop(ctx_h);
    });
}

/// A waker that does nothing (std's `Waker::noop` is newer than the MSRV).
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}
