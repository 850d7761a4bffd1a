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
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
// std, not the sync shim: the guard registry holds user waker vtables, which
// loom need not model (like `UserArc`).
use std::sync::atomic::AtomicPtr as StdAtomicPtr;
use std::task::{Context as TaskContext, Poll, RawWaker, RawWakerVTable, Wake, Waker};
use std::time::Instant;

use super::{release_claim, CancelNode, Header, Kind, FLAG_LINKED};
use crate::context::Context;
use crate::error::Error;
use crate::sync::{fence, thread, Event, EventListener, Listener, Ordering, UserArc};

/// The list entry that carries a node's waiter event. Claims: one for the
/// owner, one for the list.
#[repr(C)]
pub(crate) struct WaitersNode {
    pub(crate) header: Header,
    event: Event,
}

impl WaitersNode {
    /// Wakes every listener.
    ///
    /// Plain `notify`, not a relaxed variant: its leading SeqCst fence is
    /// the notifier's half of invariant 12. (`notify_additional` would walk
    /// the same entries: every listener is unnotified until this call, and
    /// the per-listener cost is the same.) Task wakers are guards (see
    /// below), so nothing unwinds out of here.
    ///
    /// Blocked threads are unparked after `notify` has returned, that is
    /// after event-listener has released its list lock (see `Unparker`).
    pub(crate) fn notify_all(&self) {
        let outermost = DEFERRED
            .try_with(|d| !d.active.replace(true))
            .unwrap_or(false);
        if !outermost {
            // Nested in another `notify_all` on this thread (a task's waker
            // cancelled a context): the outer one unparks ours too. Or this
            // thread's locals are gone: every `Unparker` unparks at once.
            self.event.notify(usize::MAX);
            return;
        }
        // A guard, so the deferred unparks happen even if `notify` unwinds.
        let _flush = FlushDeferred;
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
    // `try_with`: a cancel may run in another thread-local's destructor,
    // after this one is gone (then `catch_wake` parked nothing here).
    WAKE_PANIC.try_with(Cell::take).ok().flatten()
}

/// Runs a task waker's `wake`/`wake_by_ref` on the notifying thread, catching
/// its panic: event-listener calls wakers inside `Event::notify` and is not
/// unwind-safe there (a panic would skip the remaining listeners and lose
/// an increment of its notified count, which a later removal underflows).
/// The payload is parked in `WAKE_PANIC` and resumed by the cancellation
/// once its walk is finished. On a thread whose thread-locals are already
/// destroyed (a cancel from a thread-local destructor) the payload is
/// dropped: `with` would panic, through event-listener.
#[inline]
fn catch_wake(wake: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(wake)) {
        park_wake_panic(payload);
    }
}

/// Out of line, so the wake path of every guard stays small.
#[cold]
#[inline(never)]
fn park_wake_panic(payload: Box<dyn Any + Send>) {
    let _ = WAKE_PANIC.try_with(|slot| {
        let first = slot.take().unwrap_or(payload);
        slot.set(Some(first));
    });
}

// ---- Guarded wakers ----------------------------------------------------------
//
// `Done` never hands event-listener a task's waker directly, but a *guarded*
// waker whose `wake`/`wake_by_ref` run the task's under `catch_wake`.
//
// A guard needs the task waker's data pointer and vtable, but a `RawWaker`
// has room for one pointer. So the guard keeps the task's data pointer and
// takes a vtable of its own, one per task-waker vtable: `INNER[i]` records
// the i-th distinct task-waker vtable seen (filled once, never changed) and
// `GUARDS[i]`'s functions are generic over `i`, so they find the task's
// vtable there. Such a guard costs no allocation and no atomic operation
// beyond the task waker's own: cloning it clones the task waker, dropping
// it drops the task waker. Programs use a handful of waker vtables; if more
// than `SLOTS` show up, the rest get an allocated wrapper
// (`GuardedWaker`), as every waker did before.

/// How many distinct task-waker vtables get an allocation-free guard.
const SLOTS: usize = 32;

