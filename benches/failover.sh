#!/usr/bin/env bash
# Backend failover (after the backend failover test of the public howardjohn/gateway-api-bench
# suite), standalone on 127.0.0.1: one Gateway with one HTTP listener, one rauta-proxy, one
# Service with 4 endpoints (Python backends, benches/failover.py backends): 3 always healthy
# and a "flipper" that alternates between failing (503 to every request, its health path
# /healthz included) and healthy (200 everywhere) every FLIP seconds, starting with failing
# when the load starts. ROUTES HTTPRoutes, each with its own hostname and a single backendRef
# to the Service, no retry filter (no retries). The load (benches/failover.py load): RATE
# requests/s in total, open loop, round robin over the hostnames, over CONNECTIONS keep-alive
# HTTP/1.1 connections, for DURATION seconds per mode; every non-200 answer and every failed
# connection is a client error.
#
# Four modes, each a fresh controller, proxy and backends, with a BackendPolicy on the Service
# (loadBalancer RoundRobin):
#   none       outlierDetection {consecutiveFailures: 0}, panicThreshold 0, no health check
#   outlier    outlierDetection {consecutiveFailures: 5, baseEjectionTime: 1s}
#   active_hc  outlierDetection {consecutiveFailures: 0}, healthCheck {interval: 1s,
#              jitter: 100ms, unhealthyThreshold: 1, healthyThreshold: 1,
#              http: {path: /healthz}} (the jitter moves the probes' phase against the
#              flips, which a whole number of intervals apart would always meet alike)
#   both       outlier's outlierDetection and active_hc's healthCheck
# (panic threshold by default, 50%, in the last three: only 1 endpoint of 4 fails).
#
#   benches/failover.sh                    # 4 modes x 30 s, release build
#   benches/failover.sh --short            # 4 modes x 10 s (one failing, one healthy period)
#   BIN_DIR=target/release benches/failover.sh
#   ROUTES=1000 MODES=active_hc benches/failover.sh --short   # probe traffic at 1000 routes
#
# Knobs: ROUTES (100), RATE (400 requests/s in total; the Python backends and client share the
# machine with the proxy), DURATION (30 s per mode; 10 with --short; a multiple of 2 x FLIP
# keeps every failing period whole), FLIP (5 s), CONNECTIONS (16), MODES ("none outlier
# active_hc both"), PORT_BASE (28600; +0, +1, +11, +101..+104, +200 used), BIN_DIR, LOG_DIR
# (target/failover: every process's log, the flipper's and the load's JSON, each mode's
# /endpoints and /metrics at its end).
#
# Per mode (key=value): failover_<mode>_to_failing (data requests the flipper got while
# failing), failover_<mode>_to_flipper_healthy, failover_errors_<mode> (client errors),
# failover_<mode>_probes_per_s (the flipper's /healthz probes per second),
# failover_<mode>_recovery_ms (median time from a flip to healthy to the first data request
# the flipper gets), failover_<mode>_error_window_ms (errors per flip to failing as time at
# RATE: errors / flips_to_failing / RATE * 1000), and details before them. Last line:
# failover_errors_active_hc=N.
#
# Targets, with active health checks (active_hc): client errors only within one probe interval
# of each flip (error_window_ms <= 1000); probe traffic independent of ROUTES (one probe per
# endpoint per interval per proxy: ~1/s here, not ROUTES/s); the recovered endpoint gets
# traffic again within one interval (recovery_ms <= ~1000). Not a test: figures depend on the
# machine.
set -euo pipefail
PORT_BASE=${PORT_BASE:-28600}
source "$(dirname "$0")/lib.sh"
bench_args "$@"

[ "${1:-}" = --short ] && DURATION=${DURATION:-10}
DURATION=${DURATION:-30}
ROUTES=${ROUTES:-100}
RATE=${RATE:-400}
FLIP=${FLIP:-5}
CONNECTIONS=${CONNECTIONS:-16}
MODES=${MODES:-none outlier active_hc both}
for m in $MODES; do
  case $m in none | outlier | active_hc | both) ;; *) echo "unknown mode $m" >&2; exit 2 ;; esac
done

# Four backends: three healthy, the last one the flipper.
BACKEND_PORTS=($((PORT_BASE + 101)) $((PORT_BASE + 102)) $((PORT_BASE + 103)) $((PORT_BASE + 104)))
FLIPPER_PORT=${BACKEND_PORTS[3]}
failover=(python3 "$root/benches/failover.py")

