# Sourced by .ci/asan.sh and .ci/tsan.sh: builds test binaries once and
# finds them.
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
