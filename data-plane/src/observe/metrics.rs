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
    upstream: Arc<UpstreamStats>,
    pub snapshot_version: IntGaugeVec,
    pub updates: IntCounterVec,
    pub controller_connected: IntGauge,
    pub(crate) requests_per_connection: HistogramVec,
    pub apply_duration: Histogram,
    pub access_log_dropped: IntCounter,
    /// Requests served on the HTTP/1.1 fast path.
    pub fast_path_requests: IntCounter,
    /// Connections the fast path handed to hyper at a request it does not take.
    pub fast_path_handoffs: IntCounter,
    pub connections_refused: IntCounter,
    /// Requests to the global rate limits' Redis that failed or timed out.
    pub redis_errors: IntCounter,
    /// Requests a SecurityPolicy checked, by policy and result.
    pub auth_results: IntCounterVec,
    /// Requests a SecurityPolicy's authorization decided, by policy, rule and result.
    pub authorization_results: IntCounterVec,
    /// How long external authorization calls took, by policy.
    pub ext_auth_seconds: HistogramVec,
    /// General-path requests sent upstream on the proxy's own HTTP/1.1 client.
    pub(crate) upstream_raw_requests: IntCounter,
    /// HTTP/2 requests served on the fast path's terms (`http2::fast`).
    pub http2_fast_path_requests: IntCounter,
    /// HTTP/2 connections the proxy ended with an error (GOAWAY), by error code.
    pub http2_connection_errors: IntCounterVec,
    /// HTTP/2 streams the proxy reset or refused (RST_STREAM), by error code.
    pub http2_stream_errors: IntCounterVec,
    /// The TCP, UDP and TLS Terminate relays'.
    pub l4: L4Metrics,
    /// Spans exported, dropped (queue full) and failed (the collector refused or was away).
    pub trace_spans: IntCounterVec,
}

use crate::observe::l4_metrics::L4Metrics;
pub use crate::observe::route_stats::RouteStats;
use crate::observe::route_stats::RouteStatsRegistry;
use crate::observe::upstream_stats::{ClusterStats, EndpointStats, UpstreamStats};

/// Makes metrics, each registered as it is made.
struct Register<'r>(&'r Registry);

impl Register<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: M,
    ) -> Result<M, prometheus::Error> {
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.add(IntCounter::new(name, help)?)
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::new(name, help)?)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
    ) -> Result<Histogram, prometheus::Error> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        )?)
    }

    fn histograms(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets),
            labels,
        )?)
    }
}

