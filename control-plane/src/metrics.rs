//! The controller's Prometheus metrics and the HTTP endpoint that serves them.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tracing::debug;

#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    pub registry: Registry,
    pub connected_proxies: IntGauge,
    pub translations: IntCounter,
    pub config_problems: IntGauge,
    pub snapshot_version: IntGaugeVec,
    pub nacks: IntCounterVec,
    pub resources_sent: IntCounterVec,
}

impl ControllerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("rauta_controller".into()), None)?;
        let connected_proxies = IntGauge::new("connected_proxies", "Open discovery streams")?;
        let translations = IntCounter::new("translations_total", "Translations run")?;
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
        registry.register(Box::new(connected_proxies.clone()))?;
        registry.register(Box::new(translations.clone()))?;
        registry.register(Box::new(config_problems.clone()))?;
        registry.register(Box::new(snapshot_version.clone()))?;
        registry.register(Box::new(nacks.clone()))?;
        registry.register(Box::new(resources_sent.clone()))?;
        Ok(ControllerMetrics {
            registry,
            connected_proxies,
            translations,
            config_problems,
            snapshot_version,
            nacks,
            resources_sent,
        })
    }

    fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// Serves `/metrics` and `/healthz` until the listener fails.
pub async fn serve(listener: TcpListener, metrics: Arc<ControllerMetrics>) {
    loop {
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(s) => s,
            Err(err) => {
                debug!(%err, "metrics accept failed");
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, metrics.render()),
                        "/healthz" => (StatusCode::OK, b"ok\n".to_vec()),
                        _ => (StatusCode::NOT_FOUND, b"not found\n".to_vec()),
                    };
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %err, "metrics connection ended with an error");
            }
        });
    }
}
