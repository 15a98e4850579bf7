#!/usr/bin/env bash
# Proxy benchmark: rauta-proxy against nginx and HAProxy as reverse proxies in front of the same
# nginx backend, measured in one run, alternating targets, every repeat.
#
# Generator, backend and proxy share ONE CPU (taskset): on a 2-vCPU VM, splitting them across
# CPUs mostly measures cross-CPU wake-ups. What matters is each proxy's CPU time per request
# (user+system from /proc/PID/stat over the run, divided by the requests served) and the
# latency it adds at one connection. Not a test: figures depend on the machine.
#
#   benches/proxy.sh                      # 3 repeats of 5 s per target and protocol
#   REPEATS=5 DURATION=10 benches/proxy.sh
#   BASELINE=/tmp/rauta-proxy-old benches/proxy.sh   # also measures another build, side by side
#   PARTS=http benches/proxy.sh           # HTTP only; PARTS=l4: the TCP/UDP relays only
#   ROWS=rauta,rauta-gzip,nginx-gzip PARTS=http benches/proxy.sh   # some rows only (and direct)
#
# PARTS=http,fresh,l4 (the default) runs the HTTP part, then benches/fresh.sh (a new
# connection per request, HTTP/1.1 and HTTPS with a TLS 1.3 handshake each, against nginx and
# HAProxy), then benches/l4.sh (the TCP and UDP relays against HAProxy and nginx's stream
# module), each once the previous part's servers are stopped; REPEATS, DURATION, BASELINE and
# BENCH_CPU apply to all.
#
# Between runs the figures move by about ±10% on a VM, too much to see a change of a few
# percent: BASELINE runs a second rauta-proxy (say, a build of the previous commit) in the same
# run, alternating with the others, and prints rauta's CPU per request over the baseline's.
#
# Rows rauta-rl and nginx-rl: the same proxies with a local rate limit on the route, per client
# address, set so high that nothing is refused (RateLimitPolicy; nginx limit_req with nodelay):
# what counting costs per request, printed as rate_limit_added_cpu_us_{rauta,nginx}=X.
#
# Rows rauta-jwt and rauta-jwt-cold: a JWT policy on the route (SecurityPolicy jwt, keys
# inline). rauta-jwt sends one RS256 token, as a client reusing its token does: its signature
# is checked once and the token then remembered (jwt_added_cpu_us_{h1,h2c}=X, the figure the
# target of 10 us is for). rauta-jwt-cold (HTTP/1.1 only: a wrk script) sends 20000 distinct
# ES256 tokens in turn, more than the proxy remembers, so every request has its signature
# checked: the worst case (jwt_cold_added_cpu_us_h1=X). nginx has no JWT module to compare.
#
# Rows rauta-gzip and nginx-gzip: a 10 KB JSON document (150 user objects, a static file of the
# backend, which does not compress) asked for with Accept-Encoding: gzip, the proxy compressing
# it at level 1 (TrafficPolicy compression on the route; nginx gzip_comp_level 1, gzip_proxied
# any); rows rauta-json and nginx-json: the same request without compression. Both proxies are
# checked once with curl to answer gzip that decompresses to the file. Printed:
# compression_cpu_us_per_req_{rauta,nginx}=X (HTTP/1.1; _h2c for h2c), what compressing adds
# to the CPU per request (gzip row over json row), and compression_vs_nginx=X, rauta's CPU per
# request over nginx's, both compressing (HTTP/1.1). rauta compresses on its general path, not
# its fast paths.
#
# Rows rauta-trace-100 and rauta-trace-1: two more rauta-proxy processes, the plain route, each
# exporting a span per sampled request over OTLP/gRPC (--trace-sampling 1 and 0.01; requests
# carry no traceparent, so the ratio decides) to one rauta-otlp-sink on the other CPU, which
# counts them: trace_added_cpu_us_{100,1}_{h1,h2c}=X (over the plain rauta row), then
# trace_{100,1}_spans_exported=N dropped=M failed=F requests=R (rauta_proxy_trace_spans_total
# of that proxy; requests: those the loads served) and trace_sink_spans=N (what the sink got
# from both). nginx has no tracing built in to compare.
#
# ROWS=a,b,... measures those rows only (direct, the base of the latency column, always
# runs) and prints the lines they allow; the default is every row.
#
# The HTTP part's last line: cpu_per_req_vs_nginx=X (rauta's CPU us/request over nginx's,
# HTTP/1.1; lower is better); benches/fresh.sh's and benches/l4.sh's lines follow.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/peers.sh
root=$(pwd)

