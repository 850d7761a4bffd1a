//! Memory leaks, with the counting global allocator of
//! `tests/common/mod.rs` (`common::counting`).
//!
//! The allocator tags each allocation made by a *tracked* thread (the
//! test's own thread while measuring, and the threads it starts) in a small
//! header and counts the tagged bytes still allocated, whichever thread
//! frees them: so memory the crate frees later through the epoch, or on
//! the timer thread, is still accounted for, and libtest's own allocations
//! are not. Every test takes `SERIAL`, warms up what is allocated once per
//! process (the epoch collector, the timer thread and its wheel, this
//! thread's epoch handle), then requires the tracked bytes to come back to
//! zero after the workload and `__private::flush_epoch()`.
//!
//! `tests/tree.rs` already checks that deep chains and wide fan-outs are
//! cancelled and dropped on a small stack with their values dropped; here
//! the same shapes must give back every byte.

mod common;
mod model;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::counting::{track_this_thread, tracked_bytes, untrack_this_thread, Counting};
use ctxtree::{Context, Error};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---- helpers ------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Deadline contexts alive at once during warm-up: more than any test
/// here holds, so the timer wheel's slab never grows while measuring.
const WARM_DEADLINES: usize = if cfg!(miri) { 64 } else { 20_000 };

/// Flushes the epoch until the tracked bytes come back to `target` (or
/// gives up) and returns what is left.
fn settle(target: isize) -> isize {
    for _ in 0..1_000 {
        if tracked_bytes() <= target {
            break;
        }
        ctxtree::__private::flush_epoch();
        thread::yield_now();
    }
    tracked_bytes()
}

/// Runs `workload` on this (tracked) thread after warming up and returns
/// the tracked bytes left after it and a flush.
fn leaked_by(workload: impl FnOnce()) -> isize {
    common::counting::warm_up(WARM_DEADLINES);
    let before = tracked_bytes();
    track_this_thread();
    workload();
    // Untracked again before flushing: the epoch's own bookkeeping (the
    // bags each flush seals) is not the workload's memory; what the
    // workload allocated is still counted when it is freed.
    untrack_this_thread();
    settle(before) - before
}

/// Spawns a tracked thread.
fn spawn_tracked<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::spawn(move || {
        track_this_thread();
        f()
    })
}

// ---- tests ---------------------------------------------------------------------

/// The allocator really counts: a deliberately leaked allocation shows up.
#[test]
fn counting_allocator_reports_a_deliberate_leak() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut leaked: Option<&'static mut [u8; 100]> = None;
    let left = leaked_by(|| leaked = Some(Box::leak(Box::new([7u8; 100]))));
    assert_eq!(left, 100, "the allocator must see a 100-byte leak");
    // Give it back so the other tests start from zero.
    // SAFETY: the box was leaked above and is not used elsewhere.
    drop(unsafe { Box::from_raw(leaked.take().unwrap()) });
    assert_eq!(tracked_bytes(), 0);
}

