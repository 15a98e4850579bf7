//! The proxy's Prometheus metrics. Per-route and per-cluster handles are resolved when a
//! snapshot is built, so the request path only touches atomics.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    pub registry: Registry,
    routes: Arc<RouteStatsRegistry>,
    upstream_latency: HistogramVec,
    pub snapshot_version: IntGaugeVec,
    pub updates: IntCounterVec,
    pub controller_connected: IntGauge,
    pool_open: IntGaugeVec,
    pool_created: IntCounterVec,
    pool_failed: IntCounterVec,
    requests_per_connection: HistogramVec,
    outlier_ejections: IntCounterVec,
    pub endpoint_ejected: IntGaugeVec,
    pub apply_duration: Histogram,
    pub access_log_dropped: IntCounter,
    /// Requests served on the HTTP/1.1 fast path.
    pub fast_path_requests: IntCounter,
    /// Connections the fast path handed to hyper at a request it does not take.
    pub fast_path_handoffs: IntCounter,
    pub connections_refused: IntCounter,
    /// General-path requests sent upstream on the proxy's own HTTP/1.1 client.
    upstream_raw_requests: IntCounter,
    /// HTTP/2 requests served on the fast path's terms (`http2::fast`).
    pub http2_fast_path_requests: IntCounter,
    /// HTTP/2 connections the proxy ended with an error (GOAWAY), by error code.
    pub http2_connection_errors: IntCounterVec,
    /// HTTP/2 streams the proxy reset or refused (RST_STREAM), by error code.
    pub http2_stream_errors: IntCounterVec,
    retries: IntCounterVec,
    retries_refused: IntCounterVec,
}

pub use crate::route_stats::RouteStats;
use crate::route_stats::RouteStatsRegistry;

