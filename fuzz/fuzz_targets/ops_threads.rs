//! Fuzz target 2: the same operations from two threads on one forest,
//! checking the interleaving-invariant properties and that nothing leaks
//! (`tests/model/`, shared with the proptest suite).
#![no_main]

#[path = "../../tests/model/mod.rs"]
mod model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| model::run_threads(data));