/// The task-waker vtables with a guard vtable, in the order first seen.
static INNER: [StdAtomicPtr<RawWakerVTable>; SLOTS] =
    [const { StdAtomicPtr::new(ptr::null_mut()) }; SLOTS];

/// The guard vtables: `GUARDS[i]` guards wakers of vtable `INNER[i]`.
static GUARDS: [RawWakerVTable; SLOTS] = guard_vtables();

const fn guard_vtable<const I: usize>() -> RawWakerVTable {
    RawWakerVTable::new(
        guard_clone::<I>,
        guard_wake::<I>,
        guard_wake_by_ref::<I>,
        guard_drop::<I>,
    )
}

const fn guard_vtables() -> [RawWakerVTable; SLOTS] {
    macro_rules! slots {
        ($($i:literal)*) => { [$(guard_vtable::<$i>()),*] };
    }
    slots!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)
}

/// The slot of `vtable` in `INNER`, claiming a free one on first sight;
/// `None` if every slot holds another vtable.
fn slot_of(vtable: &'static RawWakerVTable) -> Option<usize> {
    let wanted = ptr::from_ref(vtable).cast_mut();
    for (i, slot) in INNER.iter().enumerate() {
        // Acquire: pairs with the AcqRel claim below, so the vtable behind
        // a slot filled by another thread is visible to its guard functions.
        let mut seen = slot.load(Ordering::Acquire);
        if seen.is_null() {
            // AcqRel: Release publishes the vtable pointer with the slot;
            // Acquire reads a concurrent claimer's.
            match slot.compare_exchange(
                ptr::null_mut(),
                wanted,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(i),
                Err(winner) => seen = winner,
            }
        }
        if seen == wanted {
            return Some(i);
        }
    }
    None
}

/// The task waker that a guard of slot `I` wraps, rebuilt from its data
/// pointer. Owns whatever the guard owned (nothing for a borrowed view).
///
/// # Safety
/// `data` is the data pointer of a guard of slot `I`, which is the data
/// pointer of a task waker whose vtable is `INNER[I]`.
unsafe fn inner_waker<const I: usize>(data: *const ()) -> Waker {
    // Acquire: pairs with the claim of the slot (the guard that called us
    // was made after it, possibly on another thread).
    let vtable = INNER[I].load(Ordering::Acquire);
    // SAFETY: a guard of slot `I` exists only once the slot is filled
    // (`guarded_raw`, `poll_guarded`), a filled slot never changes, and it
    // holds a `&'static RawWakerVTable`.
    let vtable: &'static RawWakerVTable = unsafe { &*vtable };
    // SAFETY: `data` and `vtable` are those of one task waker (caller).
    unsafe { Waker::from_raw(RawWaker::new(data, vtable)) }
}

/// # Safety
/// `data` is the data pointer of a guard of slot `I` (see `inner_waker`).
unsafe fn guard_clone<const I: usize>(data: *const ()) -> RawWaker {
    // SAFETY: forwarded; `ManuallyDrop`: the guard's reference stays its own.
    let inner = ManuallyDrop::new(unsafe { inner_waker::<I>(data) });
    guarded_raw(Waker::clone(&inner))
}

/// # Safety
/// `data` is the data pointer of a guard of slot `I` (see `inner_waker`),
/// whose reference is consumed.
unsafe fn guard_wake<const I: usize>(data: *const ()) {
    // SAFETY: forwarded; the guard's reference is the task waker's.
    let inner = unsafe { inner_waker::<I>(data) };
    catch_wake(move || inner.wake());
}

/// # Safety
/// `data` is the data pointer of a guard of slot `I` (see `inner_waker`).
unsafe fn guard_wake_by_ref<const I: usize>(data: *const ()) {
    // SAFETY: forwarded; `ManuallyDrop`: the reference stays the guard's.
    let inner = ManuallyDrop::new(unsafe { inner_waker::<I>(data) });
    catch_wake(|| inner.wake_by_ref());
}

