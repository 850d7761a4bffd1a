#!/usr/bin/env bash
# AddressSanitizer over the race matrix (tests/races.rs), the re-entrant
# waker cases (tests/reentrant_wakers.rs), the retention tests
# (tests/retention.rs), the movable deadlines (tests/move_deadline.rs), the
# soak (tests/soak.rs) and the server soak
# (tests/server_soak.rs, a real axum server on loopback).
#
# Builds the test binaries optimised, with debug assertions in ctxtree only
# (so the matrix also checks the live node count, `__private::live_claims`;
# the dependencies stay plain release), under `-Zsanitizer=address` and
# `--cfg ctxtree_sanitize`, which turns off the per-thread block cache
# (src/node/cache.rs): ASan only sees frees that reach the allocator, and a
# block parked in the cache and handed out again would hide a
# use-after-free. Then:
#   1. runs the #[ignore]d deliberate use-after-free alone and requires an
#      ASan heap-use-after-free report: proof that the sanitizer is on;
#   2. runs the race matrix with a longer budget (CTXTREE_RACE_MS per cell,
#      default 300, and at least CTXTREE_RACE_MIN_ROUNDS rounds, default
#      3000), one line per cell in the log;
#   3. runs the re-entrant waker cases, the retention tests and the
#      movable-deadline tests;
#   4. runs the soak for CTXTREE_SOAK_SECS (default 30) and the server soak
#      for CTXTREE_SERVER_SOAK_SECS (default 10).
# Leak detection is on (LeakSanitizer at exit). Any report fails the step.
# Usage: .ci/asan.sh   (from anywhere; measured on 2 cores from a cold
#                       target/asan: 6 min quiet, build 3 min of it; 14 min
#                       with other jobs on the cores, build 10 min of it)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=target/asan
export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes --cfg ctxtree_sanitize"
# Debug info, so that a report names the access, free and allocation sites
# by file:line.
export CARGO_PROFILE_RELEASE_DEBUG=true
# Debug assertions for ctxtree (and its test targets) only.
profile=(--config 'profile.release.package.ctxtree.debug-assertions=true')
# halt_on_error: stop at the first report (ASan's exit code is 1).
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
# The explicit target keeps build scripts and proc macros uninstrumented.
target=x86_64-unknown-linux-gnu

t0=$(date +%s)
# shellcheck source=.ci/test-binaries.sh
source .ci/test-binaries.sh
# server_soak needs the axum integration.
build_test_binaries asan +nightly test "${profile[@]}" --target "$target" --release \
    --features axum --test races --test reentrant_wakers --test retention --test soak \
    --test server_soak --test firing --test move_deadline --test proxy
races=${BIN[races]}
move_deadline=${BIN[move_deadline]}
reentrant=${BIN[reentrant_wakers]}
retention=${BIN[retention]}
soak=${BIN[soak]}
server_soak=${BIN[server_soak]}
firing=${BIN[firing]}
proxy=${BIN[proxy]}
echo "asan: built in $(( $(date +%s) - t0 )) s"

# 1. The sanitizer must be on: the deliberate use-after-free has to be
#    reported as one.
set +e
report=$("$races" --ignored --exact deliberate_use_after_free_is_reported_by_address_sanitizer 2>&1)
status=$?
set -e
if [[ $status -eq 0 ]] || ! grep -q "ERROR: AddressSanitizer: heap-use-after-free" <<<"$report"; then
    echo "$report" | tail -n 20 >&2
    echo "asan: the deliberate use-after-free was NOT reported (exit $status): ASan is not active" >&2
    exit 1
fi
echo "asan: deliberate use-after-free reported as expected (exit $status)"

# 2. The race matrix must be clean.
run_race_matrix asan "$races" 300 3000

# 3. Re-entrant wakers, retention, the firing pool and movable deadlines.
t2=$(date +%s)
"$reentrant"
"$retention" --test-threads=1
"$firing"
"$move_deadline"
"$proxy"
echo "asan: re-entrant wakers, retention, firing, movable deadlines and proxies clean in $(( $(date +%s) - t2 )) s"

# 4. The soaks.
t3=$(date +%s)
CTXTREE_SOAK_SECS="${CTXTREE_SOAK_SECS:-30}" "$soak" --test-threads=1 --nocapture
echo "asan: soak clean in $(( $(date +%s) - t3 )) s"
t4=$(date +%s)
CTXTREE_SERVER_SOAK_SECS="${CTXTREE_SERVER_SOAK_SECS:-10}" "$server_soak" --test-threads=1 --nocapture
echo "asan: server soak clean in $(( $(date +%s) - t4 )) s"
echo "asan: clean ($(( $(date +%s) - t0 )) s in all)"
