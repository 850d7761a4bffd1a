//! The "obvious first attempt": Go's `context.go` design ported to Rust
//! with a mutex, used as a peer in every workload.
//!
//! - each cancellable node has an atomic `done` flag (the `is_done` fast
//!   path, like Go's `err atomic.Value`) and a `Mutex` around its error,
//!   its children (`HashMap`, like Go's `children map[canceler]struct{}`)
//!   and its async waiters, plus a `Condvar` for blocking waits;
//! - deriving locks the parent and inserts the child (`propagateCancel`);
//! - cancelling locks the node, takes the children and recurses into them
//!   (`cancelCtx.cancel`), then removes the node from its parent
//!   (`removeChild`);
//! - unlike Go (which relies on the GC and leaks children until the parent
//!   ends), a node unlinks itself from its parent when its last handle is
//!   dropped: the parent's map holds `Weak` references, and `Drop` removes
//!   the entry. Dropping a deep chain drops parents recursively, as plain
//!   `Arc` chains do;
//! - values are a parent-chain walk (`valueCtx.Value`);
//! - deadlines are one global timer thread over a `BTreeMap` under a mutex
//!   (Go's runtime timer heap in spirit); a cancelled node removes its
//!   entry, as Go's `timer.Stop()` does.
//!
//! Nothing here is clever on purpose: it is the baseline users would write.

#![allow(dead_code)]

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::task::{Context as TaskCx, Poll, Waker};
use std::time::{Duration, Instant};

/// Why a context is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    Canceled,
    DeadlineExceeded,
}

struct Inner {
    err: Option<Error>,
    children: HashMap<usize, Weak<Node>>,
    wakers: Vec<Waker>,
    timer: Option<(Instant, u64)>,
}

struct Node {
    parent: Option<Arc<Node>>,
    /// `None` for value nodes: they delegate doneness to their parent.
    cancel: Option<CancelPart>,
    value: Option<(TypeId, Box<dyn Any + Send + Sync>)>,
    deadline: Option<Instant>,
}

struct CancelPart {
    done: AtomicBool,
    inner: Mutex<Inner>,
    cv: Condvar,
}

/// A context handle (Go's `context.Context`). `None` is `Background()`.
#[derive(Clone, Default)]
pub struct Ctx(Option<Arc<Node>>);

/// Go's `CancelFunc`.
#[derive(Clone)]
pub struct CancelFn(Arc<Node>);

impl CancelFn {
    pub fn cancel(&self) {
        cancel(&self.0, Error::Canceled, true);
    }
}

fn key(n: &Arc<Node>) -> usize {
    Arc::as_ptr(n) as usize
}

/// The nearest cancellable ancestor-or-self (Go: `parentCancelCtx`).
fn scope(mut n: &Arc<Node>) -> Option<&Arc<Node>> {
    loop {
        if n.cancel.is_some() {
            return Some(n);
        }
        n = n.parent.as_ref()?;
    }
}

fn cancel(n: &Arc<Node>, err: Error, remove_from_parent: bool) {
    let c = n.cancel.as_ref().expect("cancellable");
    let (children, wakers, timer_key) = {
        let mut g = c.inner.lock().unwrap();
        if g.err.is_some() {
            return;
        }
        g.err = Some(err);
        c.done.store(true, Ordering::Release);
        (
            std::mem::take(&mut g.children),
            std::mem::take(&mut g.wakers),
            g.timer.take(),
        )
    };
    c.cv.notify_all();
    for w in wakers {
        w.wake();
    }
    // Recursive, like Go's cancelCtx.cancel.
    for (_, child) in children {
        if let Some(child) = child.upgrade() {
            cancel(&child, err, false);
        }
    }
    if let Some(t) = timer_key {
        timer().entries.lock().unwrap().remove(&t);
    }
    if remove_from_parent {
        remove_child(n);
    }
}

fn remove_child(n: &Node) {
    if let Some(p) = n.parent.as_ref().and_then(scope) {
        let key = n as *const Node as usize;
        p.cancel
            .as_ref()
            .unwrap()
            .inner
            .lock()
            .unwrap()
            .children
            .remove(&key);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &mut self.cancel {
            let inner = c.inner.get_mut().unwrap();
            if let Some(t) = inner.timer.take() {
                timer().entries.lock().unwrap().remove(&t);
            }
            // A cancelled node already left its parent's map (its own cancel
            // removed it, or the parent's cancel took the whole map).
            if inner.err.is_none() {
                remove_child(self);
            }
        }
        // `self.parent` is dropped after this: recursively, for a chain.
    }
}

impl Ctx {
    pub fn background() -> Ctx {
        Ctx(None)
    }

    fn new_cancel_node(&self, deadline: Option<Instant>) -> Arc<Node> {
        Arc::new(Node {
            parent: self.0.clone(),
            cancel: Some(CancelPart {
                done: AtomicBool::new(false),
                inner: Mutex::new(Inner {
                    err: None,
                    children: HashMap::new(),
                    wakers: Vec::new(),
                    timer: None,
                }),
                cv: Condvar::new(),
            }),
            value: None,
            deadline,
        })
    }

