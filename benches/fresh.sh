#!/usr/bin/env bash
# Fresh-connection benchmark: a new TCP connection for every request, over plain HTTP/1.1 and
# over HTTPS with a full TLS 1.3 handshake each time, through rauta-proxy, nginx and HAProxy in
# front of the same nginx backend, measured in one run, alternating targets every repeat.
# Gateways facing browsers, health checkers and short-lived clients spend much of their CPU
# accepting connections and doing handshakes, which keep-alive benchmarks never show.
# benches/proxy.sh runs it after its HTTP part (PARTS=).
#
# As in benches/proxy.sh, load, backend and proxy share ONE CPU (taskset) and what counts is
# each proxy's CPU time (user+system from /proc/PID/stat over the run) per connection. The
# load is wrk sending `Connection: close`: the proxy answers and closes, wrk connects again
# (wrk does not resume TLS sessions, so every HTTPS connection is a full handshake). Every
# proxy keeps its upstream connections alive, so only the client side is fresh. Certificates:
# ECDSA P-256, TLS 1.3 only, on all three. Not a test: figures depend on the machine.
#
#   benches/fresh.sh                        # 3 repeats of 5 s per target and protocol
#   REPEATS=5 DURATION=10 benches/fresh.sh
#   BASELINE=/tmp/rauta-proxy-old benches/fresh.sh   # also measures another build
#   BIN_DIR=target/release benches/fresh.sh # no build: the binaries there
#
# Last lines: fresh_http_cpu_per_conn_vs_nginx=X, fresh_https_cpu_per_conn_vs_nginx=X and the
# same against HAProxy (rauta's CPU per connection over the peer's; lower is better), and
# *_vs_baseline with BASELINE.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/peers.sh

REPEATS=${REPEATS:-3}
BASELINE=${BASELINE:-}
DURATION=${DURATION:-5}
CPU=${BENCH_CPU:-0}
OTHER_CPU=$(( (CPU + 1) % $(nproc) ))
CONNS=${CONNS:-32}

need=()
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

bin=${BIN_DIR:-target/release}
[ -n "${BIN_DIR:-}" ] || cargo build --release --quiet -p rauta-controller -p rauta-proxy \
  --bin rauta-controller --bin rauta-proxy

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

BACKEND=28081
NGINX_HTTP=28180 NGINX_HTTPS=28543 HAPROXY_HTTP=28280 HAPROXY_HTTPS=28643
# rauta serves the Gateway's ports 80 and 443 at this offset (and the baseline at its own).
RAUTA_OFFSET=28000 BASELINE_OFFSET=29000
# Background servers are started with taskset directly (not through a shell function), so
# that $! is the server's own pid.
pinned() { taskset -c "$CPU" "$@"; }

# --- one certificate for everyone ------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench.example" -addext "subjectAltName=DNS:bench.example" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"

# --- backend and nginx: 1 worker each, upstream keepalive -------------------------------------
nginx_conf backend "  server { listen 127.0.0.1:$BACKEND; location / { return 200 \"ok\n\"; } }"
nginx_conf nginx "  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_HTTP;
    listen 127.0.0.1:$NGINX_HTTPS ssl;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.3;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
taskset -c "$CPU" nginx -c "$work/backend/nginx.conf" -p "$work/backend" &
pids+=($!)
taskset -c "$CPU" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)
nginx_master=$!

# --- HAProxy: one thread, connection reuse ----------------------------------------------------
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8192
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_HTTP
  bind 127.0.0.1:$HAPROXY_HTTPS ssl crt $work/haproxy.pem
  default_backend be
backend be
  server b1 127.0.0.1:$BACKEND
EOF
taskset -c "$CPU" haproxy -f "$work/haproxy.cfg" -db &
pids+=($!)
haproxy_pid=$!

# --- RAUTA: the controller (on the other CPU) and one proxy with one worker thread ------------
mkdir -p "$work/config"
b64() { base64 -w0 "$1"; }
{ bench_backend_yaml $BACKEND; cat <<EOF
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: bench}
spec:
  gatewayClassName: rauta
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: bench}
type: kubernetes.io/tls
data: {tls.crt: $(b64 "$work/cert.pem"), tls.key: $(b64 "$work/key.pem")}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all, namespace: bench}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: backend, port: 80}]}]
EOF
} >"$work/config/bench.yaml"
taskset -c "$OTHER_CPU" "$bin/rauta-controller" --config-dir "$work/config" --no-status-files \
  --grpc-listen 127.0.0.1:28095 --plaintext 2>"$work/controller.log" &
