#!/usr/bin/env bash
# Gateway API bench replay: the tests of the public howardjohn/gateway-api-bench suite
# (attached routes, route propagation, route changes, route scale, ListenerSet scale) without
# a cluster. The real rauta-controller runs in Kubernetes mode against the in-process fake API
# server of tests/src/fake_kube.rs, with a real rauta-proxy and echo backends on 127.0.0.1;
# probes and traffic are real HTTP. Prints a markdown table next to the figures the suite
# published for other implementations (its README.md and README-v2.md: other machines, a real
# cluster), then key=value lines, the last three being bench_route_propagation_p50_ms=X,
# bench_route_change_errors=N and bench_proxy_rss_mib_5000_routes=X. Not a test: numbers
# depend on the machine. About 7 minutes on 2 cores (longer if a scale test does not
# converge); --quick under 2 (after the build).
#
#   benches/gateway-api-bench.sh                    # everything, full size
#   benches/gateway-api-bench.sh --quick            # smoke run
#   benches/gateway-api-bench.sh --tests scale --scale 50x100 --steady-seconds 30
#   benches/gateway-api-bench.sh --help             # every flag (sizes, levels, durations)
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet -p rauta-controller -p rauta-proxy -p rauta-tests \
  --bin rauta-controller --bin rauta-proxy --bin rauta-echo --bin rauta-gateway-api-bench

echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "one fake API server (in the bench process), one rauta-controller, one rauta-proxy, echo"
echo "backends and the clients share those CPUs; CPU and memory are per process, from /proc."
echo
# The bench starts the binaries next to its own (target/release).
exec "$target/release/rauta-gateway-api-bench" "$@"
