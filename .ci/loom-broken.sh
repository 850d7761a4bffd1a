#!/usr/bin/env bash
# Checks that the loom models catch the recorded broken variants of the
# core's fast paths (docs/VERIFICATION.md, loom: "The fast paths: invariant,
# model, broken variant").
#
# Usage: .ci/loom-broken.sh [--min] [NAME...]
#   NAME   a patch under loom-tests/broken/ (without `.patch`); default: all
#          of loom-tests/broken/*.patch. The variants the models do not catch
#          are kept in loom-tests/broken/uncaught/ (NAME `uncaught/...`).
#   --min  instead of checking, find the smallest preemption bound (0..5) at
#          which each expected model fails, and print it (for the record).
#
# Each patch starts with comment lines, then a diff against src/:
#   # fast path: ...                  (what it breaks, for the reader)
#   # expect: BINARY MODEL BOUND      (one line per model that must fail)
#   # requires: PATH                  (optional: a patch under loom-tests/
#                                      applied first, e.g. instrumentation)
# For each patch the script copies the working tree (tracked and untracked,
# not ignored files) to a scratch directory, applies the patch there, builds
# the loom test binaries and runs each expected model alone at its bound.
# The model MUST fail (a panic: "use after free", a failed assertion, a
# leaked claim, a deadlock loom reports); a model that passes, or hangs past
# the time limit, fails the script: the variant is no longer caught.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

find_min=0
if [ "${1:-}" = "--min" ]; then
  find_min=1
  shift
fi

if [ "$#" -gt 0 ]; then
  names=("$@")
else
  names=()
  for p in loom-tests/broken/*.patch; do
    n=$(basename "$p" .patch)
    names+=("$n")
  done
fi

scratch="${LOOM_BROKEN_DIR:-/tmp/ctxtree-loom-broken}"
export RUSTFLAGS="--cfg loom --cfg crossbeam_loom"
# One target directory for every variant (the scratch path stays the same,
# so the dependencies are built once and only the crate is rebuilt).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_LOOM_BROKEN:-$root/target/loom-broken}"
per_model_limit="${LOOM_MODEL_TIMEOUT:-300}"

# The path of test binary $1 of loom-tests, built in the current directory.
test_binary() {
  cargo test -p loom-tests --profile loom --test "$1" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}

# Runs model $2 of binary path $1 at bound $3; prints the outcome word and
# returns 0 if the model failed (as it must).
run_expecting_failure() {
  local bin=$1 model=$2 bound=$3 log=$4 rc=0
  # In a subshell whose stderr is dropped: the shell's own "Aborted" notice.
  (LOOM_MAX_PREEMPTIONS=$bound timeout "$per_model_limit" "$bin" --exact "$model" \
    --test-threads=1 --nocapture </dev/null >"$log" 2>&1) 2>/dev/null || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "PASSED"
    return 1
  elif [ "$rc" -eq 124 ]; then
    echo "TIMEOUT"
    return 1
  elif ! grep -q "panicked at" "$log"; then
    # Not a model failure (e.g. the binary did not start): not a catch.
    echo "ERROR(rc=$rc)"
    return 1
  fi
  echo "caught"
}

total=0
failed=0
start_all=$(date +%s)
for name in "${names[@]}"; do
  patch="$root/loom-tests/broken/$name.patch"
  [ -f "$patch" ] || { echo "no such variant: $name"; exit 2; }
  expects=$(sed -n 's/^# expect: //p' "$patch")
  [ -n "$expects" ] || { echo "$name: no '# expect:' line"; exit 2; }

  rm -rf "$scratch"
  mkdir -p "$scratch"
  git ls-files -z --cached --others --exclude-standard |
    tar --null -T - -cf - 2>/dev/null | tar -xf - -C "$scratch"
  # `# requires: PATH` (relative to loom-tests/): applied first.
  for req in $(sed -n 's/^# requires: //p' "$patch"); do
    (cd "$scratch" && git apply --whitespace=nowarn "$root/loom-tests/$req") ||
      { echo "$name: $req does not apply any more"; exit 2; }
  done
  (cd "$scratch" && git apply --whitespace=nowarn "$patch") ||
    { echo "$name: the patch does not apply any more"; exit 2; }

  declare -A bins=()
  while read -r binary model bound; do
    if [ -z "${bins[$binary]:-}" ]; then
      (cd "$scratch" && cargo test -p loom-tests --profile loom --test "$binary" --no-run </dev/null 2>&1 | tail -3) >&2
      bins[$binary]=$(cd "$scratch" && test_binary "$binary" </dev/null)
      [ -n "${bins[$binary]}" ] || { echo "$name: $binary does not build"; exit 2; }
    fi
    bin=${bins[$binary]}
    log="/tmp/loom-broken-${name//\//-}-${model//::/-}.log"
    t0=$(date +%s.%N)
    if [ "$find_min" -eq 1 ]; then
      found=none
      for b in 0 1 2 3 4 5; do
        if run_expecting_failure "$bin" "$model" "$b" "$log" >/dev/null; then
          found=$b
          break
        fi
      done
      secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
      printf 'broken %-34s %-72s fails from bound %s (%ss; recorded %s)\n' \
        "$name" "$binary::$model" "$found" "$secs" "$bound"
      continue
    fi
    total=$((total + 1))
    if outcome=$(run_expecting_failure "$bin" "$model" "$bound" "$log"); then
      why=$(grep -A1 -m1 "panicked at" "$log" | tail -1 | cut -c1-60)
    else
      failed=$((failed + 1))
      why="the broken variant is NOT caught (log: $log)"
    fi
    secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
    printf 'broken %-34s %-72s bound %s %-8s %6ss  %s\n' \
      "$name" "$binary::$model" "$bound" "$outcome" "$secs" "$why"
  done <<<"$expects"
  unset bins
done
[ "$find_min" -eq 1 ] && exit 0
echo "loom-broken: $total expectations over ${#names[@]} variants, $failed not caught ($(( $(date +%s) - start_all )) s)"
[ "$failed" -eq 0 ]
