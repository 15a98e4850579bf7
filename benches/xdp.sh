#!/usr/bin/env bash
# Kernel fast path benchmark (root): fresh-connection exact GETs, as health checkers and
# short-lived clients send them, answered
#   (a) by rauta-proxy's XDP program (docs/xdp.md),
#   (b) by rauta-proxy's user space (a second proxy without --xdp-interface, same config),
#   (c) by nginx, the peer: `return 200` for the static answer, proxy_cache for the cached one,
# each for a static answer (a DirectResponse) and a cached backend answer (a ResponseCache),
# side by side in one run. The servers run in one network namespace, the load generator in
# another, joined by a veth pair, as a client on another host would reach the gateway.
#
# Load: wrk -t1 -cCONNS with `Connection: close`, so every request is a new connection (a
# SYN, the handshake, the GET, the answer, the close); requests/s and wrk's p50/p99 latency,
# and the server side's CPU per request: the machine's busy time less the load generator's
# (on 2 CPUs the generator's own connection handling is the bottleneck, so requests/s
# understates what the server saves; the CPU column shows it).
# Not a test: figures depend on the machine.
#
#   sudo benches/xdp.sh
#   REPEATS=5 DURATION=10 CONNS=64 benches/xdp.sh
#   BIN_DIR=target/release benches/xdp.sh    # no build: the binaries there
#   XDP_MODE=generic benches/xdp.sh           # the mode pods use (manifests/optional)
#
# Last line: xdp_speedup=X (requests/s of the XDP answers over rauta's user space, static
# answer; xdp_cached_speedup and the p99 ratios are printed just before it).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/peers.sh
root=$(pwd)

[ "$(id -u)" = 0 ] || { echo "benches/xdp.sh needs root (network namespaces, XDP)" >&2; exit 2; }
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
XDP_MODE=${XDP_MODE:-generic}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-$(( (SERVER_CPU + 1) % $(nproc) ))}

need=()
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

bin=${BIN_DIR:-target/release}
[ -n "${BIN_DIR:-}" ] || cargo build --release --quiet -p rauta-controller -p rauta-proxy \
  --bin rauta-controller --bin rauta-proxy

SRV=rauta-xb-s CLI=rauta-xb-c SRV_IF=rauta-xb-a CLI_IF=rauta-xb-b
SRV_IP=10.98.0.1 CLI_IP=10.98.0.2
BACKEND=18081 NGINX=18091 XDP_OFFSET=28000 USER_OFFSET=29000
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del $SRV 2>/dev/null || true
  ip netns del $CLI 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
in_srv() { ip netns exec $SRV "$@"; }
in_cli() { ip netns exec $CLI "$@"; }

# --- the two hosts -------------------------------------------------------------------------
ip netns del $SRV 2>/dev/null || true
ip netns del $CLI 2>/dev/null || true
ip netns add $SRV
ip netns add $CLI
ip link add $SRV_IF type veth peer name $CLI_IF
ip link set $SRV_IF netns $SRV
ip link set $CLI_IF netns $CLI
ip -n $SRV addr add $SRV_IP/24 dev $SRV_IF
ip -n $CLI addr add $CLI_IP/24 dev $CLI_IF
for ns_if in "$SRV $SRV_IF" "$CLI $CLI_IF"; do
  set -- $ns_if
  ip -n "$1" link set "$2" up
  ip -n "$1" link set lo up
done
# The kernel path needs SYN cookies always on where the proxy runs (no state before the GET).
in_srv sysctl -qw net.ipv4.tcp_syncookies=2
# The client reconnects all the time: many local ports, reused once in TIME_WAIT.
in_cli sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
in_cli sysctl -qw net.ipv4.tcp_tw_reuse=1
# A veth only receives XDP_TX frames when its peer runs an XDP program (a pass is enough).
ip -n $CLI link set $CLI_IF xdpdrv obj data-plane/xdp/rauta_xdp.o sec xdp program xdp_pass

# --- backend and the nginx peer --------------------------------------------------------------
nginx_conf backend "  server {
    listen 127.0.0.1:$BACKEND;
    location = /flags { add_header Cache-Control \"max-age=3600\"; return 200 '{\"beta\":true}'; }
  }"