impl ProxyMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("rauta_proxy".into()), None)?;
        let r = Register(&registry);
        Ok(ProxyMetrics {
            routes: Arc::default(),
            upstream: Arc::default(),
            snapshot_version: r.gauges(
                "snapshot_version",
                "Controller snapshot version last applied, by resource type",
                &["type"],
            )?,
            updates: r.counters(
                "config_updates_total",
                "Discovery responses handled, by type and result (ack, nack)",
                &["type", "result"],
            )?,
            controller_connected: r
                .gauge("controller_connected", "1 while the discovery stream is up")?,
            requests_per_connection: r.histograms(
                "upstream_requests_per_connection",
                "Requests (HTTP/2: streams) an upstream connection carried, observed when it \
                 closes; by protocol",
                vec![1.0, 2.0, 5.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0],
                &["protocol"],
            )?,
            apply_duration: r.histogram(
                "config_apply_seconds",
                "Time to validate a discovery response and swap in the new routing state",
                vec![0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
            )?,
            access_log_dropped: r.counter(
                "access_log_dropped_total",
                "Access log lines dropped because the writer fell behind",
            )?,
            fast_path_requests: r.counter(
                "http1_fast_path_requests_total",
                "HTTP/1.1 requests served on the fast path (parsed in place, no header maps)",
            )?,
            fast_path_handoffs: r.counter(
                "http1_fast_path_handoffs_total",
                "HTTP/1.1 connections handed from the fast path to the general path, at the first \
                 request the fast path does not take (filters, retries, upgrades, large bodies, ...)",
            )?,
            trace_spans: r.counters(
                "trace_spans_total",
                "Request spans for OpenTelemetry (--otlp-endpoint), by result: exported, dropped \
                 (the export queue was full) or failed (the collector refused them or was away)",
                &["result"],
            )?,
            auth_results: r.counters(
                "auth_requests_total",
                "Requests a SecurityPolicy authenticated, by policy, method (api_key, basic, jwt, \
                 ext_auth) and result (allowed, anonymous for an optional JWT; for ext_auth \
                 denied, error_allowed, error_denied; any other: answered 401, the label says \
                 why)",
                &["policy", "method", "result"],
            )?,
            ext_auth_seconds: r.histograms(
                "ext_auth_seconds",
                "Time each request waited for its external authorization service (SecurityPolicy \
                 extAuth), by policy; timeouts included",
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0],
                &["policy"],
            )?,
            authorization_results: r.counters(
                "authorization_requests_total",
                "Requests a SecurityPolicy's authorization decided, by policy, the rule that \
                 decided (empty: the default) and result (allowed; denied: answered 403)",
                &["policy", "rule", "result"],
            )?,
            redis_errors: r.counter(
                "rate_limit_redis_errors_total",
                "Requests to the Redis server of global rate limits that failed or timed out \
                 (the limits then fail open or closed, as their policy says)",
            )?,
            connections_refused: r.counter(
                "connections_refused_total",
                "Client connections closed at once because their worker already served \
                 --max-connections-per-worker",
            )?,
            upstream_raw_requests: r.counter(
                "upstream_raw_requests_total",
                "Requests without a body that the general path (HTTP/2 clients, and HTTP/1.1 \
                 connections handed off) sent to HTTP/1.1 upstreams on raw connections, not \
                 through hyper's client",
            )?,
            http2_fast_path_requests: r.counter(
                "http2_fast_path_requests_total",
                "HTTP/2 requests without a body planned and forwarded as the HTTP/1.1 fast path \
                 does (no header maps), to HTTP/1.1 upstreams",
            )?,
            http2_connection_errors: r.counters(
                "http2_connection_errors_total",
                "HTTP/2 connections ended with a GOAWAY error, by error code (PROTOCOL_ERROR, \
                 ENHANCE_YOUR_CALM for floods and rapid resets, ...)",
                &["reason"],
            )?,
            http2_stream_errors: r.counters(
                "http2_stream_errors_total",
                "HTTP/2 streams reset or refused by the proxy (RST_STREAM), by error code",
                &["reason"],
            )?,
            l4: L4Metrics::new(&registry)?,
            registry,
        })
    }

    /// The counters of a route rule (the same ones across snapshot swaps).
    pub fn route_counters(&self, route: &str) -> Arc<RouteStats> {
        self.routes.route(route)
    }

    /// Forgets the counters of routes (HTTP and L4) and clusters nothing uses any more.
    pub fn prune_routes(&self) {
        self.routes.prune();
        self.upstream.prune_clusters();
        self.l4.prune();
    }

    /// A cluster's series (the same ones across snapshot swaps).
    pub fn cluster_stats(&self, cluster: &str) -> Arc<ClusterStats> {
        self.upstream.cluster(cluster)
    }

    /// An endpoint's connection counters, shared by every pool that reaches it.
    pub fn endpoint_stats(&self, endpoint: &str) -> Arc<EndpointStats> {
        self.upstream.endpoint(endpoint)
    }

    /// Drops the series of an endpoint no cluster uses any more (pods come and go; their
    /// addresses must not pile up in every scrape).
    pub fn forget_endpoint(&self, endpoint: &str) {
        self.upstream.forget_endpoint(endpoint);
    }

    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut own = String::new();
        self.routes.render("rauta_proxy_", &mut own);
        self.upstream.render("rauta_proxy_", &mut own);
        buf.extend_from_slice(own.as_bytes());
        buf
    }
}
