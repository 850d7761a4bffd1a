# Sourced by .ci/asan.sh and .ci/tsan.sh: builds test binaries once, finds
# them, and runs the race matrix with a step's budget.
#
# build_test_binaries LABEL CARGO_ARGS...
#   Runs `cargo CARGO_ARGS... --no-run` (its output goes to the log) and
#   sets BIN[NAME] to the executable of every `--test NAME` in CARGO_ARGS.
#   Fails, naming LABEL, if one is missing.
declare -A BIN
build_test_binaries() {
    local label=$1
    shift
    local log want=() prev='' name
    log=$(mktemp)
    cargo "$@" --no-run 2>&1 | tee "$log"
    for name in "$@"; do
        [[ $prev == --test ]] && want+=("$name")
        prev=$name
    done
    for name in "${want[@]}"; do
        BIN[$name]=$(sed -n "s/.*Executable tests\/$name.rs (\(.*\))/\1/p" "$log" | tail -n1)
        if [[ -z "${BIN[$name]}" || ! -x "${BIN[$name]}" ]]; then
            echo "$label: could not find the $name test binary" >&2
            rm -f "$log"
            return 1
        fi
    done
    rm -f "$log"
}

# run_race_matrix LABEL BINARY MS MIN_ROUNDS
#   Runs the race matrix (tests/races.rs) one cell at a time with MS ms and
#   at least MIN_ROUNDS rounds per cell unless CTXTREE_RACE_MS /
#   CTXTREE_RACE_MIN_ROUNDS say otherwise, a line per cell in the log.
run_race_matrix() {
    local label=$1 bin=$2 ms=$3 min=$4 t
    t=$(date +%s)
    CTXTREE_RACE_MS="${CTXTREE_RACE_MS:-$ms}" \
    CTXTREE_RACE_MIN_ROUNDS="${CTXTREE_RACE_MIN_ROUNDS:-$min}" \
    CTXTREE_RACE_VERBOSE="${CTXTREE_RACE_VERBOSE:-1}" \
        "$bin" --test-threads=1
    echo "$label: race matrix clean in $(( $(date +%s) - t )) s"
}