need_debs curl:curl ss:iproute2 python3:python3
build_bins
check_ports_free
bench_dirs failover
trap bench_cleanup EXIT INT TERM

# The Gateway, the Service (one EndpointSlice per backend), its BackendPolicy for MODE and the
# routes: write_config MODE
write_config() {
  local outlier hc="" panic="" i
  case $1 in
    none) outlier="{consecutiveFailures: 0}"; panic="
  panicThreshold: 0" ;;
    outlier) outlier="{consecutiveFailures: 5, baseEjectionTime: 1s}" ;;
    active_hc) outlier="{consecutiveFailures: 0}" ;;
    both) outlier="{consecutiveFailures: 5, baseEjectionTime: 1s}" ;;
  esac
  case $1 in
    active_hc | both) hc="
  healthCheck:
    interval: 1s
    jitter: 100ms
    unhealthyThreshold: 1
    healthyThreshold: 1
    http: {path: /healthz}" ;;
  esac
  rm -rf "$work/config"
  mkdir -p "$work/config"
  {
    cat <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: rauta}
spec: {controllerName: rauta.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: bench}
spec:
  gatewayClassName: rauta
  listeners: [{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: bench}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: BackendPolicy
metadata: {name: backend, namespace: bench}
spec:
  targetRefs: [{group: "", kind: Service, name: backend}]
  loadBalancer: {type: RoundRobin}
  outlierDetection: $outlier$hc$panic
EOF
    for i in 0 1 2 3; do
      cat <<EOF
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: backend-$i, namespace: bench, labels: {kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{name: http, port: ${BACKEND_PORTS[$i]}}]
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
EOF
    done
  } >"$work/config/00-base.yaml"
  for ((i = 0; i < ROUTES; i++)); do
    cat <<EOF
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r$i, namespace: bench}
spec:
  parentRefs: [{name: gw}]
  hostnames: [r$i.failover.example]
  rules: [{backendRefs: [{name: backend, port: 80}]}]
EOF
  done >"$work/config/10-routes.yaml"
}

# Stops a server this script tracks (by its pid file): stop NAME
stop() {
  local f=$work/pids/$1 p
  [ -e "$f" ] || return 0
  p=$(cat "$f")
  kill "$p" 2>/dev/null || true
  wait_exit "$p" 10 || kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  rm -f "$f"
}

