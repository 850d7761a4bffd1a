//! Shared by the bench binaries: quick mode, statistics, and the results
//! file that `benches/report.py` turns into docs/BENCHMARKS.md.

#![allow(dead_code)]

pub mod bare_wake;
pub mod mutex_port;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// `CTXTREE_BENCH_QUICK=1`: short runs for CI smoke tests (never for
/// judging speed).
pub fn quick() -> bool {
    std::env::var("CTXTREE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Where the non-criterion benches and the Go program write their rows:
/// `$CTXTREE_BENCH_RESULTS`, else `<target dir>/ctxtree-bench`.
pub fn results_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CTXTREE_BENCH_RESULTS") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| {
        // benches run with the package root as working directory.
        "target".to_string()
    });
    PathBuf::from(target).join("ctxtree-bench")
}

/// Summary of a set of measurements (all in the row's unit).
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn stats(xs: &[f64]) -> Stats {
    assert!(!xs.is_empty());
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| {
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        v[i]
    };
    Stats {
        median: if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        },
        p10: q(0.10),
        p90: q(0.90),
        p99: q(0.99),
        min: v[0],
        max: v[v.len() - 1],
        n: v.len(),
    }
}

/// Appends one result row (JSON line) to `<results_dir>/<file>.jsonl`.
pub fn record(file: &str, workload: &str, imp: &str, unit: &str, s: Stats) {
    let dir = results_dir();
    std::fs::create_dir_all(&dir).expect("results dir");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{file}.jsonl")))
        .expect("results file");
    writeln!(
        f,
        "{{\"workload\":\"{workload}\",\"impl\":\"{imp}\",\"unit\":\"{unit}\",\
         \"median\":{},\"p10\":{},\"p90\":{},\"p99\":{},\"min\":{},\"max\":{},\"n\":{},\"quick\":{}}}",
        s.median,
        s.p10,
        s.p90,
        s.p99,
        s.min,
        s.max,
        s.n,
        quick()
    )
    .unwrap();
    println!(
        "{workload:<28} {imp:<12} median {:>12.2} {unit:<10} p10 {:>10.2}  p90 {:>10.2}  p99 {:>10.2}  (n={})",
        s.median, s.p10, s.p90, s.p99, s.n
    );
}

/// Records a pass/fail row (value 1 = passed, 0 = failed) with a note.
pub fn record_check(file: &str, workload: &str, imp: &str, passed: bool, secs: f64, note: &str) {
    let dir = results_dir();
    std::fs::create_dir_all(&dir).expect("results dir");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{file}.jsonl")))
        .expect("results file");
    let note = note.replace('"', "'");
    writeln!(
        f,
        "{{\"workload\":\"{workload}\",\"impl\":\"{imp}\",\"unit\":\"pass\",\"passed\":{passed},\
         \"seconds\":{secs},\"note\":\"{note}\",\"quick\":{}}}",
        quick()
    )
    .unwrap();
    println!(
        "{workload:<28} {imp:<12} {} ({secs:.2} s) {note}",
        if passed { "PASS" } else { "FAIL" }
    );
}

pub fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// Truncates a results file (each binary owns its files).
pub fn reset(file: &str) {
    let _ = std::fs::remove_file(results_dir().join(format!("{file}.jsonl")));
}
