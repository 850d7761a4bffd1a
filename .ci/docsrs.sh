#!/usr/bin/env bash
# Builds the docs the way docs.rs does ([package.metadata.docs.rs] in
# Cargo.toml: every feature, `--cfg docsrs`, nightly rustdoc), so the
# `doc(cfg(..))` marks are checked and any rustdoc warning (broken intra-doc
# link, bad code block) fails CI.
# Usage: .ci/docsrs.sh   (about 1 minute on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/docsrs"
RUSTDOCFLAGS="--cfg docsrs -D warnings" cargo +nightly doc --no-deps --all-features
echo "docs.rs build OK: $CARGO_TARGET_DIR/doc/ctxtree/index.html"
