//! Task wakers that re-enter the crate from inside `wake`.
//!
//! The API promises that wakers run with nothing internal held: a waker
//! woken by a cancellation (or by a deadline firing on the timer thread)
//! may cancel the context it waits on, its parent or an unrelated one,
//! derive from it, drop it, poll a `Done` on it or wait on it. Each case
//! below is run with the outer cancellation coming from the context's own
//! handle, from its parent's and from its deadline firing (then an
//! unrelated later deadline must still fire: the timer thread is alive).
//! Each runs under a watchdog: a waker called under an internal lock
//! deadlocks instead of failing.

mod common;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use common::{count, with_watchdog, CountingWaker, DropCounter};
use ctxtree::{CancelHandle, Context, Done, Error};
use futures::task::noop_waker_ref;

/// Generous: a passing case takes milliseconds; a deadlock never ends.
const WATCHDOG: u64 = 30;
/// The deadline of the contexts whose timer is the outer cancel.
const DEADLINE: Duration = Duration::from_millis(30);
const GENEROUS: Duration = Duration::from_secs(10);

fn poll(done: &mut Done, waker: &Waker) -> Poll<Error> {
    Pin::new(done).poll(&mut TaskContext::from_waker(waker))
}

/// A waker that runs an action the first time it is woken, and counts its
/// wake-ups.
struct ActionWaker {
    wakes: AtomicUsize,
    action: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ActionWaker {
    fn new(action: impl FnOnce() + Send + 'static) -> Arc<ActionWaker> {
        Arc::new(ActionWaker {
            wakes: AtomicUsize::new(0),
            action: Mutex::new(Some(Box::new(action))),
        })
    }

    fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

impl Wake for ActionWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        // Taken out first: the action may wake this waker again.
        let action = self.action.lock().unwrap().take();
        if let Some(action) = action {
            action();
        }
    }
}

/// Where the outer cancellation comes from.
#[derive(Clone, Copy, Debug)]
enum Outer {
    /// The waited context's own handle.
    Own,
    /// Its parent's handle.
    Parent,
    /// Its deadline, fired by the timer thread.
    Deadline,
}

impl Outer {
    fn expected(self) -> Error {
        match self {
            Outer::Own | Outer::Parent => Error::Canceled,
            Outer::Deadline => Error::DeadlineExceeded,
        }
    }
}

/// What a waker can reach: the waited context (a value layer over a
/// cancellable or deadline node) and its handle, the parent and its handle,
/// and the woken `Done` itself.
struct Reach {
    parent: Context,
    parent_h: CancelHandle,
    ctx: Context,
    ctx_h: CancelHandle,
    done: Arc<Mutex<Option<Done>>>,
    expected: Error,
    /// Counts the drops of `ctx`'s value: 1 once the context is gone.
    drops: Arc<AtomicUsize>,
}

/// A case: `prepare` runs on the test thread before the outer cancel and
/// returns what the waker does when woken and what the test checks after.
struct Plan {
    in_wake: Box<dyn FnOnce() + Send>,
    after: Box<dyn FnOnce() + Send>,
}

fn plan(in_wake: impl FnOnce() + Send + 'static, after: impl FnOnce() + Send + 'static) -> Plan {
    Plan {
        in_wake: Box::new(in_wake),
        after: Box::new(after),
    }
}

/// Builds the waited context for `outer`: a pending `Done` on it is
/// registered before its deadline can fire (retried if the machine was too
/// slow to poll before the deadline passed).
fn setup(
    outer: Outer,
) -> (
    Context,
    CancelHandle,
    Context,
    CancelHandle,
    Arc<AtomicUsize>,
) {
    loop {
        let (parent, parent_h) = Context::background().with_cancel();
        let (base, ctx_h) = match outer {
            Outer::Deadline => parent.with_timeout(DEADLINE),
            Outer::Own | Outer::Parent => parent.with_cancel(),
        };
        let (value, drops) = DropCounter::new();
        let ctx = base.with_value(value);
        drop(base);
        if !ctx.is_done() {
            return (parent, parent_h, ctx, ctx_h, drops);
        }
    }
}

