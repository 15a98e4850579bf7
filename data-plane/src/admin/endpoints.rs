//! `/endpoints` on the admin port: every cluster's endpoints with whether requests may go to
//! each and, when not, why: `active` (its health checks fail), `passive` (outlier detection
//! ejected it) or `both`; plus whether the cluster is below its panic threshold and what its
//! circuit breakers refused. `/config_dump` carries the same per-endpoint entries.

use serde_json::{Value, json};

use crate::model::RoutingState;
use crate::model::cluster::{ClusterRt, EndpointRt};

/// Why requests do not go to an endpoint, if they do not.
pub fn unhealthy_because(cluster: &ClusterRt, endpoint: &EndpointRt) -> Option<&'static str> {
    let active = !endpoint.probed_healthy();
    let passive = endpoint.pool.health().is_ejected();
    match (active, passive) {
        (true, true) => Some("both"),
        (true, false) => Some("active"),
        (false, true) => Some("passive"),
        (false, false) => None,
    }
    .filter(|_| !cluster.usable(endpoint))
}

/// One endpoint's live state.
pub fn endpoint_state(cluster_name: &str, cluster: &ClusterRt, e: &EndpointRt) -> Value {
    let health = e.pool.health();
    let active = e.prober.as_ref().map(|p| {
        let (passed, failed) = p.health.counts();
        json!({
            "healthy": p.health.is_healthy(),
            "lastProbe": p.health.last_outcome().describe(),
            "probesPassed": passed,
            "probesFailed": failed,
            "transitions": p.health.transitions(),
        })
    });
    json!({
        "cluster": cluster_name,
        "endpoint": e.addr.to_string(),
        "usable": cluster.usable(e),
        "unhealthyBecause": unhealthy_because(cluster, e),
        "ejected": health.is_ejected(),
        "healthCheck": active,
        "requestsInFlight": health.in_flight(),
        "openConnections": e.pool.open_connections(),
    })
}

/// The page, as JSON text.
pub fn render(state: &RoutingState) -> Vec<u8> {
    let mut clusters: Vec<_> = state.clusters().collect();
    clusters.sort_by_key(|(name, _)| *name);
    let clusters: Vec<Value> = clusters
        .into_iter()
        .map(|(name, cluster)| {
            let overflows: serde_json::Map<String, Value> = cluster
                .breakers
                .counts
                .overflows()
                .iter()
                .map(|(limit, n)| (limit.name().to_owned(), json!(n)))
                .collect();
            json!({
                "cluster": name,
                "panic": cluster.panicking(),
                "overflows": overflows,
                "endpoints": cluster
                    .endpoints()
                    .iter()
                    .map(|e| endpoint_state(name, cluster, e))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut out = serde_json::to_vec_pretty(&json!({ "clusters": clusters })).unwrap_or_default();
    out.push(b'\n');
    out
}
