//! The single-thread driver's comparison of the library with the reference
//! model, after every step and at teardown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use ctxtree::{Context, Done, Error};

use super::probes::{
    armed_timers, cause_kind, flush_until_at_most, poll_done, CauseKind, CountingWaker, Key,
};
use super::reference::{CbState, Kind};
use super::single::Single;

impl Single {
    /// Polls a `done()` future and checks the result. True if pending.
    pub(crate) fn poll_checked(
        &self,
        m: usize,
        fut: &mut Done,
        waker: &Arc<CountingWaker>,
    ) -> bool {
        let expected = self.model.outcome_of(Some(m)).map(|o| o.err);
        match (poll_done(fut, waker), expected) {
            (Poll::Ready(e), Some(x)) => {
                assert_eq!(e, x, "{}: done() result", self.at());
                false
            }
            (Poll::Pending, None) => true,
            (got, want) => panic!("{}: done() polled {got:?}, model says {want:?}", self.at()),
        }
    }

    /// `Debug` of node `m`: Go's text, from the root down.
    pub(crate) fn check_debug(&self, ctx: &Context, m: usize) {
        let text = format!("{ctx:?}");
        let node = &self.model.nodes[m];
        let prefix = if node.todo {
            "context.TODO"
        } else {
            "context.Background"
        };
        assert!(text.starts_with(prefix), "{}: Debug {text}", self.at());
        let ok = match node.kind {
            Kind::Cancel => text.ends_with(".WithCancel"),
            Kind::Deadline => text.contains(".WithDeadline(") && text.ends_with("])"),
            Kind::Merge => text.contains(".Merge(") && text.ends_with(')'),
            Kind::Value(k) => text.ends_with(&format!(
                ".WithValue({})",
                [
                    std::any::type_name::<Key<0>>(),
                    std::any::type_name::<Key<1>>(),
                    std::any::type_name::<Key<2>>(),
                ][k]
            )),
            Kind::Detached => text.ends_with(".WithoutCancel"),
        };
        assert!(ok, "{}: Debug of a {:?} node: {text}", self.at(), node.kind);
    }

    /// Model nodes some live handle, future or callback can still reach.
    fn reachable(&self) -> Vec<bool> {
        let held = self.slots.iter().map(|s| s.node);
        let held = held.chain(self.roots.iter().map(|r| r.0));
        let held = held.chain(self.dones.iter().map(|d| d.node));
        self.model.reachable(held, |i| self.cbs[i].handle.is_some())
    }

    fn check_ctx(&mut self, ctx: &Context, m: usize) {
        let at = self.at();
        let expected = self.model.outcome_of(Some(m));
        match expected {
            None => {
                assert!(!ctx.is_done(), "{at}: {ctx:?} (node {m}) should be live");
                assert_eq!(ctx.err(), Ok(()), "{at}: node {m}");
                assert!(ctx.cause().is_none(), "{at}: node {m} has a cause");
            }
            Some(o) => {
                assert!(ctx.is_done(), "{at}: {ctx:?} (node {m}) should be done");
                assert_eq!(ctx.err(), Err(o.err), "{at}: node {m} {ctx:?}");
                let cause = ctx.cause().expect("a done context has a cause");
                assert_eq!(cause_kind(&cause), Some(o.cause), "{at}: node {m} cause");
                let first = self.causes.entry(o.id).or_insert_with(|| cause.clone());
                assert!(
                    Arc::ptr_eq(first, &cause),
                    "{at}: node {m} {ctx:?}: not the same cause Arc as the rest of its cancellation"
                );
            }
        }
        let node = &self.model.nodes[m];
        match (node.deadline, ctx.deadline()) {
            (None, None) => {}
            (Some(d), Some(got)) if d.contains(got) => {}
            (want, got) => panic!("{at}: node {m} deadline {got:?}, model {want:?}"),
        }
        let values = [
            ctx.value::<Key<0>>().map(|k| k.0),
            ctx.value::<Key<1>>().map(|k| k.0),
            ctx.value::<Key<2>>().map(|k| k.0),
        ];
        assert_eq!(values, node.values, "{at}: node {m} values");
    }