/// Runs one case: a task waits on the context with a waker that performs
/// `prepare`'s action, the outer cancellation wakes it.
fn reentrant_case(outer: Outer, prepare: fn(Reach) -> Plan) {
    with_watchdog(WATCHDOG, move || {
        let (plan, waker, done_slot, parent_h, ctx_h, acted) = loop {
            let (parent, parent_h, ctx, ctx_h, drops) = setup(outer);
            let done_slot = Arc::new(Mutex::new(None));
            let plan = prepare(Reach {
                parent,
                parent_h: parent_h.clone(),
                ctx: ctx.clone(),
                ctx_h: ctx_h.clone(),
                done: done_slot.clone(),
                expected: outer.expected(),
                drops,
            });
            let (tx, acted) = mpsc::channel();
            let in_wake = plan.in_wake;
            let waker = ActionWaker::new(move || {
                in_wake();
                tx.send(()).unwrap();
            });
            let mut done = ctx.done();
            drop(ctx);
            if poll(&mut done, &Waker::from(waker.clone())).is_pending() {
                *done_slot.lock().unwrap() = Some(done);
                break (plan.after, waker, done_slot, parent_h, ctx_h, acted);
            }
            // The deadline passed before the poll: try again.
            assert!(matches!(outer, Outer::Deadline));
        };
        match outer {
            Outer::Own => ctx_h.cancel(),
            Outer::Parent => parent_h.cancel(),
            Outer::Deadline => {}
        }
        acted.recv().expect("the waker ran its action to the end");
        plan();
        assert_eq!(waker.wakes(), 1, "the task was woken once");
        // Unless the waker took it, the woken `Done` completes.
        let left = done_slot.lock().unwrap().take();
        if let Some(mut done) = left {
            assert_eq!(
                poll(&mut done, noop_waker_ref()),
                Poll::Ready(outer.expected())
            );
        }
        if let Outer::Deadline = outer {
            timer_is_alive();
        }
    });
}

/// An unrelated deadline set now still fires.
fn timer_is_alive() {
    let (later, _h) = Context::background().with_timeout(Duration::from_millis(5));
    assert_eq!(later.wait_timeout(GENEROUS), Some(Error::DeadlineExceeded));
}

// ---- The actions -------------------------------------------------------------

fn cancel_self(r: Reach) -> Plan {
    let ctx = r.ctx.clone();
    let expected = r.expected;
    plan(
        move || {
            r.ctx_h.cancel();
            assert_eq!(r.ctx.err(), Err(r.expected));
        },
        move || assert_eq!(ctx.err(), Err(expected)),
    )
}

fn cancel_parent(r: Reach) -> Plan {
    let parent = r.parent.clone();
    plan(
        move || {
            r.parent_h.cancel();
            assert_eq!(r.parent.err(), Err(Error::Canceled));
            assert_eq!(r.ctx.err(), Err(r.expected));
        },
        move || assert_eq!(parent.err(), Err(Error::Canceled)),
    )
}

/// Cancels an unrelated context `b`, on which a thread is blocked and a task
/// waits whose own waker cancels the first context again (its handle and
/// its parent's): wakers woken from inside a waker, in a cycle.
fn cancel_unrelated(r: Reach) -> Plan {
    let (b, b_h) = Context::background().with_cancel();
    let blocked = {
        let b = b.clone();
        thread::spawn(move || b.wait())
    };
    let second = {
        let (ctx_h, parent_h) = (r.ctx_h.clone(), r.parent_h.clone());
        ActionWaker::new(move || {
            ctx_h.cancel();
            parent_h.cancel();
        })
    };
    let mut on_b = b.done();
    assert_eq!(poll(&mut on_b, &Waker::from(second.clone())), Poll::Pending);
    let b2 = b.clone();
    plan(
        move || {
            b_h.cancel();
            assert_eq!(b.err(), Err(Error::Canceled));
            assert_eq!(r.parent.err(), Err(Error::Canceled));
        },
        move || {
            assert_eq!(blocked.join().unwrap(), Error::Canceled);
            assert_eq!(second.wakes(), 1);
            assert_eq!(
                poll(&mut on_b, noop_waker_ref()),
                Poll::Ready(Error::Canceled)
            );
            assert_eq!(b2.err(), Err(Error::Canceled));
        },
    )
}

fn derive(r: Reach) -> Plan {
    plan(
        move || {
            let (child, child_h) = r.ctx.with_cancel();
            assert_eq!(child.err(), Err(r.expected));
            assert_eq!(child.wait(), r.expected);
            child_h.cancel();
            let (timed, _h) = r.ctx.with_timeout(Duration::from_secs(3600));
            assert_eq!(timed.err(), Err(r.expected));
            let valued = r.ctx.with_value(7_u32);
            assert_eq!(valued.value::<u32>(), Some(&7));
            // A sibling of the context, under a parent that may be live.
            let (sibling, sibling_h) = r.parent.with_cancel();
            sibling_h.cancel();
            assert_eq!(sibling.wait(), Error::Canceled);
        },
        || {},
    )
}

