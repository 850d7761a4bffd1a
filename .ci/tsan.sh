#!/usr/bin/env bash
# ThreadSanitizer over the multi-thread stress tests (tests/stress.rs), the
# race matrix (tests/races.rs), the re-entrant waker cases
# (tests/reentrant_wakers.rs), the retention tests (tests/retention.rs), the
# movable deadlines (tests/move_deadline.rs) and the server soak
# (tests/server_soak.rs).
#
# Builds std with TSan (-Zbuild-std, so nightly + rust-src), runs the
# #[ignore]d deliberate data race alone and requires TSan to report it
# (exit 66): proof that the sanitizer is really on. Then runs the stress
# binary STRESS_RUNS times (default 3) and the race matrix once with its
# own budget (CTXTREE_RACE_MS per cell, default 60, and at least
# CTXTREE_RACE_MIN_ROUNDS rounds, default 1000), then the re-entrant waker
# cases, the retention tests, the movable-deadline tests and the server soak
# (CTXTREE_SERVER_SOAK_SECS,
# default 10). ctxtree (only) is built with debug assertions, so the matrix
# and the retention tests also check the crate's live node counts. Any TSan
# report fails the step.
# Usage: .ci/tsan.sh   (from anywhere; about 3 minutes on 2 cores from a
#                       cold target/tsan on a quiet machine, 8 under load)
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add --toolchain nightly rust-src >/dev/null

export CARGO_TARGET_DIR=target/tsan
export RUSTFLAGS="-Zsanitizer=thread"
export RUSTDOCFLAGS="-Zsanitizer=thread"
# halt_on_error: stop at the first report; exitcode 66 is TSan's default.
# Suppressions: synchronisation TSan cannot see, outside ctxtree (tokio's
# epoll registration); each entry says why.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 print_suppressions=1 suppressions=$PWD/.ci/tsan-suppressions.txt ${TSAN_OPTIONS:-}"
target=x86_64-unknown-linux-gnu
# Debug assertions for ctxtree (and its test targets) only.
profile=(--config 'profile.release.package.ctxtree.debug-assertions=true')
runs="${STRESS_RUNS:-3}"

# shellcheck source=.ci/test-binaries.sh
source .ci/test-binaries.sh
build_test_binaries tsan +nightly test "${profile[@]}" -Zbuild-std --target "$target" --release \
    --features axum --test stress --test races --test reentrant_wakers --test retention \
    --test server_soak --test firing --test move_deadline --test proxy
bin=${BIN[stress]}
move_deadline=${BIN[move_deadline]}
races=${BIN[races]}
reentrant=${BIN[reentrant_wakers]}
retention=${BIN[retention]}
server_soak=${BIN[server_soak]}
firing=${BIN[firing]}
proxy=${BIN[proxy]}

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
run_race_matrix tsan "$races" 60 1000

# 4. Re-entrant wakers, retention, the firing pool, movable deadlines, the
# server soak.
t2=$(date +%s)
"$reentrant"
"$retention" --test-threads=1
"$firing"
"$move_deadline"
"$proxy"
CTXTREE_SERVER_SOAK_SECS="${CTXTREE_SERVER_SOAK_SECS:-10}" "$server_soak" --test-threads=1 --nocapture
echo "tsan: re-entrant wakers, retention, firing, movable deadlines, proxies and server soak clean in $(( $(date +%s) - t2 )) s"
