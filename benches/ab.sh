#!/usr/bin/env bash
# Before/after figures of several revisions in one run (same machine, same
# minutes, interleaved):
#
#   benches/ab.sh [-r ROUNDS] REV... [-- WORKLOAD...]
#
# Builds benches/ab (public API only, so it builds against any revision)
# once per REV, each against a worktree of that REV and in a target dir of
# its own (shared target dirs with mtime-based reuse once linked "pre-fix"
# binaries against the fixed library). Then, ROUNDS times (default 5), runs
# every workload of every revision, one process each, the revisions taking
# turns in a rotating order. Prints per-revision medians over the rounds.
# Workloads: W2 W3 W5 W6 W7 W7_async W8 W10 (default: all). Work dir: $AB_DIR
# (default /tmp/ctxtree-ab); nothing in the checkout is touched.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
dir=${AB_DIR:-/tmp/ctxtree-ab}
rounds=5
if [[ ${1:-} == -r ]]; then rounds=$2; shift 2; fi
revs=()
while [[ $# -gt 0 && $1 != -- ]]; do revs+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
workloads=("$@")
[[ ${#workloads[@]} -eq 0 ]] && workloads=(W2 W3 W5 W6 W7 W7_async W8 W10)
[[ ${#revs[@]} -ge 1 ]] || { echo "usage: $0 [-r ROUNDS] REV... [-- WORKLOAD...]" >&2; exit 2; }
mkdir -p "$dir"
bins=()
for rev in "${revs[@]}"; do
    sha=$(git -C "$repo" rev-parse --short=9 "$rev^{commit}")
    w="$dir/$sha"
    if [[ ! -d $w/src ]]; then
        rm -rf "$w/src"
        git -C "$repo" worktree add --detach -f "$w/src" "$sha" >/dev/null
    fi
    mkdir -p "$w/ab/src" "$w/support"
    sed "s|CTXTREE_PATH|$w/src|" "$here/ab/Cargo.toml" > "$w/ab/Cargo.toml"
    cp "$here/ab/src/main.rs" "$w/ab/src/main.rs"
    cp "$here/support/bare_wake.rs" "$w/support/bare_wake.rs"
    echo "building $rev ($sha)" >&2
    CARGO_TARGET_DIR="$w/target" cargo build -q --release --manifest-path "$w/ab/Cargo.toml"
    bins+=("$w/target/release/ctxtree-ab")
done
out="$dir/results.txt"
: > "$out"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
n=${#revs[@]}
for ((r = 0; r < rounds; r++)); do
    for wl in "${workloads[@]}"; do
        for ((k = 0; k < n; k++)); do
            i=$(((k + r) % n))
            "${bins[$i]}" "$wl" | sed "s|^|${revs[$i]} |" >> "$out"
        done
    done
    echo "round $((r + 1))/$rounds done" >&2
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$out" "${revs[@]}" <<'PY'
import sys, statistics, collections
path, revs = sys.argv[1], sys.argv[2:]
vals = collections.defaultdict(list)
names = []
for line in open(path):
    rev, wl, v = line.split()
    vals[(rev, wl)].append(float(v))
    if wl not in names:
        names.append(wl)
print("| workload (ns) | " + " | ".join(revs) + " |")
print("|---|" + "---:|" * len(revs))
for wl in names:
    cells = []
    for rev in revs:
        v = vals.get((rev, wl))
        cells.append(f"{statistics.median(v):,.1f}" if v else "–")
    print(f"| {wl} | " + " | ".join(cells) + " |")
print(f"\nmedian over {len(vals[(revs[0], names[0])])} rounds, one process per workload and revision")
PY
