//! Per-cluster and per-endpoint upstream series ([`crate::observe::series`]): a proxy holds
//! one of each for every cluster and endpoint it knows, idle or not, so they must be small
//! (with prometheus-crate children, 5000 one-endpoint clusters took 15 MB). A cluster keeps
//! its series across snapshot swaps and loses them once no routing state holds it; an
//! endpoint loses them when no pool reaches it any more.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::observe::series::{LatencyHistogram, SeriesRegistry, header};

/// One cluster's series.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Time from sending a request upstream to its response headers, per attempt.
    pub latency: LatencyHistogram,
    retries: AtomicU64,
    retries_refused: AtomicU64,
}

impl ClusterStats {
    #[inline]
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn retry_refused(&self) {
        self.retries_refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// One endpoint's connection counters.
#[derive(Debug, Default)]
pub struct EndpointStats {
    open: AtomicI64,
    created: AtomicU64,
    failed: AtomicU64,
    ejections: AtomicU64,
}

impl EndpointStats {
    /// A connection was established (and is open until [`EndpointStats::closed`]).
    pub fn opened(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection established and handed over (a relay's): counted as created, never open.
    pub fn connected(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection attempt failed.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The endpoint was taken out of the rotation.
    pub fn ejected(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }
}

/// Every cluster's and endpoint's series.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    clusters: SeriesRegistry<ClusterStats>,
    endpoints: SeriesRegistry<EndpointStats>,
}

impl UpstreamStats {
    /// A cluster's series, the same across snapshots.
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        self.clusters.get(name)
    }

    /// An endpoint's series (`address:port`), shared by every pool that reaches it.
    pub fn endpoint(&self, endpoint: &str) -> Arc<EndpointStats> {
        self.endpoints.get(endpoint)
    }

    /// Forgets clusters no routing state holds.
    pub fn prune_clusters(&self) {
        self.clusters.prune();
    }

    /// Forgets an endpoint no pool reaches any more (pods come and go; their addresses must
    /// not pile up in every scrape).
    pub fn forget_endpoint(&self, endpoint: &str) {
        self.endpoints.remove(endpoint);
    }

    /// Appends every family in the Prometheus text format, names starting with `prefix`.
    pub fn render(&self, prefix: &str, out: &mut String) {
        self.clusters
            .with_sorted(|clusters| Self::render_clusters(prefix, clusters, out));
        self.endpoints
            .with_sorted(|endpoints| Self::render_endpoints(prefix, endpoints, out));
    }

    fn render_clusters(prefix: &str, clusters: &[(String, &ClusterStats)], out: &mut String) {
        let latency = format!("{prefix}upstream_response_seconds");
        header(
            out,
            &latency,
            "Time from sending a request upstream to its response headers",
            "histogram",
        );
        for (cluster, stats) in clusters {
            stats.latency.render(&latency, "cluster", cluster, out);
        }
        let retries = |s: &ClusterStats| s.retries.load(Ordering::Relaxed) as i64;
        let refused = |s: &ClusterStats| s.retries_refused.load(Ordering::Relaxed) as i64;
        let family = Family {
            prefix,
            label: "cluster",
        };
        family.render(
            out,
            ("upstream_retries_total", "counter"),
            "Retries sent, by cluster",
            clusters,
            retries,
        );
        family.render(
            out,
            ("upstream_retries_refused_total", "counter"),
            "Retries not sent because the cluster's retry budget was used up, by cluster",
            clusters,
            refused,
        );
    }

    fn render_endpoints(prefix: &str, endpoints: &[(String, &EndpointStats)], out: &mut String) {
        let family = Family {
            prefix,
            label: "endpoint",
        };
        family.render(
            out,
            ("upstream_connections_open", "gauge"),
            "Upstream connections open, by endpoint",
            endpoints,
            EndpointStats::open,
        );
        family.render(
            out,
            ("upstream_connections_created_total", "counter"),
            "Upstream connections established, by endpoint",
            endpoints,
            |s| s.created.load(Ordering::Relaxed) as i64,
        );
        family.render(
            out,
            ("upstream_connect_failures_total", "counter"),
            "Upstream connection attempts that failed (refused, timed out, TLS or HTTP \
             handshake), by endpoint",
            endpoints,
            |s| s.failed.load(Ordering::Relaxed) as i64,
        );
        family.render(
            out,
            ("outlier_ejections_total", "counter"),
            "Times an endpoint was taken out of the rotation after consecutive failures",
            endpoints,
            |s| s.ejections() as i64,
        );
    }
}

/// A family of one-label counters or gauges.
struct Family<'a> {
    prefix: &'a str,
    label: &'a str,
}

impl Family<'_> {
    fn render<T>(
        &self,
        out: &mut String,
        (name, kind): (&str, &str),
        help: &str,
        series: &[(String, &T)],
        value: impl Fn(&T) -> i64,
    ) {
        let (prefix, label) = (self.prefix, self.label);
        header(out, &format!("{prefix}{name}"), help, kind);
        for (key, stats) in series {
            let _ = writeln!(out, "{prefix}{name}{{{label}=\"{key}\"}} {}", value(*stats));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_each_family_and_forgets_what_is_gone() {
        let stats = UpstreamStats::default();
        let web = stats.cluster("apps/web:8080");
        web.latency.observe(Duration::from_millis(3));
        web.retried();
        web.retry_refused();
        web.retry_refused();
        let pod = stats.endpoint("10.0.0.1:8080");
        pod.opened();
        pod.opened();
        pod.closed();
        pod.connected();
        pod.failed();
        pod.ejected();
        assert!(Arc::ptr_eq(&pod, &stats.endpoint("10.0.0.1:8080")));
        let mut text = String::new();
        stats.render("p_", &mut text);
        for line in [
            "# TYPE p_upstream_response_seconds histogram",
            "p_upstream_response_seconds_bucket{cluster=\"apps/web:8080\",le=\"0.005\"} 1",
            "p_upstream_response_seconds_count{cluster=\"apps/web:8080\"} 1",
            "p_upstream_retries_total{cluster=\"apps/web:8080\"} 1",
            "p_upstream_retries_refused_total{cluster=\"apps/web:8080\"} 2",
            "# TYPE p_upstream_connections_open gauge",
            "p_upstream_connections_open{endpoint=\"10.0.0.1:8080\"} 1",
            "p_upstream_connections_created_total{endpoint=\"10.0.0.1:8080\"} 3",
            "p_upstream_connect_failures_total{endpoint=\"10.0.0.1:8080\"} 1",
            "p_outlier_ejections_total{endpoint=\"10.0.0.1:8080\"} 1",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in\n{text}");
        }
        drop(web);
        stats.prune_clusters();
        stats.forget_endpoint("10.0.0.1:8080");
        let mut text = String::new();
        stats.render("p_", &mut text);
        assert!(
            !text.contains("apps/web") && !text.contains("10.0.0.1"),
            "{text}"
        );
    }
}
