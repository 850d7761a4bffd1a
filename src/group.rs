//! [`Group`]: a set of tasks bound to one context, where the first error
//! cancels the rest (Go's `errgroup.WithContext`, with `SetLimit`).
//!
//! A request handler fans out into a few threads and futures. If one of
//! them fails, the others should stop, and the caller should learn *why*
//! the work ended — the first error, not the `context canceled` that every
//! other task then reports. A [`Group`] is that pattern, runtime-agnostic:
//!
//! - [`Group::new`] derives a child context of the given one;
//!   [`context`](Group::context) returns it, for the tasks to watch;
//! - [`go`](Group::go) (alias [`spawn_blocking`](Group::spawn_blocking))
//!   runs a closure on a new `std::thread`;
//!   [`spawn`](Group::spawn) runs a future, driven by the group's own
//!   [`join`](Group::join) / [`wait`](Group::wait), or handed to a spawner
//!   you give it ([`with_spawner`](Group::with_spawner), e.g.
//!   `tokio::spawn`);
//! - the first task that fails (returns `Err` or panics) cancels the
//!   group's context with that error as the [`cause`](Context::cause);
//! - [`wait`](Group::wait) (blocking) and [`join`](Group::join) (a future)
//!   wait for every task, then return the first error — the very `Arc` the
//!   context was cancelled with — or resume the first panic;
//! - [`set_limit`](Group::set_limit) bounds how many tasks run at once.
//!
//! | Go (`golang.org/x/sync/errgroup`) | tokio | ctxtree |
//! |---|---|---|
//! | `g, ctx := errgroup.WithContext(ctx)` | `JoinSet::new()` + `CancellationToken` | `let g = Group::new(&ctx); g.context()` or [`Group::with_context`] |
//! | `g.Go(func() error { … })` | `set.spawn(fut)`, `spawn_blocking(f)` | [`g.spawn(fut)`](Group::spawn), [`g.go(f)`](Group::go) |
//! | `g.TryGo(f)` | — | [`g.try_go(f)`](Group::try_go) |
//! | `g.SetLimit(n)` | a `Semaphore` | [`g.set_limit(n)`](Group::set_limit) |
//! | `err := g.Wait()` | `while let Some(r) = set.join_next().await` | [`g.wait()`](Group::wait), [`g.join().await`](Group::join) |
//!
//! ```
//! use ctxtree::{Context, group::Group};
//!
//! #[derive(Debug)]
//! struct NotFound(&'static str);
//! impl std::fmt::Display for NotFound {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         write!(f, "{} not found", self.0)
//!     }
//! }
//! impl std::error::Error for NotFound {}
//!
//! let (request, _finish) = Context::background().with_cancel();
//! let g = Group::new(&request);
//! for shard in ["a", "b", "c"] {
//!     let ctx = g.context().clone();
//!     g.go(move || {
//!         if shard == "b" {
//!             return Err(NotFound("b"));
//!         }
//!         ctx.wait(); // the others work until the group is cancelled
//!         Ok(())
//!     });
//! }
//! let err = g.wait().unwrap_err();
//! assert_eq!(err.to_string(), "b not found");
//! assert!(err.downcast_ref::<NotFound>().is_some());
//! // The siblings saw the same error as their context's cause.
//! assert!(std::sync::Arc::ptr_eq(&err, &g.context().cause().unwrap()));
//! assert!(!request.is_done()); // only the group's child context ended
//! ```

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::{self, Thread};

use crate::{CancelHandle, Cause, Context};

/// A boxed error, what group tasks' errors are converted into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A type-erased task future, what a [spawner](Group::with_spawner) receives.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

type TaskFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;
type Spawner = Arc<dyn Fn(BoxFuture) + Send + Sync + 'static>;
type PanicPayload = Box<dyn Any + Send + 'static>;

