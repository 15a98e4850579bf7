#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests, protocol tests and end-to-end
# tests that start the real binaries on 127.0.0.1. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> building binaries (the end-to-end tests start them)"
cargo build --workspace --bins --locked

echo "==> cargo test"
cargo test --workspace --locked