/// Drops the last references to the context, the woken `Done` included:
/// the context's node dies inside `wake`.
fn drop_context(r: Reach) -> Plan {
    let drops = r.drops.clone();
    plan(
        move || {
            let Reach {
                ctx,
                ctx_h,
                done,
                drops,
                ..
            } = r;
            let woken = done.lock().unwrap().take();
            drop(woken);
            drop(ctx);
            drop(ctx_h);
            assert_eq!(count(&drops), 1, "the context died inside wake");
        },
        move || assert_eq!(count(&drops), 1),
    )
}

/// Polls the woken `Done` itself from inside `wake` (an executor that polls
/// inline), then drops it.
fn poll_woken_done(r: Reach) -> Plan {
    plan(
        move || {
            let mut woken = r.done.lock().unwrap().take().expect("the woken Done");
            assert_eq!(poll(&mut woken, noop_waker_ref()), Poll::Ready(r.expected));
        },
        || {},
    )
}

/// Polls a new `done()` on the same context, and on its parent (live if the
/// context was cancelled by its own handle), from inside `wake`.
fn poll_new_done(r: Reach) -> Plan {
    plan(
        move || {
            let mut fresh = r.ctx.done();
            assert_eq!(poll(&mut fresh, noop_waker_ref()), Poll::Ready(r.expected));
            let waker = CountingWaker::new();
            let mut on_parent = r.parent.done();
            let first = poll(&mut on_parent, &waker.waker());
            assert_eq!(first.is_ready(), r.parent.is_done());
            drop(on_parent);
            assert_eq!(waker.wakes(), 0);
        },
        || {},
    )
}

fn wait_timeout_on_it(r: Reach) -> Plan {
    plan(
        move || {
            assert_eq!(r.ctx.wait_timeout(GENEROUS), Some(r.expected));
            assert_eq!(r.ctx.wait(), r.expected);
        },
        || {},
    )
}

/// Every action at once, in one waker.
fn all_at_once(r: Reach) -> Plan {
    plan(
        move || {
            let mut fresh = r.ctx.done();
            assert_eq!(poll(&mut fresh, noop_waker_ref()), Poll::Ready(r.expected));
            assert_eq!(r.ctx.wait_timeout(GENEROUS), Some(r.expected));
            let (child, _h) = r.ctx.with_cancel();
            assert_eq!(child.wait(), r.expected);
            r.ctx_h.cancel();
            r.parent_h.cancel();
            let woken = r.done.lock().unwrap().take();
            if let Some(mut woken) = woken {
                assert_eq!(poll(&mut woken, noop_waker_ref()), Poll::Ready(r.expected));
            }
        },
        || {},
    )
}

/// One test per (outer cancellation, action).
macro_rules! cases {
    ($($action:ident)*) => {
        mod own_handle {
            $(#[test] fn $action() { super::reentrant_case(super::Outer::Own, super::$action) })*
        }
        mod parent_handle {
            $(#[test] fn $action() { super::reentrant_case(super::Outer::Parent, super::$action) })*
        }
        mod deadline_fires {
            $(
                #[test]
                #[cfg_attr(miri, ignore)]
                fn $action() { super::reentrant_case(super::Outer::Deadline, super::$action) }
            )*
        }
    };
}

cases! {
    cancel_self
    cancel_parent
    cancel_unrelated
    derive
    drop_context
    poll_woken_done
    poll_new_done
    wait_timeout_on_it
    all_at_once
}

// ---- Panics and many wakers ------------------------------------------------

/// A waker that re-enters (cancels the parent) and then panics: the panic
/// resumes from the cancel, after every other waiter was woken.
#[test]
fn a_panicking_reentrant_waker_is_resumed_by_the_cancel() {
    with_watchdog(WATCHDOG, || {
        let (parent, parent_h) = Context::background().with_cancel();
        let (ctx, ctx_h) = parent.with_cancel();
        let blocked = {
            let ctx = ctx.clone();
            thread::spawn(move || ctx.wait())
        };
        let before = CountingWaker::new();
        let after = CountingWaker::new();
        let mut first = ctx.done();
        assert_eq!(poll(&mut first, &before.waker()), Poll::Pending);
        let bad = ActionWaker::new(move || {
            parent_h.cancel();
            panic!("deliberate waker panic");
        });
        let mut panicking = ctx.done();
        assert_eq!(
            poll(&mut panicking, &Waker::from(bad.clone())),
            Poll::Pending
        );
        let mut last = ctx.done();
        assert_eq!(poll(&mut last, &after.waker()), Poll::Pending);

        let payload = catch_unwind(AssertUnwindSafe(|| ctx_h.cancel()))
            .expect_err("the waker's panic resumes from cancel()");
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"deliberate waker panic")
        );
        assert_eq!(bad.wakes(), 1);
        assert_eq!(before.wakes(), 1);
        assert_eq!(after.wakes(), 1, "the waker after the panicking one");
        assert_eq!(parent.err(), Err(Error::Canceled));
        assert_eq!(blocked.join().unwrap(), Error::Canceled);
        for mut done in [first, panicking, last] {
            assert_eq!(
                poll(&mut done, noop_waker_ref()),
                Poll::Ready(Error::Canceled)
            );
        }
    });
}