/// The cause a group's context is cancelled with when one of its tasks
/// panics (the panic itself is resumed by [`Group::wait`] /
/// [`Group::join`]). Display: `group task panicked: <message>`.
///
/// ```
/// use ctxtree::{Context, group::{Group, Panicked}};
/// let g = Group::new(&Context::background());
/// g.go(|| -> Result<(), std::io::Error> { panic!("boom") });
/// let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.wait()));
/// assert!(caught.is_err()); // the panic reached the waiter
/// let cause = g.context().cause().unwrap();
/// assert_eq!(cause.downcast_ref::<Panicked>().unwrap().message(), "boom");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    fn from_payload(payload: &PanicPayload) -> Panicked {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_owned()
        };
        Panicked { message }
    }

    /// The panic's message (`"Box<dyn Any>"` if the payload was not a
    /// string).
    ///
    /// ```
    /// # use ctxtree::{Context, group::{Group, Panicked}};
    /// let g = Group::new(&Context::background());
    /// g.go(|| -> Result<(), std::io::Error> { panic!("at the disco") });
    /// let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.wait()));
    /// let cause = g.context().cause().unwrap();
    /// assert_eq!(cause.to_string(), "group task panicked: at the disco");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group task panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}

/// The error a group records when a spawned future is dropped before it
/// completed — the [spawner](Group::with_spawner) dropped it, e.g. because
/// its runtime shut down — so that [`Group::wait`] does not wait forever.
/// Display: `group task dropped before it completed`.
///
/// ```
/// use ctxtree::{Context, group::{Group, TaskDropped}};
/// // A spawner that drops every future it is given.
/// let g = Group::new(&Context::background()).with_spawner(drop);
/// g.spawn(async { Ok::<(), std::io::Error>(()) });
/// let err = g.wait().unwrap_err();
/// assert!(err.is::<TaskDropped>());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskDropped;

impl fmt::Display for TaskDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("group task dropped before it completed")
    }
}

impl std::error::Error for TaskDropped {}

/// A set of threads and futures bound to a child context: the first one
/// to fail cancels the rest, with its error as the cause, and
/// [`wait`](Self::wait) / [`join`](Self::join) return that error.
///
/// See the [module documentation](self) for the model and a table of the
/// Go and tokio equivalents.
///
/// Go equivalent: `errgroup.WithContext` (golang.org/x/sync), with
/// `SetLimit` and `TryGo`. Differences: panics in a task are caught,
/// cancel the group and are resumed in the waiter; and dropping every
/// `Group` handle (and [`Join`]) cancels the group's context, like
/// `defer cancel()`. Threads already running keep running (they see the
/// cancellation); futures that no spawner took are dropped with the group.
///
/// `Group` is a cheap handle (`Clone`, `Send`, `Sync`): move a clone into
/// a task to spawn more tasks from there.
///
/// Futures given to [`spawn`](Self::spawn) run only while a
/// [`join`](Self::join) future is polled or a thread is in
/// [`wait`](Self::wait) (they are polled there, on that thread), unless a
/// spawner was set with [`with_spawner`](Self::with_spawner).
///
/// ```
/// use std::time::Duration;
/// use ctxtree::{Context, group::Group};
///
/// # futures::executor::block_on(async {
/// let (request, _finish) = Context::background().with_timeout(Duration::from_secs(5));
/// let g = Group::new(&request);
/// g.set_limit(2); // at most two downloads at once
/// for part in 0..5u32 {
///     let ctx = g.context().clone();
///     g.spawn(async move {
///         // A real task would select on ctx.done() while doing I/O.
///         ctx.err()?;
///         Ok::<_, ctxtree::Error>(println!("part {part} fetched"))
///     });
/// }
/// g.join().await.unwrap(); // drives the futures, no runtime needed
/// # });
/// ```
#[derive(Clone)]
pub struct Group {
    owner: Arc<Owner>,
}

/// Counts the user's handles ([`Group`] clones and [`Join`] futures): the
/// last one dropped cancels the group's context. Tasks hold `Shared`, not
/// this, so running tasks do not keep the group alive.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.handle.cancel();
    }
}

struct Shared {
    ctx: Context,
    handle: CancelHandle,
    state: Mutex<State>,
    /// Signalled when a slot frees (for `go` blocked on the limit).
    slot_freed: Condvar,
}