/// # Safety
/// `data` is the data pointer of a guard of slot `I` (see `inner_waker`),
/// whose reference is released.
unsafe fn guard_drop<const I: usize>(data: *const ()) {
    // SAFETY: forwarded; the guard's reference is the task waker's.
    drop(unsafe { inner_waker::<I>(data) });
}

/// Turns an owned task waker into an owned guard.
fn guarded_raw(waker: Waker) -> RawWaker {
    match slot_of(waker.vtable()) {
        Some(i) => {
            // The guard takes over the task waker's reference.
            let waker = ManuallyDrop::new(waker);
            RawWaker::new(waker.data(), &GUARDS[i])
        }
        None => {
            // Every slot taken: an allocated wrapper, handed over as raw.
            let wrapper = ManuallyDrop::new(Waker::from(UserArc::new(GuardedWaker(waker))));
            RawWaker::new(wrapper.data(), wrapper.vtable())
        }
    }
}

/// Polls `listener` with a guard of `waker`: a borrowed view when its
/// vtable has a slot (event-listener clones it, through `guard_clone`, when
/// it keeps it), else a fresh allocated wrapper.
fn poll_guarded(listener: &mut EventListener, waker: &Waker) -> Poll<()> {
    match slot_of(waker.vtable()) {
        Some(i) => {
            // `waker.data()` belongs to a waker of vtable `INNER[i]`, as the
            // guard functions of slot `i` require. The view is never dropped
            // (it releases no reference it does not own) nor outlives `waker`.
            // SAFETY: as just said.
            let view = ManuallyDrop::new(unsafe {
                Waker::from_raw(RawWaker::new(waker.data(), &GUARDS[i]))
            });
            Pin::new(listener).poll(&mut TaskContext::from_waker(&view))
        }
        None => {
            let wrapper = Waker::from(UserArc::new(GuardedWaker(waker.clone())));
            Pin::new(listener).poll(&mut TaskContext::from_waker(&wrapper))
        }
    }
}

/// The allocated guard, for task wakers beyond the `SLOTS` distinct vtables
/// that get an allocation-free one.
struct GuardedWaker(Waker);

impl Wake for GuardedWaker {
    fn wake(self: UserArc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &UserArc<Self>) {
        catch_wake(|| self.0.wake_by_ref());
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
                Some(listener) => match poll_guarded(listener, cx.waker()) {
                    Poll::Ready(()) => this.listener = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }
}

// ---- Blocking waits ----------------------------------------------------------
//
// A blocked thread does not use event-listener's `wait()`: that one parks
// until notified, and once unparked it must take the event's list lock to
// learn that it was notified and to remove its entry. But `notify` unparks
// it while holding that very lock, so the woken thread often finds the lock
// taken and blocks on it (when the notifier and the waiter share a core,
// the woken waiter preempts the notifier and always does), and the wake-up
// costs three more futex calls and two more context switches than a bare
// park/unpark (W7 on one core: 3.5× its latency).
//
// Instead, the thread polls its listener (event-listener's task interface,
// the one `Done` uses) with a waker that unparks it, `Unparker`, and parks
// itself. The notifier does not unpark it from inside `Event::notify`: the
// `Unparker` defers the unpark to the end of `WaitersNode::notify_all`,
// after the list lock is released. Once unparked, the thread checks the
// context's state word (done was published before the notify, and an
// unpark synchronizes with the park it ends), and returns; dropping its
// listener takes the list lock, which is free by then.

/// The waker of a thread blocked in `wait_until`: waking it unparks the
/// thread, at once or, when woken inside `WaitersNode::notify_all`, once
/// that `notify_all` is over (see "Blocking waits" above). Unparking a
/// thread that has already stopped waiting is harmless: its `park` loop
/// tolerates spurious returns, and so does any later `park`.
struct Unparker(thread::Thread);

impl Wake for Unparker {
    fn wake(self: UserArc<Self>) {
        unpark_or_defer(self);
    }

