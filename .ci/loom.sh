#!/usr/bin/env bash
# Runs the loom models (every test binary of loom-tests/: loom_core,
# loom_matrix, loom_wakers, loom_retention, loom_move_deadline, ...) with a
# preemption bound per binary.
#
# CI (.ci/run) runs `.ci/loom.sh ci`: loom_core at bound 4, loom_matrix at
# 3, loom_wakers at 4, loom_move_deadline at 5, loom_timer_sleep at 4,
# loom_retention, loom_proxy and any other binary at 3 (CI_BOUNDS
# and CI_DEFAULT below, chosen from the times measured in
# docs/VERIFICATION.md to keep the step under 8 min). Four loom_core models
# cap their own bound at 3 (`model_capped` in loom-tests/src/lib.rs), whatever the
# script asks for.
#
# Usage: .ci/loom.sh [BOUND] [FILTER]
#   BOUND   the bound of every binary (default 2: a quick local run), or
#           `ci`: the per-binary bounds CI runs (above);
#   FILTER  runs only the models whose `binary::model` name contains it
#           (e.g. `loom_matrix::`, `merge`).
# Per-binary bounds: LOOM_<NAME>_BOUND, where NAME is the binary's name
# without `loom_`, upper-cased: LOOM_CORE_BOUND, LOOM_MATRIX_BOUND,
# LOOM_WAKERS_BOUND, LOOM_RETENTION_BOUND; they override BOUND, `ci`
# included.
#
# Each model runs in its own process with a wall-clock bound
# (LOOM_MODEL_TIMEOUT seconds, default 600), so a model that explodes fails
# the step instead of hanging it (loom itself must never be given
# LOOM_MAX_DURATION / LOOM_MAX_PERMUTATIONS: it would pass silently).
# Builds with `--profile loom` into CARGO_TARGET_DIR_LOOM (default
# target/loom); prints one line per model and a summary per binary.
set -euo pipefail
cd "$(dirname "$0")/.."

# Per-binary bounds of `.ci/loom.sh ci`; binaries not listed get CI_DEFAULT.
CI_BOUNDS="core=4 matrix=3 wakers=4 move_deadline=5 timer_sleep=4"
CI_DEFAULT=3

default_bound="${1:-2}"
filter="${2:-}"
ci=0
if [ "$default_bound" = ci ]; then
  ci=1
  default_bound=$CI_DEFAULT
fi
export RUSTFLAGS="--cfg loom --cfg crossbeam_loom"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_LOOM:-target/loom}"
per_model_limit="${LOOM_MODEL_TIMEOUT:-600}"

cargo test -p loom-tests --profile loom --no-run
# "name path" of every integration-test binary of loom-tests.
binaries=$(cargo test -p loom-tests --profile loom --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["test"]
            and m.get("executable")):
        print(m["target"]["name"], m["executable"])' | sort)
[ -n "$binaries" ] || { echo "no loom test binary found"; exit 1; }

total=0
failed=0
start_all=$(date +%s.%N)
summary=""
while read -r name bin; do
  short="${name#loom_}"
  var="LOOM_$(echo "$short" | tr '[:lower:]' '[:upper:]')_BOUND"
  bound=$default_bound
  if [ "$ci" -eq 1 ]; then
    for kv in $CI_BOUNDS; do
      [ "${kv%%=*}" = "$short" ] && bound="${kv#*=}"
    done
  fi
  bound="${!var:-$bound}"
  models=$("$bin" --list 2>/dev/null </dev/null | sed -n 's/: test$//p' | while read -r m; do
    case "$name::$m" in *"$filter"*) echo "$m" ;; esac
  done)
  [ -n "$models" ] || continue
  n=0
  start_bin=$(date +%s.%N)
  for m in $models; do
    log="/tmp/loom-$name-${m//::/-}.log"
    start=$(date +%s.%N)
    # In a subshell whose stderr is dropped: the shell's own "Aborted" notice.
    if (LOOM_MAX_PREEMPTIONS="$bound" timeout "$per_model_limit" "$bin" --exact "$m" \
      --test-threads=1 --nocapture </dev/null >"$log" 2>&1) 2>/dev/null; then
      status=ok
    else
      status=FAILED
      failed=$((failed + 1))
      tail -40 "$log"
    fi
    secs=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
    total=$((total + 1))
    n=$((n + 1))
    execs=$(sed -n 's/.*loom executions explored: \([0-9]*\).*/\1/p' "$log" | tail -1)
    printf 'loom (bound %s) %-80s %-6s %7ss %9s executions\n' \
      "$bound" "$name::$m" "$status" "$secs" "${execs:-?}"
  done
  secs=$(python3 -c "import time; print(f'{time.time() - $start_bin:.1f}')")
  summary+=$(printf '\n  %-12s %3d models at bound %s: %7ss' "$name" "$n" "$bound" "$secs")
done <<<"$binaries"
[ "$total" -gt 0 ] || { echo "no loom model matched '$filter'"; exit 1; }
secs=$(python3 -c "import time; print(f'{time.time() - $start_all:.1f}')")
echo "loom: $total models, $failed failed, ${secs}s$summary"
[ "$failed" -eq 0 ]