#[derive(Default)]
struct State {
    /// At most this many tasks hold a slot at once (`None`: no limit).
    limit: Option<usize>,
    /// Tasks holding a slot: running threads, started futures.
    active: usize,
    /// Tasks not finished: threads, started futures and queued futures.
    pending: usize,
    /// Futures waiting for a slot.
    queued: VecDeque<TaskFuture>,
    /// Started futures driven by `join`, while nobody is polling them.
    local: HashMap<u64, LocalTask>,
    /// Ids of `local` futures to poll (woken). May hold stale ids.
    ready: Vec<u64>,
    next_id: u64,
    /// Wakers of the `join` futures waiting on this group.
    joiners: Vec<Waker>,
    /// The first error (or the `Panicked` cause of the first panic).
    error: Option<Cause>,
    /// The first panic's payload, resumed by one waiter.
    panic: Option<PanicPayload>,
    spawner: Option<Spawner>,
}

impl State {
    fn has_slot(&self) -> bool {
        self.limit.is_none_or(|limit| self.active < limit)
    }
}

struct LocalTask {
    fut: TaskFuture,
    waker: Arc<TaskWaker>,
}

/// The waker of one `join`-driven future: marks it ready and wakes joiners.
struct TaskWaker {
    id: u64,
    /// True from a wake until the next poll starts: a wake while it is
    /// already true needs no second push onto `ready`.
    woken: AtomicBool,
    shared: Weak<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // AcqRel: the swap orders this wake after the poll that cleared the
        // flag (Acquire) and publishes it to the poller that re-checks the
        // flag after its poll (Release); the mutex below orders the rest.
        if self.woken.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(shared) = self.shared.upgrade() {
            let joiners = {
                let mut st = shared.lock();
                st.ready.push(self.id);
                std::mem::take(&mut st.joiners)
            };
            joiners.into_iter().for_each(Waker::wake);
        }
    }
}

