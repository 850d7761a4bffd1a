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

mod error;
mod join;
mod tasks;

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;

pub use error::{Panicked, TaskDropped};
pub use join::Join;

use join::block_on;
use tasks::LocalTask;

use crate::{CancelHandle, Cause, Context};

/// A boxed error, what group tasks' errors are converted into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A type-erased task future, what a [spawner](Group::with_spawner) receives.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

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

type TaskFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;
type Spawner = Arc<dyn Fn(BoxFuture) + Send + Sync + 'static>;
type PanicPayload = Box<dyn Any + Send + 'static>;

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
