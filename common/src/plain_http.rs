//! A tiny HTTP server for operational endpoints (metrics, health), used by both binaries.
//! Scrapers and probes are few: it serves a bounded number of connections at once, gives
//! each a deadline for its request head and its whole life, and backs off on accept errors.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::accept::AcceptBackoff;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest wait for a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of a connection (a scrape takes well under a second).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = AcceptBackoff::default();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HEADER_READ_TIMEOUT)
        .keep_alive_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => {
                backoff.succeeded();
                s
            }
            Err(err) => {
                debug!(%err, "accept failed");
                backoff.failed().await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "too many connections: closed");
            continue;
        };
        let respond = Arc::clone(&respond);
        let builder = builder.clone();
        tokio::spawn(async move {
            let _slot = slot;
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
            let served = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!(%peer, %err, "connection ended with an error"),
                Err(_) => debug!(%peer, "connection open too long: closed"),
            }
        });
    }
}
