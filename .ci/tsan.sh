#!/usr/bin/env bash
# ThreadSanitizer over the multi-thread stress tests (tests/stress.rs).
#
# Builds std with TSan (-Zbuild-std, so nightly + rust-src), runs the stress
# binary STRESS_RUNS times (default 3), then runs the #[ignore]d deliberate
# data race alone and requires TSan to report it (exit 66): proof that the
# sanitizer is really on. Any TSan report in the stress tests fails the step.
# Usage: .ci/tsan.sh            (from anywhere; about 3 minutes on 2 cores)
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
cargo +nightly test -Zbuild-std --target "$target" --release --test stress --no-run 2>&1 | tee "$build_log"
bin=$(sed -n 's/.*Executable tests\/stress.rs (\(.*\))/\1/p' "$build_log" | tail -n1)
rm -f "$build_log"
if [[ -z "$bin" || ! -x "$bin" ]]; then
    echo "tsan: could not find the stress test binary" >&2
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
echo "tsan: clean ($runs runs)"
