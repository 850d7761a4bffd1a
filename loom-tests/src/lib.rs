//! Loom models live in `tests/`; see `.ci/loom.sh`.
