//! Upstream connections: one pool per endpoint, split into one shard per worker so that a
//! request only ever uses connections owned by its own thread (no lock contention, no
//! cross-thread wake-ups). HTTP/1.1 connections are kept alive and reused one request at a
//! time; an HTTP/2 endpoint gets one multiplexed connection per worker, which carries the
//! client's :authority (not the endpoint's address).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{Histogram, IntCounter, IntGauge};
use prost::Message;
use rauta_common::api::v1::UpstreamTls;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::limits::{BodyState, RequestBody, RequestBodyError};
use crate::metrics::ProxyMetrics;
use crate::outlier::EndpointHealth;
use crate::raw_stream::RawStream;
use crate::upstream_raw::{self, ExchangeError, RawBody, RawBodyError};
use crate::workers;

/// The wire protocol to the endpoints of a cluster (over TLS when the cluster has TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    H2c,
}

/// What the proxy sends upstream: the client's body streamed through, or a buffered one
/// (mirrors, retries).
pub type UpstreamBody = Either<RequestBody, Full<Bytes>>;

/// Idle HTTP/1.1 connections kept per endpoint and worker; more are closed when released.
const MAX_IDLE_PER_SHARD: usize = 64;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// HTTP/2 PING interval on upstream connections, to notice dead peers.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// Why a request could not be sent upstream or got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("connecting to {addr}: failed while this request waited for it")]
    ConnectFailedMeanwhile { addr: SocketAddr },
    #[error("request to {addr}: {source}")]
    Request {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("request to {addr}: {source}")]
    Exchange {
        addr: SocketAddr,
        source: ExchangeError,
    },
}

impl UpstreamError {
    /// No connection could be made (as opposed to a failure on an open connection).
    pub fn is_connect(&self) -> bool {
        !matches!(
            self,
            UpstreamError::Request { .. } | UpstreamError::Exchange { .. }
        )
    }
}