pids+=($!)
start_proxy() { # binary, offset, admin port, log; sets $! to the proxy's pid
  taskset -c "$CPU" "$1" --controller http://127.0.0.1:28095 --gateway bench/gw --bind-address 127.0.0.1 \
    --listener-port-offset "$2" --admin-listen "127.0.0.1:$3" --worker-threads 1 2>"$4" &
}
start_proxy "$bin/rauta-proxy" $RAUTA_OFFSET 28096 "$work/proxy.log"
pids+=($!)
rauta_pid=$!
baseline_pid=
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
  start_proxy "$BASELINE" $BASELINE_OFFSET 28196 "$work/baseline.log"
  pids+=($!)
  baseline_pid=$!
fi

port_of() {
  case $1:$2 in
    nginx:http) echo $NGINX_HTTP ;; nginx:https) echo $NGINX_HTTPS ;;
    haproxy:http) echo $HAPROXY_HTTP ;; haproxy:https) echo $HAPROXY_HTTPS ;;
    rauta:http) echo $((RAUTA_OFFSET + 80)) ;; rauta:https) echo $((RAUTA_OFFSET + 443)) ;;
    baseline:http) echo $((BASELINE_OFFSET + 80)) ;; baseline:https) echo $((BASELINE_OFFSET + 443)) ;;
  esac
}
url_of() { echo "$2://127.0.0.1:$(port_of "$1" "$2")/"; }

targets=(nginx haproxy rauta)
[ -n "$BASELINE" ] && targets+=(baseline)
for t in "${targets[@]}"; do
  for proto in http https; do
    ok=
    for _ in $(seq 1 200); do
      curl -fsSk -o /dev/null "$(url_of "$t" "$proto")" 2>/dev/null && { ok=1; break; }
      sleep 0.05
    done
    [ -n "$ok" ] || { echo "$t does not answer on $(url_of "$t" "$proto")" >&2; exit 1; }
  done
done
for p in "${pids[@]}"; do
  kill -0 "$p" 2>/dev/null || { echo "a server exited at start (pid $p); is a port in use?" >&2; exit 1; }
done
# Every request leaves a connection in TIME_WAIT: let wrk reuse its local ports.
sysctl -qw net.ipv4.tcp_tw_reuse=1 2>/dev/null || true

pids_of() {
  case $1 in
    nginx) echo "$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')" ;;
    haproxy) echo "$haproxy_pid" ;;
    rauta) echo "$rauta_pid" ;;
    baseline) echo "$baseline_pid" ;;
  esac
}

# One load run: prints "connections_per_s cpu_us_per_conn errors".
run_load() {
  local target=$1 proto=$2 procs before after out requests rps errors
  procs=$(pids_of "$target")
  before=$(ticks $procs)
  out=$(pinned wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Connection: close" "$(url_of "$target" "$proto")")
  after=$(ticks $procs)
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  errors=$(echo "$out" | wrk_errors)
  awk -v r="$requests" -v rps="$rps" -v t=$((after - before)) -v e="$errors" \
    'BEGIN { printf "%.0f %.1f %d\n", rps, (r > 0 ? t * 10000 / r : 0), e }'
}

declare -A rate cpu errs
for _ in $(seq 1 "$REPEATS"); do
  for proto in http https; do
    for t in "${targets[@]}"; do
      read -r r c e < <(run_load "$t" "$proto")
      rate[$t:$proto]+="$r "
      cpu[$t:$proto]+="$c "
      errs[$t:$proto]=$(( ${errs[$t:$proto]:-0} + e ))
    done
  done
done


echo
echo "fresh connections: wrk -t1 -c$CONNS -H 'Connection: close' (a new connection per request; HTTPS: a full TLS 1.3 handshake, ECDSA P-256); everything on CPU $CPU; ${REPEATS}x${DURATION}s per cell"
echo
printf "| %-8s | %-5s | %-28s | %-28s | %-6s |\n" target proto "conn/s median [min-max]" "CPU us/conn median [min-max]" errors
printf "|%s|%s|%s|%s|%s|\n" ---------- ------- ------------------------------ ------------------------------ --------
for proto in http https; do
  for t in "${targets[@]}"; do
    printf "| %-8s | %-5s | %-28s | %-28s | %-6s |\n" "$t" "$proto" \
      "$(echo "${rate[$t:$proto]}" | median)" "$(echo "${cpu[$t:$proto]}" | median)" "${errs[$t:$proto]}"
  done
done
echo
for proto in http https; do
  for peer in nginx haproxy ${BASELINE:+baseline}; do
    awk -v r="$(echo "${cpu[rauta:$proto]}" | med)" -v p="$(echo "${cpu[$peer:$proto]}" | med)" \
      -v name="fresh_${proto}_cpu_per_conn_vs_$peer" 'BEGIN { printf "%s=%.2f\n", name, (p > 0 ? r / p : 0) }'
  done
done