/// How one task ended.
enum Ended {
    Ok,
    Err(BoxError),
    Panic(PanicPayload),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens while the lock is held (user code runs
        // outside it), but do not turn one into a second panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a future that got a slot: hands it to the spawner (returned,
    /// to be called once the lock is released) or makes it a local task.
    fn start_locked(
        self: &Arc<Self>,
        st: &mut State,
        fut: TaskFuture,
    ) -> Option<(Spawner, TaskFuture)> {
        if let Some(spawner) = &st.spawner {
            return Some((Arc::clone(spawner), fut));
        }
        let id = st.next_id;
        st.next_id += 1;
        let waker = Arc::new(TaskWaker {
            id,
            woken: AtomicBool::new(true),
            shared: Arc::downgrade(self),
        });
        st.local.insert(id, LocalTask { fut, waker });
        st.ready.push(id);
        None
    }

    /// Runs what `start_locked` and `finish` left to do outside the lock.
    fn run_starts(self: &Arc<Self>, starts: Vec<(Spawner, TaskFuture)>, joiners: Vec<Waker>) {
        for (spawner, fut) in starts {
            let task = Spawned {
                shared: Arc::clone(self),
                fut: Some(fut),
            };
            spawner(Box::pin(task));
        }
        joiners.into_iter().for_each(Waker::wake);
    }

    fn spawn_future(self: &Arc<Self>, fut: TaskFuture) {
        let mut starts = Vec::new();
        let joiners = {
            let mut st = self.lock();
            st.pending += 1;
            if st.has_slot() {
                st.active += 1;
                starts.extend(self.start_locked(&mut st, fut));
            } else {
                st.queued.push_back(fut);
            }
            std::mem::take(&mut st.joiners)
        };
        self.run_starts(starts, joiners);
    }

    /// Records how a task ended, frees its slot, starts what waits for one,
    /// cancels the group on its first failure and wakes the waiters.
    fn finish(self: &Arc<Self>, ended: Ended) {
        let (cause, payload): (Option<Cause>, _) = match ended {
            Ended::Ok => (None, None),
            Ended::Err(e) => (Some(Arc::from(e)), None),
            Ended::Panic(payload) => (
                Some(Arc::new(Panicked::from_payload(&payload))),
                Some(payload),
            ),
        };
        let mut starts = Vec::new();
        let (first, joiners) = {
            let mut st = self.lock();
            if st.panic.is_none() {
                st.panic = payload;
            }
            st.pending -= 1;
            st.active -= 1;
            let first = match cause {
                Some(c) if st.error.is_none() => {
                    st.error = Some(Arc::clone(&c));
                    Some(c)
                }
                _ => None,
            };
            while st.has_slot() {
                let Some(fut) = st.queued.pop_front() else {
                    break;
                };
                st.active += 1;
                starts.extend(self.start_locked(&mut st, fut));
            }
            (first, std::mem::take(&mut st.joiners))
        };
        self.slot_freed.notify_all();
        if let Some(cause) = first {
            self.handle.cancel_with_shared_cause(cause);
        }
        self.run_starts(starts, joiners);
    }

    /// Takes a slot for a thread, blocking until one is free if `block`.
    fn acquire_thread_slot(&self, block: bool) -> bool {
        let mut st = self.lock();
        while !st.has_slot() {
            if !block {
                return false;
            }
            st = self
                .slot_freed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        st.active += 1;
        st.pending += 1;
        true
    }

    fn start_thread<F, E>(self: &Arc<Self>, f: F)
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
        E: Into<BoxError>,
    {
        let shared = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("ctxtree-group".into())
            .spawn(move || {
                let ended = match panic::catch_unwind(AssertUnwindSafe(f)) {
                    Ok(Ok(())) => Ended::Ok,
                    Ok(Err(e)) => Ended::Err(e.into()),
                    Err(payload) => Ended::Panic(payload),
                };
                shared.finish(ended);
            });
        if let Err(e) = spawned {
            // The OS refused a thread: the task failed before it started.
            self.finish(Ended::Err(Box::new(e)));
        }
    }
}

impl Group {
    /// A group whose tasks share a new child of `parent`
    /// ([`context`](Self::context)). Cancelling `parent` cancels the group's
    /// context; the group's failures do not reach `parent`.
    ///
    /// Go equivalent: `g, ctx := errgroup.WithContext(parent)`.
    ///
    /// ```
    /// use ctxtree::{Context, group::Group};
    /// let (parent, cancel) = Context::background().with_cancel();
    /// let g = Group::new(&parent);
    /// cancel.cancel();
    /// assert!(g.context().is_done());
    /// assert_eq!(g.wait().map_err(|e| e.to_string()), Ok(())); // no task failed
    /// ```
    pub fn new(parent: &Context) -> Group {
        let (ctx, handle) = parent.with_cancel();
        Group {
            owner: Arc::new(Owner {
                shared: Arc::new(Shared {
                    ctx,
                    handle,
                    state: Mutex::new(State::default()),
                    slot_freed: Condvar::new(),
                }),
            }),
        }
    }

    /// [`Group::new`] and its context at once, as Go's
    /// `errgroup.WithContext` returns them.
    ///
    /// ```
    /// use ctxtree::{Context, group::Group};
    /// let (g, ctx) = Group::with_context(&Context::background());
    /// g.go(|| Err("failed"));
    /// assert_eq!(g.wait().unwrap_err().to_string(), "failed");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "failed");
    /// ```
    pub fn with_context(parent: &Context) -> (Group, Context) {
        let g = Group::new(parent);
        let ctx = g.context().clone();
        (g, ctx)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// Hands every future given to [`spawn`](Self::spawn) from now on to
    /// `spawner` (for example `tokio::spawn`) instead of polling it inside
    /// [`join`](Self::join) / [`wait`](Self::wait). The group still counts
    /// it, catches its panic and records its error. A future the spawner
    /// drops unfinished ends with the error [`TaskDropped`].
    ///
    /// ```
    /// use ctxtree::{Context, group::Group};
    /// # #[tokio::main] async fn main() {
    /// let g = Group::new(&Context::background()).with_spawner(|fut| {
    ///     tokio::spawn(fut);
    /// });
    /// g.spawn(async { Ok::<_, std::io::Error>(()) }); // runs on a tokio worker
    /// g.join().await.unwrap();
    /// # }
    /// ```
    pub fn with_spawner<S>(self, spawner: S) -> Group
    where
        S: Fn(BoxFuture) + Send + Sync + 'static,
    {
        self.shared().lock().spawner = Some(Arc::new(spawner));
        self
    }

    /// The group's context: cancelled when a task fails (with its error as
    /// the cause), when `parent` is, when [`wait`](Self::wait) /
    /// [`join`](Self::join) return, or when the last `Group` handle is
    /// dropped.
    ///
    /// ```
    /// let g = ctxtree::group::Group::new(&ctxtree::Context::background());
    /// assert!(!g.context().is_done());
    /// g.wait().unwrap();
    /// assert!(g.context().is_done()); // like Go, Wait cancels it
    /// ```
    pub fn context(&self) -> &Context {
        &self.shared().ctx
    }

    /// Limits the number of tasks running at once to `limit`; `0` removes
    /// the limit. With the limit reached, [`go`](Self::go) blocks until a
    /// task ends, [`try_go`](Self::try_go) returns `false`, and
    /// [`spawn`](Self::spawn) queues its future (it never blocks). Unlike
    /// Go, the limit may change while tasks run.
    ///
    /// Do not call the blocking [`go`](Self::go) from a future this group
    /// drives, with the limit reached: use [`spawn`](Self::spawn) there.
    ///
    /// Go equivalent: `g.SetLimit(n)` (with `0` here for Go's negative n).
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicUsize, Ordering::SeqCst}};
    /// use ctxtree::{Context, group::Group};
    /// let g = Group::new(&Context::background());
    /// g.set_limit(2);
    /// let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    /// for _ in 0..6 {
    ///     let (now, max) = (now.clone(), max.clone());
    ///     g.go(move || {
    ///         max.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
    ///         std::thread::sleep(std::time::Duration::from_millis(5));
    ///         now.fetch_sub(1, SeqCst);
    ///         Ok::<_, std::io::Error>(())
    ///     });
    /// }
    /// g.wait().unwrap();
    /// assert!(max.load(SeqCst) <= 2);
    /// ```
    pub fn set_limit(&self, limit: usize) {
        let shared = self.shared();
        let mut starts = Vec::new();
        let joiners = {
            let mut st = shared.lock();
            st.limit = (limit > 0).then_some(limit);
            while st.has_slot() {
                let Some(fut) = st.queued.pop_front() else {
                    break;
                };
                st.active += 1;
                starts.extend(shared.start_locked(&mut st, fut));
            }
            std::mem::take(&mut st.joiners)
        };
        shared.slot_freed.notify_all();
        shared.run_starts(starts, joiners);
    }

    /// Runs `f` on a new thread (named `ctxtree-group`). If it returns `Err`
    /// or panics, and no task failed before, the group's context is
    /// cancelled with that error (or [`Panicked`]) as the cause. Blocks
    /// while the [limit](Self::set_limit) is reached.
    ///
    /// `f` takes no argument, as in Go; clone [`context`](Self::context)
    /// into it to watch for cancellation.
    ///
    /// Go equivalent: `g.Go(func() error { … })`; tokio: `spawn_blocking`.
    ///
    /// ```
    /// use ctxtree::{Context, group::Group};
    /// let g = Group::new(&Context::background());
    /// let ctx = g.context().clone();
    /// g.go(move || {
    ///     ctx.wait(); // until a sibling fails
    ///     Ok::<_, String>(())
    /// });
    /// g.go(|| Err(String::from("disk full")));
    /// assert_eq!(g.wait().unwrap_err().to_string(), "disk full");
    /// ```
    pub fn go<F, E>(&self, f: F)
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
        E: Into<BoxError>,
    {
        self.shared().acquire_thread_slot(true);
        self.shared().start_thread(f);
    }

    /// The same as [`go`](Self::go), under the name tokio users look for.
    ///
    /// ```
    /// let g = ctxtree::group::Group::new(&ctxtree::Context::background());
    /// g.spawn_blocking(|| Ok::<_, std::io::Error>(()));
    /// g.wait().unwrap();
    /// ```
    pub fn spawn_blocking<F, E>(&self, f: F)
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
        E: Into<BoxError>,
    {
        self.go(f);
    }

    /// Runs `f` on a new thread if the [limit](Self::set_limit) allows it
    /// now, and returns whether it did; never blocks.
    ///
    /// Go equivalent: `g.TryGo(f)`.
    ///
    /// ```
    /// use ctxtree::{Context, group::Group};
    /// let g = Group::new(&Context::background());
    /// g.set_limit(1);
    /// let ctx = g.context().clone();
    /// assert!(g.try_go(move || { ctx.wait(); Ok::<_, std::io::Error>(()) }));
    /// assert!(!g.try_go(|| Ok::<_, std::io::Error>(()))); // the slot is taken
    /// g.set_limit(0);
    /// g.go(|| Err("stop")); // no limit any more: runs, fails, cancels the first
    /// assert_eq!(g.wait().unwrap_err().to_string(), "stop");
    /// ```
    pub fn try_go<F, E>(&self, f: F) -> bool
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
        E: Into<BoxError>,
    {
        if !self.shared().acquire_thread_slot(false) {
            return false;
        }
        self.shared().start_thread(f);
        true
    }

    /// Adds a future to the group. It is polled by [`join`](Self::join) /
    /// [`wait`](Self::wait) (on whatever thread or task awaits them), or
    /// handed to the [spawner](Self::with_spawner). Never blocks: with the
    /// [limit](Self::set_limit) reached it waits in a queue for a slot.
    /// Its `Err` or panic cancels the group as for [`go`](Self::go).
    ///
    /// Go equivalent: `g.Go`; tokio: `JoinSet::spawn`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxtree::{Context, Error, group::Group};
    ///
    /// # futures::executor::block_on(async {
    /// let g = Group::new(&Context::background());
    /// let ctx = g.context().clone();
    /// g.spawn(async move {
    ///     let err = ctx.done().await; // until a sibling fails
    ///     assert_eq!(err, Error::Canceled);
    ///     Ok::<_, std::io::Error>(())
    /// });
    /// g.spawn(async { Err(std::io::Error::other("upstream down")) });
    /// assert_eq!(g.join().await.unwrap_err().to_string(), "upstream down");
    /// # });
    /// ```
    pub fn spawn<F, E>(&self, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let fut: TaskFuture = Box::pin(async move { fut.await.map_err(Into::into) });
        self.shared().spawn_future(fut);
    }

    /// How many tasks have not finished yet (running, or queued for a
    /// slot).
    ///
    /// ```
    /// let g = ctxtree::group::Group::new(&ctxtree::Context::background());
    /// g.spawn(async { Ok::<_, std::io::Error>(()) });
    /// assert_eq!(g.len(), 1); // not polled yet
    /// g.wait().unwrap();
    /// assert_eq!(g.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.shared().lock().pending
    }

