//! Random operation sequences against the reference model of
//! `tests/model/` (the same harness the fuzz targets run): one thread
//! compared step by step with the model, on every kind of op and on
//! larger forests of cancel, value, detach and merge layers; and two
//! threads checked for the properties that hold under every interleaving.
//!
//! Every test takes `SERIAL`: the harness compares the crate-global counts
//! of live nodes and armed timers, which other tests of this binary running
//! at the same time would disturb.

mod model;

use std::sync::Mutex;

use proptest::prelude::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 6 } else { 512 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_op_sequences_match_the_reference_model_after_every_step(
        input in proptest::collection::vec(any::<u8>(), 0..if cfg!(miri) { 48 } else { 600 })
    ) {
        let _serial = serial();
        model::run_single(&input);
    }
}

/// The ops of a forest of cancel, value, detach and merge layers (no
/// deadlines, callbacks or futures), weighted towards derivations.
fn tree_op() -> impl Strategy<Value = model::Op> {
    use model::{Op, Parent};
    let slot = || any::<u8>().prop_map(Parent::Slot);
    prop_oneof![
        3 => slot().prop_map(Op::WithCancel),
        1 => (slot(), any::<u8>()).prop_map(|(p, k)| Op::WithValue(p, k)),
        1 => slot().prop_map(Op::WithoutCancel),
        2 => (slot(), slot()).prop_map(|(a, b)| Op::Merge(a, b)),
        2 => any::<u8>().prop_map(Op::CancelWithCause),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Up to 60 ops, every context kept (up to 64 held, where the byte
    /// inputs above hold 16): deep and wide forests with merges across
    /// them, each step compared with the model.
    #[test]
    fn random_forests_of_cancel_value_detach_and_merge_layers_match_the_reference_model(
        ops in proptest::collection::vec(tree_op(), 1..60)
    ) {
        let _serial = serial();
        model::run_single_ops_with_slots(&ops, 64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 3 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_op_sequences_on_two_threads_keep_the_tree_consistent_and_leak_nothing(
        input in proptest::collection::vec(any::<u8>(), 0..if cfg!(miri) { 48 } else { 600 })
    ) {
        let _serial = serial();
        model::run_threads(&input);
    }
}

/// One fixed sequence that uses every kind of op, so a plain `cargo test`
/// exercises each path of the harness even if the random cases miss one.
#[test]
fn a_fixed_sequence_using_every_op_matches_the_reference_model() {
    use model::{DeadlineArg as D, Op, Parent as P};
    let _serial = serial();
    let ops = [
        Op::WithCancel(P::Background),                      // 0: root
        Op::WithValue(P::Slot(0), 1),                       // 1
        Op::WithDeadline(P::Slot(1), D::Far(3), true),      // 2
        Op::WithDeadline(P::Slot(2), D::Huge, false),       // 3: later, plain child
        Op::WithDeadline(P::Todo, D::Extreme, false),       // 4
        Op::WithDeadline(P::Slot(0), D::ZeroTimeout, true), // 5: done on creation
        Op::WithDeadline(P::Slot(0), D::Past(2), false),    // 6: done on creation
        Op::WithDeadline(P::Slot(0), D::MaxTimeout, true),  // 7: plain child
        Op::WithoutCancel(P::Slot(2)),                      // 8
        Op::Merge(P::Slot(8), P::Slot(4)),                  // 9
        Op::Merge(P::Slot(2), P::Slot(2)),                  // 10: with itself
        Op::Merge(P::Slot(0), P::Slot(2)),                  // 11: with a descendant
        Op::AfterFunc(9),
        Op::AfterFunc(8),
        Op::NewDone(11),
        Op::NewDone(9),
        Op::WaitZero(9, false),
        Op::WaitZero(5, true),
        Op::WaitIfDone(5),
        Op::Debug(9),
        Op::Debug(3),
        Op::FireDeadline(4),
        Op::PollDone(1),
        Op::GuardDisarm(2),
        Op::CancelWithCause(2),
        Op::PollDone(0),
        Op::Cancel(2),
        Op::GuardDrop(0),
        Op::StopAfterFunc(0),
        Op::StopAfterFunc(1),
        Op::DropAfterFunc(1),
        Op::DropCtx(1),
        Op::DropHandle(2),
        Op::DropDone(0),
        Op::FireDeadline(2),
    ];
    model::run_single_ops(&ops);
    let (a, b) = ops.split_at(ops.len() / 2);
    model::run_threads_ops(a.to_vec(), b.to_vec());
}