/// The client TLS settings of pools with the same UpstreamTls and protocol.
pub struct TlsRt {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRt")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Connection counters of one endpoint.
#[derive(Debug, Clone)]
pub struct PoolStats {
    pub open: IntGauge,
    pub created: IntCounter,
    pub failed: IntCounter,
    /// Requests (HTTP/2: streams) each connection carried, observed when it closes.
    pub requests_per_connection: Histogram,
    /// Requests the general path sent on raw connections ([`upstream_raw`]).
    pub raw_requests: IntCounter,
}

/// The requests a connection has carried so far.
type Requests = Arc<AtomicU64>;

/// A connection's sending side with its request count.
#[derive(Debug, Clone)]
struct Counted<S> {
    sender: S,
    requests: Requests,
}

impl<S> Counted<S> {
    /// The sender, counting one more request on its connection.
    fn for_request(&mut self) -> &mut S {
        self.requests.fetch_add(1, Ordering::Relaxed);
        &mut self.sender
    }
}

type H1Sender = Counted<http1::SendRequest<UpstreamBody>>;
type H2Sender = Counted<http2::SendRequest<UpstreamBody>>;

#[derive(Debug)]
struct IdleH1 {
    sender: H1Sender,
    since: Instant,
}

/// A connection to an endpoint (TLS when the cluster has it) for the HTTP/1.1 fast path
/// ([`crate::h1`]), which speaks HTTP on it itself; counted as open until dropped.
#[derive(Debug)]
pub struct RawConn {
    pub stream: RawStream,
    open: OpenConn,
}

impl RawConn {
    /// Counts a request sent on this connection.
    pub fn count_request(&self) {
        self.open.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// An upstream connection in the metrics: counted open until dropped, when the requests it
/// carried are observed.
#[derive(Debug)]
struct OpenConn {
    open: IntGauge,
    per_connection: Histogram,
    requests: Requests,
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.open.dec();
        self.per_connection
            .observe(self.requests.load(Ordering::Relaxed) as f64);
    }
}

#[derive(Debug)]
struct IdleRaw {
    conn: RawConn,
    since: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    /// Oldest first: expired connections are dropped from the front, reuse takes the back.
    idle: VecDeque<IdleH1>,
    /// Idle connections of the fast path, in the same order.
    raw_idle: VecDeque<IdleRaw>,
    h2: Option<H2Sender>,
    /// When the last HTTP/2 connect failed: requests that waited for that attempt fail with
    /// it instead of each trying (and timing out) in turn.
    h2_failed_at: Option<Instant>,
}

/// The connections to one endpoint, shared by every cluster that reaches it with the same
/// protocol, TLS and connect timeout; survives snapshot swaps that keep the endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    addr: SocketAddr,
    /// `ip:port`, the Host of a request that has none.
    authority: HeaderValue,
    protocol: Protocol,
    connect_timeout: Duration,
    tls: Option<Arc<TlsRt>>,
    shards: Box<[Mutex<Shard>]>,
    /// Per shard: held while an HTTP/2 connection is being made, so that a burst of requests
    /// waits for one connection instead of opening one each.
    h2_connecting: Box<[tokio::sync::Mutex<()>]>,
    stats: PoolStats,
    health: EndpointHealth,
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EndpointPool {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Connections to the endpoint open now.
    pub fn open_connections(&self) -> i64 {
        self.stats.open.get()
    }

    /// Passive health, shared by every cluster that reaches this endpoint.
    pub fn health(&self) -> &EndpointHealth {
        &self.health
    }

    fn shard(&self) -> usize {
        workers::current() % self.shards.len()
    }

    /// Sends a request (origin-form URI, Host header set) and returns the response; the
    /// connection goes back to the pool when the response body has been read. An `upgrade`
    /// request's connection is handed over to the upgrade and never pooled. `raw`: an
    /// HTTP/1.1 request without a body may go on a raw connection ([`upstream_raw`]).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        upgrade: bool,
        raw: bool,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let req = self.prepare(req);
        if raw && !upgrade && self.protocol == Protocol::Http1 && upstream_raw::takes(&req) {
            let resp = upstream_raw::send(self, req).await?;
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

    fn checkout_h1(&self, shard: usize) -> Option<H1Sender> {
        let mut shard = lock(&self.shards[shard]);
        while let Some(idle) = shard.idle.pop_back() {
            if !idle.sender.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.sender);
            }
        }
        None
    }

    fn release_h1(&self, shard: usize, sender: H1Sender) {
        if sender.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut shard = lock(&self.shards[shard]);
        // Connections that sat unused past the idle timeout are closed here, not kept until
        // the upstream closes them.
        while shard.idle.front().is_some_and(|i| {
            i.sender.sender.is_closed() || now.duration_since(i.since) >= IDLE_TIMEOUT
        }) {
            shard.idle.pop_front();
        }
        if shard.idle.len() < MAX_IDLE_PER_SHARD {
            shard.idle.push_back(IdleH1 { sender, since: now });
        }
    }

    /// Whether the HTTP/1.1 fast path can reach this endpoint (HTTP/1.1, with or without TLS).
    pub fn serves_raw(&self) -> bool {
        self.protocol == Protocol::Http1
    }

