#!/usr/bin/env bash
# Starts a working RAUTA gateway on localhost in standalone mode: three echo backends, the
# controller watching examples/standalone/, and one proxy serving the example Gateway.
# Stop everything with Ctrl-C.
#
# Environment: PROFILE=release builds optimised binaries (slower to build, faster to run).
# REDIS=1 also starts Debian's redis-server on 127.0.0.1:6380 (installed as root when missing)
# and gives it to the proxy for global rate limits (docs/policies.md).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-debug}"
config_dir="${CONFIG_DIR:-examples/standalone}"
logs="target/quickstart"
# Status files go under target/, not into the example directory, so that a clone's
# `git status` stays clean.
status_dir="target/standalone/status"
mkdir -p "$logs" "$status_dir"

echo "==> building binaries ($profile)"
if [ "$profile" = release ]; then cargo build --release --bins; else cargo build --bins; fi
bin="target/$profile"

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "==> stopping"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_http() { # url, what
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$2 did not come up; see $logs/" >&2
  exit 1
}

echo "==> starting echo backends on 127.0.0.1:9101-9103"
"$bin/rauta-echo" --http-port 9101 --pod web-v1-7f9c-a1b2 --namespace default >"$logs/web-v1.log" 2>&1 & pids+=($!)
"$bin/rauta-echo" --http-port 9102 --pod web-v2-5d6e-c3d4 --namespace default >"$logs/web-v2.log" 2>&1 & pids+=($!)
"$bin/rauta-echo" --http-port 9103 --pod api-8a7b-e5f6 --namespace default >"$logs/api.log" 2>&1 & pids+=($!)

echo "==> starting rauta-controller (config: $config_dir, gRPC 127.0.0.1:18000 in plaintext on loopback, metrics 127.0.0.1:18001)"
"$bin/rauta-controller" --config-dir "$config_dir" --status-dir "$status_dir" \
  --grpc-listen 127.0.0.1:18000 --metrics-listen 127.0.0.1:18001 \
  --plaintext 2>"$logs/controller.log" & pids+=($!)
wait_http http://127.0.0.1:18001/healthz "rauta-controller"

redis_flags=()
if [ "${REDIS:-0}" = 1 ]; then
  if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing redis-server (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  echo "==> starting redis-server on 127.0.0.1:6380 (global rate limits)"
  redis-server --bind 127.0.0.1 --port 6380 --save "" --appendonly no >"$logs/redis.log" 2>&1 & pids+=($!)
  redis_flags=(--rate-limit-redis redis://127.0.0.1:6380)
fi

echo "==> starting rauta-proxy for Gateway default/example (port 80 -> 127.0.0.1:8080, TCP 1080 -> :9080, admin 127.0.0.1:15000)"
"$bin/rauta-proxy" --controller http://127.0.0.1:18000 --gateway default/example \
  --listener-port-offset 8000 --bind-address 127.0.0.1 --admin-listen 127.0.0.1:15000 \
  "${redis_flags[@]}" 2>"$logs/proxy.log" & pids+=($!)
wait_http http://127.0.0.1:15000/readyz "rauta-proxy"

cat <<'TXT'

RAUTA is running. Try:

  curl -s http://127.0.0.1:8080/hello                          # 90% web-v1, 10% web-v2
  curl -s -H 'x-version: v2' http://127.0.0.1:8080/hello       # always web-v2 (header match)
  curl -s http://127.0.0.1:8080/status                         # exact path -> api
  curl -s http://127.0.0.1:8080/healthz                        # answered by the gateway (DirectResponse)
  curl -s -H 'Host: api.example.com' http://127.0.0.1:8080/x   # hostname -> api
  curl -s http://127.0.0.1:9080/hello                          # TCP listener, relayed to web-v1
  for i in $(seq 40); do curl -s -o /dev/null -w '%{http_code} ' -H 'Host: api.example.com' http://127.0.0.1:8080/x; done; echo
                                                               # 429 past a burst of 20 (RateLimitPolicy)
  curl -si -H 'Host: partner.example.com' http://127.0.0.1:8080/ | head -1   # 401 (SecurityPolicy: API keys)
  curl -s -H 'Host: partner.example.com' -H 'x-api-key: demo-key-alice-7c1f0d' http://127.0.0.1:8080/ | grep -i client-id
  curl -s -u staff:demo-password -H 'Host: staff.example.com' http://127.0.0.1:8080/ | grep -i x-user   # Basic auth
  curl -si -u staff:demo-password -X POST -H 'Host: staff.example.com' http://127.0.0.1:8080/ | head -1   # 403 (authorization: read-only)
  curl -s -D - -o /dev/null -H 'Accept-Encoding: br' http://127.0.0.1:8080/status | grep -i content-encoding   # br (TrafficPolicy)
  curl -s http://127.0.0.1:15000/endpoints                     # endpoint health: usable, and why not (BackendPolicy)
  curl -s http://127.0.0.1:15000/metrics | grep rauta_proxy_requests_total
  curl -s http://127.0.0.1:18001/metrics | grep rauta_controller

Inspect the controller over gRPC (reflection is on), e.g. with grpcurl:

  grpcurl -plaintext 127.0.0.1:18000 list
  grpcurl -plaintext 127.0.0.1:18000 rauta.v1.Admin/ListProxies
  grpcurl -plaintext -d '{"gateway":"default/example"}' 127.0.0.1:18000 rauta.v1.Admin/GetSnapshot

Edit examples/standalone/30-routes.yaml and watch routing change live.
Status of every object: target/standalone/status/. Logs: target/quickstart/. Press Ctrl-C to stop.
TXT
wait
