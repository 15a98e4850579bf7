# Helpers shared by benches/chaos.sh and benches/soak.sh (sourced, not run): a standalone
# RAUTA on 127.0.0.1 (echo backends, the controller reading a directory, proxies), and the
# bookkeeping that stops every process started, whoever started it, on exit.
#
# Environment:
#   BIN_DIR=target/debug   use the binaries there instead of building release ones
#   PORT_BASE=28000        ports used: PORT_BASE+0..+12 and +101..+102, +200, +300
#   LOG_DIR                where logs are kept after the run (default target/<bench>)
#   RETRIES=2              retries of the load's route (0: none), RETRY_BACKOFF (say 10ms: none
#                          by default; a retry holds its slot of the retry budget meanwhile)
#   OUTLIER_FAILURES=N     the load's Service's rauta.dev/outlier-consecutive-failures (0: off)
#   OUTLIER_EJECTION=1s    and its rauta.dev/outlier-base-ejection-time (default 30s)
#   PROXY_ARGS             more rauta-proxy flags

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
export LC_ALL=C

PORT_BASE=${PORT_BASE:-28000}
GRPC_PORT=$PORT_BASE
METRICS_PORT=$((PORT_BASE + 1))
BACKEND_PORTS=($((PORT_BASE + 101)) $((PORT_BASE + 102)))
# Proxy i serves the Gateway's port 80 on PROXY_PORTS[i] and its admin on ADMIN_PORTS[i].
PROXY_PORTS=($((PORT_BASE + 200)) $((PORT_BASE + 300)))
ADMIN_PORTS=($((PORT_BASE + 11)) $((PORT_BASE + 12)))

# Installs the Debian packages of missing commands: need_debs COMMAND:PACKAGE ...
need_debs() {
  local need=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}"); done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# The load client's HTTP/2 (pure Python, from PyPI when missing).
need_python_h2() {
  python3 -c 'import h2' 2>/dev/null && return 0
  echo "installing the h2 Python package (pip)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore h2
}

# Sets BIN: release binaries, built here, or BIN_DIR's.
build_bins() {
  if [ -n "${BIN_DIR:-}" ]; then
    BIN=$(cd "$BIN_DIR" && pwd)
  else
    cargo build --release --quiet -p rauta-controller -p rauta-proxy -p rauta-tests \
      --bin rauta-controller --bin rauta-proxy --bin rauta-echo
    BIN=$root/target/release
  fi
  local b
  for b in rauta-controller rauta-proxy rauta-echo; do
    [ -x "$BIN/$b" ] || { echo "$BIN/$b is missing" >&2; exit 1; }
  done
}

# Scratch ($work: config, pid files, events) and kept logs ($logs).
bench_dirs() { # bench name
  work=$(mktemp -d "/tmp/rauta-$1.XXXXXX")
  logs=${LOG_DIR:-$root/target/$1}
  rm -rf "$logs"
  mkdir -p "$logs" "$work/config" "$work/pids"
  : >"$work/events"
}

# --- processes ----------------------------------------------------------------------------

# Background loops of this shell (killed first on exit, so that they restart nothing).
loop_pids=()

# Every server's current pid is in $work/pids/NAME, whichever shell started it.
track() { echo "$2" >"$work/pids/$1"; }

# True while PID runs (a zombie, exited but not yet reaped by its parent, does not).
alive() {
  local s
  s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$s" ] && [ "${s:0:1}" != Z ]
}

# Waits up to SECONDS for PID to exit: wait_exit PID SECONDS
wait_exit() {
  local i
  for ((i = 0; i < $2 * 20; i++)); do alive "$1" || return 0; sleep 0.05; done
  return 1
}