    /// An idle fast-path connection of this worker, newest first, that the upstream has not
    /// closed (nor sent anything on) meanwhile.
    pub fn checkout_raw(&self) -> Option<RawConn> {
        let mut shard = lock(&self.shards[self.shard()]);
        while let Some(mut idle) = shard.raw_idle.pop_back() {
            if idle.since.elapsed() < IDLE_TIMEOUT && idle.conn.stream.is_reusable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// A new fast-path connection (with the TLS handshake when the cluster has TLS), within
    /// the connect timeout.
    pub async fn connect_raw(&self) -> Result<RawConn, UpstreamError> {
        // Boxed: a TLS handshake future is large (see send_h1).
        let stream = match Box::pin(self.connect()).await? {
            Either::Left(tcp) => RawStream::Plain(tcp),
            Either::Right(tls) => RawStream::Tls(Box::new(tls)),
        };
        Ok(RawConn {
            stream,
            open: self.opened(),
        })
    }

    /// Keeps a fast-path connection that finished a response for the next request.
    pub fn release_raw(&self, conn: RawConn) {
        let now = Instant::now();
        let mut shard = lock(&self.shards[self.shard()]);
        while shard
            .raw_idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
        {
            shard.raw_idle.pop_front();
        }
        if shard.raw_idle.len() < MAX_IDLE_PER_SHARD {
            shard.raw_idle.push_back(IdleRaw { conn, since: now });
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

    /// The shard's HTTP/2 connection, made by this request or by the one it waited for. When
    /// the attempt it waited for failed, it fails too rather than trying again at once.
    async fn connect_h2_once(&self, shard: usize) -> Result<H2Sender, UpstreamError> {
        let asked = Instant::now();
        let _connecting = self.h2_connecting[shard].lock().await;
        if let Some(sender) = self.current_h2(shard) {
            return Ok(sender);
        }
        if lock(&self.shards[shard])
            .h2_failed_at
            .is_some_and(|failed| failed >= asked)
        {
            return Err(UpstreamError::ConnectFailedMeanwhile { addr: self.addr });
        }
        // Boxed: a TLS handshake future is large (see send_h1).
        let connected = Box::pin(self.connect_h2(shard)).await;
        if connected.is_err() {
            lock(&self.shards[shard]).h2_failed_at = Some(Instant::now());
        }
        connected
    }

    fn current_h2(&self, shard: usize) -> Option<H2Sender> {
        lock(&self.shards[shard])
            .h2
            .as_ref()
            .filter(|s| !s.sender.is_closed())
            .cloned()
    }

    async fn connect_h1(&self) -> Result<H1Sender, UpstreamError> {
        match self.connect().await? {
            Either::Left(tcp) => self.start_h1(tcp).await,
            Either::Right(tls) => self.start_h1(tls).await,
        }
    }

    async fn start_h1<I>(&self, io: I) -> Result<H1Sender, UpstreamError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| self.handshake_failed(source))?;
        let open = self.opened();
        let requests = Arc::clone(&open.requests);
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                debug!(%err, "upstream connection ended with an error");
            }
            drop(open);
        });
        Ok(Counted { sender, requests })
    }

    /// A new HTTP/2 connection, stored as the shard's connection for later requests.
    async fn connect_h2(&self, shard: usize) -> Result<H2Sender, UpstreamError> {
        let sender = match self.connect().await? {
            Either::Left(tcp) => self.start_h2(tcp).await?,
            Either::Right(tls) => self.start_h2(tls).await?,
        };
        lock(&self.shards[shard]).h2 = Some(sender.clone());
        Ok(sender)
    }

