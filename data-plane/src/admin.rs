//! The proxy's admin HTTP endpoint: /metrics, /healthz, /readyz.

use std::sync::Arc;

use hyper::StatusCode;
use rauta_common::plain_http;
use tokio::net::TcpListener;

use crate::shared::Shared;

fn respond(shared: &Shared, path: &str) -> (StatusCode, Vec<u8>) {
    match path {
        "/metrics" => {
            // Ejections end by time, not by an event: the gauge is read off the state.
            shared.state.load().record_ejections(&shared.metrics);
            (StatusCode::OK, shared.metrics.render())
        }
        "/healthz" => (StatusCode::OK, b"ok\n".to_vec()),
        "/readyz" if shared.is_draining() => {
            (StatusCode::SERVICE_UNAVAILABLE, b"draining\n".to_vec())
        }
        "/readyz" if shared.is_ready() => (StatusCode::OK, b"ready\n".to_vec()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            b"waiting for the first configuration\n".to_vec(),
        ),
        _ => (StatusCode::NOT_FOUND, b"not found\n".to_vec()),
    }
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    plain_http::serve(listener, move |path| respond(&shared, path)).await;
}