PARTS=${PARTS:-http,fresh,l4}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
if ! part http; then
  part fresh && benches/fresh.sh
  part l4 && exec benches/l4.sh
  part fresh && exit 0
  echo "PARTS=$PARTS: nothing to run (parts: http, fresh, l4)" >&2
  exit 2
fi

REPEATS=${REPEATS:-3}
BASELINE=${BASELINE:-}
DURATION=${DURATION:-5}
CPU=${BENCH_CPU:-0}
OTHER_CPU=$(( (CPU + 1) % $(nproc) ))
ROUTES_FOR_RSS=${ROUTES_FOR_RSS:-10000}

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

cargo build --release --quiet -p rauta-controller -p rauta-proxy -p rauta-tests \
  --bin rauta-controller --bin rauta-proxy --bin rauta-jwt-tokens --bin rauta-otlp-sink

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

BACKEND=18081 BACKEND_H2=18082
NGINX=18091 NGINX_H2=18092 HAPROXY=18093 RAUTA=18094 RAUTA_BASELINE=18194
NGINX_RL=18097 NGINX_RL_H2=18098 NGINX_GZIP=18087 NGINX_GZIP_H2=18088
RAUTA_TRACE100=18294 RAUTA_TRACE1=18394 OTLP_SINK=18099

# Background servers are started with taskset directly (not through a shell function), so
# that $! is the server's own pid.
pinned() { taskset -c "$CPU" "$@"; }

# --- backend: nginx answering a tiny body, HTTP/1.1 and h2c ---------------------------------
# and, at /doc.json and /gzip/doc.json, a 10 KB JSON document (uncompressed: nginx's gzip is off).
mkdir -p "$work/backend/www" "$work/nginx"
DOC="$work/backend/www/doc.json"
python3 - "$DOC" <<'EOF'
import json, random, sys
rng = random.Random(7)
first = ["ada", "alan", "grace", "linus", "barbara", "ken", "margaret", "dennis", "edsger", "frances", "john", "radia"]
last = ["lovelace", "turing", "hopper", "torvalds", "liskov", "thompson", "hamilton", "ritchie", "dijkstra", "allen", "backus", "perlman"]
users = [{"id": 48213 + i * 7 + rng.randrange(7), "login": rng.choice(first)[0] + rng.choice(last),
          "role": rng.choice(["admin", "editor", "viewer"]), "seen": f"2024-{rng.randint(1, 12):02}-{rng.randint(1, 28):02}"}
         for i in range(150)]
open(sys.argv[1], "w").write(json.dumps({"users": users, "total": len(users)}, separators=(",", ":")))
EOF
# nginx's worker (nobody, when started as root) reads it through the private scratch folder.
chmod 755 "$work" "$work/backend" "$work/backend/www"
# What both nginx instances share: one worker, in the foreground, files under their folder.
nginx_head() {
  cat <<EOF
worker_processes 1;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log;
events { worker_connections 4096; }
EOF
}
{ nginx_head backend; cat <<EOF
http {
  access_log off;
  keepalive_requests 1000000;
  open_file_cache max=16;
  server {
    listen 127.0.0.1:$BACKEND;
    listen 127.0.0.1:$BACKEND_H2 http2;
    location / { return 200 "ok\n"; }
    location = /doc.json { root $work/backend/www; default_type application/json; }
    location = /gzip/doc.json { alias $DOC; default_type application/json; }
  }
}
EOF
} >"$work/backend/nginx.conf"
taskset -c "$CPU" nginx -c "$work/backend/nginx.conf" -p "$work/backend" &
pids+=($!)

# --- nginx as a reverse proxy: 1 worker, upstream keepalive -----------------------------------
{ nginx_head nginx; cat <<EOF
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; }
  limit_req_zone \$binary_remote_addr zone=perclient:10m rate=100000000r/s;
  server {
    listen 127.0.0.1:$NGINX;
    listen 127.0.0.1:$NGINX_H2 http2;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:$NGINX_RL;
    listen 127.0.0.1:$NGINX_RL_H2 http2;
    location / {
      limit_req zone=perclient burst=1000000 nodelay;
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:$NGINX_GZIP;
    listen 127.0.0.1:$NGINX_GZIP_H2 http2;
    gzip on;
    gzip_comp_level 1;
    gzip_types application/json;
    gzip_min_length 1024;
    gzip_proxied any;
    gzip_vary on;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} >"$work/nginx/nginx.conf"
taskset -c "$CPU" nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)
nginx_master=$!

