# Helpers for the benchmarks that measure rauta beside nginx and HAProxy (sourced by
# benches/proxy.sh, l4.sh, fresh.sh and xdp.sh; no side effects when sourced). nginx_conf
# expects $work, a scratch folder.

# An nginx configuration in $work/NAME/nginx.conf: one worker, in the foreground, its files
# under that folder, no access log, keep-alive without a request limit: nginx_conf NAME BLOCK
# (BLOCK: what goes in `http { }`).
nginx_conf() {
  mkdir -p "$work/$1"
  cat >"$work/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
$2
}
CONF
}

# GatewayClass "rauta", then Service bench/backend (port 80) with one endpoint on
# 127.0.0.1:PORT, as YAML documents: bench_backend_yaml PORT (the Gateway and routes follow).
bench_backend_yaml() {
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: rauta}
spec: {controllerName: rauta.dev/gateway-controller}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: bench}
spec:
  ports: [{name: http, port: 80, targetPort: $1}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: backend-1, namespace: bench, labels: {kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{name: http, port: $1}]
endpoints: [{addresses: [127.0.0.1]}]
YAML
}

# CPU ticks (user+system, 100 a second) of processes: ticks PID...
ticks() {
  local total=0 p
  for p in "$@"; do
    total=$(( total + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat") ))
  done
  echo "$total"
}

# Socket errors and non-2xx/3xx answers in a wrk report (on stdin).
wrk_errors() {
  awk '/Socket errors/ {gsub(",", ""); s = $4 + $6 + $8 + $10} /Non-2xx/ {n = $5} END {print s + n}'
}

# Of space-separated numbers on stdin: "median [min-max]", and the median alone.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; printf "%s [%s-%s]", m, a[1], a[NR]}'; }
med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