/// Latency buckets in seconds, from half a millisecond to ten seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl ProxyMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("rauta_proxy".into()), None)?;
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "upstream_response_seconds",
                "Time from sending a request upstream to its response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cluster"],
        )?;
        let apply_duration = Histogram::with_opts(
            HistogramOpts::new(
                "config_apply_seconds",
                "Time to validate a discovery response and swap in the new routing state",
            )
            .buckets(vec![0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )?;
        let access_log_dropped = IntCounter::new(
            "access_log_dropped_total",
            "Access log lines dropped because the writer fell behind",
        )?;
        registry.register(Box::new(apply_duration.clone()))?;
        let fast_path_requests = IntCounter::new(
            "http1_fast_path_requests_total",
            "HTTP/1.1 requests served on the fast path (parsed in place, no header maps)",
        )?;
        let fast_path_handoffs = IntCounter::new(
            "http1_fast_path_handoffs_total",
            "HTTP/1.1 connections handed from the fast path to the general path, at the first \
             request the fast path does not take (filters, retries, upgrades, large bodies, ...)",
        )?;
        let upstream_raw_requests = IntCounter::new(
            "upstream_raw_requests_total",
            "Requests without a body that the general path (HTTP/2 clients, and HTTP/1.1 \
             connections handed off) sent to HTTP/1.1 upstreams on raw connections, not \
             through hyper's client",
        )?;
        let connections_refused = IntCounter::new(
            "connections_refused_total",
            "Client connections closed at once because their worker already served \
             --max-connections-per-worker",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(fast_path_requests.clone()))?;
        registry.register(Box::new(fast_path_handoffs.clone()))?;
        registry.register(Box::new(upstream_raw_requests.clone()))?;
        let http2_fast_path_requests = IntCounter::new(
            "http2_fast_path_requests_total",
            "HTTP/2 requests without a body planned and forwarded as the HTTP/1.1 fast path \
             does (no header maps), to HTTP/1.1 upstreams",
        )?;
        registry.register(Box::new(http2_fast_path_requests.clone()))?;
        let http2_connection_errors = IntCounterVec::new(
            Opts::new(
                "http2_connection_errors_total",
                "HTTP/2 connections ended with a GOAWAY error, by error code (PROTOCOL_ERROR, \
                 ENHANCE_YOUR_CALM for floods and rapid resets, ...)",
            ),
            &["reason"],
        )?;
        let http2_stream_errors = IntCounterVec::new(
            Opts::new(
                "http2_stream_errors_total",
                "HTTP/2 streams reset or refused by the proxy (RST_STREAM), by error code",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(http2_connection_errors.clone()))?;
        registry.register(Box::new(http2_stream_errors.clone()))?;
        let retries = IntCounterVec::new(
            Opts::new("upstream_retries_total", "Retries sent, by cluster"),
            &["cluster"],
        )?;
        let retries_refused = IntCounterVec::new(
            Opts::new(
                "upstream_retries_refused_total",
                "Retries not sent because the cluster's retry budget was used up, by cluster",
            ),
            &["cluster"],
        )?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(retries_refused.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let snapshot_version = IntGaugeVec::new(
            Opts::new(
                "snapshot_version",
                "Controller snapshot version last applied, by resource type",
            ),
            &["type"],
        )?;
        let updates = IntCounterVec::new(
            Opts::new(
                "config_updates_total",
                "Discovery responses handled, by type and result (ack, nack)",
            ),
            &["type", "result"],
        )?;
        let controller_connected =
            IntGauge::new("controller_connected", "1 while the discovery stream is up")?;
        let pool_open = IntGaugeVec::new(
            Opts::new(
                "upstream_connections_open",
                "Upstream connections open, by endpoint",
            ),
            &["endpoint"],
        )?;
        let pool_created = IntCounterVec::new(
            Opts::new(
                "upstream_connections_created_total",
                "Upstream connections established, by endpoint",
            ),
            &["endpoint"],
        )?;
        let pool_failed = IntCounterVec::new(
            Opts::new(
                "upstream_connect_failures_total",
                "Upstream connection attempts that failed (refused, timed out, TLS or HTTP handshake), by endpoint",
            ),
            &["endpoint"],
        )?;
        let requests_per_connection = HistogramVec::new(
            HistogramOpts::new(
                "upstream_requests_per_connection",
                "Requests (HTTP/2: streams) an upstream connection carried, observed when it \
                 closes; by protocol",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]),
            &["protocol"],
        )?;
        registry.register(Box::new(requests_per_connection.clone()))?;
        let outlier_ejections = IntCounterVec::new(
            Opts::new(
                "outlier_ejections_total",
                "Times an endpoint was taken out of the rotation after consecutive failures",
            ),
            &["endpoint"],
        )?;
        let endpoint_ejected = IntGaugeVec::new(
            Opts::new(
                "endpoint_ejected",
                "1 while an endpoint is ejected (circuit open), 0 otherwise; by cluster and endpoint",
            ),
            &["cluster", "endpoint"],
        )?;
        registry.register(Box::new(outlier_ejections.clone()))?;
        registry.register(Box::new(endpoint_ejected.clone()))?;
        registry.register(Box::new(pool_open.clone()))?;
        registry.register(Box::new(pool_created.clone()))?;
        registry.register(Box::new(pool_failed.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(snapshot_version.clone()))?;
        registry.register(Box::new(updates.clone()))?;
        registry.register(Box::new(controller_connected.clone()))?;
        Ok(ProxyMetrics {
            registry,
            routes: Arc::default(),
            upstream_latency,
            snapshot_version,
            updates,
            controller_connected,
            pool_open,
            pool_created,
            pool_failed,
            requests_per_connection,
            outlier_ejections,
            endpoint_ejected,
            apply_duration,
            access_log_dropped,
            fast_path_requests,
            fast_path_handoffs,
            connections_refused,
            upstream_raw_requests,
            http2_fast_path_requests,
            http2_connection_errors,
            http2_stream_errors,
            retries,
            retries_refused,
        })
    }

    /// The counters of a route rule (the same ones across snapshot swaps).
    pub fn route_counters(&self, route: &str) -> Arc<RouteStats> {
        self.routes.route(route)
    }

    /// Forgets the counters of routes nothing uses any more.
    pub fn prune_routes(&self) {
        self.routes.prune();
    }

    pub fn retries(&self, cluster: &str) -> IntCounter {
        self.retries.with_label_values(&[cluster])
    }

    pub fn retries_refused(&self, cluster: &str) -> IntCounter {
        self.retries_refused.with_label_values(&[cluster])
    }

    pub fn upstream_latency(&self, cluster: &str) -> Histogram {
        self.upstream_latency.with_label_values(&[cluster])
    }

    pub fn pool_stats(
        &self,
        endpoint: &str,
        protocol: crate::upstream::Protocol,
    ) -> crate::upstream::PoolStats {
        let protocol = match protocol {
            crate::upstream::Protocol::Http1 => "http1",
            crate::upstream::Protocol::H2c => "h2",
        };
        crate::upstream::PoolStats {
            open: self.pool_open.with_label_values(&[endpoint]),
            created: self.pool_created.with_label_values(&[endpoint]),
            failed: self.pool_failed.with_label_values(&[endpoint]),
            requests_per_connection: self.requests_per_connection.with_label_values(&[protocol]),
            raw_requests: self.upstream_raw_requests.clone(),
        }
    }

    /// Drops the series of an endpoint no cluster uses any more (pods come and go; their
    /// addresses must not pile up in every scrape).
    pub fn forget_endpoint(&self, endpoint: &str) {
        let _ = self.pool_open.remove_label_values(&[endpoint]);
        let _ = self.pool_created.remove_label_values(&[endpoint]);
        let _ = self.pool_failed.remove_label_values(&[endpoint]);
        let _ = self.outlier_ejections.remove_label_values(&[endpoint]);
    }

    pub fn outlier_ejections(&self, endpoint: &str) -> IntCounter {
        self.outlier_ejections.with_label_values(&[endpoint])
    }

    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut routes = String::new();
        self.routes.render("rauta_proxy_", &mut routes);
        buf.extend_from_slice(routes.as_bytes());
        buf
    }
}
