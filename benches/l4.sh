#!/usr/bin/env bash
# L4 relay benchmark: rauta-proxy's TCP and UDP relays against HAProxy (`mode tcp`) and nginx's
# stream module (TCP and UDP), in front of the same echo backends, measured in one run,
# alternating targets every repeat. benches/proxy.sh runs it after its HTTP part (PARTS=).
#
# As in benches/proxy.sh, load, backends and proxy share ONE CPU (taskset) and what counts is
# each proxy's CPU time (user+system from /proc/PID/stat over the run) per unit of work: per MB
# relayed on TCP (both directions counted), per datagram relayed on UDP (a request and its
# answer count as two). Not a test: figures depend on the machine.
#
#   benches/l4.sh                          # 3 repeats of 5 s per target and protocol
#   REPEATS=5 DURATION=10 benches/l4.sh
#   BASELINE=/tmp/rauta-proxy-old benches/l4.sh    # also measures another build, side by side
#   BIN_DIR=target/release benches/l4.sh   # no build: the binaries there
#   PEER_BUFFER=65536 benches/l4.sh        # nginx's proxy_buffer_size and HAProxy's tune.bufsize
#                                          # (default: theirs, 16 KiB; rauta reads 64 KiB at once)
#
# Load (rauta-l4-load, single-threaded): TCP_CONNS connections (4) each writing 16 KiB chunks
# and reading the echo back with at most 64 KiB unanswered; UDP_FLOWS flows (16: a socket and
# source port each) each keeping 4 datagrams of 256 bytes outstanding, closed loop, a lost
# datagram given up after 200 ms.
#
# Last lines: tcp_cpu_per_mb_vs_haproxy=X, tcp_cpu_per_mb_vs_nginx=X,
# udp_cpu_per_datagram_vs_nginx=X (rauta's CPU over the peer's; lower is better), and
# *_vs_baseline with BASELINE.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/peers.sh

REPEATS=${REPEATS:-3}
BASELINE=${BASELINE:-}
DURATION=${DURATION:-5}
CPU=${BENCH_CPU:-0}
OTHER_CPU=$(( (CPU + 1) % $(nproc) ))
TCP_CONNS=${TCP_CONNS:-4}
UDP_FLOWS=${UDP_FLOWS:-16}
PEER_BUFFER=${PEER_BUFFER:-}

need=()
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
# Debian's nginx-light has no stream module: it is a package of its own.
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

# BIN_DIR: a folder with the three binaries, used as they are (no build).
bin=${BIN_DIR:-target/release}
[ -n "${BIN_DIR:-}" ] || cargo build --release --quiet -p rauta-controller -p rauta-proxy \
  -p rauta-tests --bin rauta-controller --bin rauta-proxy --bin rauta-l4-load
load=$bin/rauta-l4-load

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# TCP and UDP use the same port numbers.
BACKEND=18301 NGINX=18311 HAPROXY=18312 GRPC=18305
RAUTA_TCP=18321 RAUTA_UDP=18322 BASELINE_TCP=18331 BASELINE_UDP=18332

# Background servers are started with taskset directly, so that $! is the server's own pid.
taskset -c "$CPU" $load tcp-echo --listen 127.0.0.1:$BACKEND &
pids+=($!)
taskset -c "$CPU" $load udp-echo --listen 127.0.0.1:$BACKEND &
pids+=($!)

# --- nginx's stream module: 1 worker; a UDP session per client address and port, as rauta's
# flows, ended after 10 s without a datagram (no proxy_responses: a count of answers per
# datagram would end the session, and open a new upstream socket, every few datagrams) -------
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
stream {
  server {
    listen 127.0.0.1:$NGINX;
    proxy_pass 127.0.0.1:$BACKEND;
    ${PEER_BUFFER:+proxy_buffer_size $PEER_BUFFER;}
  }
  server { listen 127.0.0.1:$NGINX udp; proxy_pass 127.0.0.1:$BACKEND; proxy_timeout 10s; }
}
EOF
taskset -c "$CPU" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)
nginx_master=$!

# --- HAProxy: mode tcp, one thread (it has no UDP) -----------------------------------------
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
  ${PEER_BUFFER:+tune.bufsize $PEER_BUFFER}
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$HAPROXY
  default_backend be
