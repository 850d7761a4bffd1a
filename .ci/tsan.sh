#!/usr/bin/env bash
# ThreadSanitizer over the multi-thread stress tests (tests/stress.rs), the
# race matrix (tests/races.rs), the re-entrant waker cases
# (tests/reentrant_wakers.rs), the retention tests (tests/retention.rs) and
# the server soak (tests/server_soak.rs).
#
# Builds std with TSan (-Zbuild-std, so nightly + rust-src), runs the
# #[ignore]d deliberate data race alone and requires TSan to report it
# (exit 66): proof that the sanitizer is really on. Then runs the stress
# binary STRESS_RUNS times (default 3) and the race matrix once with its
# own budget (CTXTREE_RACE_MS per cell, default 60, and at least
# CTXTREE_RACE_MIN_ROUNDS rounds, default 1000), then the re-entrant waker
# cases, the retention tests and the server soak (CTXTREE_SERVER_SOAK_SECS,
# default 10). ctxtree (only) is built with debug assertions, so the matrix
# and the retention tests also check the crate's live node counts. Any TSan
# report fails the step.
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
# Debug assertions for ctxtree (and its test targets) only.
profile=(--config 'profile.release.package.ctxtree.debug-assertions=true')
runs="${STRESS_RUNS:-3}"

build_log=$(mktemp)
cargo +nightly test "${profile[@]}" -Zbuild-std --target "$target" --release --features axum \
    --test stress --test races --test reentrant_wakers --test retention --test server_soak \
    --no-run 2>&1 | tee "$build_log"
bin_of() {
    sed -n "s/.*Executable tests\/$1.rs (\(.*\))/\1/p" "$build_log" | tail -n1
}
bin=$(bin_of stress)
races=$(bin_of races)
reentrant=$(bin_of reentrant_wakers)
retention=$(bin_of retention)
server_soak=$(bin_of server_soak)
rm -f "$build_log"
for b in "$bin" "$races" "$reentrant" "$retention" "$server_soak"; do
    if [[ -z "$b" || ! -x "$b" ]]; then
        echo "tsan: could not find every test binary" >&2
        exit 1
    fi
done

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

# 4. Re-entrant wakers, retention, the server soak.
t2=$(date +%s)
"$reentrant"
"$retention" --test-threads=1
CTXTREE_SERVER_SOAK_SECS="${CTXTREE_SERVER_SOAK_SECS:-10}" "$server_soak" --test-threads=1
echo "tsan: re-entrant wakers, retention and server soak clean in $(( $(date +%s) - t2 )) s"