    /// Go's `propagateCancel`: register with the parent's scope, or inherit
    /// its error if it is already done.
    fn propagate(&self, child: &Arc<Node>) -> bool {
        let Some(p) = self.0.as_ref().and_then(scope) else {
            return true;
        };
        let pc = p.cancel.as_ref().unwrap();
        let mut g = pc.inner.lock().unwrap();
        if let Some(err) = g.err {
            drop(g);
            cancel(child, err, false);
            return false;
        }
        g.children.insert(key(child), Arc::downgrade(child));
        true
    }

    pub fn with_cancel(&self) -> (Ctx, CancelFn) {
        let n = self.new_cancel_node(None);
        self.propagate(&n);
        (Ctx(Some(n.clone())), CancelFn(n))
    }

    pub fn with_timeout(&self, timeout: Duration) -> (Ctx, CancelFn) {
        let d = Instant::now() + timeout;
        if self.deadline().is_some_and(|p| p <= d) {
            return self.with_cancel();
        }
        let n = self.new_cancel_node(Some(d));
        if self.propagate(&n) {
            let t = timer();
            let id = t.next.fetch_add(1, Ordering::Relaxed);
            // Lock order: node, then timer map (cancel takes them one at a
            // time, never nested the other way).
            let mut g = n.cancel.as_ref().unwrap().inner.lock().unwrap();
            if g.err.is_none() {
                g.timer = Some((d, id));
                let mut e = t.entries.lock().unwrap();
                let earliest = e.keys().next().is_none_or(|k| (d, id) < *k);
                e.insert((d, id), Arc::downgrade(&n));
                drop(e);
                if earliest {
                    t.cv.notify_one();
                }
            }
        }
        (Ctx(Some(n.clone())), CancelFn(n))
    }

    pub fn with_value<T: Any + Send + Sync>(&self, v: T) -> Ctx {
        Ctx(Some(Arc::new(Node {
            parent: self.0.clone(),
            cancel: None,
            value: Some((TypeId::of::<T>(), Box::new(v))),
            deadline: None,
        })))
    }

    #[inline]
    pub fn is_done(&self) -> bool {
        match self.0.as_ref().and_then(scope) {
            Some(n) => n.cancel.as_ref().unwrap().done.load(Ordering::Acquire),
            None => false,
        }
    }

    pub fn err(&self) -> Option<Error> {
        let n = self.0.as_ref().and_then(scope)?;
        n.cancel.as_ref().unwrap().inner.lock().unwrap().err
    }

    pub fn deadline(&self) -> Option<Instant> {
        let mut n = self.0.as_ref();
        while let Some(node) = n {
            if node.deadline.is_some() {
                return node.deadline;
            }
            n = node.parent.as_ref();
        }
        None
    }

    /// Go's `valueCtx.Value`: walk up comparing keys.
    pub fn value<T: Any + Send + Sync>(&self) -> Option<&T> {
        let mut n = self.0.as_ref();
        while let Some(node) = n {
            if let Some((id, v)) = &node.value {
                if *id == TypeId::of::<T>() {
                    return v.downcast_ref();
                }
            }
            n = node.parent.as_ref();
        }
        None
    }

    /// Blocks until done (Condvar).
    pub fn wait(&self) -> Error {
        let n = self.0.as_ref().and_then(scope).expect("cancellable");
        let c = n.cancel.as_ref().unwrap();
        let mut g = c.inner.lock().unwrap();
        loop {
            if let Some(e) = g.err {
                return e;
            }
            g = c.cv.wait(g).unwrap();
        }
    }

    /// An owned future completing when the context is done.
    pub fn done(&self) -> DoneFut {
        DoneFut(self.0.as_ref().and_then(scope).cloned())
    }
}

/// Completes when the context is done (never, for a root).
pub struct DoneFut(Option<Arc<Node>>);

impl Future for DoneFut {
    type Output = Error;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Error> {
        let Some(n) = &self.0 else {
            return Poll::Pending;
        };
        let c = n.cancel.as_ref().unwrap();
        let mut g = c.inner.lock().unwrap();
        match g.err {
            Some(e) => Poll::Ready(e),
            None => {
                g.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

struct Timer {
    entries: Mutex<BTreeMap<(Instant, u64), Weak<Node>>>,
    cv: Condvar,
    next: AtomicU64,
}

fn timer() -> &'static Timer {
    static T: OnceLock<&'static Timer> = OnceLock::new();
    T.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            entries: Mutex::new(BTreeMap::new()),
            cv: Condvar::new(),
            next: AtomicU64::new(0),
        }));
        std::thread::Builder::new()
            .name("mutex-port-timer".into())
            .spawn(move || loop {
                let mut g = t.entries.lock().unwrap();
                let now = Instant::now();
                let mut fire = Vec::new();
                while let Some((&k, _)) = g.iter().next() {
                    if k.0 > now {
                        break;
                    }
                    fire.push(g.remove(&k).unwrap());
                }
                if fire.is_empty() {
                    let wait = g.keys().next().map(|k| k.0 - now);
                    let _g = match wait {
                        Some(d) => t.cv.wait_timeout(g, d).unwrap().0,
                        None => t.cv.wait(g).unwrap(),
                    };
                    continue;
                }
                drop(g);
                for w in fire {
                    if let Some(n) = w.upgrade() {
                        cancel(&n, Error::DeadlineExceeded, true);
                    }
                }
            })
            .unwrap();
        t
    })
}
