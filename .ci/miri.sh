#!/usr/bin/env bash
# Miri (undefined behaviour, data races between threads, use-after-free)
# over the test binaries of tests/ listed below.
#
# Flags (see docs/VERIFICATION.md):
#   -Zmiri-tree-borrows           Stacked Borrows reports a known false
#                                 positive inside crossbeam-epoch's first pin().
#   -Zmiri-permissive-provenance  crossbeam-epoch tags pointers stored as usize.
#   -Zmiri-ignore-leaks           epoch garbage is still queued at exit (leaks
#                                 are checked by tests/leaks.rs instead).
# Isolation stays on (Miri's virtual clock). The tests shrink themselves
# under cfg(miri), and the ones that need the real timer thread to fire are
# `#[cfg_attr(miri, ignore)]`.
# Usage: .ci/miri.sh   (about 3 minutes on 2 cores, measured in
#                       docs/VERIFICATION.md; the first run adds ~40 s to
#                       build Miri's sysroot)
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add --toolchain nightly miri rust-src >/dev/null
cargo +nightly miri setup >/dev/null

export CARGO_TARGET_DIR=target/miri
export MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-permissive-provenance ${MIRIFLAGS:-}"

# tree.rs's five deep_chain_* tests (1,000,000 deep natively, 2,000 under
# Miri) take ~25 s each there and exercise the same code as its shorter
# tests; they run natively on a 256 KiB stack instead. leaks.rs,
# retention.rs and stress.rs are native-only (sizes, a global allocator,
# wall-clock bounds).
cargo +nightly miri test \
    --test cancel --test values --test after_func --test tree \
    --test waiting --test deadline --test static_assertions --test timer \
    --test model_proptest --test bad_input --test reentrant_wakers \
    -- --skip deep_chain_

# Proxies exist only with two CPUs or more (`node::proxy::shards`): with
# two, Miri checks that a proxy, allocated on cache lines of its own, is
# freed with the layout it was allocated with (the variant that frees it
# through the block cache, loom-tests/broken/uncaught/
# proxy-freed-without-its-layout.patch, fails here: "incorrect layout on
# deallocation"). Not the two-thread test: 400,000 derives.
MIRIFLAGS="$MIRIFLAGS -Zmiri-num-cpus=2" cargo +nightly miri test --test proxy -- \
    a_proxied_child_behaves_like_a_direct_child the_parent_goes_first \
    a_child_derived_in_an_after_func