nginx_conf nginx "  proxy_cache_path $work/nginx/cache keys_zone=flags:1m;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 16; }
  server {
    listen $SRV_IP:$NGINX;
    location = /healthz { default_type text/plain; return 200 \"ok\n\"; }
    location = /flags {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_cache flags;
    }
  }"
# nginx's workers run as nobody: the cache must be theirs to write.
mkdir -p "$work/nginx/cache" && chmod 777 "$work/nginx/cache" && chmod 711 "$work" "$work/nginx"
in_srv taskset -c "$SERVER_CPU" nginx -c "$work/backend/nginx.conf" -p "$work/backend" &
pids+=($!)
in_srv taskset -c "$SERVER_CPU" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)

# --- RAUTA: one controller, two proxies (XDP on the interface, and user space only) ----------
mkdir -p "$work/config"
{ bench_backend_yaml $BACKEND; cat <<EOF
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: bench}
spec:
  gatewayClassName: rauta
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: DirectResponse
metadata: {name: healthz, namespace: bench}
spec: {status: 200, body: "ok\n"}
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: ResponseCache
metadata: {name: flags, namespace: bench}
spec: {maxTTL: 1h}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: bench}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: Exact, value: /healthz}}]
    filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: DirectResponse, name: healthz}}]
  - matches: [{path: {type: Exact, value: /flags}}]
    filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: ResponseCache, name: flags}}]
    backendRefs: [{name: backend, port: 80}]
EOF
} >"$work/config/bench.yaml"
in_srv taskset -c "$SERVER_CPU" "$bin/rauta-controller" --config-dir "$work/config" \
  --no-status-files --grpc-listen 127.0.0.1:18095 --plaintext 2>"$work/controller.log" &
pids+=($!)
proxy() { # offset, admin port, log, extra flags...
  local offset=$1 admin=$2 log=$3
  shift 3
  in_srv taskset -c "$SERVER_CPU" "$bin/rauta-proxy" --controller http://127.0.0.1:18095 \
    --gateway bench/gw --bind-address 0.0.0.0 --listener-port-offset "$offset" \
    --admin-listen "127.0.0.1:$admin" --worker-threads 1 "$@" 2>"$log" &
}
proxy $XDP_OFFSET 18096 "$work/xdp-proxy.log" --xdp-interface $SRV_IF --xdp-mode "$XDP_MODE"
pids+=($!)
proxy $USER_OFFSET 18196 "$work/user-proxy.log"
pids+=($!)

port_of() {
  case $1 in
    xdp) echo $((XDP_OFFSET + 80)) ;;
    user) echo $((USER_OFFSET + 80)) ;;
    nginx) echo $NGINX ;;
  esac
}
url_of() { echo "http://$SRV_IP:$(port_of "$1")$2"; }
metric() { # admin port, series prefix
  in_srv curl -s "http://127.0.0.1:$1/metrics" | awk -v s="$2" 'index($0, s) == 1 {t += $NF} END {print t + 0}'
}

# Ready, and the caches filled (the kernel takes cached answers within a second).
for t in xdp user nginx; do
  for path in /healthz /flags; do
    ok=
    for _ in $(seq 1 200); do
      in_cli curl -fsS -o /dev/null "$(url_of "$t" "$path")" 2>/dev/null && { ok=1; break; }
      sleep 0.05
    done
    [ -n "$ok" ] || {
      echo "$t does not answer $(url_of "$t" "$path")" >&2
      tail "$work"/*.log "$work"/*/error.log >&2
      exit 1
    }
  done
done
grep -qi "xdp fast path attached" "$work/xdp-proxy.log" ||
  { echo "the XDP program did not attach:" >&2; cat "$work/xdp-proxy.log" >&2; exit 1; }
sleep 2

# wrk's latency in ms ("812.00us", "1.20ms", "1.01s").
to_ms() { awk '{v = $1 + 0; if ($1 ~ /us$/) v /= 1000; else if ($1 ~ /[0-9]s$/ && $1 !~ /ms$/) v *= 1000; printf "%.3f", v}'; }
# Busy CPU time of the whole machine in ticks (all but idle and iowait), from /proc/stat.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# One load run: prints "rps p50_ms p99_ms errors server_cpu_us_per_req". The server side's CPU
# is the machine's busy time less the load generator's own (its user and system time, which
# bash's `times` reports for the subshell's children): the serving processes, and the
# kernel's work in softirq wherever it ran (the XDP program's included), on both CPUs.
run_load() {
  local out rps p50 p99 errors before after requests wrk_ticks
  before=$(busy_ticks)
  out=$(in_cli taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
    -H "Connection: close" "$(url_of "$1" "$2")"; times)
  after=$(busy_ticks)
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}' | to_ms)
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}' | to_ms)
  errors=$(echo "$out" | wrk_errors)
  # times' last line: the children's "XmY.YYYs XmZ.ZZZs" (user, system).
  wrk_ticks=$(echo "$out" | tail -1 | awk '{
    t = 0
    for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
    printf "%.0f", t * 100 }')
  awk -v rps="$rps" -v a="$p50" -v b="$p99" -v e="$errors" -v r="$requests" \
    -v t=$((after - before - wrk_ticks)) \
    'BEGIN { printf "%s %s %s %d %.1f\n", rps, a, b, e, (r > 0 ? t * 10000 / r : 0) }'
}

