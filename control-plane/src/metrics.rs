//! The controller's Prometheus metrics and the HTTP endpoint that serves them.

use std::sync::Arc;

use hyper::StatusCode;
use prometheus::{
    Encoder, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use rauta_common::plain_http;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    pub registry: Registry,
    pub connected_proxies: IntGauge,
    pub translations: IntCounter,
    /// Time to publish a changed object set, by path (not the time it waited to be taken).
    pub publish_seconds: prometheus::HistogramVec,
    pub endpoint_refreshes: IntCounter,
    pub config_problems: IntGauge,
    pub snapshot_version: IntGaugeVec,
    pub nacks: IntCounterVec,
    pub resources_sent: IntCounterVec,
    pub leader: IntGauge,
    /// 1 once the first snapshot has been published (every kind listed, in Kubernetes mode).
    pub ready: IntGauge,
    pub status_writes: IntCounterVec,
}

impl ControllerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("rauta_controller".into()), None)?;
        let connected_proxies = IntGauge::new("connected_proxies", "Open discovery streams")?;
        let translations = IntCounter::new("translations_total", "Translations run")?;
        let publish_seconds = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "publish_seconds",
                "Time to publish a changed object set: translation, snapshots and status \
                 (path=translate), or the endpoint fast path's endpoints (path=endpoints)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            &["path"],
        )?;
        let endpoint_refreshes = IntCounter::new(
            "endpoint_refreshes_total",
            "Changes that touched only EndpointSlices, served without re-translating routes",
        )?;
        let config_problems = IntGauge::new(
            "config_problems",
            "Problems found by the last load of the configuration",
        )?;
        let snapshot_version = IntGaugeVec::new(
            Opts::new("snapshot_version", "Current snapshot version per Gateway"),
            &["gateway"],
        )?;
        let nacks = IntCounterVec::new(
            Opts::new("nacks_total", "Responses rejected by proxies"),
            &["type"],
        )?;
        let resources_sent = IntCounterVec::new(
            Opts::new("resources_sent_total", "Resources sent to proxies"),
            &["type"],
        )?;
        let leader = IntGauge::new(
            "leader",
            "1 while this replica holds the leader lease (Kubernetes mode) and writes status",
        )?;
        let status_writes = IntCounterVec::new(
            Opts::new(
                "status_writes_total",
                "Status writes to the Kubernetes API, by result (ok, conflict, gone, error)",
            ),
            &["result"],
        )?;
        let ready = IntGauge::new(
            "ready",
            "1 once the configuration has been read and the first snapshots published",
        )?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        registry.register(Box::new(connected_proxies.clone()))?;
        registry.register(Box::new(translations.clone()))?;
        registry.register(Box::new(publish_seconds.clone()))?;
        registry.register(Box::new(endpoint_refreshes.clone()))?;
        registry.register(Box::new(config_problems.clone()))?;
        registry.register(Box::new(snapshot_version.clone()))?;
        registry.register(Box::new(nacks.clone()))?;
        registry.register(Box::new(resources_sent.clone()))?;
        Ok(ControllerMetrics {
            registry,
            connected_proxies,
            publish_seconds,
            translations,
            endpoint_refreshes,
            config_problems,
            snapshot_version,
            nacks,
            resources_sent,
            leader,
            ready,
            status_writes,
        })
    }

    fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<ControllerMetrics>) {
    plain_http::serve(listener, move |path| match path {
        "/metrics" => (StatusCode::OK, plain_http::PROMETHEUS, metrics.render()),
        "/healthz" => (StatusCode::OK, plain_http::TEXT, b"ok\n".to_vec()),
        // Ready once there is a configuration to serve: a rollout waits for a replica that
        // can list the cluster.
        "/readyz" if metrics.ready.get() == 1 => {
            (StatusCode::OK, plain_http::TEXT, b"ready\n".to_vec())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            plain_http::TEXT,
            b"configuration not read yet\n".to_vec(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            plain_http::TEXT,
            b"not found\n".to_vec(),
        ),
    })
    .await;
}
