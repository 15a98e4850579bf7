//! Sending a request to an endpoint: on a raw connection (HTTP/1.1 without a body, when
//! allowed), or through hyper's HTTP/1.1 or HTTP/2 client on a pooled connection.

use std::sync::Arc;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::Either;

use super::error::UpstreamError;
use super::pool::{EndpointPool, Release};
use super::raw;
use super::response_body::ResponseBody;
use super::{Protocol, UpstreamBody};
use crate::body::client::BodyState;

impl EndpointPool {
    /// Sends a request (origin-form URI, Host header set) and returns the response; the
    /// connection goes back to the pool when the response body has been read. An `upgrade`
    /// request's connection is handed over to the upgrade and never pooled. `raw`: an
    /// HTTP/1.1 request without a body may go on a raw connection ([`raw`]).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        upgrade: bool,
        raw: bool,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let req = self.prepare(req);
        if raw && !upgrade && self.protocol == Protocol::Http1 && raw::takes(&req) {
            let resp = raw::send(self, req).await?;
            self.stats.raw_requests.inc();
            return Ok(resp.map(ResponseBody::raw));
        }
        let body = match req.body() {
            Either::Left(streamed) => Some(streamed.state()),
            Either::Right(_) => None,
        };
        // Boxed: hyper's request futures are large, and inline they would make every request's
        // future (copied into its box, and moved on the way) that much larger.
        match self.protocol {
            Protocol::Http1 => Box::pin(self.send_h1(req, upgrade, body)).await,
            Protocol::H2c => Box::pin(self.send_h2(req)).await,
        }
    }

    /// The request in the form the protocol wants: HTTP/1.1 origin-form with Host, or HTTP/2
    /// with the Host moved to :authority.
    fn prepare(&self, mut req: Request<UpstreamBody>) -> Request<UpstreamBody> {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        match self.protocol {
            Protocol::Http1 => {
                *req.version_mut() = Version::HTTP_11;
                if req.uri().authority().is_some() {
                    *req.uri_mut() = Uri::from(path);
                }
                if !req.headers().contains_key(HOST) {
                    req.headers_mut().insert(HOST, self.authority.clone());
                }
            }
            Protocol::H2c => {
                *req.version_mut() = Version::HTTP_2;
                let host = req.headers_mut().remove(HOST);
                let authority = host
                    .as_ref()
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                    .or_else(|| Authority::try_from(self.authority.as_bytes()).ok());
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(if self.tls.is_some() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                });
                parts.authority = authority;
                parts.path_and_query = Some(path);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        req
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
        upgrade: bool,
        body: Option<Arc<BodyState>>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let shard = self.shard();
        loop {
            let (mut sender, reused) = match self.checkout_h1(shard) {
                Some(sender) => (sender, true),
                // Boxed, as every connect path: a TLS handshake future is large, and inline it
                // would make every request's future (moved around per request) that large.
                None => (Box::pin(self.connect_h1()).await?, false),
            };
            if reused && sender.sender.ready().await.is_err() {
                continue;
            }
            match sender.for_request().try_send_request(req).await {
                Ok(resp) => {
                    let release = (!upgrade).then(|| Release {
                        sender,
                        pool: Arc::clone(self),
                        shard,
                        request_body: body,
                    });
                    return Ok(ResponseBody::new(resp, release));
                }
                Err(mut err) => match err.take_message() {
                    // A kept-alive connection the upstream closed meanwhile: nothing was sent,
                    // so the request goes again on another connection.
                    Some(unsent) if reused => req = unsent,
                    _ => {
                        return Err(UpstreamError::Request {
                            addr: self.addr,
                            source: err.into_error(),
                        });
                    }
                },
            }
        }
    }

    async fn send_h2(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let shard = self.shard();
        let (mut sender, reused) = match self.current_h2(shard) {
            Some(sender) => (sender, true),
            None => (self.connect_h2_once(shard).await?, false),
        };
        let result = match sender.for_request().try_send_request(req).await {
            Err(mut err) if reused => match err.take_message() {
                // The connection went away before the request was sent: once more, afresh.
                Some(unsent) => {
                    let mut fresh = self.connect_h2_once(shard).await?;
                    fresh.for_request().send_request(unsent).await
                }
                None => Err(err.into_error()),
            },
            Err(err) => Err(err.into_error()),
            Ok(resp) => Ok(resp),
        };
        result
            .map(|resp| ResponseBody::new(resp, None))
            .map_err(|source| UpstreamError::Request {
                addr: self.addr,
                source,
            })
    }
}
