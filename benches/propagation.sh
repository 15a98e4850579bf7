#!/usr/bin/env bash
# Propagation benchmark: the real rauta-controller, N simulated proxies speaking the real
# discovery protocol (one HTTP/2 connection each, ACKing at once), route edits and endpoint
# changes written to the watched directory; then a scale-up (100 proxies connecting at once to
# a controller serving 10000 routes). Prints markdown tables and, last,
# propagation_p99_ms_1000_proxies=X, propagation_p99_ms_1000x10000=X and
# route_edit_bytes_per_proxy_10000=X. Not a test: numbers depend on the machine.
#
#   benches/propagation.sh                 # 10,100,1000 proxies; 10..10000 routes; 1000x10000; burst
#   benches/propagation.sh --proxies 10 --routes 10 --scale 1000x10000 --burst ''  # small rows and the big one
#   benches/propagation.sh --repeats 10    # extra flags go to rauta-propagation (see --help)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p rauta-controller -p rauta-proxy -p rauta-tests --bin rauta-controller --bin rauta-proxy --bin rauta-propagation

echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "latency: from writing the file to each proxy receiving the new version (the directory source"
echo "reads a file as soon as its writer closes it); in brackets, from the controller publishing the version."
echo
exec target/release/rauta-propagation "$@"
