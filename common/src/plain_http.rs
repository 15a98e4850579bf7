//! A tiny HTTP server for operational endpoints (metrics, health), used by both binaries.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::debug;

/// Plain text, for answers that are not JSON or Prometheus text.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// Prometheus text exposition format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// JSON documents.
pub const JSON: &str = "application/json";

/// Serves every request with `respond(path)` -> (status, content type, body) until the task
/// is dropped.
pub async fn serve<F>(listener: TcpListener, respond: F)
where
    F: Fn(&str) -> (StatusCode, &'static str, Vec<u8>) + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(err) => {
                debug!(%err, "accept failed");
                continue;
            }
        };
        let respond = Arc::clone(&respond);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, content_type, body) = respond(req.uri().path());
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(content_type),
                );
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
}
