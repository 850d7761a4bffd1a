//! The reference model of the single-thread driver: a forest of nodes that
//! says, for every context the run made, what the library must report
//! (outcome, cause, deadline, values, `Debug` shape), which callbacks must
//! have run, and which nodes are still reachable (so which values must be
//! dropped and which deadlines armed).
//!
//! It is obviously correct on purpose: nodes are never freed, parents
//! precede children (a node's id is its position), and a cancellation
//! reaches its descendants by one forward pass.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ctxtree::Error;

use super::clock::Dl;
use super::probes::{CauseKind, Tag, KEYS};

/// What kind of context a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Cancel,
    Deadline,
    Merge,
    /// A value layer holding key type `n`.
    Value(usize),
    Detached,
}

impl Kind {
    pub(crate) fn cancellable(self) -> bool {
        matches!(self, Kind::Cancel | Kind::Deadline | Kind::Merge)
    }
}

/// Where a derivation starts in the model: a root or a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Background,
    Todo,
    Node(usize),
}

impl Origin {
    pub(crate) fn node(self) -> Option<usize> {
        match self {
            Origin::Node(m) => Some(m),
            Origin::Background | Origin::Todo => None,
        }
    }
}

/// How a node ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) err: Error,
    pub(crate) cause: CauseKind,
    /// The cancellation that set it: every node it reached shares one Arc.
    pub(crate) id: usize,
}

pub(crate) struct MNode {
    pub(crate) kind: Kind,
    /// Nearest cancellable ancestor-or-self.
    pub(crate) scope: Option<usize>,
    /// Nodes this one holds alive (parent, and a merge's other parent).
    pub(crate) holds: Vec<usize>,
    /// Scopes whose cancellation reaches this (cancellable) node.
    pub(crate) from: Vec<usize>,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) deadline: Option<Dl>,
    /// The deadline node's cause.
    pub(crate) dcause: Option<Tag>,
    pub(crate) values: [Option<u32>; KEYS],
    /// Derived (through first parents) from `Context::todo()`.
    pub(crate) todo: bool,
    /// The drop flag of a value node's value.
    pub(crate) dropped: Option<Arc<AtomicBool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CbState {
    Pending,
    Ran,
    Stopped,
}

/// An `after_func` registration.
pub(crate) struct MCallback {
    /// The context it was registered on (captured by the callback).
    pub(crate) node: usize,
    pub(crate) scope: Option<usize>,
    pub(crate) state: CbState,
}

#[derive(Default)]
pub(crate) struct Model {
    pub(crate) nodes: Vec<MNode>,
    /// In registration order (the driver keeps its handles in the same).
    pub(crate) callbacks: Vec<MCallback>,
    cancellations: usize,
}

impl Model {
    fn scope(&self, m: Option<usize>) -> Option<usize> {
        m.and_then(|m| self.nodes[m].scope)
    }

    /// The outcome node `m` must report (`None` for the roots).
    pub(crate) fn outcome_of(&self, m: Option<usize>) -> Option<Outcome> {
        self.scope(m).and_then(|s| self.nodes[s].outcome)
    }

    /// The deadline node `m` must report.
    fn deadline_of(&self, m: Option<usize>) -> Option<Dl> {
        m.and_then(|m| self.nodes[m].deadline)
    }

    fn new_outcome(&mut self, err: Error, cause: CauseKind) -> Outcome {
        self.cancellations += 1;
        Outcome {
            err,
            cause,
            id: self.cancellations,
        }
    }

    /// Adds a derived node and returns its id.
    fn add(
        &mut self,
        kind: Kind,
        parent: Origin,
        other: Option<Origin>,
        deadline: Option<Dl>,
        own: Option<Outcome>,
        dcause: Option<Tag>,
    ) -> usize {
        let id = self.nodes.len();
        let (p, o) = (parent.node(), other.and_then(Origin::node));
        let mut holds: Vec<usize> = p.into_iter().collect();
        holds.extend(o);
        let pscope = self.scope(p);
        let oscope = self.scope(o);
        let mut from: Vec<usize> = Vec::new();
        if kind.cancellable() {
            from.extend(pscope);
            if kind == Kind::Merge {
                from.extend(oscope);
            }
        }
        // A child of a done context is done on creation with its outcome
        // (a merge: a's if a is done, else b's); else its own expiry.
        let inherited = if kind.cancellable() {
            self.outcome_of(p).or_else(|| self.outcome_of(o)).or(own)
        } else {
            None
        };
        let mut values = p.map_or([None; KEYS], |p| self.nodes[p].values);
        if let Some(o) = o {
            for (k, v) in values.iter_mut().enumerate() {
                *v = v.or(self.nodes[o].values[k]);
            }
        }
        let todo = match parent {
            Origin::Background => false,
            Origin::Todo => true,
            Origin::Node(p) => self.nodes[p].todo,
        };
        let scope = match kind {
            Kind::Cancel | Kind::Deadline | Kind::Merge => Some(id),
            Kind::Value(_) => pscope,
            Kind::Detached => None,
        };
        self.nodes.push(MNode {
            kind,
            scope,
            holds,
            from,
            outcome: inherited,
            deadline,
            dcause,
            values,
            todo,
            dropped: None,
        });
        id
    }

    /// A cancellable node no cancellation of another node can reach: the
    /// driver keeps its handle until teardown, which cancels it so that
    /// every callback ends.
    pub(crate) fn is_root(&self, m: usize) -> bool {
        self.nodes[m].kind.cancellable() && self.nodes[m].from.is_empty()
    }