    /// Whether every task has finished (or none was added).
    ///
    /// ```
    /// assert!(ctxtree::group::Group::new(&ctxtree::Context::background()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A future that drives the group's futures (those no spawner took),
    /// waits until every task has finished, cancels the group's context,
    /// and returns the first error, or resumes the first panic.
    ///
    /// The future is owned (`Send + 'static`): it can be given to
    /// `tokio::spawn`, or polled by any executor. Several joins may run at
    /// once; each returns the same result (one of them resumes the panic,
    /// the others return its [`Panicked`] cause).
    ///
    /// Go equivalent: `g.Wait()`; tokio: draining a `JoinSet`.
    ///
    /// ```
    /// use ctxtree::{Context, group::Group};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let g = Group::new(&Context::background());
    /// g.spawn(async { Ok::<_, std::io::Error>(()) });
    /// let joined = tokio::spawn(g.join()); // owned: no borrow of `g`
    /// assert!(joined.await.unwrap().is_ok());
    /// # }
    /// ```
    pub fn join(&self) -> Join {
        Join {
            group: self.clone(),
            done: false,
        }
    }

    /// Blocks the calling thread until every task has finished (polling
    /// the group's futures on it meanwhile), cancels the group's context,
    /// and returns the first error — the same `Arc` as the context's
    /// [`cause`](Context::cause) — or resumes the first panic.
    ///
    /// Do not call it from async code: use [`join`](Self::join) there.
    ///
    /// Go equivalent: `err := g.Wait()`.
    ///
    /// ```
    /// use ctxtree::{Context, group::Group};
    /// let g = Group::new(&Context::background());
    /// g.go(|| Ok::<_, std::io::Error>(()));
    /// g.spawn(async { Ok::<_, std::io::Error>(()) }); // polled inside wait()
    /// assert!(g.wait().is_ok());
    /// ```
    pub fn wait(&self) -> Result<(), Cause> {
        block_on(self.join())
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared().lock();
        f.debug_struct("Group")
            .field("context", &self.shared().ctx)
            .field("pending", &st.pending)
            .field("limit", &st.limit)
            .field("error", &st.error.as_ref().map(|e| e.to_string()))
            .finish()
    }
}

