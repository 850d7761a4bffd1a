//! The race matrix (issue 9 §2): every combination of
//!
//! - the **shape** of the subtree under the node that gets cancelled,
//! - where the **cancel lands** (the node, its parent, its grandparent, a
//!   merge partner, its deadline fired by hand or by the timer thread),
//! - what **the other thread does** meanwhile (drop, wait then drop,
//!   derive, poll `done()` once, stop an `after_func`, cancel another node,
//!   read, or a waker that re-enters the crate),
//!
//! raced round after round by two persistent threads on cases built in
//! batches by a third. The axes and the checks are in `races/cells.rs`, the
//! racing machinery in `races/harness.rs`; docs/VERIFICATION.md, "Race matrix"
//! says how to add a cell and what the matrix found.
//!
//! Budget by time per cell (`CTXTREE_RACE_MS`, default 40 ms, and at least
//! `CTXTREE_RACE_MIN_ROUNDS` rounds, default 1000, unless the cell reaches
//! `CTXTREE_RACE_MAX_MS`, default five times the first): the native debug
//! run is short; `.ci/asan.sh` and `.ci/tsan.sh` give it more. Each test prints
//! one summary line (cells, rounds, seconds) straight to stderr, past the
//! test harness's capture; `CTXTREE_RACE_VERBOSE=1` adds one line per cell.
//!
//! Its own test binary: it compares process-wide counters (live node
//! claims, armed timers) before and after each cell.

mod common;

/// The harness and the cells (`tests/races/`).
mod races {
    pub mod cells;
    pub mod harness;
}

use std::io::Write;
use std::panic;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::with_watchdog;
use races::cells::{self, Cell};
use races::harness::Budget;

/// The tests read process-wide counters: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes a line to stderr directly: libtest captures `eprintln!`, and CI
/// logs must show what ran.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Runs every possible cell that `select` picks and the
/// `CTXTREE_RACE_CELLS` filter lets through, each under a watchdog.
fn run_matrix(test: &str, select: impl Fn(&Cell) -> bool) {
    let _serial = serial();
    let budget = Budget::from_env();
    let (mut ran, mut impossible, mut elsewhere, mut filtered) = (0, 0, 0, 0);
    let (mut rounds, mut cut_short) = (0, 0);
    let start = Instant::now();
    for cell in cells::product() {
        if cell.impossible().is_some() {
            impossible += 1;
            continue;
        }
        if !select(&cell) {
            elsewhere += 1;
            continue;
        }
        if !budget.selects(&cell.to_string()) {
            filtered += 1;
            continue;
        }
        if budget.verbose {
            // Before the run: a crash (SIGSEGV, an ASan report) then names
            // the cell it happened in.
            say(&format!("races: {cell} ..."));
        }
        let out = Arc::new(Mutex::new(None));
        let (slot, b) = (Arc::clone(&out), budget.clone());
        let watched = panic::catch_unwind(move || {
            with_watchdog(b.watchdog_secs(), move || {
                let report = cells::run(cell, &b);
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
            })
        });
        if let Err(payload) = watched {
            // Name the cell (a watchdog timeout does not know it).
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            panic!("race matrix cell {cell} failed: {msg}");
        }
        let report = out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the cell reported");
        if budget.verbose {
            say(&format!(
                "races: {cell}: {} rounds in {} batches, {} ms ({} ms racing, {} waits yielded)",
                report.rounds,
                report.batches,
                report.elapsed.as_millis(),
                report.racing.as_millis(),
                report.yields
            ));
        }
        ran += 1;
        rounds += report.rounds;
        if report.rounds < budget.min_rounds {
            cut_short += 1;
        }
    }
    say(&format!(
        "races: {test}: {ran} cells, {rounds} rounds, {:.1} s (budget {} ms and >= {} rounds \
         per cell, at most {} ms; {cut_short} cells cut short by that; {impossible} impossible \
         combinations, {elsewhere} in the other test, {filtered} filtered out; live-node \
         check: {})",
        start.elapsed().as_secs_f64(),
        budget.time.as_millis(),
        budget.min_rounds,
        budget.max_time.as_millis(),
        if cfg!(debug_assertions) {
            "on"
        } else {
            "off (release: debug-only counter)"
        },
    ));
    assert!(
        ran > 0 || !budget.filter.is_empty(),
        "{test}: no cell selected"
    );
}

/// Every cell except the re-entrant waker column.
#[test]
fn race_matrix() {
    run_matrix("race_matrix", |c| !c.reentrant());
}

/// The re-entrant waker column (issue 9 §5): a task waker that, inside
/// `wake`, cancels its context, its parent or an unrelated one, derives,
/// drops, or polls a new `done()`. Before wakers ran with nothing held
/// (f6a9bfc and earlier), `waker-cancels-self` and `waker-cancels-parent`
/// deadlocked here (the watchdog failed the cell).
#[test]
fn race_matrix_reentrant_wakers() {
    run_matrix("race_matrix_reentrant_wakers", Cell::reentrant);
}

/// The product is what the docs say: 9 shapes × 6 landings × 20 actions,
/// and exactly the combinations that lack a part are impossible.
#[test]
fn the_matrix_has_the_documented_size() {
    let all = cells::product();
    assert_eq!(all.len(), 9 * 6 * 20);
    let possible: Vec<_> = all.iter().filter(|c| c.impossible().is_none()).collect();
    // 32 shape × landing pairs; 11 actions (+ stop-after-func for the
    // after-func shape's 3 landings, + the two deadline moves for the
    // deadline shape's 5 landings) + 6 re-entrant ones each.
    assert_eq!(possible.len(), 32 * 17 + 3 + 5 * 2);
    assert_eq!(possible.iter().filter(|c| c.reentrant()).count(), 32 * 6);
}

/// Proof that AddressSanitizer is on (`.ci/asan.sh` runs it alone and
/// requires a heap-use-after-free report): reads a freed box.
#[test]
#[ignore = "deliberate use-after-free: run only by .ci/asan.sh, under AddressSanitizer"]
fn deliberate_use_after_free_is_reported_by_address_sanitizer() {
    let freed = Box::new(0x5A5A_5A5A_u64);
    let dangling: *const u64 = &*freed;
    drop(freed);
    // SAFETY: NOT sound, on purpose: `dangling` points into the box freed
    // above. Only the sanitizer run executes this, to prove it is watching.
    let read = unsafe { std::ptr::read_volatile(dangling) };
    std::hint::black_box(read);
    // Without ASan nothing stops us: fail so a run without it is noticed.
    std::thread::sleep(Duration::from_millis(1));
    panic!("the use-after-free was not reported: AddressSanitizer is off");
}