    async fn start_h2<I>(&self, io: I) -> Result<H2Sender, UpstreamError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEPALIVE)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| self.handshake_failed(source))?;
        let open = self.opened();
        let requests = Arc::clone(&open.requests);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(%err, "upstream HTTP/2 connection ended with an error");
            }
            drop(open);
        });
        Ok(Counted { sender, requests })
    }

    fn handshake_failed(&self, source: hyper::Error) -> UpstreamError {
        self.stats.failed.inc();
        UpstreamError::Handshake {
            addr: self.addr,
            source,
        }
    }

    fn opened(&self) -> OpenConn {
        self.stats.created.inc();
        self.stats.open.inc();
        OpenConn {
            open: self.stats.open.clone(),
            per_connection: self.stats.requests_per_connection.clone(),
            requests: Requests::default(),
        }
    }

    /// A TCP connection within the connect timeout (not counted: the caller counts failures).
    async fn connect_tcp(&self) -> Result<TcpStream, UpstreamError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                addr: self.addr,
                timeout: self.connect_timeout,
            })?
            .map_err(|source| UpstreamError::Connect {
                addr: self.addr,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// A TCP connection within the connect timeout, with TLS on top when configured.
    async fn connect(
        &self,
    ) -> Result<Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>, UpstreamError> {
        let started = Instant::now();
        let timed_out = || UpstreamError::ConnectTimeout {
            addr: self.addr,
            timeout: self.connect_timeout,
        };
        let result = async {
            let tcp = self.connect_tcp().await?;
            let Some(tls) = &self.tls else {
                return Ok(Either::Left(tcp));
            };
            let left = self.connect_timeout.saturating_sub(started.elapsed());
            let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
            tokio::time::timeout(left, handshake)
                .await
                .map_err(|_| timed_out())?
                .map(Either::Right)
                .map_err(|source| UpstreamError::Tls {
                    addr: self.addr,
                    source,
                })
        }
        .await;
        if result.is_err() {
            self.stats.failed.inc();
        }
        result
    }
}

/// Puts an HTTP/1.1 connection back into its pool once the response has been read.
#[derive(Debug)]
struct Release {
    sender: H1Sender,
    pool: Arc<EndpointPool>,
    shard: usize,
    /// The streamed request body, if any: a connection still uploading (the upstream answered
    /// early) would hold the next request until the upload ends, so it is closed instead.
    request_body: Option<Arc<BodyState>>,
}

impl Release {
    fn release(self) {
        if self.request_body.as_ref().is_none_or(|b| b.is_done()) {
            self.pool.release_h1(self.shard, self.sender);
        }
    }
}

/// An upstream response body; when it ends cleanly its connection can carry the next request.
/// Dropped early (the client went away), the connection is closed instead.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Hyper {
        body: Incoming,
        release: Option<Release>,
    },
    Raw(RawBody),
}

/// Why an upstream response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Raw(#[from] RawBodyError),
}

impl ResponseBody {
    /// A body read by the raw HTTP/1.1 client.
    pub fn raw(body: RawBody) -> ResponseBody {
        ResponseBody {
            inner: Inner::Raw(body),
        }
    }

    fn new(resp: Response<Incoming>, release: Option<Release>) -> Response<ResponseBody> {
        resp.map(|body| {
            let mut body = ResponseBody {
                inner: Inner::Hyper { body, release },
            };
            body.release_if_done();
            body
        })
    }

    fn release_if_done(&mut self) {
        if let Inner::Hyper { body, release } = &mut self.inner
            && body.is_end_stream()
            && let Some(r) = release.take()
        {
            r.release();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let (body, release) = match &mut self.inner {
            Inner::Raw(raw) => return Pin::new(raw).poll_frame(cx).map_err(Into::into),
            Inner::Hyper { body, release } => (body, release),
        };
        let polled = Pin::new(body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(r) = release.take() {
                    r.release();
                }
            }
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            Poll::Ready(Some(Err(_))) => *release = None,
            Poll::Pending => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper { body, .. } => body.is_end_stream(),
            Inner::Raw(raw) => raw.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { body, .. } => body.size_hint(),
            Inner::Raw(raw) => raw.size_hint(),
        }
    }
}

/// Pool identity: endpoint, protocol, connect timeout and a digest of the TLS settings.
type PoolKey = (SocketAddr, Protocol, Duration, Option<u64>);

/// Every endpoint pool, keyed by its settings, so pools survive snapshot swaps that keep them.
#[derive(Debug, Default)]
pub struct UpstreamPools {
    pools: HashMap<PoolKey, Arc<EndpointPool>>,
    tls: HashMap<(u64, Protocol), Arc<TlsRt>>,
}

/// The TLS settings of a cluster, validated once and shared by its endpoints' pools.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    digest: u64,
    rt: Arc<TlsRt>,
}