# --- HAProxy: one thread, connection reuse -------------------------------------------------
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY
  default_backend be
backend be
  server b1 127.0.0.1:$BACKEND
EOF
taskset -c "$CPU" haproxy -f "$work/haproxy.cfg" -db &
pids+=($!)
haproxy_pid=$!

# --- RAUTA: the controller (on the other CPU) and one proxy with one worker thread ----------
mkdir -p "$work/config" "$work/jwt"
target/release/rauta-jwt-tokens --dir "$work/jwt" --count 20000
JWT_TOKEN=$(cat "$work/jwt/token-rs256")
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
  listeners: [{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: bench}
spec:
  ports: [{name: http, port: 80, targetPort: $BACKEND}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: backend-1, namespace: bench, labels: {kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{name: http, port: $BACKEND}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all, namespace: bench}
spec:
  parentRefs: [{name: gw}]
  rules:
  - name: limited
    matches: [{path: {type: PathPrefix, value: /limited}}]
    backendRefs: [{name: backend, port: 80}]
  - name: jwt
    matches: [{path: {type: PathPrefix, value: /jwt}}]
    backendRefs: [{name: backend, port: 80}]
  - name: jwt-cold
    matches: [{path: {type: PathPrefix, value: /jwt-cold}}]
    backendRefs: [{name: backend, port: 80}]
  - name: gzip
    matches: [{path: {type: PathPrefix, value: /gzip}}]
    backendRefs: [{name: backend, port: 80}]
  - backendRefs: [{name: backend, port: 80}]
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: jwt, namespace: bench}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: all, sectionName: jwt}]
  jwt:
    providers:
    - {name: bench, issuer: https://bench, audiences: [bench], localJWKS: {inline: '$(cat "$work/jwt/jwks-rs256.json")'}, claimToHeaders: [{header: x-sub, claim: sub}]}
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: jwt-cold, namespace: bench}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: all, sectionName: jwt-cold}]
  jwt:
    providers:
    - {name: bench, issuer: https://bench, audiences: [bench], localJWKS: {inline: '$(cat "$work/jwt/jwks-es256.json")'}, claimToHeaders: [{header: x-sub, claim: sub}]}
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: gzip, namespace: bench}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: all, sectionName: gzip}]
  compression: {encodings: [Gzip], level: 1}
---
apiVersion: gateway.rauta.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: perclient, namespace: bench}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: all, sectionName: limited}]
  local:
    limits: [{requests: 1000000000, unit: Second, key: [{type: ClientAddress}]}]
EOF
taskset -c "$OTHER_CPU" target/release/rauta-controller --config-dir "$work/config" --no-status-files \
  --grpc-listen 127.0.0.1:18095 --plaintext 2>"$work/controller.log" &
pids+=($!)
taskset -c "$CPU" target/release/rauta-proxy --controller http://127.0.0.1:18095 --gateway bench/gw \
  --bind-address 127.0.0.1 --listener-port-offset $((RAUTA - 80)) --admin-listen 127.0.0.1:18096 \
  --worker-threads 1 2>"$work/proxy.log" &
pids+=($!)
rauta_pid=$!
# The tracing rows' proxies, exporting to one span sink on the other CPU (as the controller):
# a collector sharing the proxies' CPU would be measured with them.
taskset -c "$OTHER_CPU" target/release/rauta-otlp-sink --listen 127.0.0.1:$OTLP_SINK \
  >"$work/sink.out" 2>"$work/sink.log" &
pids+=($!)
sink_pid=$!
declare -A trace_pid trace_admin
for ratio in 100 1; do
  port=RAUTA_TRACE$ratio
  trace_admin[$ratio]=$(( ${!port} + 2 ))
  taskset -c "$CPU" target/release/rauta-proxy --controller http://127.0.0.1:18095 --gateway bench/gw \
    --bind-address 127.0.0.1 --listener-port-offset $(( ${!port} - 80 )) \
    --admin-listen 127.0.0.1:${trace_admin[$ratio]} --worker-threads 1 \
    --otlp-endpoint http://127.0.0.1:$OTLP_SINK --trace-sampling "$(awk -v r=$ratio 'BEGIN { print r / 100 }')" \
    2>"$work/proxy-trace-$ratio.log" &
  pids+=($!)
  trace_pid[$ratio]=$!
