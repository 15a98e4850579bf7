//! Per-endpoint health series in the Prometheus text format, read off the routing state at
//! scrape time: ejections end by time, not by an event, probes run apart from requests, and
//! a prometheus-crate child per cluster and endpoint would be made again at every scrape
//! (thousands of them). Also each cluster's circuit-breaker refusals.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;

use crate::model::RoutingState;
use crate::observe::series::{escape, header};

pub fn render(state: &RoutingState, out: &mut String) {
    let mut clusters: Vec<_> = state.clusters().collect();
    clusters.sort_by_key(|(name, _)| *name);
    header(
        out,
        "rauta_proxy_endpoint_ejected",
        "1 while an endpoint is ejected (circuit open), 0 otherwise; by cluster and endpoint",
        "gauge",
    );
    for (name, cluster) in &clusters {
        let name = escape(name);
        for endpoint in cluster.endpoints() {
            let _ = writeln!(
                out,
                "rauta_proxy_endpoint_ejected{{cluster=\"{name}\",endpoint=\"{}\"}} {}",
                endpoint.addr,
                u8::from(endpoint.pool.health().is_ejected())
            );
        }
    }
    header(
        out,
        "rauta_proxy_endpoint_healthy",
        "1 while requests may go to an endpoint (not ejected, passing its health checks), 0 \
         otherwise; by cluster and endpoint",
        "gauge",
    );
    for (name, cluster) in &clusters {
        let name = escape(name);
        for endpoint in cluster.endpoints() {
            let _ = writeln!(
                out,
                "rauta_proxy_endpoint_healthy{{cluster=\"{name}\",endpoint=\"{}\"}} {}",
                endpoint.addr,
                u8::from(cluster.usable(endpoint))
            );
        }
    }
    header(
        out,
        "rauta_proxy_health_checks_total",
        "Active health check probes, by endpoint and result (passed or failed); one prober per \
         endpoint and check however many clusters use it",
        "counter",
    );
    // Each prober once (clusters share them), summed by address: two checks of one endpoint
    // (an HTTP and an h2c cluster of one Service port) must not make two series of one name.
    let mut seen = HashSet::new();
    let mut by_endpoint: BTreeMap<std::net::SocketAddr, (u64, u64)> = BTreeMap::new();
    for (_, cluster) in &clusters {
        for endpoint in cluster.endpoints() {
            let Some(prober) = &endpoint.prober else {
                continue;
            };
            if !seen.insert(Arc::as_ptr(prober)) {
                continue;
            }
            let (passed, failed) = prober.health.counts();
            let sum = by_endpoint.entry(endpoint.addr).or_default();
            *sum = (sum.0 + passed, sum.1 + failed);
        }
    }
    for (addr, (passed, failed)) in by_endpoint {
        for (result, n) in [("passed", passed), ("failed", failed)] {
            let _ = writeln!(
                out,
                "rauta_proxy_health_checks_total{{endpoint=\"{addr}\",result=\"{result}\"}} {n}"
            );
        }
    }
    header(
        out,
        "rauta_proxy_cluster_panic",
        "1 while fewer of a cluster's endpoints are usable than its panic threshold, so requests \
         spread over all of them",
        "gauge",
    );
    for (name, cluster) in &clusters {
        let _ = writeln!(
            out,
            "rauta_proxy_cluster_panic{{cluster=\"{}\"}} {}",
            escape(name),
            u8::from(cluster.panicking())
        );
    }
    header(
        out,
        "rauta_proxy_upstream_overflows_total",
        "Requests a cluster's circuit breaker refused with 503, by cluster and limit",
        "counter",
    );
    for (name, cluster) in &clusters {
        let name = escape(name);
        for (limit, n) in cluster.breakers.counts.overflows() {
            if n > 0 {
                let _ = writeln!(
                    out,
                    "rauta_proxy_upstream_overflows_total{{cluster=\"{name}\",limit=\"{limit}\"}} {n}"
                );
            }
        }
    }
}
