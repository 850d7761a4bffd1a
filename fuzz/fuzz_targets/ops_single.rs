//! Fuzz target 1: decode the input into context operations on a small
//! forest and compare every live context with the reference model after
//! each step (`tests/model/`, shared with the proptest suite).
#![no_main]

#[path = "../../tests/model/mod.rs"]
mod model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| model::run_single(data));
