//! The proxy's admin HTTP endpoint: /metrics, /healthz, /readyz.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::debug;

use crate::shared::Shared;

fn respond(shared: &Shared, path: &str) -> (StatusCode, Vec<u8>) {
    match path {
        "/metrics" => (StatusCode::OK, shared.metrics.render()),
        "/healthz" => (StatusCode::OK, b"ok\n".to_vec()),
        "/readyz" if shared.is_ready() => (StatusCode::OK, b"ready\n".to_vec()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            b"waiting for the first configuration\n".to_vec(),
        ),
        _ => (StatusCode::NOT_FOUND, b"not found\n".to_vec()),
    }
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(s) => s,
            Err(err) => {
                debug!(%err, "admin accept failed");
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, body) = respond(&shared, req.uri().path());
                async move {
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
                debug!(%peer, %err, "admin connection ended with an error");
            }
        });
    }
}
