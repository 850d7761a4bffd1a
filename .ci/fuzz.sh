#!/usr/bin/env bash
# cargo-fuzz: both targets of fuzz/ (ops_single: one thread against the
# reference model; ops_threads: two threads, interleaving-invariant checks
# and leak checks), each for FUZZ_SECONDS (default 60) from the committed
# seed corpus fuzz/seeds/<target> (new inputs go to the gitignored
# fuzz/corpus/<target>). A crash, assertion failure or leak fails the step;
# the reproducer is left in fuzz/artifacts/<target>/.
#
# -a: debug assertions (the harness's live-node leak check needs them).
# -detect_leaks=0: LeakSanitizer would scan the heap after almost every
#   input (epoch-deferred frees look like leaks to it) and cut the speed
#   tenfold; the harness checks nodes, values and timers itself, and
#   tests/leaks.rs checks bytes.
# Usage: .ci/fuzz.sh   (about 2 x 60 s plus a ~2 minute first build)
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add --toolchain nightly rust-src >/dev/null
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

seconds="${FUZZ_SECONDS:-60}"
for target in ops_single ops_threads; do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    cargo +nightly fuzz run -a "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -max_len=1024 -detect_leaks=0 -print_final_stats=1
done
echo "fuzz: no findings"