    fn wake_by_ref(self: &UserArc<Self>) {
        unpark_or_defer(self.clone());
    }
}

/// The unparks deferred by the `notify_all` running on this thread.
struct Deferred {
    /// Whether a `notify_all` is running on this thread (the outermost one
    /// unparks every thread woken meanwhile, by nested ones too).
    active: Cell<bool>,
    /// The woken threads to unpark.
    unparkers: Cell<Vec<UserArc<Unparker>>>,
}

impl Deferred {
    #[cfg(loom)]
    fn new() -> Self {
        Deferred {
            active: Cell::new(false),
            unparkers: Cell::new(Vec::new()),
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static DEFERRED: Deferred = const {
        Deferred {
            active: Cell::new(false),
            unparkers: Cell::new(Vec::new()),
        }
    };

    /// This thread's `Unparker` waker, made once: a blocking wait hands a
    /// clone of it to event-listener (a reference count, no allocation).
    static THREAD_WAKER: Waker = Waker::from(UserArc::new(Unparker(thread::current())));
}

// Under loom, thread-locals must be loom's (a model's threads share one OS
// thread).
#[cfg(loom)]
loom::thread_local! {
    static DEFERRED: Deferred = Deferred::new();
    static THREAD_WAKER: Waker = Waker::from(UserArc::new(Unparker(thread::current())));
}

/// Unparks `unparker`'s thread now, or at the end of the `notify_all`
/// running on this thread, if any.
fn unpark_or_defer(unparker: UserArc<Unparker>) {
    let mut unparker = Some(unparker);
    // `try_with`: a wake from a thread-local destructor unparks at once.
    let _ = DEFERRED.try_with(|d| {
        if d.active.get() {
            let mut list = d.unparkers.take();
            list.extend(unparker.take());
            // Normally empty; not if the allocation above re-entered this
            // function (a global allocator that cancels): unpark those now.
            for early in d.unparkers.replace(list) {
                early.0.unpark();
            }
        }
    });
    if let Some(unparker) = unparker {
        unparker.0.unpark();
    }
}

/// Ends the outermost `notify_all` of this thread: unparks the threads it
/// woke, now that event-listener's list lock is released.
struct FlushDeferred;

impl Drop for FlushDeferred {
    fn drop(&mut self) {
        let _ = DEFERRED.try_with(|d| {
            d.active.set(false);
            let mut list = d.unparkers.take();
            // `unpark` runs no user code, so nothing is deferred meanwhile.
            for unparker in list.drain(..) {
                unparker.0.unpark();
            }
            // Keep a small buffer for the next notify, not a huge one.
            if list.capacity() <= 64 {
                d.unparkers.set(list);
            }
        });
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
        if let Some(outcome) = block_on(ctx, listener, deadline) {
            return outcome;
        }
    }
}

/// Parks this thread for at most `timeout`.
#[cfg(not(loom))]
fn park_timeout(timeout: std::time::Duration) {
    thread::park_timeout(timeout);
}

/// Loom has no `park_timeout`, and `block_on` hands deadline waits to
/// event-listener under loom, so this is never called there; a plain park
/// would be a correct (spurious-tolerant) stand-in if it were.
#[cfg(loom)]
fn park_timeout(_timeout: std::time::Duration) {
    thread::park();
}

/// Blocks on `listener` (registered on `ctx`'s scope, which was live after
/// the registration) until `ctx` is done or `deadline` passes. `Some` is
/// `wait_until`'s answer; `None`: the listener was notified, check again.
fn block_on(
    ctx: &Context,
    mut listener: EventListener,
    deadline: Option<Instant>,
) -> Option<Option<Error>> {
    // Under loom there is no `park_timeout`: a deadline wait keeps
    // event-listener's own (which does not support deadlines under loom
    // either; no model waits with a deadline).
    #[cfg(loom)]
    if let Some(d) = deadline {
        return match listener.wait_deadline(d) {
            Some(()) => None,
            None => Some(ctx.err().err()),
        };
    }
    let Ok(waker) = THREAD_WAKER.try_with(Waker::clone) else {
        // A wait in a thread-local destructor, after ours is gone:
        // event-listener's own wait (it makes a parker when its own
        // thread-local is gone too).
        return match deadline {
            None => {
                listener.wait();
                None
            }
            Some(d) => match listener.wait_deadline(d) {
                Some(()) => None,
                None => Some(ctx.err().err()),
            },
        };
    };
    let mut cx = TaskContext::from_waker(&waker);
    if Pin::new(&mut listener).poll(&mut cx).is_ready() {
        // Notified before the waker was registered.
        return None;
    }
    loop {
        match deadline {
            None => thread::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Some(ctx.err().err());
                }
                park_timeout(d - now);
            }
        }
        // One atomic load decides, without the list lock: a notify is only
        // ever sent once the scope is done, and its unpark synchronizes
        // with this park's return, so after a real wake-up this sees done.
        // The listener is dropped on the way out, after `notify_all` has
        // released the list lock.
        if let Err(err) = ctx.err() {
            return Some(Some(err));
        }
        // A spurious (or stale) unpark: ask the listener, under its lock,
        // whether it was notified all the same, and park again if not.
        if Pin::new(&mut listener).poll(&mut cx).is_ready() {
            return None;
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! The guard registry is process-wide: these tests fill it, so they
    //! live in the library's unit tests, where nothing else polls a `Done`.

    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;

    /// A waker type per `N`: each has its own vtable (its `wake` adds a
    /// different amount, so no two can be merged).
    struct Counting<const N: usize>(Arc<AtomicUsize>);

    impl<const N: usize> Wake for Counting<N> {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(N + 1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn counting<const N: usize>() -> (Waker, Arc<AtomicUsize>, usize) {
        let count = Arc::new(AtomicUsize::new(0));
        (
            Waker::from(Arc::new(Counting::<N>(count.clone()))),
            count,
            N + 1,
        )
    }

    struct Panicking;

    impl Wake for Panicking {
        fn wake(self: Arc<Self>) {
            panic!("deliberate waker panic");
        }
    }

    #[test]
    fn wakers_beyond_the_guard_slots_are_guarded_too() {
        macro_rules! wakers {
            ($($n:literal)*) => { vec![$(counting::<$n>()),*] };
        }
        // More distinct vtables than slots.
        let wakers = wakers!(
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
            20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39
        );
        let (ctx, handle) = Context::background().with_cancel();
        let mut dones: Vec<Done> = Vec::new();
        for (waker, _, _) in &wakers {
            let mut done = ctx.done();
            assert!(Pin::new(&mut done)
                .poll(&mut TaskContext::from_waker(waker))
                .is_pending());
            dones.push(done);
        }
        assert!(
            INNER.iter().all(|s| !s.load(Ordering::Relaxed).is_null()),
            "every guard slot is taken"
        );
        // A panicking waker past the slots: the allocated guard catches it.
        let bad = Waker::from(Arc::new(Panicking));
        assert_eq!(slot_of(bad.vtable()), None);
        let mut bad_done = ctx.done();
        assert!(Pin::new(&mut bad_done)
            .poll(&mut TaskContext::from_waker(&bad))
            .is_pending());
        let (after, after_count, after_step) = counting::<40>();
        let mut after_done = ctx.done();
        assert!(Pin::new(&mut after_done)
            .poll(&mut TaskContext::from_waker(&after))
            .is_pending());

        let cancel_panicked = catch_unwind(AssertUnwindSafe(|| handle.cancel())).is_err();
        assert!(cancel_panicked, "the waker's panic resumes from cancel()");
        for (waker, count, step) in &wakers {
            assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), *step);
            let mut done = dones.remove(0);
            assert_eq!(
                Pin::new(&mut done).poll(&mut TaskContext::from_waker(waker)),
                Poll::Ready(Error::Canceled)
            );
        }
        assert_eq!(
            after_count.load(std::sync::atomic::Ordering::SeqCst),
            after_step,
            "the waker after the panicking one is woken"
        );
        drop((bad_done, after_done));
        // Every guard gave back the reference it took.
        for (waker, count, _) in wakers {
            drop(waker);
            assert_eq!(Arc::strong_count(&count), 1);
        }
    }
}
