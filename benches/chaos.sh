#!/usr/bin/env bash
# Chaos: steady load through TWO rauta-proxy processes serving the same Gateway, in front of
# two echo backends, while everything around them fails, all at once and on 127.0.0.1:
#
#   - the controller is killed (-9) every CONTROLLER_UP seconds and restarted CONTROLLER_DOWN
#     seconds later;
#   - the config changes CHURN_RATE times a second: HTTPRoutes added, edited and removed (one
#     file each) and an extra Service's EndpointSlices flapping (the load's route and Service
#     stay as they are);
#   - one backend of the two (alternately) is killed (-9) every BACKEND_PERIOD seconds and
#     restarted BACKEND_DOWN seconds later: the load's route balances over both, round robin,
#     and retries on the other (HTTPRoute retry; RETRIES=0 leaves it out);
#   - each proxy in turn is drained with SIGTERM, waited for and restarted, PROXY_PERIOD
#     seconds after the other one came back.
#
# The load (benches/harness.py load): H1_CLIENTS HTTP/1.1 clients (keep-alive, a new
# connection every NEW_CONN_EVERY requests) and H2_CLIENTS h2c clients (4 streams each), RATE
# requests/s per client, behind an emulated load balancer that polls each proxy's /readyz
# every 100 ms and sends only to ready proxies. A request that fails on a proxy the driver had
# made not ready (draining, stopped, starting) before anything was answered is what any load
# balancer sees until its health check notices: it is counted as excused and sent to the other
# proxy. Every other failure counts, with its cause. At the end, each proxy must serve exactly
# the churn routes left on disk.
#
#   benches/chaos.sh                       # 3 minutes (DURATION=180), release build
#   benches/chaos.sh --short               # 45 s smoke run
#   BIN_DIR=target/debug benches/chaos.sh --short
#   OUTLIER_EJECTION=1s benches/chaos.sh   # more knobs: below, and benches/lib.sh's head
#
# With the product's defaults the run fails requests whenever a backend dies while the other,
# live one is still ejected by outlier detection (see "Chaos and soak" in docs/performance.md).
#
# Logs (every process's stderr, failed requests as JSON lines, the driver's events) are kept
# in target/chaos/. Last line: chaos_failed_requests=N (target: 0).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bench_args "$@"

[ "${1:-}" = --short ] && DURATION=${DURATION:-45}
DURATION=${DURATION:-180}
H1_CLIENTS=${H1_CLIENTS:-2}
H2_CLIENTS=${H2_CLIENTS:-2}
RATE=${RATE:-150}
NEW_CONN_EVERY=${NEW_CONN_EVERY:-50}
CHURN_RATE=${CHURN_RATE:-100}
CONTROLLER_UP=${CONTROLLER_UP:-4}
CONTROLLER_DOWN=${CONTROLLER_DOWN:-1}
BACKEND_PERIOD=${BACKEND_PERIOD:-6}
BACKEND_DOWN=${BACKEND_DOWN:-2}
PROXY_PERIOD=${PROXY_PERIOD:-10}

need_debs curl:curl ss:iproute2 python3:python3
need_python_h2
build_bins
check_ports_free
bench_dirs chaos
trap bench_cleanup EXIT INT TERM
write_base_config
write_churn_endpoints

# --- the chaos, one loop per kind of failure, each owning its processes -------------------

controller_loop() {
  trap - EXIT INT TERM
  local pid kills=0
  start_controller; pid=$!
  while nap "$CONTROLLER_UP"; do
    alive "$pid" || note "controller exited by itself (see controller.log)"
    event controller down
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
    nap "$CONTROLLER_DOWN" || true
    start_controller; pid=$!
    event controller up
  done
  echo "$kills" >"$work/controller_kills"
}

backend_loop() {
  trap - EXIT INT TERM
  local pid=() i=0 kills=0
  start_backend 0; pid[0]=$!
  start_backend 1; pid[1]=$!
  while nap "$((BACKEND_PERIOD - BACKEND_DOWN))"; do
    alive "${pid[$i]}" || note "backend-$i exited by itself"
    event "backend-$i" down
    kill -9 "${pid[$i]}" 2>/dev/null || true
    wait "${pid[$i]}" 2>/dev/null || true
    kills=$((kills + 1))
    nap "$BACKEND_DOWN" || true
    start_backend "$i"; pid[$i]=$!
    wait_port "${BACKEND_PORTS[$i]}" 10 || note "backend-$i did not come back in 10 s"
    event "backend-$i" up
    i=$((1 - i))
  done
  echo "$kills" >"$work/backend_kills"
}

proxy_loop() {
  trap - EXIT INT TERM
  local pid=() i=0 other rc t0 drains=0
  for i in 0 1; do
    event "proxy-$i" starting
    start_proxy "$i"; pid[$i]=$!
  done
  for i in 0 1; do
    proxy_ready "$i" 60 || { note "proxy-$i not ready after 60 s"; exit 1; }
    event "proxy-$i" up
  done
  touch "$work/proxies_up"
  i=0
  while nap "$PROXY_PERIOD"; do
    other=$((1 - i))
    # Drain one only while the other serves.
    if ! proxy_ready "$other" 30; then
      note "proxy-$other not ready for 30 s: proxy-$i is not drained this round"
      continue
    fi
    alive "${pid[$i]}" || note "proxy-$i exited by itself (see proxy-$i.log)"
    event "proxy-$i" draining
    t0=$EPOCHREALTIME
    kill -TERM "${pid[$i]}" 2>/dev/null || true
    if wait_exit "${pid[$i]}" 40; then
      rc=0; wait "${pid[$i]}" || rc=$?
    else
      note "proxy-$i still running 40 s after SIGTERM; killed"
      kill -9 "${pid[$i]}" 2>/dev/null || true
      rc=killed
    fi
    event "proxy-$i" down
    drains=$((drains + 1))
    echo "proxy-$i $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }') $rc" >>"$work/drains"
    [ "$rc" = 0 ] || note "proxy-$i exited with status $rc after SIGTERM"
    event "proxy-$i" starting
    start_proxy "$i"; pid[$i]=$!
    proxy_ready "$i" 60 || note "proxy-$i not ready 60 s after its restart"
    event "proxy-$i" up
    i=$other
  done
  # Leave both serving for the final check.
  for i in 0 1; do proxy_ready "$i" 30 || note "proxy-$i not ready at the end"; done
}

