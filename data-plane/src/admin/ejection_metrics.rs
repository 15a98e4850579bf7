//! The per-endpoint ejection gauge in the Prometheus text format, read off the routing state at
//! scrape time: ejections end by time, not by an event, and a prometheus-crate child per
//! cluster and endpoint would be made again at every scrape (thousands of them).

use std::fmt::Write;

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
    for (name, cluster) in clusters {
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
}
