//! Loom models live in `tests/`; see `.ci/loom.sh`. This library holds
//! what the model binaries share (only under `--cfg loom`): [`model`] and
//! [`model_capped`], which run a model and check that every node it made is
//! freed, and [`Tracked`], a value whose drop is counted.

#[cfg(loom)]
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(loom)]
use std::sync::Arc;

/// Runs `f` under loom (`loom::model`: the preemption bound comes from
/// `LOOM_MAX_PREEMPTIONS`) and checks that every node memory claim taken in
/// the model was released (or handed to the epoch for release) by its end:
/// every node the model made is freed.
#[cfg(loom)]
pub fn model(f: impl Fn() + Sync + Send + 'static) {
    run(None, f);
}

/// [`model`] with the preemption bound (`LOOM_MAX_PREEMPTIONS`) capped at
/// `max`, for the few models whose state space explodes above it.
#[cfg(loom)]
pub fn model_capped(max: usize, f: impl Fn() + Sync + Send + 'static) {
    run(Some(max), f);
}

#[cfg(loom)]
fn run(cap: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    // Relaxed: a count read on this thread after loom returns.
    static EXECUTIONS: AtomicUsize = AtomicUsize::new(0);
    EXECUTIONS.store(0, Ordering::Relaxed);
    let checked = move || {
        EXECUTIONS.fetch_add(1, Ordering::Relaxed);
        let before = ctxtree::__private::live_claims();
        f();
        assert_eq!(
            ctxtree::__private::live_claims(),
            before,
            "a node memory claim was never released"
        );
    };
    match cap {
        None => loom::model(checked),
        Some(max) => {
            let mut builder = loom::model::Builder::new();
            builder.preemption_bound = Some(builder.preemption_bound.map_or(max, |b| b.min(max)));
            builder.check(checked);
        }
    }
    // Read by .ci/loom.sh for the record in docs/VERIFICATION.md.
    println!(
        "loom executions explored: {}",
        EXECUTIONS.load(Ordering::Relaxed)
    );
}

/// A value whose drop is counted.
#[cfg(loom)]
pub struct Tracked(pub Arc<AtomicUsize>);

#[cfg(loom)]
impl Drop for Tracked {
    fn drop(&mut self) {
        // SeqCst: read by the models' checks after the joins.
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