impl UpstreamPools {
    /// Validates a cluster's upstream TLS settings; an error NACKs the snapshot.
    pub fn tls(&mut self, protocol: Protocol, tls: &UpstreamTls) -> Result<ClusterTls, String> {
        let digest = rauta_common::hash::fnv1a64(&tls.encode_to_vec());
        if let Some(rt) = self.tls.get(&(digest, protocol)) {
            return Ok(ClusterTls {
                digest,
                rt: Arc::clone(rt),
            });
        }
        let mut config = crate::upstream_tls::client_config(tls)?;
        config.alpn_protocols = match protocol {
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::H2c => vec![b"h2".to_vec()],
        };
        let server_name = ServerName::try_from(tls.server_name.clone())
            .map_err(|e| format!("server_name {:?}: {e}", tls.server_name))?;
        let rt = Arc::new(TlsRt {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        });
        self.tls.insert((digest, protocol), Arc::clone(&rt));
        Ok(ClusterTls { digest, rt })
    }

    /// The pool for an endpoint with these settings, existing or new.
    pub fn endpoint(
        &mut self,
        addr: SocketAddr,
        protocol: Protocol,
        connect_timeout: Duration,
        tls: Option<&ClusterTls>,
        metrics: &ProxyMetrics,
    ) -> Arc<EndpointPool> {
        let key = (addr, protocol, connect_timeout, tls.map(|t| t.digest));
        let pool = self.pools.entry(key).or_insert_with(|| {
            let shards = (0..workers::count()).map(|_| Mutex::default()).collect();
            let h2_connecting = (0..workers::count())
                .map(|_| tokio::sync::Mutex::new(()))
                .collect();
            Arc::new(EndpointPool {
                addr,
                authority: HeaderValue::from_str(&addr.to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                protocol,
                connect_timeout,
                tls: tls.map(|t| Arc::clone(&t.rt)),
                shards,
                h2_connecting,
                stats: metrics.pool_stats(&addr.to_string(), protocol),
                health: EndpointHealth::new(metrics.outlier_ejections(&addr.to_string())),
            })
        });
        Arc::clone(pool)
    }

    /// Forgets pools and TLS settings nothing uses any more (their connections close), and
    /// the metric series of endpoints no pool reaches any more.
    pub fn prune(&mut self, metrics: &ProxyMetrics) {
        let mut gone = Vec::new();
        self.pools.retain(|key, pool| {
            let used = Arc::strong_count(pool) > 1;
            if !used {
                gone.push(key.0);
            }
            used
        });
        for addr in gone {
            if !self.pools.keys().any(|k| k.0 == addr) {
                metrics.forget_endpoint(&addr.to_string());
            }
        }
        self.tls.retain(|_, tls| Arc::strong_count(tls) > 1);
    }

    /// Pools currently known.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}

/// Largest request body held in memory to be sent more than once (mirrors, retries).
pub const BUFFERED_BODY_LIMIT: u64 = 64 * 1024;
/// Longest wait for a small body to arrive before it is forwarded.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Read(RequestBodyError),
    #[error("the request body did not arrive in time")]
    TimedOut,
}

/// Reads a small body into memory so it can be sent more than once. Returns the body to
/// forward, and the bytes for the copies (`None`: too large or of unknown size; it is streamed once, not mirrored or retried).
pub async fn buffer_body(
    incoming: RequestBody,
) -> Result<(UpstreamBody, Option<Bytes>), BodyError> {
    if incoming.is_end_stream() {
        return Ok((Either::Right(Full::new(Bytes::new())), Some(Bytes::new())));
    }
    if incoming
        .size_hint()
        .upper()
        .is_none_or(|n| n > BUFFERED_BODY_LIMIT)
    {
        return Ok((Either::Left(incoming), None));
    }
    let bytes = tokio::time::timeout(BODY_READ_TIMEOUT, incoming.collect())
        .await
        .map_err(|_| BodyError::TimedOut)?
        .map_err(BodyError::Read)?
        .to_bytes();
    Ok((Either::Right(Full::new(bytes.clone())), Some(bytes)))
}