/// Two panicking wakers: the first panic resumes, the second is dropped,
/// and neither stops the other wakers.
#[test]
fn the_first_of_two_waker_panics_resumes() {
    with_watchdog(WATCHDOG, || {
        let (ctx, handle) = Context::background().with_cancel();
        let one = ActionWaker::new(|| panic!("first"));
        let two = ActionWaker::new(|| panic!("second"));
        let ok = CountingWaker::new();
        let mut dones = Vec::new();
        for waker in [
            Waker::from(one.clone()),
            ok.waker(),
            Waker::from(two.clone()),
        ] {
            let mut done = ctx.done();
            assert_eq!(poll(&mut done, &waker), Poll::Pending);
            dones.push(done);
        }
        let payload = catch_unwind(AssertUnwindSafe(|| handle.cancel())).expect_err("resumed");
        let msg = *payload.downcast_ref::<&str>().unwrap();
        assert!(msg == "first" || msg == "second", "{msg}");
        assert_eq!((one.wakes(), two.wakes(), ok.wakes()), (1, 1, 1));
        // A later cancel of the same tree does not resume it again.
        handle.cancel();
    });
}

/// Many tasks on one event, some of them re-entrant: every one is woken
/// exactly once and every `Done` completes.
#[test]
fn many_wakers_on_one_event_are_all_woken_once() {
    with_watchdog(WATCHDOG, || {
        const TASKS: usize = 1000;
        let (parent, parent_h) = Context::background().with_cancel();
        let (ctx, ctx_h) = parent.with_cancel();
        let counting: Vec<Arc<CountingWaker>> = (0..TASKS).map(|_| CountingWaker::new()).collect();
        let mut reentrant = Vec::new();
        let mut dones = Vec::new();
        for (i, w) in counting.iter().enumerate() {
            let mut done = ctx.done();
            assert_eq!(poll(&mut done, &w.waker()), Poll::Pending);
            dones.push(done);
            if i % 100 == 0 {
                // Every hundredth task is followed by one whose waker
                // re-enters: cancels, waits, polls and derives.
                let (ctx2, ctx_h2, parent_h2) = (ctx.clone(), ctx_h.clone(), parent_h.clone());
                let waker = ActionWaker::new(move || {
                    ctx_h2.cancel();
                    parent_h2.cancel();
                    assert_eq!(ctx2.wait(), Error::Canceled);
                    let mut fresh = ctx2.done();
                    assert_eq!(
                        poll(&mut fresh, noop_waker_ref()),
                        Poll::Ready(Error::Canceled)
                    );
                    let (child, _h) = ctx2.with_cancel();
                    assert!(child.is_done());
                });
                let mut done = ctx.done();
                assert_eq!(poll(&mut done, &Waker::from(waker.clone())), Poll::Pending);
                dones.push(done);
                reentrant.push(waker);
            }
        }
        ctx_h.cancel();
        assert!(counting.iter().all(|w| w.wakes() == 1));
        assert!(reentrant.iter().all(|w| w.wakes() == 1));
        for mut done in dones {
            assert_eq!(
                poll(&mut done, noop_waker_ref()),
                Poll::Ready(Error::Canceled)
            );
        }
        assert_eq!(parent.err(), Err(Error::Canceled));
    });
}

/// A task re-polled with a different waker is woken through the new one
/// only (the guard cached in the `Done` is rebuilt).
#[test]
fn a_done_repolled_with_another_waker_wakes_the_new_one() {
    with_watchdog(WATCHDOG, || {
        let (ctx, handle) = Context::background().with_cancel();
        let first = CountingWaker::new();
        let second = CountingWaker::new();
        let mut done = ctx.done();
        assert_eq!(poll(&mut done, &first.waker()), Poll::Pending);
        assert_eq!(poll(&mut done, &first.waker()), Poll::Pending);
        assert_eq!(poll(&mut done, &second.waker()), Poll::Pending);
        handle.cancel();
        assert_eq!((first.wakes(), second.wakes()), (0, 1));
        assert_eq!(
            poll(&mut done, &second.waker()),
            Poll::Ready(Error::Canceled)
        );
        // Completed: the `Done` keeps no waker alive.
        drop(second.waker());
        assert_eq!(Arc::strong_count(&second), 1);
        assert_eq!(Arc::strong_count(&first), 1);
    });
}