# Waits up to SECONDS for URL to answer 2xx: wait_http URL SECONDS
wait_http() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -fsS -m 1 -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# Waits up to SECONDS for a listener on 127.0.0.1:PORT: wait_port PORT SECONDS
wait_port() {
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# What happened when, for the load client's judgement: event NAME STATE (up, down, draining, starting)
event() { echo "$EPOCHREALTIME $1 $2" >>"$work/events"; }

# A line for the report (and the log): note TEXT
note() { echo "$(date +%T.%3N) $*" | tee -a "$logs/notes.log" >&2; }

# Sleeps SECONDS unless the run is being stopped ($work/stop): false then.
nap() {
  local i
  for ((i = 0; i < $(awk -v s="$1" 'BEGIN { printf "%d", s * 10 }'); i++)); do
    [ -e "$work/stop" ] && return 1
    sleep 0.1
  done
  [ ! -e "$work/stop" ]
}

# Each start_* runs the server in the background of the calling shell ($! is its pid) and
# appends its output to $logs/NAME.log.
start_backend() { # index
  echo "=== start $(date +%T.%3N)" >>"$logs/backend-$1.log"
  "$BIN/rauta-echo" --http-port "${BACKEND_PORTS[$1]}" --pod "backend-$1" --namespace bench \
    >>"$logs/backend-$1.log" 2>&1 &
  track "backend-$1" $!
}

start_controller() {
  echo "=== start $(date +%T.%3N)" >>"$logs/controller.log"
  "$BIN/rauta-controller" --config-dir "$work/config" --plaintext \
    --grpc-listen "127.0.0.1:$GRPC_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    >>"$logs/controller.log" 2>&1 &
  track controller $!
}

start_proxy() { # index
  echo "=== start $(date +%T.%3N)" >>"$logs/proxy-$1.log"
  "$BIN/rauta-proxy" --controller "http://127.0.0.1:$GRPC_PORT" --gateway bench/gw \
    --bind-address 127.0.0.1 --listener-port-offset $((PROXY_PORTS[$1] - 80)) \
    --admin-listen "127.0.0.1:${ADMIN_PORTS[$1]}" ${PROXY_ARGS:-} >>"$logs/proxy-$1.log" 2>&1 &
  track "proxy-$1" $!
}

proxy_ready() { wait_http "http://127.0.0.1:${ADMIN_PORTS[$1]}/readyz" "$2"; }

# Something else on our ports (a leftover run) would answer for servers that failed to start.
check_ports_free() {
  local p
  for p in $GRPC_PORT $METRICS_PORT "${BACKEND_PORTS[@]}" "${PROXY_PORTS[@]}" "${ADMIN_PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "port $p is in use; set PORT_BASE to move every port" >&2
      exit 1
    fi
  done
}

bench_cleanup() {
  trap - EXIT INT TERM
  touch "$work/stop"
  local p f
  for p in "${loop_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$work"/pids/*; do
    [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$work"/pids/*; do
    [ -e "$f" ] || continue
    p=$(cat "$f")
    wait_exit "$p" 5 || kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# --- configuration ------------------------------------------------------------------------

# The Gateway, the Service the load uses (two EndpointSlices: one per backend, balanced round
# robin: Maglev on the source address would send every loopback client to one; outlier
# detection as by default, or as OUTLIER_FAILURES and OUTLIER_EJECTION say), its route
# (retrying on the other backend when one dies mid-request: RETRIES=0 leaves that out), and
# the Service the churn routes use.
write_base_config() {
  local retry="" annotations=""
  [ -n "${OUTLIER_FAILURES:-}" ] && annotations+=", rauta.dev/outlier-consecutive-failures: \"$OUTLIER_FAILURES\""
  [ -n "${OUTLIER_EJECTION:-}" ] && annotations+=", rauta.dev/outlier-base-ejection-time: $OUTLIER_EJECTION"
  if [ "${RETRIES:-2}" -gt 0 ]; then
    retry="
    retry: {attempts: ${RETRIES:-2}, codes: [502, 503, 504]${RETRY_BACKOFF:+, backoff: $RETRY_BACKOFF}}"
  fi
  cat >"$work/config/00-base.yaml" <<EOF
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
metadata:
  name: backend
  namespace: bench
  annotations: {rauta.dev/load-balancer: round-robin$annotations}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: backend-0, namespace: bench, labels: {kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{name: http, port: ${BACKEND_PORTS[0]}}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: backend-1, namespace: bench, labels: {kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{name: http, port: ${BACKEND_PORTS[1]}}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: load, namespace: bench}
spec:
  parentRefs: [{name: gw}]
  hostnames: [bench.example]
  rules:
  - matches: [{path: {type: PathPrefix, value: /load}}]
    backendRefs: [{name: backend, port: 80}]$retry
---
apiVersion: v1
kind: Service
metadata: {name: churn, namespace: bench}
spec:
  ports: [{name: http, port: 80}]
EOF
}

# The churn Service's first endpoints (benches/harness.py churn rewrites this file).
write_churn_endpoints() {
  cat >"$work/config/churn-endpoints.yaml" <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: churn-0, namespace: bench, labels: {kubernetes.io/service-name: churn}}
addressType: IPv4
ports: [{name: http, port: ${BACKEND_PORTS[0]}}]
endpoints: [{addresses: [127.0.0.1]}]
EOF
}

# The load client, churn and sampler: "${harness[@]}" SUBCOMMAND ... (an array, not a function,
# so that a background run's $! is python's own pid, which bench_cleanup can stop).
harness=(python3 "$root/benches/harness.py")

# Only --short, or nothing: bench_args "$@"
bench_args() {
  case "${1:-}" in
    "" | --short) ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
  esac
}

proxy_specs() { # --proxy arguments of the load client for proxies 0..N-1
  local i
  for ((i = 0; i < $1; i++)); do
    echo "--proxy proxy-$i=127.0.0.1:${PROXY_PORTS[$i]}@${ADMIN_PORTS[$i]}"
  done
}
