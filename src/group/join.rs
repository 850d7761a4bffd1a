//! Draining a group: the [`Join`] future, which polls the group's own
//! futures until every task has finished, and [`block_on`] for `wait`.

use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::{self, Thread};

use super::tasks::Ended;
use super::Group;
use crate::Cause;

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
    pub(super) group: Group,
    pub(super) done: bool,
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
pub(super) fn block_on<F: Future>(fut: F) -> F::Output {
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
