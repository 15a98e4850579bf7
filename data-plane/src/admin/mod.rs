//! The proxy's admin HTTP endpoint: /metrics, /healthz, /readyz, /config_dump.

use std::sync::Arc;

use hyper::StatusCode;
use rauta_common::plain_http;
use tokio::net::TcpListener;

mod cache_metrics;
mod config_dump;
use crate::kernel::KernelPath;
use crate::shared::Shared;

fn respond(
    shared: &Shared,
    kernel: Option<&KernelPath>,
    path: &str,
) -> (StatusCode, &'static str, Vec<u8>) {
    let text = |status, body: &[u8]| (status, plain_http::TEXT, body.to_vec());
    match path {
        "/metrics" => {
            // Ejections end by time, not by an event: the gauge is read off the state.
            let state = shared.state.load();
            state.record_ejections(&shared.metrics);
            let mut body = shared.metrics.render();
            let mut caches = String::new();
            cache_metrics::render(&state, &mut caches);
            body.extend_from_slice(caches.as_bytes());
            (StatusCode::OK, plain_http::PROMETHEUS, body)
        }
        "/config_dump" => (
            StatusCode::OK,
            plain_http::JSON,
            config_dump::render(shared, kernel),
        ),
        "/healthz" => text(StatusCode::OK, b"ok\n"),
        "/readyz" if shared.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, b"draining\n"),
        "/readyz" if shared.is_ready() => text(StatusCode::OK, b"ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            b"waiting for the first configuration\n",
        ),
        _ => text(StatusCode::NOT_FOUND, b"not found\n"),
    }
}

/// Serves the admin port; `kernel` is the XDP fast path, when it runs (its entries are in
/// /config_dump).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, kernel: Option<Arc<KernelPath>>) {
    plain_http::serve(listener, move |path| {
        respond(&shared, kernel.as_deref(), path)
    })
    .await;
}
