//! The proxy's admin HTTP endpoint: /metrics, /healthz, /readyz, /config_dump, /endpoints.

use std::sync::Arc;

use hyper::StatusCode;
use rauta_common::plain_http;
use tokio::net::TcpListener;

mod cache_metrics;
mod config_dump;
mod ejection_metrics;
mod endpoints;
mod rate_limit_metrics;
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
            let state = shared.state.load();
            let mut body = shared.metrics.render();
            let mut from_state = String::new();
            cache_metrics::render(&state, &mut from_state);
            ejection_metrics::render(&state, &mut from_state);
            rate_limit_metrics::render(&state, &mut from_state);
            body.extend_from_slice(from_state.as_bytes());
            body.extend_from_slice(stale_gauge(shared).as_bytes());
            (StatusCode::OK, plain_http::PROMETHEUS, body)
        }
        "/config_dump" => (
            StatusCode::OK,
            plain_http::JSON,
            config_dump::render(shared, kernel),
        ),
        "/endpoints" => (
            StatusCode::OK,
            plain_http::JSON,
            endpoints::render(&shared.state.load()),
        ),
        "/healthz" => text(StatusCode::OK, b"ok\n"),
        "/readyz" => readyz(shared),
        _ => text(StatusCode::NOT_FOUND, b"not found\n"),
    }
}

/// Ready (200) once every resource type has been applied, from a controller or read back
/// from `--state-dir`: a configuration no controller has confirmed yet still serves traffic
/// (that is what it is kept for), and the body says so. 503 while draining or before any
/// configuration, with why the persisted one was refused when it was.
fn readyz(shared: &Shared) -> (StatusCode, &'static str, Vec<u8>) {
    let (status, body) = if shared.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining".to_owned())
    } else if shared.is_ready() {
        match shared.stale() {
            Some(detail) => (StatusCode::OK, format!("ready, stale: {detail}")),
            None => (StatusCode::OK, "ready".to_owned()),
        }
    } else {
        match shared.restore_refused() {
            Some(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "waiting for the first configuration (the persisted one was refused: {reason})"
                ),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for the first configuration".to_owned(),
            ),
        }
    };
    (status, plain_http::TEXT, format!("{body}\n").into_bytes())
}

/// `rauta_proxy_config_stale`, read off the shared state at scrape time so that it and
/// /readyz never disagree.
fn stale_gauge(shared: &Shared) -> String {
    format!(
        "# HELP rauta_proxy_config_stale 1 while the proxy serves a configuration read back \
         from --state-dir that no controller has confirmed yet\n\
         # TYPE rauta_proxy_config_stale gauge\nrauta_proxy_config_stale {}\n",
        u8::from(shared.stale().is_some())
    )
}

/// Serves the admin port; `kernel` is the XDP fast path, when it runs (its entries are in
/// /config_dump).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, kernel: Option<Arc<KernelPath>>) {
    plain_http::serve(listener, move |path| {
        respond(&shared, kernel.as_deref(), path)
    })
    .await;
}