done
baseline_pid=
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
  taskset -c "$CPU" "$BASELINE" --controller http://127.0.0.1:18095 --gateway bench/gw \
    --bind-address 127.0.0.1 --listener-port-offset $((RAUTA_BASELINE - 80)) \
    --admin-listen 127.0.0.1:18196 --worker-threads 1 2>"$work/baseline.log" &
  pids+=($!)
  baseline_pid=$!
fi

wait_http() {
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing answers on port $1" >&2
  exit 1
}
for port in $BACKEND $NGINX $NGINX_RL $NGINX_GZIP $HAPROXY $RAUTA $RAUTA_TRACE100 $RAUTA_TRACE1 \
  ${BASELINE:+$RAUTA_BASELINE}; do
  wait_http "$port"
done
# Something else on a port (a leftover run) would answer for a server that failed to start.
for p in "${pids[@]}"; do
  kill -0 "$p" 2>/dev/null || { echo "a server exited at start (pid $p); is a port in use?" >&2; exit 1; }
done

# The compression rows must measure what they say: the backend answers the document as it is,
# the json rows pass it through, the gzip rows answer gzip that decompresses to it; both
# protocols. A route not yet arrived (the gzip rule) answers 404: wait for it.
fetch() { # fetch PORT PATH CURL-ARGS...: the headers in $work/fetch.head, the body in $work/fetch.body
  local port=$1 path=$2; shift 2
  curl -sS --max-time 5 "$@" -H 'Accept-Encoding: gzip' -D "$work/fetch.head" -o "$work/fetch.body" \
    -w '%{http_code}' "http://127.0.0.1:$port$path"
}
check_doc() { # check_doc NAME PORT PATH gzip|plain CURL-ARGS...
  local name=$1 port=$2 path=$3 want=$4 status ok=
  shift 4
  for _ in $(seq 1 100); do
    status=$(fetch "$port" "$path" "$@" || true)
    [ "$status" = 200 ] && break
    sleep 0.1
  done
  if [ "$want" = gzip ]; then
    grep -qi '^content-encoding: *gzip' "$work/fetch.head" &&
      gunzip -c "$work/fetch.body" 2>/dev/null | cmp -s - "$DOC" && ok=1
  else
    ! grep -qi '^content-encoding:' "$work/fetch.head" && cmp -s "$work/fetch.body" "$DOC" && ok=1
  fi
  if [ "$status" != 200 ] || [ -z "$ok" ]; then
    echo "$name ($*): expected a 200 with the document, $want; got $status and:" >&2
    cat "$work/fetch.head" >&2
    exit 1
  fi
}
for proto in h1 h2c; do
  args=(); [ $proto = h2c ] && args=(--http2-prior-knowledge)
  bport=$BACKEND; [ $proto = h2c ] && bport=$BACKEND_H2
  nport=$NGINX; [ $proto = h2c ] && nport=$NGINX_H2
  gport=$NGINX_GZIP; [ $proto = h2c ] && gport=$NGINX_GZIP_H2
  check_doc backend "$bport" /gzip/doc.json plain "${args[@]}"
  check_doc nginx-json "$nport" /doc.json plain "${args[@]}"
  check_doc nginx-gzip "$gport" /gzip/doc.json gzip "${args[@]}"
  check_doc rauta-json "$RAUTA" /doc.json plain "${args[@]}"
  check_doc rauta-gzip "$RAUTA" /gzip/doc.json gzip "${args[@]}"
done