    /// Compares every held context, callback, `done()` future, value and
    /// armed timer with the model.
    pub(crate) fn check(&mut self) {
        let live: Vec<(Context, usize)> = self
            .slots
            .iter()
            .filter_map(|s| s.ctx.clone().map(|c| (c, s.node)))
            .collect();
        for (ctx, m) in &live {
            self.check_ctx(ctx, *m);
        }
        drop(live);
        let at = self.at();
        for (i, (cb, mcb)) in self.cbs.iter().zip(&self.model.callbacks).enumerate() {
            let runs = cb.runs.load(Ordering::SeqCst);
            let want = usize::from(mcb.state == CbState::Ran);
            assert_eq!(runs, want, "{at}: callback {i} ({:?}) runs", mcb.state);
        }
        for d in &self.dones {
            if d.polled_pending && self.model.outcome_of(Some(d.node)).is_some() {
                assert!(
                    d.waker.wakes() > 0,
                    "{at}: a pending done() of node {} was not woken",
                    d.node
                );
            }
        }
        let reach = self.reachable();
        let mut armed = 0;
        for (m, node) in self.model.nodes.iter().enumerate() {
            if let Some(flag) = &node.dropped {
                assert_eq!(
                    flag.load(Ordering::SeqCst),
                    !reach[m],
                    "{at}: value of node {m} dropped != unreachable"
                );
            }
            if node.kind == Kind::Deadline && reach[m] && node.outcome.is_none() {
                armed += 1;
            }
        }
        assert_eq!(
            armed_timers(),
            self.timers_before + armed,
            "{at}: armed timers (cancelled or dropped deadlines disarm at once)"
        );
    }

    /// Cancels every root, stops every callback, drops everything: every
    /// value dropped, every callback run as the model says, no timer armed
    /// and (debug builds) no node left.
    pub(crate) fn teardown(mut self, live_before: isize) {
        // Cancel every root: every callback on a cancellable scope runs.
        for (m, h) in std::mem::take(&mut self.roots) {
            h.cancel();
            self.model
                .cancel(m, Error::Canceled, CauseKind::Default(Error::Canceled));
            self.roots.push((m, h));
        }
        self.check();
        for (i, (cb, mcb)) in self.cbs.iter_mut().zip(&self.model.callbacks).enumerate() {
            if let Some(h) = cb.handle.take() {
                let expected = mcb.state == CbState::Pending;
                assert_eq!(h.stop(), expected, "teardown: stop() of callback {i}");
            }
            assert!(
                mcb.state != CbState::Pending || mcb.scope.is_none(),
                "teardown: model bug: callback {i} on a cancellable scope is still pending"
            );
        }
        let flags: Vec<Arc<AtomicBool>> = self
            .model
            .nodes
            .iter()
            .filter_map(|n| n.dropped.clone())
            .collect();
        let cbs: Vec<Arc<AtomicUsize>> = self.cbs.iter().map(|c| Arc::clone(&c.runs)).collect();
        let states: Vec<CbState> = self.model.callbacks.iter().map(|c| c.state).collect();
        drop(self.dones);
        drop(self.slots);
        drop(self.roots);
        drop(self.cbs);
        for (i, f) in flags.iter().enumerate() {
            assert!(f.load(Ordering::SeqCst), "teardown: value {i} not dropped");
        }
        for (i, (runs, state)) in cbs.iter().zip(states).enumerate() {
            let want = usize::from(state == CbState::Ran);
            assert_eq!(runs.load(Ordering::SeqCst), want, "teardown: callback {i}");
        }
        assert_eq!(
            armed_timers(),
            self.timers_before,
            "teardown: every timer entry is removed"
        );
        let live = flush_until_at_most(live_before);
        assert!(
            live <= live_before,
            "teardown: {} nodes leaked",
            live - live_before
        );
    }
}