backend be
  server b1 127.0.0.1:$BACKEND
EOF
taskset -c "$CPU" haproxy -f "$work/haproxy.cfg" -db &
pids+=($!)
haproxy_pid=$!

# --- RAUTA: the controller (on the other CPU), a proxy with one worker thread; the Gateway's
# TCP listener 9000 and UDP listener 9001 on RAUTA_TCP and RAUTA_UDP ----------------------
mkdir -p "$work/config"
cat >"$work/config/bench.yaml" <<EOF
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
  listeners:
  - {name: tcp, port: 9000, protocol: TCP, allowedRoutes: {namespaces: {from: Same}}}
  - {name: udp, port: 9001, protocol: UDP, allowedRoutes: {namespaces: {from: Same}}}
---
apiVersion: v1
kind: Service
metadata: {name: echo-tcp, namespace: bench}
spec:
  ports: [{name: echo, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-tcp-1, namespace: bench, labels: {kubernetes.io/service-name: echo-tcp}}
addressType: IPv4
ports: [{name: echo, port: $BACKEND}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-udp, namespace: bench}
spec:
  ports: [{name: echo, port: 80, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-udp-1, namespace: bench, labels: {kubernetes.io/service-name: echo-udp}}
addressType: IPv4
ports: [{name: echo, port: $BACKEND, protocol: UDP}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: tcp, namespace: bench}
spec:
  parentRefs: [{name: gw, sectionName: tcp}]
  rules: [{backendRefs: [{name: echo-tcp, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: UDPRoute
metadata: {name: udp, namespace: bench}
spec:
  parentRefs: [{name: gw, sectionName: udp}]
  rules: [{backendRefs: [{name: echo-udp, port: 80}]}]
EOF
taskset -c "$OTHER_CPU" "$bin/rauta-controller" --config-dir "$work/config" --no-status-files \
  --grpc-listen 127.0.0.1:$GRPC --plaintext 2>"$work/controller.log" &
pids+=($!)
# Both listeners' ports from one offset: 9000 -> RAUTA_TCP, 9001 -> RAUTA_UDP.
start_proxy() { # binary tcp-port admin-port log
  taskset -c "$CPU" "$1" --controller http://127.0.0.1:$GRPC --gateway bench/gw \
    --bind-address 127.0.0.1 --listener-port-offset $(($2 - 9000)) --admin-listen "127.0.0.1:$3" \
    --worker-threads 1 2>"$work/$4.log" &
}
start_proxy "$bin/rauta-proxy" $RAUTA_TCP 18323 proxy
pids+=($!)
rauta_pid=$!
baseline_pid=
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
  start_proxy "$BASELINE" $BASELINE_TCP 18333 baseline
  pids+=($!)
  baseline_pid=$!
fi

targets=(direct nginx haproxy rauta)
[ -n "$BASELINE" ] && targets+=(baseline)
port_of() {
  case $1:$2 in
    direct:*) echo $BACKEND ;;
    nginx:*) echo $NGINX ;;
    haproxy:tcp) echo $HAPROXY ;;
    rauta:tcp) echo $RAUTA_TCP ;; rauta:udp) echo $RAUTA_UDP ;;
    baseline:tcp) echo $BASELINE_TCP ;; baseline:udp) echo $BASELINE_UDP ;;
  esac
}
serves() { [ "$1:$2" != haproxy:udp ]; }

# Ready once a short load gets echoes through (rauta: once its routes have arrived).
for proto in tcp udp; do
  for t in "${targets[@]}"; do
    serves "$t" "$proto" || continue
    ok=
    for _ in $(seq 1 100); do
      out=$($load "$proto" --target "127.0.0.1:$(port_of "$t" "$proto")" --duration 0.1 2>/dev/null) || true
      if [[ $out =~ (received|answered)=[1-9] ]]; then ok=1; break; fi
      sleep 0.1
    done
    [ -n "$ok" ] || { echo "$t relays no $proto (port $(port_of "$t" "$proto"))" >&2; exit 1; }
  done
done
# Something else on a port (a leftover run) would answer for a server that failed to start.
for p in "${pids[@]}"; do
  kill -0 "$p" 2>/dev/null || { echo "a server exited at start (pid $p); is a port in use?" >&2; exit 1; }