/// Four threads (and the model harness's two) derive, cancel, drop, merge,
/// wait and register callbacks at random on shared trees; afterwards and
/// after flushing the epoch, every tracked byte is freed.
#[test]
fn multi_threaded_random_workload_frees_every_byte_after_flush() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = model::THREAD_START_HOOK.set(track_this_thread);
    let runs = if cfg!(miri) { 2 } else { 100 };
    let left = leaked_by(|| {
        let mut seed = 0x1234_5678_9abc_def1u64;
        for _ in 0..runs {
            let len = 64 + (seed % 400) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            model::run_threads(&input);
        }
        // And a free-for-all on one shared root from four more threads.
        let (root, handle) = Context::background().with_cancel();
        let pool = Arc::new(Mutex::new(vec![root.clone()]));
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = Arc::clone(&pool);
                spawn_tracked(move || {
                    let mut s = t + 1;
                    for i in 0..if cfg!(miri) { 20 } else { 5_000 } {
                        s = s
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let pick = |s: u64| {
                            let p = pool.lock().unwrap();
                            p[(s >> 33) as usize % p.len()].clone()
                        };
                        match (s >> 60) % 8 {
                            0 | 1 => {
                                let (c, h) = pick(s).with_value(i).with_cancel();
                                if i % 3 == 0 {
                                    h.cancel_with_cause(format!("cause {i}"));
                                }
                                let mut p = pool.lock().unwrap();
                                if p.len() < 32 {
                                    p.push(c);
                                }
                            }
                            2 => {
                                let (c, _h) = pick(s).merge(&pick(s >> 7));
                                let mut p = pool.lock().unwrap();
                                if p.len() < 32 {
                                    p.push(c);
                                }
                            }
                            3 => {
                                let (c, h) = pick(s).with_timeout(Duration::from_secs(3600));
                                let _ = c.wait_timeout(Duration::ZERO);
                                drop(h.drop_guard());
                            }
                            4 => {
                                let af = pick(s).after_func(move || {
                                    let _ = format!("ran {i}");
                                });
                                if i % 2 == 0 {
                                    af.stop();
                                }
                            }
                            5 => {
                                let mut p = pool.lock().unwrap();
                                if p.len() > 1 {
                                    let k = 1 + (s >> 40) as usize % (p.len() - 1);
                                    let gone = p.swap_remove(k);
                                    drop(p);
                                    drop(gone);
                                }
                            }
                            _ => {
                                let c = pick(s);
                                let _ = futures::executor::block_on(
                                    c.without_cancel().run_until_done(async { c.is_done() }),
                                );
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        handle.cancel();
        drop(pool);
        drop(root);
        drop(handle);
    });
    assert_eq!(
        left, 0,
        "{left} bytes allocated by the workload were never freed"
    );
}

/// A server that creates a million 30 s timeouts and finishes them early
/// holds no timer entry and no memory for them afterwards.
#[test]
fn a_million_deadlines_created_and_cancelled_leave_no_timer_entry_and_no_bytes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let total = if cfg!(miri) { 100 } else { 1_000_000 };
    let batch = if cfg!(miri) { 10 } else { 10_000 };
    let left = leaked_by(|| {
        let (server, _server_handle) = Context::background().with_cancel();
        for _ in 0..total / batch {
            let requests: Vec<_> = (0..batch)
                .map(|_| server.with_timeout(Duration::from_secs(30)))
                .collect();
            assert!(ctxtree::__private::armed_timers() >= batch);
            for (i, (ctx, handle)) in requests.iter().enumerate() {
                if i % 2 == 0 {
                    handle.cancel();
                    assert_eq!(ctx.err(), Err(Error::Canceled));
                }
            }
            // The other half is dropped without cancelling.
            drop(requests);
            assert_eq!(
                ctxtree::__private::armed_timers(),
                0,
                "cancelled or dropped deadlines must disarm at once"
            );
        }
    });
    assert_eq!(ctxtree::__private::armed_timers(), 0);
    assert_eq!(left, 0, "{left} bytes left after a million deadlines");
}

/// A 1,000,000-deep chain, built, cancelled from the root and dropped
/// (root first), gives back every byte.
#[test]
fn million_deep_chain_built_cancelled_and_dropped_frees_every_byte() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let depth = if cfg!(miri) { 1_000 } else { 1_000_000 };
    let left = leaked_by(|| {
        let (root, handle) = Context::background().with_value(1u64).with_cancel();
        let mut levels = Vec::with_capacity(depth);
        let mut handles = Vec::with_capacity(depth);
        let mut leaf = root.clone();
        for i in 0..depth {
            let (next, h) = if i % 100 == 0 {
                leaf.with_timeout(Duration::from_secs(3600 + i as u64))
            } else {
                leaf.with_cancel()
            };
            levels.push(next.clone());
            handles.push(h);
            leaf = next;
        }
        handle.cancel();
        assert!(leaf.is_done());
        drop(root);
        drop(handle);
        drop(levels);
        drop(handles);
        drop(leaf);
    });
    assert_eq!(left, 0, "{left} bytes left after a million-deep chain");
}

/// A 100,000-wide fan-out with waiters and callbacks, cancelled and dropped
/// (half the children dropped before the cancel), gives back every byte.
#[test]
fn hundred_thousand_wide_fan_out_built_cancelled_and_dropped_frees_every_byte() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let width = if cfg!(miri) { 500 } else { 100_000 };
    let left = leaked_by(|| {
        let (root, handle) = Context::background().with_cancel();
        let mut children: Vec<Option<(Context, ctxtree::CancelHandle)>> =
            (0..width).map(|_| Some(root.with_cancel())).collect();
        let callbacks: Vec<_> = children
            .iter()
            .step_by(100)
            .flatten()
            .map(|(c, _)| c.after_func(|| {}))
            .collect();
        for (i, child) in children.iter_mut().enumerate() {
            if i % 2 == 1 {
                *child = None;
            } else if i % 1000 == 0 {
                let (c, _) = child.as_ref().unwrap();
                assert_eq!(c.wait_timeout(Duration::ZERO), None);
            }
        }
        handle.cancel();
        assert!(children.iter().flatten().all(|(c, _)| c.is_done()));
        drop(callbacks);
        drop(children);
        drop(root);
        drop(handle);
    });
    assert_eq!(left, 0, "{left} bytes left after a 100,000-wide fan-out");
}
