#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time with cargo-fuzz, on stable
# Rust without sanitizers (`-s none`); installs cargo-fuzz first when it is missing.
#
#   scripts/fuzz.sh [--dev] [SECONDS]     every target, SECONDS each (default 60)
#   FUZZ_TARGETS="hpack snapshot" scripts/fuzz.sh 1800
#   FUZZ_SKIP=http1_differential scripts/fuzz.sh --dev 15
#
# --dev builds the targets unoptimised: half the build time, for the test command's short
# regression run; longer runs want the default (release). Each target starts from its seeds
# (fuzz/seeds/TARGET, committed) and its working corpus (fuzz/corpus/TARGET, kept between
# runs, not committed). A crash, a hang past 20 s on one input, or 2 GiB of memory fails the
# target; the input that did it is left in fuzz/artifacts/TARGET/ (replay it with
# `cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/<file>`; once fixed, copy it into
# fuzz/seeds/TARGET so that tests/fuzz_corpus.rs keeps checking it).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

profile=(--release)
if [ "${1:-}" = "--dev" ]; then
  profile=(--dev)
  shift
fi
seconds="${1:-60}"
case "$seconds" in
  ''|*[!0-9]*) echo "usage: scripts/fuzz.sh [--dev] [SECONDS]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
echo "==> building the fuzz targets (${profile[*]})"
cargo fuzz build -s none "${profile[@]}"

passed=0
failed=0
for target in $targets; do
  case " ${FUZZ_SKIP:-} " in *" $target "*) continue ;; esac
  mkdir -p "corpus/$target"
  log="$(mktemp)"
  if cargo fuzz run -s none "${profile[@]}" "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "fuzz $target: ok, $(grep -E '^Done' "$log" | tail -1)"
  else
    failed=$((failed + 1))
    echo "fuzz $target: FAILED (inputs in fuzz/artifacts/$target/)"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 || true
  fi
  rm -f "$log"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