# Waits up to SECONDS for HOST's route to answer 200 through the proxy: route_ok HOST SECONDS
route_ok() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [ "$(curl -sS -m 1 -o /dev/null -w '%{http_code}' -H "Host: $1" \
      "http://127.0.0.1:${PROXY_PORTS[0]}/failover" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

# True once the proxy has the 4 endpoints, all usable (and, with health checks, each probed
# and passed at least once).
endpoints_ready() { # mode
  curl -fsS -m 2 "http://127.0.0.1:${ADMIN_PORTS[0]}/endpoints" 2>/dev/null | python3 -c '
import json, sys
hc = sys.argv[1] in ("active_hc", "both")
page = json.load(sys.stdin)
eps = [e for c in page["clusters"] for e in c["endpoints"] if c["cluster"].startswith("bench/backend")]
ok = len(eps) == 4 and all(e["usable"] for e in eps) and all(
    (e.get("healthCheck") or {}).get("probesPassed", 0) >= 1 for e in eps if hc)
sys.exit(0 if ok else 1)' "$1"
}

run_mode() { # mode
  local mode=$1 i healthy_ports bpid
  write_config "$mode"
  healthy_ports=$(IFS=,; echo "${BACKEND_PORTS[*]:0:3}")
  rm -f "$work/backends.json"
  echo "=== $mode $(date +%T.%3N)" >>"$logs/backends.log"
  "${failover[@]}" backends --healthy-ports "$healthy_ports" --flipper-port "$FLIPPER_PORT" \
    --flip "$FLIP" --duration "$DURATION" --out "$work/backends.json" >>"$logs/backends.log" 2>&1 &
  bpid=$!
  track backends "$bpid"
  for i in 0 1 2 3; do
    wait_port "${BACKEND_PORTS[$i]}" 20 || { echo "backend $i did not start" >&2; exit 1; }
  done
  echo "=== $mode" >>"$logs/controller.log"
  echo "=== $mode" >>"$logs/proxy-0.log"
  start_controller
  wait_http "http://127.0.0.1:$METRICS_PORT/healthz" 30 || { echo "the controller did not start" >&2; exit 1; }
  start_proxy 0
  proxy_ready 0 60 || { echo "the proxy did not become ready; see $logs" >&2; exit 1; }
  route_ok r0.failover.example 60 && route_ok "r$((ROUTES - 1)).failover.example" 60 ||
    { echo "$mode: the routes do not answer 200; see $logs" >&2; exit 1; }
  for ((i = 0; i < 300; i++)); do endpoints_ready "$mode" && break; sleep 0.1; done
  endpoints_ready "$mode" || { echo "$mode: the 4 endpoints are not all usable after 30 s" >&2; exit 1; }
  curl -fsS -m 2 "http://127.0.0.1:${ADMIN_PORTS[0]}/metrics" >"$logs/$mode-metrics-before.txt" || true

  # The load opens its connections, then starts the flipper's window (SIGUSR1) and its own.
  "${failover[@]}" load --target "127.0.0.1:${PROXY_PORTS[0]}" --routes "$ROUTES" --rate "$RATE" \
    --duration "$DURATION" --connections "$CONNECTIONS" --out "$logs/$mode-load.json" \
    --start-pid "$bpid" \
    2>>"$logs/load.log" || { echo "$mode: the load failed; see $logs/load.log" >&2; exit 1; }
  for ((i = 0; i < 100; i++)); do [ -e "$work/backends.json" ] && break; sleep 0.1; done
  [ -e "$work/backends.json" ] || { echo "$mode: the backends wrote no counts" >&2; exit 1; }
  cp "$work/backends.json" "$logs/$mode-backends.json"
  curl -fsS -m 2 "http://127.0.0.1:${ADMIN_PORTS[0]}/endpoints" >"$logs/$mode-endpoints.json" || true
  curl -fsS -m 2 "http://127.0.0.1:${ADMIN_PORTS[0]}/metrics" >"$logs/$mode-metrics.txt" || true
  stop proxy-0
  stop controller
  stop backends

  "${failover[@]}" report --mode "$mode" --backends "$logs/$mode-backends.json" \
    --load "$logs/$mode-load.json" --rate "$RATE" >"$work/report-$mode"
  # From the proxy: its health-check and ejection counters over the run.
  awk -v m="$mode" -v f="127.0.0.1:$FLIPPER_PORT" '
    /^rauta_proxy_health_checks_total/ && index($0, f) { split($0, a, "result=\""); split(a[2], r, "\""); hc[r[1]] += $2 }
    /^rauta_proxy_outlier_ejections_total/ && index($0, f) { ej += $2 }
    END { printf "failover_%s_proxy_probes=passed:%d,failed:%d\nfailover_%s_proxy_ejections=%d\n", m, hc["passed"], hc["failed"], m, ej }
  ' "$logs/$mode-metrics.txt" >"$work/proxy-$mode"
  echo "failover: $mode done: $(grep -E "^failover_errors_$mode=|_(to_failing|recovery_ms|error_window_ms|probes_per_s)=" "$work/report-$mode" | sed 's/^failover_//' | tr '\n' ' ')" >&2
}

echo "failover_routes=$ROUTES"
echo "failover_rate=$RATE"
echo "failover_duration_s=$DURATION"
echo "failover_flip_s=$FLIP"
echo "failover_connections=$CONNECTIONS"
echo "failover_modes=${MODES// /,}"
echo "failover: 1 proxy, 4 endpoints (3 healthy, 1 flipping every ${FLIP}s), $ROUTES routes, $RATE req/s for ${DURATION}s per mode;" \
  "binaries $BIN; $(nproc) CPUs; logs in $logs" >&2

for mode in $MODES; do run_mode "$mode"; done

panics=$(cat "$logs"/*.log | grep -c 'panicked' || true)
echo "failover_panics_in_logs=$panics"
for mode in $MODES; do
  cat "$work/proxy-$mode"
  grep -v '^failover_errors_active_hc=' "$work/report-$mode"
done
if [ -e "$work/report-active_hc" ]; then grep '^failover_errors_active_hc=' "$work/report-active_hc"; fi
