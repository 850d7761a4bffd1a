#!/usr/bin/env bash
# Runs the loom models of the core (loom-tests/) with a preemption bound.
# Usage: .ci/loom.sh [BOUND] [TEST-FILTER]   (BOUND defaults to 2, as in CI)
# Each model runs in its own process with a wall-clock bound, so a model that
# explodes fails the step instead of hanging it (loom itself must never be
# given LOOM_MAX_DURATION / LOOM_MAX_PERMUTATIONS: it would pass silently).
set -euo pipefail
cd "$(dirname "$0")/.."

bound="${1:-2}"
filter="${2:-}"
export RUSTFLAGS="--cfg loom --cfg crossbeam_loom"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_LOOM:-target/loom}"
export LOOM_MAX_PREEMPTIONS="$bound"
per_model_limit="${LOOM_MODEL_TIMEOUT:-600}"

cargo test -p loom-tests --profile loom --no-run
bin=$(cargo test -p loom-tests --profile loom --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loom_core" and m.get("executable"):
        print(m["executable"])')
models=$("$bin" --list 2>/dev/null | sed -n 's/: test$//p' | grep -- "$filter" || true)
[ -n "$models" ] || { echo "no loom model matched '$filter'"; exit 1; }

total=0
failed=0
for m in $models; do
  start=$(date +%s.%N)
  if timeout "$per_model_limit" "$bin" --exact "$m" --test-threads=1 --nocapture >"/tmp/loom-$m.log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed=$((failed + 1))
    tail -40 "/tmp/loom-$m.log"
  fi
  secs=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
  total=$((total + 1))
  execs=$(sed -n 's/.*loom executions explored: \([0-9]*\).*/\1/p' "/tmp/loom-$m.log" | tail -1)
  printf 'loom (bound %s) %-66s %-6s %7ss %9s executions\n' "$bound" "$m" "$status" "$secs" "${execs:-?}"
done
echo "loom: $total models, $failed failed (LOOM_MAX_PREEMPTIONS=$bound)"
[ "$failed" -eq 0 ]
