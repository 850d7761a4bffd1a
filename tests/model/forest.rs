//! The two-thread driver's shared forest: the bookkeeping both threads
//! update under a mutex (which contexts are held, which node each is, the
//! scopes a cancellation reaches through, which node each cause tag
//! cancelled). Every library call runs outside the mutex.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ctxtree::{AfterFunc, CancelHandle, Context};

use super::clock::Clock;
use super::probes::Tag;
use super::slots::Slot;
use super::MAX_SLOTS;

/// What the shared forest knows about a node.
#[derive(Clone)]
pub(crate) struct SNode {
    cancellable: bool,
    scope: Option<usize>,
    /// Scopes whose cancellation reaches this node.
    from: Vec<usize>,
    /// Nodes held alive (for ancestor questions).
    holds: Vec<usize>,
}

/// An `after_func` registration of either thread.
pub(crate) struct SCb {
    pub(crate) runs: Arc<AtomicUsize>,
    /// `stop()` returned true.
    pub(crate) stopped: bool,
    /// Kept until teardown, which needs it to stop the never-run ones.
    pub(crate) handle: Option<AfterFunc>,
}

#[derive(Default)]
pub(crate) struct Forest {
    nodes: Vec<SNode>,
    pub(crate) slots: Vec<Slot>,
    /// Handles of the nodes no cancellation of another node reaches.
    pub(crate) roots: Vec<CancelHandle>,
    pub(crate) cbs: Vec<SCb>,
    /// Which node each tag's cancellation targets.
    pub(crate) tags: HashMap<u32, usize>,
    pub(crate) values_made: usize,
}

pub(crate) struct Shared {
    pub(crate) forest: Mutex<Forest>,
    /// What each thread did, in roughly the order it did it (printed when a
    /// quiescent check fails).
    pub(crate) log: Mutex<Vec<String>>,
    pub(crate) values_dropped: Arc<AtomicUsize>,
    pub(crate) tags: AtomicU32,
    pub(crate) clock: Clock,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            forest: Mutex::new(Forest::default()),
            log: Mutex::new(Vec::new()),
            values_dropped: Arc::new(AtomicUsize::new(0)),
            tags: AtomicU32::new(0),
            clock: Clock::new(),
        }
    }

    pub(crate) fn log(&self, what: String) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{name}: {what}"));
    }

    pub(crate) fn dump_log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Forest> {
        self.forest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new cause tag; `target`: the node whose cancellation it names.
    pub(crate) fn new_tag(&self, deadline: bool, target: Option<usize>) -> Tag {
        let tag = Tag {
            id: self.tags.fetch_add(1, Ordering::Relaxed) + 1,
            deadline,
        };
        if let Some(t) = target {
            self.lock().tags.insert(tag.id, t);
        }
        tag
    }

    /// The held contexts and their nodes, cloned out of the lock.
    pub(crate) fn held(&self) -> Vec<(Context, usize)> {
        let f = self.lock();
        f.slots
            .iter()
            .filter_map(|s| s.ctx.clone().map(|c| (c, s.node)))
            .collect()
    }
}

impl Forest {
    fn scope(&self, m: Option<usize>) -> Option<usize> {
        m.and_then(|m| self.nodes[m].scope)
    }

    /// Registers a node derived outside the lock.
    pub(crate) fn add(
        &mut self,
        cancellable: bool,
        detached: bool,
        parents: [Option<usize>; 2],
        ctx: Context,
        handle: Option<CancelHandle>,
    ) -> usize {
        let id = self.nodes.len();
        let from: Vec<usize> = if cancellable {
            let mut f: Vec<usize> = parents.iter().filter_map(|&p| self.scope(p)).collect();
            f.dedup();
            f
        } else {
            Vec::new()
        };
        let scope = if cancellable {
            Some(id)
        } else if detached {
            None
        } else {
            self.scope(parents[0])
        };
        if cancellable && from.is_empty() {
            self.roots
                .push(handle.clone().expect("cancellable nodes have handles"));
        }
        self.nodes.push(SNode {
            cancellable,
            scope,
            from,
            holds: parents.iter().flatten().copied().collect(),
        });
        if self.slots.len() < MAX_SLOTS {
            self.slots.push(Slot {
                node: id,
                ctx: Some(ctx),
                handle,
            });
        }
        id
    }

    /// Nodes whose outcome the cancellation of `m` reaches (`m` included):
    /// cancellable descendants through `from`, and value nodes in scope.
    pub(crate) fn cancel_reach(&self, m: usize) -> Vec<bool> {
        let mut hit = vec![false; self.nodes.len()];
        hit[m] = true;
        for j in m + 1..self.nodes.len() {
            let n = &self.nodes[j];
            hit[j] = if n.cancellable {
                n.from.iter().any(|&p| hit[p])
            } else {
                n.scope.is_some_and(|s| hit[s])
            };
        }
        hit
    }

    /// Whether `a` is `b` or one of the nodes `b` holds, transitively.
    pub(crate) fn is_ancestor_or_self(&self, a: usize, b: usize) -> bool {
        let mut stack = vec![b];
        let mut seen = vec![false; self.nodes.len()];
        while let Some(x) = stack.pop() {
            if x == a {
                return true;
            }
            if !std::mem::replace(&mut seen[x], true) {
                stack.extend(self.nodes[x].holds.iter().copied());
            }
        }
        false
    }
}
