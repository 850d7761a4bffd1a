//! The timer's property test: the sharded wheels ([`Shards`], one to four
//! shards) against a reference model (a `BTreeMap` of armed deadlines),
//! over random inserts (in random shards), removes, moves (re-arms) and
//! polls, checking the wheels' invariants W1-W6 after every step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::shards::Shards;

/// Shorthand for a whole number of milliseconds.
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One step of the property tests.
#[derive(Clone, Debug)]
enum Op {
    /// Insert with a deadline this many nanoseconds from the current
    /// `now` (may be negative: in the past), in the shard this picks
    /// (modulo the count).
    Insert(i128, usize),
    /// Remove the id issued by the n-th insert (modulo the count): often
    /// already fired or removed.
    Remove(usize),
    /// Move the entry of the n-th insert (modulo the count) to this many
    /// nanoseconds from `now` (may be negative), if it is still armed.
    Move(usize, i128),
    /// Advance `now` by this many nanoseconds and poll.
    Poll(u64),
    /// Poll with a `now` this many nanoseconds before the current one.
    PollStale(u64),
}

/// Nanoseconds in a millisecond, as the tests' offsets use them.
const MS: u64 = 1_000_000;

/// Operations: whole-millisecond offsets, or arbitrary nanoseconds if
/// `nanos`. Generated from plain integers (cheap to generate and shrink)
/// and decoded by [`decode_op`].
fn op(nanos: bool) -> impl Strategy<Value = Op> {
    (0u8..10, any::<u8>(), any::<u64>())
        .prop_map(move |(kind, bucket, raw)| decode_op(nanos, kind, bucket, raw))
}

/// Turns `kind` (0..10) into an operation whose magnitude is `raw` modulo
/// a bound chosen by `bucket`, so that small and huge offsets both occur.
fn decode_op(nanos: bool, kind: u8, bucket: u8, raw: u64) -> Op {
    let pick = |bounds: &[u64]| raw % bounds[usize::from(bucket) % bounds.len()];
    let (unit, past, future, advance, stale): (u64, u64, &[u64], &[u64], u64) = if nanos {
        (
            1,
            3_000_000_001,
            &[3_000_000, 1 << 33, 1 << 58],
            &[1, 2_000_000, 1 << 34, 1 << 58],
            5_000_000,
        )
    } else {
        (
            MS,
            2_001,
            &[70, 5_000, 1 << 20, 1 << 38],
            &[1, 3, 100, 5_000, 1 << 22, 1 << 39],
            3_000,
        )
    };
    let offset = if bucket % 5 == 0 {
        -i128::from(raw % past * unit)
    } else {
        i128::from(pick(future) * unit)
    };
    // The insert's shard and the move's entry come from bits of `raw` the
    // offset's modulo barely depends on.
    let other = (raw >> 40) as usize;
    match kind {
        0..=3 => Op::Insert(offset, other),
        4 => Op::Remove(raw as usize),
        5 => Op::Move(other, offset),
        6..=8 => Op::Poll(pick(advance) * unit),
        _ => Op::PollStale(raw % stale * unit),
    }
}