backend_loop & loop_pids+=($!)
controller_loop & loop_pids+=($!)
wait_port "${BACKEND_PORTS[0]}" 20 && wait_port "${BACKEND_PORTS[1]}" 20 || { echo "backends did not start" >&2; exit 1; }
wait_http "http://127.0.0.1:$METRICS_PORT/healthz" 20 || { echo "the controller did not start" >&2; exit 1; }
proxy_loop & loop_pids+=($!)
for _ in $(seq 1 600); do [ -e "$work/proxies_up" ] && break; sleep 0.1; done
[ -e "$work/proxies_up" ] || { echo "the proxies did not become ready" >&2; exit 1; }

echo "chaos: ${DURATION}s; load $H1_CLIENTS HTTP/1.1 + $H2_CLIENTS h2c clients x $RATE req/s through 2 proxies;"
echo "chaos: controller -9 every ${CONTROLLER_UP}s (down ${CONTROLLER_DOWN}s), $CHURN_RATE config changes/s,"
echo "chaos: a backend -9 every ${BACKEND_PERIOD}s (down ${BACKEND_DOWN}s), a proxy drained and restarted every ${PROXY_PERIOD}s;"
echo "chaos: route retries ${RETRIES:-2}; outlier detection: ${OUTLIER_FAILURES:-5 (default)} consecutive failures eject for ${OUTLIER_EJECTION:-30s (default)};"
echo "chaos: binaries $BIN; logs in $logs"

"${harness[@]}" churn --dir "$work/config" --rate "$CHURN_RATE" --duration "$DURATION" \
  --namespace bench --gateway gw --service churn \
  --endpoint-ports "${BACKEND_PORTS[0]},${BACKEND_PORTS[1]}" --prefix chaos_churn \
  >"$work/churn.out" 2>"$logs/churn.log" &
churn_pid=$!
track churn "$churn_pid"
# shellcheck disable=SC2046
"${harness[@]}" load $(proxy_specs 2) --duration "$DURATION" \
  --h1-clients "$H1_CLIENTS" --h2-clients "$H2_CLIENTS" --rate "$RATE" \
  --new-conn-every "$NEW_CONN_EVERY" --events "$work/events" \
  --backend backend-0 --backend backend-1 --pods backend-0,backend-1 \
  --failures "$logs/failures.jsonl" --json "$logs/load.json" --prefix chaos \
  >"$work/load.out" 2>"$logs/load.log" || { cat "$logs/load.log" >&2; exit 1; }
wait "$churn_pid" || true

# Stop the chaos; each loop leaves its servers up.
touch "$work/stop"
for p in "${loop_pids[@]}"; do
  for _ in $(seq 1 900); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
done
cp "$work/events" "$logs/events"
"${harness[@]}" verify $(proxy_specs 2) --dir "$work/config" --prefix chaos >"$work/verify.out"

echo
cat "$work/churn.out"
echo "chaos: controller killed $(cat "$work/controller_kills" 2>/dev/null || echo ?) times, backends $(cat "$work/backend_kills" 2>/dev/null || echo ?) times"
if [ -s "$work/drains" ]; then
  sort -g -k2 "$work/drains" | awk '{ n++; t[n] = $2; if ($3 != 0) bad++ } END {
      printf "chaos: proxies drained and restarted %d times; SIGTERM to exit %.2f-%.2f s (median %.2f), %d exited non-zero\n",
        n, t[1], t[n], t[int((n + 1) / 2)], bad }'
  cp "$work/drains" "$logs/drains"
fi
for i in 0 1; do
  m=$(curl -fsS -m 2 "http://127.0.0.1:${ADMIN_PORTS[$i]}/metrics" 2>/dev/null || true)
  echo "chaos: proxy-$i since its last start: config updates $(echo "$m" | awk '/^rauta_proxy_config_updates_total/ && /result="ack"/ { a += $2 } /^rauta_proxy_config_updates_total/ && /result="nack"/ { n += $2 } END { printf "%d acked, %d nacked", a, n }')," \
    "upstream retries $(echo "$m" | awk '/^rauta_proxy_upstream_retries_total/ { s += $2 } END { print s + 0 }')" \
    "(refused by the budget $(echo "$m" | awk '/^rauta_proxy_upstream_retries_refused_total/ { s += $2 } END { print s + 0 }'))," \
    "outlier ejections $(echo "$m" | awk '/^rauta_proxy_outlier_ejections_total/ { s += $2 } END { print s + 0 }')"
done
panics=$(cat "$logs"/*.log | grep -c 'panicked' || true)
unexpected=$( [ -e "$logs/notes.log" ] && wc -l <"$logs/notes.log" || echo 0)
echo "chaos: panics in the logs: $panics; driver notes (unexpected exits, timeouts): $unexpected"
[ "$unexpected" = 0 ] || sed 's/^/chaos:   /' "$logs/notes.log"
head -n -1 "$work/verify.out"
tail -n 1 "$work/verify.out"
cat "$work/load.out"
echo "chaos_failed_requests=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$logs/load.json")"