answered_before=$(metric 18096 rauta_proxy_xdp_answered_total)
declare -A rps p50 p99 errs cpu
cells=(xdp:/healthz user:/healthz nginx:/healthz xdp:/flags user:/flags nginx:/flags)
for _ in $(seq 1 "$REPEATS"); do
  for cell in "${cells[@]}"; do
    read -r r a b e c < <(run_load "${cell%%:*}" "${cell#*:}")
    rps[$cell]+="$r "
    p50[$cell]+="$a "
    p99[$cell]+="$b "
    cpu[$cell]+="$c "
    errs[$cell]=$(( ${errs[$cell]:-0} + e ))
  done
done
answered=$(awk -v a="$(metric 18096 rauta_proxy_xdp_answered_total)" -v b="$answered_before" 'BEGIN {printf "%.0f", a - b}')
user_routed=$(metric 18096 'rauta_proxy_requests_total{route="bench/bench/rule/0"')


echo
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -sr)"
echo "load: wrk -t1 -c$CONNS -H 'Connection: close' from another network namespace over a veth (XDP $XDP_MODE); servers on CPU $SERVER_CPU, load on CPU $CLIENT_CPU; ${REPEATS}x${DURATION}s per cell"
echo
printf "| %-7s | %-10s | %-28s | %-20s | %-22s | %-22s | %-6s |\n" answer by "req/s median [min-max]" "server CPU us/req" "p50 ms" "p99 ms" errors
printf "|%s|%s|%s|%s|%s|%s|%s|\n" --------- ------------ ------------------------------ ---------------------- ------------------------ ------------------------ --------
name() { case $1 in xdp) echo "rauta XDP" ;; user) echo "rauta user" ;; nginx) echo nginx ;; esac; }
for cell in "${cells[@]}"; do
  kind=static; [ "${cell#*:}" = /flags ] && kind=cached
  printf "| %-7s | %-10s | %-28s | %-20s | %-22s | %-22s | %-6s |\n" "$kind" "$(name "${cell%%:*}")" \
    "$(echo "${rps[$cell]}" | median)" "$(echo "${cpu[$cell]}" | median)" \
    "$(echo "${p50[$cell]}" | median)" "$(echo "${p99[$cell]}" | median)" "${errs[$cell]}"
done
echo
echo "answered by the XDP program during the runs: $answered; requests the XDP proxy's user space routed to the static rule, in all: ${user_routed%.*}"
ratio() { awk -v a="$(echo "$1" | med)" -v b="$(echo "$2" | med)" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
echo "xdp_vs_nginx_static=$(ratio "${rps[xdp:/healthz]}" "${rps[nginx:/healthz]}")"
echo "xdp_vs_nginx_cached=$(ratio "${rps[xdp:/flags]}" "${rps[nginx:/flags]}")"
echo "xdp_p99_reduction=$(ratio "${p99[user:/healthz]}" "${p99[xdp:/healthz]}")"
echo "xdp_server_cpu_vs_user_static=$(ratio "${cpu[xdp:/healthz]}" "${cpu[user:/healthz]}")"
echo "xdp_server_cpu_vs_user_cached=$(ratio "${cpu[xdp:/flags]}" "${cpu[user:/flags]}")"
echo "xdp_server_cpu_vs_nginx_static=$(ratio "${cpu[xdp:/healthz]}" "${cpu[nginx:/healthz]}")"
echo "xdp_cached_speedup=$(ratio "${rps[xdp:/flags]}" "${rps[user:/flags]}")"
echo "xdp_speedup=$(ratio "${rps[xdp:/healthz]}" "${rps[user:/healthz]}")"