nginx_pids() { echo "$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')"; }
pids_of() {
  case $1 in
    nginx|nginx-rl|nginx-json|nginx-gzip) nginx_pids ;;
    haproxy) echo "$haproxy_pid" ;;
    rauta|rauta-rl|rauta-jwt|rauta-jwt-cold|rauta-json|rauta-gzip) echo "$rauta_pid" ;;
    rauta-trace-100) echo "${trace_pid[100]}" ;;
    rauta-trace-1) echo "${trace_pid[1]}" ;;
    baseline) echo "$baseline_pid" ;;
    direct) echo "" ;;
  esac
}
port_of() {
  case $1:$2 in
    direct:h1) echo $BACKEND ;; direct:h2c) echo $BACKEND_H2 ;;
    nginx:h1) echo $NGINX ;; nginx:h2c) echo $NGINX_H2 ;;
    nginx-rl:h1) echo $NGINX_RL ;; nginx-rl:h2c) echo $NGINX_RL_H2 ;;
    nginx-json:h1) echo $NGINX ;; nginx-json:h2c) echo $NGINX_H2 ;;
    nginx-gzip:h1) echo $NGINX_GZIP ;; nginx-gzip:h2c) echo $NGINX_GZIP_H2 ;;
    rauta-rl:*|rauta-jwt:*|rauta-jwt-cold:*|rauta-json:*|rauta-gzip:*) echo $RAUTA ;;
    rauta-trace-100:*) echo $RAUTA_TRACE100 ;;
    rauta-trace-1:*) echo $RAUTA_TRACE1 ;;
    haproxy:*) echo $HAPROXY ;;
    rauta:*) echo $RAUTA ;;
    baseline:*) echo $RAUTA_BASELINE ;;
  esac
}

# The rate-limited, JWT and gzip rows ask for the rule their policy is on; the json rows for
# the same document uncompressed.
path_of() {
  case $1 in
    rauta-rl) echo /limited ;; rauta-jwt) echo /jwt ;; rauta-jwt-cold) echo /jwt-cold ;;
    rauta-json|nginx-json) echo /doc.json ;; rauta-gzip|nginx-gzip) echo /gzip/doc.json ;;
    *) echo / ;;
  esac
}

# One load run: prints "requests rps cpu_us_per_req".
run_load() {
  local target=$1 proto=$2 conns=$3 port out before after requests rps path
  port=$(port_of "$target" "$proto")
  path=$(path_of "$target")
  local procs; procs=$(pids_of "$target")
  before=$( [ -n "$procs" ] && ticks $procs || echo 0 )
  local auth=(); [ "$target" = rauta-jwt ] && auth=(-H "Authorization: Bearer $JWT_TOKEN")
  [ "$target" = rauta-jwt-cold ] && auth=(-s "$work/jwt/tokens-es256.lua")
  case $target in *-json|*-gzip) auth=(-H "Accept-Encoding: gzip") ;; esac
  if [ "$proto" = h1 ]; then
    out=$(pinned wrk -t1 -c"$conns" -d"${DURATION}s" "${auth[@]}" "http://127.0.0.1:$port$path")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  else
    local streams=8; [ "$conns" = 1 ] && streams=1
    out=$(pinned h2load -c"$conns" -m"$streams" -D "$DURATION" "${auth[@]}" "http://127.0.0.1:$port$path")
    requests=$(echo "$out" | awk '/^requests:/ {print $8}')
    rps=$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
  fi
  after=$( [ -n "$procs" ] && ticks $procs || echo 0 )
  awk -v r="$requests" -v rps="$rps" -v t=$((after - before)) \
    'BEGIN { printf "%d %.0f %.2f\n", r, rps, (r > 0 ? t * 10000 / r : 0) }'
}

all_targets=(direct nginx nginx-rl nginx-json nginx-gzip haproxy rauta rauta-rl rauta-jwt rauta-jwt-cold
  rauta-json rauta-gzip rauta-trace-100 rauta-trace-1)
