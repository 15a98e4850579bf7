#!/usr/bin/env bash
# Soak: SOAK_SECONDS (default 10 minutes) of mixed load through one rauta-proxy in front of two
# echo backends, with config churn, on 127.0.0.1; the controller and the proxy are sampled
# every SAMPLE_SECONDS for leaks:
#
#   - load (benches/harness.py load): HTTP/1.1 keep-alive clients, HTTP/1.1 clients opening a
#     new connection per request, h2c clients (4 streams each); every 5th request a POST with a
#     body of 1 byte to 16 KiB; RATE requests/s per client;
#   - churn: CHURN_RATE config changes/s (HTTPRoutes added, edited and removed, an extra
#     Service's EndpointSlices flapping), as benches/chaos.sh does at 100/s, but every route
#     written gets a new name, so that whatever is kept per route name has to go too;
#   - samples: VmRSS from /proc/PID/status, open fds (/proc/PID/fd), threads, CPU, and
#     established TCP connections (ss) of each process; after the warm-up (the first
#     WARMUP share of the run, 0.2) a least-squares slope per process.
#
#   benches/soak.sh                        # 10 minutes, release build
#   benches/soak.sh --short                # 3 minutes
#   SOAK_SECONDS=3600 benches/soak.sh
#   BIN_DIR=target/debug benches/soak.sh --short
#
# Samples (CSV) and logs are kept in target/soak/. Target: slopes flat within noise. Last two
# lines: soak_rss_slope_kib_per_min=X and soak_fd_slope_per_min=Y (the larger of the proxy's
# and the controller's; each process's slopes are printed before).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bench_args "$@"

[ "${1:-}" = --short ] && SOAK_SECONDS=${SOAK_SECONDS:-180}
SOAK_SECONDS=${SOAK_SECONDS:-600}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-5}
WARMUP=${WARMUP:-0.2}
RATE=${RATE:-100}
CHURN_RATE=${CHURN_RATE:-10}

need_debs curl:curl ss:iproute2 python3:python3
need_python_h2
build_bins
check_ports_free
bench_dirs soak
trap bench_cleanup EXIT INT TERM
write_base_config
write_churn_endpoints

start_backend 0
start_backend 1
start_controller; controller_pid=$!
start_proxy 0; proxy_pid=$!
wait_port "${BACKEND_PORTS[0]}" 20 && wait_port "${BACKEND_PORTS[1]}" 20 || { echo "backends did not start" >&2; exit 1; }
proxy_ready 0 60 || { echo "the proxy did not become ready; see $logs" >&2; exit 1; }

echo "soak: $((SOAK_SECONDS / 60)) min $((SOAK_SECONDS % 60)) s; load 2 HTTP/1.1 keep-alive + 1 HTTP/1.1 new-connection + 2 h2c clients x $RATE req/s"
echo "soak: (every 5th a POST up to 16 KiB) through 1 proxy; $CHURN_RATE config changes/s; samples every ${SAMPLE_SECONDS}s; binaries $BIN; logs in $logs"

"${harness[@]}" sample controller="$controller_pid" proxy="$proxy_pid" --duration "$SOAK_SECONDS" \
  --interval "$SAMPLE_SECONDS" --warmup "$WARMUP" --out "$logs/samples.csv" \
  >"$work/sample.out" 2>"$logs/sample.log" &
sample_pid=$!
track sampler "$sample_pid"
"${harness[@]}" churn --dir "$work/config" --rate "$CHURN_RATE" --duration "$SOAK_SECONDS" \
  --namespace bench --gateway gw --service churn --unique-names \
  --endpoint-ports "${BACKEND_PORTS[0]},${BACKEND_PORTS[1]}" --prefix soak_churn \
  >"$work/churn.out" 2>"$logs/churn.log" &
churn_pid=$!
track churn "$churn_pid"
# shellcheck disable=SC2046
"${harness[@]}" load $(proxy_specs 1) --duration "$SOAK_SECONDS" \
  --h1-clients 2 --h1-fresh-clients 1 --h2-clients 2 --rate "$RATE" \
  --post-every 5 --post-max-bytes 16384 --pods backend-0,backend-1 \
  --failures "$logs/failures.jsonl" --json "$logs/load.json" --prefix soak \
  >"$work/load.out" 2>"$logs/load.log" || { cat "$logs/load.log" >&2; exit 1; }
wait "$churn_pid" || true
wait "$sample_pid" || { cat "$logs/sample.log" >&2; exit 1; }
# shellcheck disable=SC2046
"${harness[@]}" verify $(proxy_specs 1) --dir "$work/config" --prefix soak >"$work/verify.out"

echo
cat "$work/churn.out"
cat "$work/load.out"
panics=$(cat "$logs"/*.log | grep -c 'panicked' || true)
echo "soak: panics in the logs: $panics"
cat "$work/verify.out"
echo "soak_failed_requests=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$logs/load.json")"
cat "$work/sample.out"
