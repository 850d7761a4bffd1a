//! The bookkeeping a group's handles and tasks share: slots, counts, the
//! queue, the `join`-driven futures, and how a task starts and finishes.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError, Weak};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;

use super::{BoxError, PanicPayload, Panicked, Shared, Spawner, State, TaskDropped, TaskFuture};
use crate::Cause;

pub(super) struct LocalTask {
    pub(super) fut: TaskFuture,
    pub(super) waker: Arc<TaskWaker>,
}

/// The waker of one `join`-driven future: marks it ready and wakes joiners.
pub(super) struct TaskWaker {
    id: u64,
    /// True from a wake until the next poll starts: a wake while it is
    /// already true needs no second push onto `ready`.
    pub(super) woken: AtomicBool,
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
pub(super) enum Ended {
    Ok,
    Err(BoxError),
    Panic(PanicPayload),
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never happens while the lock is held (user code runs
        // outside it), but do not turn one into a second panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a future that got a slot: hands it to the spawner (returned,
    /// to be called once the lock is released) or makes it a local task.
    pub(super) fn start_locked(
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
    pub(super) fn run_starts(
        self: &Arc<Self>,
        starts: Vec<(Spawner, TaskFuture)>,
        joiners: Vec<Waker>,
    ) {
        for (spawner, fut) in starts {
            let task = Spawned {
                shared: Arc::clone(self),
                fut: Some(fut),
            };
            spawner(Box::pin(task));
        }
        joiners.into_iter().for_each(Waker::wake);
    }

    pub(super) fn spawn_future(self: &Arc<Self>, fut: TaskFuture) {
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
    pub(super) fn finish(self: &Arc<Self>, ended: Ended) {
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
    pub(super) fn acquire_thread_slot(&self, block: bool) -> bool {
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

    pub(super) fn start_thread<F, E>(self: &Arc<Self>, f: F)
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