ROWS=${ROWS:-}
for t in ${ROWS//,/ }; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "ROWS: no row $t (rows: ${all_targets[*]})" >&2; exit 2; }
done
targets=()
for t in "${all_targets[@]}"; do
  [ -z "$ROWS" ] || [ "$t" = direct ] || [[ ",$ROWS," == *",$t,"* ]] && targets+=("$t")
done
[ -n "$BASELINE" ] && targets+=(baseline)
declare -A rps cpu lat served
for _ in $(seq 1 "$REPEATS"); do
  for proto in h1 h2c; do
    for t in "${targets[@]}"; do
      # One wrk script varies the token per request; h2load cannot.
      [ "$t:$proto" = rauta-jwt-cold:h2c ] && continue
      conns=32; [ $proto = h2c ] && conns=4
      read -r n r c < <(run_load "$t" "$proto" "$conns")
      rps[$t:$proto]+="$r "
      cpu[$t:$proto]+="$c "
      read -r n1 r1 _ < <(run_load "$t" "$proto" 1)
      lat[$t:$proto]+="$(awk -v r="$r1" 'BEGIN { printf "%.1f", 1e6 / r }') "
      served[$t]=$(( ${served[$t]:-0} + n + n1 ))
    done
  done
done
# Whether a row was measured (ROWS), and a derived figure of two rows' median CPU per request:
# derived KEY difference|ratio ROW BASE-ROW PROTO prints KEY=X when both were measured.
measured() { [ -n "${cpu[$1:$2]:-}" ]; }
derived() {
  measured "$3" "$5" && measured "$4" "$5" || return 0
  awk -v a="$(echo "${cpu[$3:$5]}" | med)" -v b="$(echo "${cpu[$4:$5]}" | med)" -v k="$1" -v op="$2" \
    'BEGIN { if (op == "ratio") printf "%s=%.2f\n", k, a / b; else printf "%s=%.2f\n", k, a - b }'
}


echo
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -sr); everything on CPU $CPU; ${REPEATS}x${DURATION}s per cell"
echo "HTTP/1.1: wrk -t1 -c32 keep-alive; h2c: h2load -c4 -m8 prior knowledge; latency: one connection, 1e6/(req/s)"
echo
printf "| %-15s | %-5s | %-28s | %-24s | %-16s |\n" target proto "req/s median [min-max]" "CPU us/req median [min-max]" "added us/req @c1"
printf "|%s|%s|%s|%s|%s|\n" ----------------- ------- ------------------------------ ---------------------------- ------------------
for proto in h1 h2c; do
  base=$(echo "${lat[direct:$proto]}" | med)
  for t in "${targets[@]}"; do
    [ -n "${rps[$t:$proto]:-}" ] || continue
    l=$(echo "${lat[$t:$proto]}" | med)
    added=$(awk -v l="$l" -v b="$base" 'BEGIN { printf "%+.1f", l - b }')
    c="-"; [ "$t" != direct ] && c=$(echo "${cpu[$t:$proto]}" | median)
    printf "| %-15s | %-5s | %-28s | %-26s | %-16s |\n" "$t" "$proto" "$(echo "${rps[$t:$proto]}" | median)" "$c" "$added"
  done
done
if [ -n "$BASELINE" ]; then
  echo
  for proto in h1 h2c; do
    measured rauta "$proto" || continue
    awk -v r="$(echo "${cpu[rauta:$proto]}" | med)" -v b="$(echo "${cpu[baseline:$proto]}" | med)" \
      -v p="$proto" 'BEGIN { printf "cpu_per_req_vs_baseline_%s=%.3f\n", p, r / b }'
  done
fi

# Memory: idle, then with ROUTES_FOR_RSS routes (one hostname each) loaded.
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/${1:-$rauta_pid}/status"; }
echo
echo "rauta-proxy RSS: $(rss) MiB with 1 route"
[ -n "$baseline_pid" ] && echo "baseline RSS: $(rss "$baseline_pid") MiB with 1 route"
# 500 routes per file: the YAML reader refuses files of more than 1024 documents.
python3 - "$work/config" "$ROUTES_FOR_RSS" <<'EOF'
import sys
folder, n = sys.argv[1], int(sys.argv[2])
docs = [f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: bench}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [r{i}.example.com]\n  rules: [{{matches: [{{path: {{type: PathPrefix, value: /r{i}}}}}], filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-route, value: r{i}}}]}}}}], backendRefs: [{{name: backend, port: 80}}]}}]\n" for i in range(n)]
for start in range(0, n, 500):
    open(f"{folder}/routes-{start // 500:03}.yaml", "w").write("---\n".join(docs[start:start + 500]))
EOF
last="r$((ROUTES_FOR_RSS - 1)).example.com"
# The catch-all route answers every host too: wait for the last new route's own header.
arrived=
for _ in $(seq 1 600); do
  if curl -s -D - -o /dev/null -H "Host: $last" "http://127.0.0.1:$RAUTA/r$((ROUTES_FOR_RSS - 1))/x" |
    grep -qi "^x-route: r$((ROUTES_FOR_RSS - 1))"; then
    arrived=1
    break
  fi
  sleep 0.1
