#!/usr/bin/env bash
# ThreadSanitizer over the multi-thread stress tests (tests/stress.rs) and
# the race matrix (tests/races.rs).
#
# Builds std with TSan (-Zbuild-std, so nightly + rust-src), runs the
# #[ignore]d deliberate data race alone and requires TSan to report it
# (exit 66): proof that the sanitizer is really on. Then runs the stress
# binary STRESS_RUNS times (default 3) and the race matrix once with its
# own budget (CTXTREE_RACE_MS per cell, default 60, and at least
# CTXTREE_RACE_MIN_ROUNDS rounds, default 1000). Any TSan report fails the
# step.
# Usage: .ci/tsan.sh            (from anywhere; about 4 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add --toolchain nightly rust-src >/dev/null

export CARGO_TARGET_DIR=target/tsan
export RUSTFLAGS="-Zsanitizer=thread"
export RUSTDOCFLAGS="-Zsanitizer=thread"
# halt_on_error: stop at the first report; exitcode 66 is TSan's default.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 ${TSAN_OPTIONS:-}"
target=x86_64-unknown-linux-gnu
runs="${STRESS_RUNS:-3}"

build_log=$(mktemp)
cargo +nightly test -Zbuild-std --target "$target" --release --test stress --test races --no-run 2>&1 | tee "$build_log"
bin=$(sed -n 's/.*Executable tests\/stress.rs (\(.*\))/\1/p' "$build_log" | tail -n1)
races=$(sed -n 's/.*Executable tests\/races.rs (\(.*\))/\1/p' "$build_log" | tail -n1)
rm -f "$build_log"
if [[ -z "$bin" || ! -x "$bin" || -z "$races" || ! -x "$races" ]]; then
    echo "tsan: could not find the stress or races test binary" >&2
    exit 1
fi

# 1. The sanitizer must be on: the deliberate race has to be reported.
set +e
"$bin" --ignored --exact deliberate_data_race_is_reported_by_thread_sanitizer >/dev/null 2>&1
status=$?
set -e
if [[ $status -ne 66 ]]; then
    echo "tsan: the deliberate data race was NOT reported (exit $status, expected 66): TSan is not active" >&2
    exit 1
fi
echo "tsan: deliberate data race reported as expected (exit 66)"

# 2. The stress tests must be clean.
for i in $(seq 1 "$runs"); do
    echo "tsan: stress run $i/$runs"
    "$bin" --test-threads=1
done
echo "tsan: stress clean ($runs runs)"

# 3. The race matrix must be clean.
t1=$(date +%s)
CTXTREE_RACE_MS="${CTXTREE_RACE_MS:-60}" \
CTXTREE_RACE_MIN_ROUNDS="${CTXTREE_RACE_MIN_ROUNDS:-1000}" \
CTXTREE_RACE_VERBOSE="${CTXTREE_RACE_VERBOSE:-1}" \
    "$races" --test-threads=1
echo "tsan: race matrix clean in $(( $(date +%s) - t1 )) s"