/// Runs `ops` against `count` shards and a reference model.
///
/// The model fires, at a poll at `at`, exactly the entries with
/// `when <= origin + floor(at - origin)`; with whole-ms offsets that is
/// exactly `when <= at`. This holds for stale polls (an `at` before the
/// current `now`) too. After every step, the earliest `next_expiry` of the
/// shards must not be later than any deadline (rounded up to its tick)
/// and, right after a poll at `at`, must be later than `at`. Ids name the
/// shard they were armed in, a move keeps an entry in its shard, and an id
/// that is not armed (fired, removed, moved away, or never issued) finds
/// nothing.
fn run_model(count: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let origin = Instant::now();
    let shards = Shards::new(count, origin);
    prop_assert_eq!(shards.count(), count);
    let mut now = origin;
    // Each insert's current id bits and shard; the value is its index here.
    let mut ids: Vec<(u64, usize)> = Vec::new();
    // The reference: armed entries by value.
    let mut armed: BTreeMap<usize, Instant> = BTreeMap::new();
    let mut out = Vec::new();
    let floor = |t: Instant| origin + ms(t.saturating_duration_since(origin).as_millis() as u64);
    let ceil = |t: Instant| {
        let d = t.saturating_duration_since(origin);
        origin + ms(d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0))
    };
    let at_offset = |now: Instant, offset: i128| {
        let magnitude = Duration::from_nanos(offset.unsigned_abs() as u64);
        if offset < 0 {
            now.checked_sub(magnitude)
        } else {
            now.checked_add(magnitude)
        }
    };
    for op in ops {
        let polled_at = match *op {
            Op::Insert(offset, shard) => {
                let Some(when) = at_offset(now, offset) else {
                    continue;
                };
                let shard = shard % count;
                let value = ids.len();
                let bits = shards.lock(shard).insert(when, value);
                prop_assert_ne!(bits, super::NONE_BITS);
                prop_assert_eq!((bits >> 56) as usize, shard, "the id names its shard");
                armed.insert(value, when);
                ids.push((bits, shard));
                None
            }
            Op::Remove(pick) => {
                if ids.is_empty() {
                    continue;
                }
                let value = pick % ids.len();
                let (bits, shard) = ids[value];
                // Another shard never finds it.
                let other = (shard + 1) % count;
                if other != shard {
                    prop_assert_eq!(shards.lock(other).remove(bits), None);
                }
                let expected = armed.remove(&value).map(|_| value);
                let mut locked = shards.lock_of(bits).expect("a shard's id");
                prop_assert_eq!(locked.remove(bits), expected);
                None
            }
            Op::Move(pick, offset) => {
                let Some(when) = at_offset(now, offset) else {
                    continue;
                };
                if ids.is_empty() {
                    continue;
                }
                let value = pick % ids.len();
                let (bits, shard) = ids[value];
                let moved = shards
                    .lock_of(bits)
                    .expect("a shard's id")
                    .rearm(bits, when);
                match (armed.get_mut(&value), moved) {
                    (Some(at), Some((new, moved_value))) => {
                        prop_assert_eq!(moved_value, value);
                        prop_assert_ne!(new, bits, "a new id");
                        prop_assert_eq!((new >> 56) as usize, shard, "same shard");
                        *at = when;
                        ids[value].0 = new;
                        // The old id is stale now.
                        prop_assert_eq!(shards.lock(shard).rearm(bits, when), None);
                    }
                    (None, None) => {}
                    (expected, got) => {
                        prop_assert!(false, "move: model {:?}, shards {:?}", expected, got);
                    }
                }
                None
            }
            Op::Poll(advance) => {
                now += Duration::from_nanos(advance);
                Some(now)
            }
            Op::PollStale(back) => now.checked_sub(Duration::from_nanos(back)),
        };
        if let Some(at) = polled_at {
            out.clear();
            for shard in 0..count {
                shards.lock(shard).poll_expired(at, &mut out);
            }
            out.sort_unstable();
            let limit = floor(at);
            let expected: Vec<usize> = armed
                .iter()
                .filter(|&(_, &when)| when <= limit)
                .map(|(&value, _)| value)
                .collect();
            armed.retain(|_, when| *when > limit);
            prop_assert_eq!(&out, &expected);
        }
        prop_assert_eq!(shards.check_invariants(), armed.len());
        let earliest = armed.values().map(|&when| ceil(when)).min();
        let next = (0..count)
            .filter_map(|shard| shards.lock(shard).next_expiry())
            .min();
        match (next, earliest) {
            (None, None) => {}
            (Some(next), Some(earliest)) => {
                prop_assert!(next <= earliest, "next_expiry later than a deadline");
                if let Some(polled) = polled_at {
                    prop_assert!(next > polled, "next_expiry must make progress");
                }
            }
            (next, earliest) => {
                prop_assert!(false, "next_expiry {:?} vs earliest {:?}", next, earliest);
            }
        }
    }
    Ok(())
}

/// The default configuration, but fewer cases and no regression files
/// under Miri.
fn config() -> ProptestConfig {
    if cfg!(miri) {
        ProptestConfig {
            cases: 4,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    } else {
        // 256 cases unless `PROPTEST_CASES` says otherwise.
        ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn matches_model_with_whole_ms(
        count in 1usize..=4,
        ops in prop::collection::vec(op(false), 0..200),
    ) {
        run_model(count, &ops)?;
    }

    #[test]
    fn matches_model_with_nanos(
        count in 1usize..=4,
        ops in prop::collection::vec(op(true), 0..200),
    ) {
        run_model(count, &ops)?;
    }
}
