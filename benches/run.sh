#!/usr/bin/env bash
# Runs the whole benchmark suite and renders docs/BENCHMARKS.md.
#
#   benches/run.sh           full run (~10 min on 2 cores); updates
#                            docs/BENCHMARKS.md, docs/bench/ and the
#                            README's generated block (bench:begin/end)
#   benches/run.sh --quick   CI smoke run (< 3 min incl. build): short
#                            measurements, report written under the target
#                            dir, docs/ left untouched
#
# Rust benches (criterion: benches/tree.rs; custom: bulk.rs, memory.rs,
# layer.rs, scaling.rs),
# then Go's context (benches/go/run.sh; skipped with a message if Go cannot
# be installed), then benches/report.py.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  export CTXTREE_BENCH_QUICK=1
elif [ -n "${CTXTREE_BENCH_QUICK:-}" ] && [ "${CTXTREE_BENCH_QUICK}" != 0 ]; then
  quick=1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/bench}"
export CTXTREE_BENCH_RESULTS="$CARGO_TARGET_DIR/ctxtree-bench"
rm -rf "$CTXTREE_BENCH_RESULTS" "$CARGO_TARGET_DIR/criterion"
mkdir -p "$CTXTREE_BENCH_RESULTS"

load() { cut -d' ' -f1-3 /proc/loadavg; }
python3 - "$CTXTREE_BENCH_RESULTS/meta.json" "$quick" "$(load)" "$(rustc --version)" <<'PY'
import json, os, sys, time
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu,
           "cores": os.cpu_count(), "quick": sys.argv[2] == "1", "load_start": sys.argv[3],
           "rustc": sys.argv[4]}, open(sys.argv[1], "w"))
PY
echo "load average at start: $(load)"

cargo bench --bench tree --bench bulk --bench memory --bench layer --bench scaling

bash benches/go/run.sh || echo "benches/go: skipped (run.sh failed)"

python3 - "$CTXTREE_BENCH_RESULTS/meta.json" "$(load)" <<'PY'
import json, sys, pathlib
p = pathlib.Path(sys.argv[1]); m = json.loads(p.read_text()); m["load_end"] = sys.argv[2]
go = p.parent / "go.jsonl"
gv = p.parent / "go-version.txt"
m["go"] = (gv.read_text().strip() if gv.exists() else "Go") if go.exists() else "Go not run"
p.write_text(json.dumps(m))
PY

if [ "$quick" = 1 ]; then
  python3 benches/report.py --docs "$CTXTREE_BENCH_RESULTS/docs" >/dev/null
  echo "quick run: report in $CTXTREE_BENCH_RESULTS/docs/BENCHMARKS.md"
else
  python3 benches/report.py
fi
