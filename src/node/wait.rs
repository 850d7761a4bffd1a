//! Waiting for a node to be done.
//!
//! The waiter [`Event`] of a node is created on the first `done()` or
//! `wait*()` (most contexts never allocate one) and published twice: by a
//! compare-exchange on `CancelNode::waiters`, so every waiter finds the same
//! event, and as an entry of the node's children list, so the canceller
//! finds it while walking (no extra atomic on the cancel path).
//!
//! Lost wake-ups are excluded by check → listen → fence → re-check
//! (invariant 12): a waiter inserts its listener, issues a SeqCst fence and
//! re-reads the state word; the notifier (the canceller walking the list, or
//! the waiter that found the list already sealed) publishes the state before
//! `Event::notify`, which starts with a SeqCst fence. Either the waiter's
//! re-check sees done, or the notifier sees the listener.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Instant;

use super::{release_claim, CancelNode, Header, Kind, FLAG_LINKED};
use crate::context::Context;
use crate::error::Error;
use crate::sync::{fence, Event, EventListener, Listener, Ordering, UserArc};

/// The list entry that carries a node's waiter event. Claims: one for the
/// owner, one for the list.
#[repr(C)]
pub(crate) struct WaitersNode {
    pub(crate) header: Header,
    event: Event,
}

impl WaitersNode {
    /// Wakes every listener.
    pub(crate) fn notify_all(&self) {
        self.event.notify(usize::MAX);
    }
}

std::thread_local! {
    /// The first panic thrown by a waker woken on this thread, waiting to
    /// be resumed by the cancellation that woke it.
    static WAKE_PANIC: Cell<Option<Box<dyn Any + Send>>> = const { Cell::new(None) };
}

/// Takes the panic a waker threw on this thread, if any.
pub(crate) fn take_wake_panic() -> Option<Box<dyn Any + Send>> {
    WAKE_PANIC.with(Cell::take)
}

/// Wraps a task's waker so that a panic in it is caught on the notifying
/// thread instead of unwinding through event-listener (which would skip the
/// remaining listeners and corrupt its counts). The payload is parked in
/// `WAKE_PANIC` and resumed by the cancellation once its walk is finished.
struct GuardedWaker(Waker);

impl Wake for GuardedWaker {
    fn wake(self: UserArc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &UserArc<Self>) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.0.wake_by_ref())) {
            WAKE_PANIC.with(|slot| {
                let first = slot.take().unwrap_or(payload);
                slot.set(Some(first));
            });
        }
    }
}

/// The scope's event, created and published on first use.
fn event_of(scope: &CancelNode) -> &Event {
    // Acquire: pairs with the AcqRel publication below.
    let current = scope.waiters.load(Ordering::Acquire);
    if !current.is_null() {
        // SAFETY: published entries live as long as their owner.
        return unsafe { &(*current).event };
    }
    event_slow(scope)
}

#[cold]
fn event_slow(scope: &CancelNode) -> &Event {
    let fresh = super::alloc(WaitersNode {
        header: Header::new(Kind::Waiters, 0, 2, FLAG_LINKED),
        event: Event::new(),
    });
    // AcqRel: Release publishes the entry; Acquire reads a winner's.
    match scope.waiters.compare_exchange(
        ptr::null_mut(),
        fresh.as_ptr(),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Err(winner) => {
            // SAFETY: ours, never published.
            unsafe { super::free_with_claims(fresh.cast()) };
            // SAFETY: published entries live as long as their owner.
            unsafe { &(*winner).event }
        }
        Ok(_) => {
            let entry = fresh.cast::<Header>();
            // SAFETY: valid as above.
            let w = unsafe { fresh.as_ref() };
            // SAFETY: valid; claims include the list's.
            let linked = unsafe { scope.children.push(entry) }.is_ok();
            if !linked {
                // Already done (sealed): never linked.
                w.header.next.mark();
                // SAFETY: the list's claim, never used.
                unsafe { release_claim(entry) };
            }
            // Linked, but the push/cancel handshake says the scope is done
            // (a walker found its list empty, see `ChildList::push`): no
            // walker will notify this event. Either way, whoever listened
            // meanwhile is woken here; later listeners see done on their
            // re-check.
            if !linked || scope.state.load_after_push().is_done() {
                w.notify_all();
                if let Some(payload) = take_wake_panic() {
                    // We woke another task and its waker panicked: like a
                    // cancellation, report it to the thread that notified.
                    resume_unwind(payload);
                }
            }
            // SAFETY: published entries live as long as their owner.
            unsafe { &(*fresh.as_ptr()).event }
        }
    }
}

/// Registers a listener on `scope` for a waiter that has just seen it live.
fn listen(scope: &CancelNode) -> EventListener {
    let listener = event_of(scope).listen();
    // SeqCst: the waiter's half of invariant 12 (the notifier's half is the
    // fence at the start of `Event::notify`).
    fence(Ordering::SeqCst);
    listener
}

/// Completes with the context's [`Error`] once it is done.
///
/// Returned by [`Context::done`]. It is `Send + Sync + Unpin + 'static`,
/// owns a clone of the context, and can be polled by any executor. Dropping
/// a pending `Done` removes its registration at once.
///
/// Go equivalent: `<-ctx.Done()` followed by `ctx.Err()`.
///
/// ```
/// # futures::executor::block_on(async {
/// use ctxtree::{Context, Error};
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let done = ctx.done();
/// std::thread::spawn(move || cancel.cancel());
/// assert_eq!(done.await, Error::Canceled);
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Done {
    ctx: Context,
    listener: Option<EventListener>,
    /// The last task waker seen and its panic-catching wrapper.
    waker: Option<(Waker, Waker)>,
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Done")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl Done {
    pub(crate) fn new(ctx: Context) -> Done {
        Done {
            ctx,
            listener: None,
            waker: None,
        }
    }
}

impl Future for Done {
    type Output = Error;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Error> {
        let this = &mut *self;
        loop {
            if let Err(err) = this.ctx.err() {
                this.listener = None;
                return Poll::Ready(err);
            }
            let Some(scope) = this.ctx.scope_ref() else {
                // Never done: nothing will ever wake us, and nothing needs to.
                return Poll::Pending;
            };
            match &mut this.listener {
                None => this.listener = Some(listen(scope)),
                Some(listener) => {
                    let guarded = match &this.waker {
                        Some((seen, guarded)) if seen.will_wake(cx.waker()) => guarded,
                        _ => {
                            let guarded =
                                Waker::from(UserArc::new(GuardedWaker(cx.waker().clone())));
                            &this.waker.insert((cx.waker().clone(), guarded)).1
                        }
                    };
                    let mut inner = TaskContext::from_waker(guarded);
                    match Pin::new(listener).poll(&mut inner) {
                        Poll::Ready(()) => this.listener = None,
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

/// Blocks until `ctx` is done or `deadline` passes (`None`: no deadline).
pub(crate) fn wait_until(ctx: &Context, deadline: Option<Instant>) -> Option<Error> {
    loop {
        if let Err(err) = ctx.err() {
            return Some(err);
        }
        let Some(scope) = ctx.scope_ref() else {
            // Never done (Go: receiving from a nil channel blocks forever).
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    std::thread::park_timeout(d - now);
                }
            }
            continue;
        };
        let listener = listen(scope);
        if let Err(err) = ctx.err() {
            return Some(err);
        }
        match deadline {
            None => listener.wait(),
            Some(d) => {
                if listener.wait_deadline(d).is_none() {
                    return ctx.err().err();
                }
            }
        }
    }
}