done
[ -n "$arrived" ] || { echo "the $ROUTES_FOR_RSS routes did not arrive" >&2; exit 1; }
on_arrival=$(rss)
# Building the new state needs the old and the new side by side; jemalloc hands the old one
# back to the system within about a second.
sleep 3
echo "rauta-proxy RSS: $(rss) MiB with $ROUTES_FOR_RSS routes, settled ($on_arrival MiB when the last route arrived)"
# The baseline subscribes to the same controller: it has the same routes by now.
[ -n "$baseline_pid" ] && echo "baseline RSS: $(rss "$baseline_pid") MiB with $ROUTES_FOR_RSS routes, settled"

# Nothing may have been refused: a 429 costs less than forwarding and would flatter the row.
if curl -s "http://127.0.0.1:18096/metrics" | grep -q 'rauta_proxy_rate_limit_requests_total{.*result="limited"} [1-9]'; then
  echo "the rate-limited rows were refused requests: the limit is too low for this machine" >&2
  exit 1
fi
for proto in h1 h2c; do
  for t in rauta nginx; do
    derived "rate_limit_added_cpu_us_${t}_$proto" difference "$t-rl" "$t" "$proto"
  done
done

# Every JWT row request must have passed: a 401 costs less than forwarding.
if curl -s "http://127.0.0.1:18096/metrics" |
  grep -E 'rauta_proxy_auth_requests_total\{method="jwt"' | grep -v 'result="allowed"' | grep -qE ' [1-9]'; then
  echo "JWT rows had requests refused: see rauta_proxy_auth_requests_total" >&2
  exit 1
fi
for proto in h1 h2c; do
  derived "jwt_added_cpu_us_$proto" difference rauta-jwt rauta "$proto"
done
derived jwt_cold_added_cpu_us_h1 difference rauta-jwt-cold rauta h1

# Compression: what compressing adds (the gzip row over the json row, the same document
# uncompressed), then rauta's CPU per request over nginx's, both compressing.
for proto in h1 h2c; do
  suffix=; [ "$proto" = h2c ] && suffix=_h2c
  for t in rauta nginx; do
    derived "compression_cpu_us_per_req_$t$suffix" difference "$t-gzip" "$t-json" "$proto"
  done
done
derived compression_vs_nginx ratio rauta-gzip nginx-gzip h1
derived compression_vs_nginx_h2c ratio rauta-gzip nginx-gzip h2c

# Tracing: what exporting a span per sampled request adds over the plain row, then whether the
# exporter kept up. The exporter sends a batch at least once a second: the RSS part above took
# longer than that since the last request, so every span is counted by now.
for ratio in 100 1; do
  for proto in h1 h2c; do
    derived "trace_added_cpu_us_${ratio}_$proto" difference "rauta-trace-$ratio" rauta "$proto"
  done
done
spans() { # spans ADMIN-PORT RESULT
  curl -s "http://127.0.0.1:$1/metrics" |
    awk -v k="rauta_proxy_trace_spans_total{result=\"$2\"}" '$1 == k { n = $2 } END { print n + 0 }'
}
exported=0
for ratio in 100 1; do
  # Rows left out (ROWS=) print nothing: their proxies served only the start-up check.
  measured "rauta-trace-$ratio" h1 || measured "rauta-trace-$ratio" h2c || continue
  e=$(spans "${trace_admin[$ratio]}" exported)
  d=$(spans "${trace_admin[$ratio]}" dropped)
  f=$(spans "${trace_admin[$ratio]}" failed)
  exported=$(( exported + e ))
  echo "trace_${ratio}_spans_exported=$e dropped=$d failed=$f requests=${served[rauta-trace-$ratio]:-0}"
  [ "$d$f" = 00 ] || echo "rauta-trace-$ratio: $d spans dropped, $f failed (the exporter fell behind)" >&2
done
kill -TERM "$sink_pid"
wait "$sink_pid" || true
sink_spans=$(awk -F= '/^spans=/ { n = $2 } END { print n + 0 }' "$work/sink.out")
if measured rauta-trace-100 h1 || measured rauta-trace-1 h1; then
  echo "trace_sink_spans=$sink_spans"
  [ "$sink_spans" -ge "$exported" ] ||
    echo "the sink counted $sink_spans spans, the proxies $exported exported" >&2
fi

derived cpu_per_req_vs_nginx ratio rauta nginx h1

if part fresh || part l4; then
  cleanup
  trap - EXIT
fi
part fresh && benches/fresh.sh
part l4 && exec benches/l4.sh
exit 0