    pub(crate) fn with_cancel(&mut self, parent: Origin) -> usize {
        let dl = self.deadline_of(parent.node());
        self.add(Kind::Cancel, parent, None, dl, None, None)
    }

    /// A deadline derivation that asked for `asked` (`None`:
    /// unrepresentable), already passed if `expired`, with cause `tag`:
    /// a deadline node if it is earlier than the parent's, else a plain
    /// child with the parent's deadline.
    pub(crate) fn with_deadline(
        &mut self,
        parent: Origin,
        asked: Option<Dl>,
        expired: bool,
        tag: Option<Tag>,
    ) -> usize {
        let pdl = self.deadline_of(parent.node());
        let own_deadline = match (asked, pdl) {
            (Some(d), None) => Some(d),
            (Some(d), Some(pd)) if d.less(&pd) => Some(d),
            _ => None,
        };
        match own_deadline {
            Some(d) => {
                let own = expired.then(|| {
                    let cause =
                        tag.map_or(CauseKind::Default(Error::DeadlineExceeded), CauseKind::Tag);
                    self.new_outcome(Error::DeadlineExceeded, cause)
                });
                self.add(Kind::Deadline, parent, None, Some(d), own, tag)
            }
            None => self.add(Kind::Cancel, parent, None, pdl, None, None),
        }
    }

    /// A value layer holding `v` under key type `k`, whose drop sets
    /// `dropped`.
    pub(crate) fn with_value(
        &mut self,
        parent: Origin,
        k: usize,
        v: u32,
        dropped: Arc<AtomicBool>,
    ) -> usize {
        let dl = self.deadline_of(parent.node());
        let id = self.add(Kind::Value(k), parent, None, dl, None, None);
        self.nodes[id].values[k] = Some(v);
        self.nodes[id].dropped = Some(dropped);
        id
    }

    pub(crate) fn without_cancel(&mut self, parent: Origin) -> usize {
        self.add(Kind::Detached, parent, None, None, None, None)
    }

    pub(crate) fn merge(&mut self, a: Origin, b: Origin) -> usize {
        let dl = Dl::min(self.deadline_of(a.node()), self.deadline_of(b.node()));
        self.add(Kind::Merge, a, Some(b), dl, None, None)
    }

    /// A cancellation of `m` (the first one wins): `m`, every node it
    /// reaches and every pending callback in their scopes end with it.
    pub(crate) fn cancel(&mut self, m: usize, err: Error, cause: CauseKind) {
        if self.nodes[m].outcome.is_some() {
            return;
        }
        let out = self.new_outcome(err, cause);
        self.nodes[m].outcome = Some(out);
        // Parents precede children: one forward pass propagates.
        for j in m + 1..self.nodes.len() {
            let reached = self.nodes[j].outcome.is_none()
                && self.nodes[j]
                    .from
                    .iter()
                    .any(|&p| self.nodes[p].outcome.is_some_and(|o| o.id == out.id));
            if reached {
                self.nodes[j].outcome = Some(out);
            }
        }
        for cb in &mut self.callbacks {
            if cb.state == CbState::Pending
                && cb
                    .scope
                    .is_some_and(|s| self.nodes[s].outcome.is_some_and(|o| o.id == out.id))
            {
                cb.state = CbState::Ran;
            }
        }
    }

    /// `fire_deadline` on `m`: true (and `m` cancelled with its deadline
    /// outcome) if `m` is a deadline node.
    pub(crate) fn fire_deadline(&mut self, m: usize) -> bool {
        if self.nodes[m].kind != Kind::Deadline {
            return false;
        }
        let cause = self.nodes[m]
            .dcause
            .map_or(CauseKind::Default(Error::DeadlineExceeded), CauseKind::Tag);
        self.cancel(m, Error::DeadlineExceeded, cause);
        true
    }

    /// `after_func` on `m`: it runs at once if `m` is done.
    pub(crate) fn after_func(&mut self, m: usize) {
        let state = if self.outcome_of(Some(m)).is_some() {
            CbState::Ran
        } else {
            CbState::Pending
        };
        self.callbacks.push(MCallback {
            node: m,
            scope: self.nodes[m].scope,
            state,
        });
    }

    /// `stop()` of callback `i`: what it must return.
    pub(crate) fn stop(&mut self, i: usize) -> bool {
        let cb = &mut self.callbacks[i];
        let pending = cb.state == CbState::Pending;
        if pending {
            cb.state = CbState::Stopped;
        }
        pending
    }

    /// Nodes something can still reach: the nodes the driver holds
    /// (`held`: contexts, handles, futures), and the context of every
    /// pending callback that is registered (has a scope) or whose handle
    /// the driver still has (`handle_kept(i)`).
    pub(crate) fn reachable(
        &self,
        held: impl IntoIterator<Item = usize>,
        handle_kept: impl Fn(usize) -> bool,
    ) -> Vec<bool> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = held.into_iter().collect();
        for (i, cb) in self.callbacks.iter().enumerate() {
            // A pending callback holds its context (captured) and its scope
            // (as a registration); an unlinked one only until its handle
            // goes.
            if cb.state == CbState::Pending && (cb.scope.is_some() || handle_kept(i)) {
                stack.push(cb.node);
            }
        }
        while let Some(m) = stack.pop() {
            if !std::mem::replace(&mut seen[m], true) {
                stack.extend(self.nodes[m].holds.iter().copied());
            }
        }
        seen
    }
}