done

pids_of() {
  case $1 in
    nginx) echo "$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')" ;;
    haproxy) echo "$haproxy_pid" ;;
    rauta) echo "$rauta_pid" ;;
    baseline) echo "$baseline_pid" ;;
    direct) echo "" ;;
  esac
}

# One load run: prints "rate cpu_us_per_unit lost": MB/s and us/MB on TCP, datagrams/s and
# us/datagram on UDP (MB = 10^6 bytes; both directions counted).
run_load() {
  local target=$1 proto=$2 procs before after out
  procs=$(pids_of "$target")
  before=$( [ -n "$procs" ] && ticks $procs || echo 0 )
  if [ "$proto" = tcp ]; then
    out=$(taskset -c "$CPU" $load tcp --target "127.0.0.1:$(port_of "$target" tcp)" \
      --connections "$TCP_CONNS" --duration "$DURATION")
  else
    out=$(taskset -c "$CPU" $load udp --target "127.0.0.1:$(port_of "$target" udp)" \
      --flows "$UDP_FLOWS" --duration "$DURATION")
  fi
  after=$( [ -n "$procs" ] && ticks $procs || echo 0 )
  echo "$out" | tr ' ' '\n' | awk -F= -v t=$((after - before)) -v proto="$proto" '
    { v[$1] = $2 }
    END {
      if (proto == "tcp") { units = (v["sent"] + v["received"]) / 1e6 } else { units = 2 * v["answered"] }
      fmt = (proto == "tcp") ? "%.1f %.1f %d\n" : "%.0f %.3f %d\n"
      printf fmt, units / v["seconds"], (units > 0 ? t * 10000 / units : 0), v["lost"]
    }'
}

declare -A rate cpu lost
for _ in $(seq 1 "$REPEATS"); do
  for proto in tcp udp; do
    for t in "${targets[@]}"; do
      serves "$t" "$proto" || continue
      read -r r c l < <(run_load "$t" "$proto")
      rate[$t:$proto]+="$r "
      cpu[$t:$proto]+="$c "
      lost[$t:$proto]=$(( ${lost[$t:$proto]:-0} + l ))
    done
  done
done


echo
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -sr); everything on CPU $CPU; ${REPEATS}x${DURATION}s per cell"
echo "TCP: $TCP_CONNS connections, 16 KiB writes, 64 KiB unanswered at most, peers' buffers ${PEER_BUFFER:-by default}; UDP: $UDP_FLOWS flows x 4 datagrams of 256 B outstanding; both directions counted"
echo
printf "| %-8s | %-5s | %-30s | %-30s | %-6s |\n" target proto "MB/s or datagrams/s [min-max]" "CPU us/MB or us/dgram [min-max]" lost
printf "|%s|%s|%s|%s|%s|\n" ---------- ------- -------------------------------- -------------------------------- --------
for proto in tcp udp; do
  for t in "${targets[@]}"; do
    serves "$t" "$proto" || continue
    c="-"; [ "$t" != direct ] && c=$(echo "${cpu[$t:$proto]}" | median)
    l="-"; [ "$proto" = udp ] && l=${lost[$t:$proto]}
    printf "| %-8s | %-5s | %-30s | %-30s | %-6s |\n" "$t" "$proto" "$(echo "${rate[$t:$proto]}" | median)" "$c" "$l"
  done
done
echo
ratio() { # name rauta-cell other-cell
  awk -v r="$(echo "${cpu[$2]}" | med)" -v o="$(echo "${cpu[$3]}" | med)" -v n="$1" \
    'BEGIN { printf "%s=%.3f\n", n, (o > 0 ? r / o : 0) }'
}
if [ -n "$BASELINE" ]; then
  ratio tcp_cpu_per_mb_vs_baseline rauta:tcp baseline:tcp
  ratio udp_cpu_per_datagram_vs_baseline rauta:udp baseline:udp
fi
ratio tcp_cpu_per_mb_vs_haproxy rauta:tcp haproxy:tcp
ratio tcp_cpu_per_mb_vs_nginx rauta:tcp nginx:tcp
ratio udp_cpu_per_datagram_vs_nginx rauta:udp nginx:udp