/// The future returned by [`Group::join`]: see there.
///
/// ```
/// # futures::executor::block_on(async {
/// let g = ctxtree::group::Group::new(&ctxtree::Context::background());
/// let join: ctxtree::group::Join = g.join();
/// assert!(join.await.is_ok());
/// # });
/// ```
#[must_use = "a Join does nothing unless polled"]
pub struct Join {
    group: Group,
    done: bool,
}

/// How many tasks one poll of `Join` polls before yielding to its executor.
const POLL_BUDGET: usize = 64;

impl Future for Join {
    type Output = Result<(), Cause>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), Cause>> {
        if self.done {
            // Polled after completion: stay pending rather than panic.
            return Poll::Pending;
        }
        let shared = Arc::clone(self.group.shared());
        for _ in 0..POLL_BUDGET {
            let (id, mut task) = {
                let mut st = shared.lock();
                if st.pending == 0 {
                    let error = st.error.clone();
                    let panic = st.panic.take();
                    drop(st);
                    self.done = true;
                    // Go's Wait cancels the group's context too.
                    match &error {
                        Some(cause) => shared.handle.cancel_with_shared_cause(Arc::clone(cause)),
                        None => shared.handle.cancel(),
                    }
                    if let Some(payload) = panic {
                        panic::resume_unwind(payload);
                    }
                    return Poll::Ready(error.map_or(Ok(()), Err));
                }
                // Register before looking for work: a task that becomes
                // ready after this (or finishes) wakes us.
                if !st.joiners.iter().any(|w| w.will_wake(cx.waker())) {
                    st.joiners.push(cx.waker().clone());
                }
                let Some(id) = st.ready.pop() else {
                    return Poll::Pending;
                };
                match st.local.remove(&id) {
                    Some(task) => (id, task),
                    // Stale id, or another join is polling it (it re-queues
                    // the id if the task was woken meanwhile).
                    None => continue,
                }
            };
            // Release: pairs with the AcqRel swap in `wake_by_ref`; a wake
            // from now on happens after this poll started and re-queues.
            task.waker.woken.store(false, Ordering::Release);
            let waker = Waker::from(Arc::clone(&task.waker));
            let polled = panic::catch_unwind(AssertUnwindSafe(|| {
                task.fut.as_mut().poll(&mut TaskContext::from_waker(&waker))
            }));
            match polled {
                Ok(Poll::Pending) => {
                    let mut st = shared.lock();
                    // Acquire: sees a wake that happened during the poll.
                    if task.waker.woken.load(Ordering::Acquire) {
                        st.ready.push(id);
                    }
                    st.local.insert(id, task);
                }
                Ok(Poll::Ready(result)) => {
                    drop(task);
                    shared.finish(result.map_or_else(Ended::Err, |()| Ended::Ok));
                }
                Err(payload) => {
                    drop(task);
                    shared.finish(Ended::Panic(payload));
                }
            }
        }
        // Budget spent with work left: yield to the executor, come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl fmt::Debug for Join {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Join")
            .field("group", &self.group)
            .field("done", &self.done)
            .finish()
    }
}

/// A future handed to a spawner: reports its end to the group.
struct Spawned {
    shared: Arc<Shared>,
    fut: Option<TaskFuture>,
}

impl Future for Spawned {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(());
        };
        let ended = match panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => Ended::Ok,
            Ok(Poll::Ready(Err(e))) => Ended::Err(e),
            Err(payload) => Ended::Panic(payload),
        };
        self.fut = None;
        self.shared.finish(ended);
        Poll::Ready(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            drop(fut);
            self.shared.finish(Ended::Err(Box::new(TaskDropped)));
        }
    }
}

/// Wakes a thread parked in [`block_on`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on this thread, parking between wake-ups.
fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        // A wake before this park leaves the token set: no lost wake-up.
        thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>() {}

    #[test]
    fn handles_are_send_and_sync() {
        assert_send_sync::<Group>();
        assert_send::<Join>();
        assert_send_sync::<Panicked>();
    }
}
