//! Upstream connections: one pool per endpoint, split into one shard per worker so that a
//! request only ever uses connections owned by its own thread (no lock contention, no
//! cross-thread wake-ups). HTTP/1.1 connections are kept alive and reused one request at a
//! time; an HTTP/2 endpoint gets one multiplexed connection per worker, which carries the
//! client's :authority (not the endpoint's address).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http_body_util::Either;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::Histogram;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::error::{Overflow, UpstreamError};
use super::{PoolStats, Protocol, UpstreamBody};
use crate::body::client::BodyState;
use crate::observe::upstream_stats::EndpointStats;
use crate::upstream::outlier::EndpointHealth;
use crate::upstream::stream::RawStream;
use crate::workers;

/// Idle HTTP/1.1 connections kept per endpoint and worker; more are closed when released.
const MAX_IDLE_PER_SHARD: usize = 64;
/// An idle connection older than this is closed instead of reused, unless the cluster says.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// HTTP/2 PING interval on upstream connections, to notice dead peers.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// What makes two pools of one endpoint different (with the TLS settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: Option<u32>,
}

/// The client TLS settings of pools with the same UpstreamTls and protocol.
pub struct TlsRt {
    pub(super) connector: TlsConnector,
    pub(super) server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRt")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The requests a connection has carried so far.
type Requests = Arc<AtomicU64>;

/// A connection's sending side with its request count.
#[derive(Debug, Clone)]
pub(super) struct Counted<S> {
    pub(super) sender: S,
    requests: Requests,
}

impl<S> Counted<S> {
    /// The sender, counting one more request on its connection.
    pub(super) fn for_request(&mut self) -> &mut S {
        self.requests.fetch_add(1, Ordering::Relaxed);
        &mut self.sender
    }
}

pub(super) type H1Sender = Counted<http1::SendRequest<UpstreamBody>>;
pub(super) type H2Sender = Counted<http2::SendRequest<UpstreamBody>>;

#[derive(Debug)]
struct IdleH1 {
    sender: H1Sender,
    since: Instant,
}

/// A connection to an endpoint (TLS when the cluster has it) for the HTTP/1.1 fast path
/// ([`crate::serve::h1`]), which speaks HTTP on it itself; counted as open until dropped.
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
    open: Arc<EndpointStats>,
    per_connection: Histogram,
    requests: Requests,
    /// The worker's connection slot, under a connection limit.
    _slot: Option<ConnSlot>,
}

/// One of a worker's connections to an endpoint, counted from before it is made (so a burst
/// cannot overshoot) until it closes.
#[derive(Debug)]
struct ConnSlot(Arc<AtomicU32>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.open.closed();
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
    pub(super) addr: SocketAddr,
    /// `ip:port`, the Host of a request that has none.
    pub(super) authority: HeaderValue,
    pub(super) protocol: Protocol,
    pub(super) connect_timeout: Duration,
    idle_timeout: Duration,
    /// Most connections open to the endpoint (its series counts those of every pool).
    max_connections: Option<u32>,
    pub(super) tls: Option<Arc<TlsRt>>,
    /// Made at the first request: a proxy knows thousands of endpoints, most never used by
    /// a given replica, and these are a few hundred bytes each.
    shards: OnceLock<Shards>,
    pub(super) stats: PoolStats,
    pub(super) health: EndpointHealth,
}

/// One per worker.
#[derive(Debug)]
struct Shards {
    conns: Box<[Mutex<Shard>]>,
    /// Held while an HTTP/2 connection is being made, so that a burst of requests waits for
    /// one connection instead of opening one each.
    h2_connecting: Box<[tokio::sync::Mutex<()>]>,
    /// Connections each worker has open or opening (counted under a connection limit).
    slots: Box<[Arc<AtomicU32>]>,
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EndpointPool {
    pub(super) fn new(
        addr: SocketAddr,
        settings: PoolSettings,
        tls: Option<Arc<TlsRt>>,
        stats: PoolStats,
        health: EndpointHealth,
    ) -> EndpointPool {
        EndpointPool {
            addr,
            authority: HeaderValue::from_str(&addr.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            protocol: settings.protocol,
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
            max_connections: settings.max_connections,
            tls,
            shards: OnceLock::new(),
            stats,
            health,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Connections to the endpoint open now.
    pub fn open_connections(&self) -> i64 {
        self.stats.endpoint.open()
    }

    /// Passive health, shared by every cluster that reaches this endpoint.
    pub fn health(&self) -> &EndpointHealth {
        &self.health
    }

    fn shards(&self) -> &Shards {
        self.shards.get_or_init(|| Shards {
            conns: (0..workers::count()).map(|_| Mutex::default()).collect(),
            h2_connecting: (0..workers::count())
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            slots: (0..workers::count()).map(|_| Arc::default()).collect(),
        })
    }

    pub(super) fn shard(&self) -> usize {
        workers::current() % self.shards().conns.len()
    }

    pub(super) fn checkout_h1(&self, shard: usize) -> Option<H1Sender> {
        let mut shard = lock(&self.shards().conns[shard]);
        while let Some(idle) = shard.idle.pop_back() {
            if !idle.sender.sender.is_closed() && idle.since.elapsed() < self.idle_timeout {
                return Some(idle.sender);
            }
        }
        None
    }

    pub(super) fn release_h1(&self, shard: usize, sender: H1Sender) {
        if sender.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut shard = lock(&self.shards().conns[shard]);
        // Connections that sat unused past the idle timeout are closed here, not kept until
        // the upstream closes them.
        while shard.idle.front().is_some_and(|i| {
            i.sender.sender.is_closed() || now.duration_since(i.since) >= self.idle_timeout
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
        let mut shard = lock(&self.shards().conns[self.shard()]);
        while let Some(mut idle) = shard.raw_idle.pop_back() {
            if idle.since.elapsed() < self.idle_timeout && idle.conn.stream.is_reusable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// A new fast-path connection (with the TLS handshake when the cluster has TLS), within
    /// the connect timeout.
    pub async fn connect_raw(&self) -> Result<RawConn, UpstreamError> {
        // Boxed: a TLS handshake future is large (see send_h1).
        let (io, slot) = Box::pin(self.connect()).await?;
        let stream = match io {
            Either::Left(tcp) => RawStream::Plain(tcp),
            Either::Right(tls) => RawStream::Tls(Box::new(tls)),
        };
        Ok(RawConn {
            stream,
            open: self.opened(slot),
        })
    }

    /// Keeps a fast-path connection that finished a response for the next request.
    pub fn release_raw(&self, conn: RawConn) {
        let now = Instant::now();
        let mut shard = lock(&self.shards().conns[self.shard()]);
        while shard
            .raw_idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= self.idle_timeout)
        {
            shard.raw_idle.pop_front();
        }
        if shard.raw_idle.len() < MAX_IDLE_PER_SHARD {
            shard.raw_idle.push_back(IdleRaw { conn, since: now });
        }
    }

    /// The shard's HTTP/2 connection, made by this request or by the one it waited for. When
    /// the attempt it waited for failed, it fails too rather than trying again at once.
    pub(super) async fn connect_h2_once(&self, shard: usize) -> Result<H2Sender, UpstreamError> {
        let asked = Instant::now();
        let _connecting = self.shards().h2_connecting[shard].lock().await;
        if let Some(sender) = self.current_h2(shard) {
            return Ok(sender);
        }
        if lock(&self.shards().conns[shard])
            .h2_failed_at
            .is_some_and(|failed| failed >= asked)
        {
            return Err(UpstreamError::ConnectFailedMeanwhile { addr: self.addr });
        }
        // Boxed: a TLS handshake future is large (see send_h1).
        let connected = Box::pin(self.connect_h2(shard)).await;
        // A connection limit's refusal is no failure of the endpoint: the requests waiting
        // for this one try again, rather than fail with it.
        if connected.as_ref().is_err_and(|e| e.overflow().is_none()) {
            lock(&self.shards().conns[shard]).h2_failed_at = Some(Instant::now());
        }
        connected
    }

    pub(super) fn current_h2(&self, shard: usize) -> Option<H2Sender> {
        lock(&self.shards().conns[shard])
            .h2
            .as_ref()
            .filter(|s| !s.sender.is_closed())
            .cloned()
    }

    pub(super) async fn connect_h1(&self) -> Result<H1Sender, UpstreamError> {
        match self.connect().await? {
            (Either::Left(tcp), slot) => self.start_h1(tcp, slot).await,
            (Either::Right(tls), slot) => self.start_h1(tls, slot).await,
        }
    }

    async fn start_h1<I>(&self, io: I, slot: Option<ConnSlot>) -> Result<H1Sender, UpstreamError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| self.handshake_failed(source))?;
        let open = self.opened(slot);
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
            (Either::Left(tcp), slot) => self.start_h2(tcp, slot).await?,
            (Either::Right(tls), slot) => self.start_h2(tls, slot).await?,
        };
        lock(&self.shards().conns[shard]).h2 = Some(sender.clone());
        Ok(sender)
    }

    async fn start_h2<I>(&self, io: I, slot: Option<ConnSlot>) -> Result<H2Sender, UpstreamError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEPALIVE)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| self.handshake_failed(source))?;
        let open = self.opened(slot);
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
        self.stats.endpoint.failed();
        UpstreamError::Handshake {
            addr: self.addr,
            source,
        }
    }

    fn opened(&self, slot: Option<ConnSlot>) -> OpenConn {
        self.stats.endpoint.opened();
        OpenConn {
            _slot: slot,
            open: Arc::clone(&self.stats.endpoint),
            per_connection: self.stats.requests_per_connection.clone(),
            requests: Requests::default(),
        }
    }

    /// A TCP connection of its own for a relayed client connection (TCP and TLS Terminate
    /// listeners): within the connect timeout, counted as the pool's are, never pooled.
    pub async fn connect_relay(&self) -> Result<TcpStream, UpstreamError> {
        let result = self.connect_tcp().await;
        match &result {
            Ok(_) => self.stats.endpoint.connected(),
            Err(_) => self.stats.endpoint.failed(),
        }
        result
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

    /// A new connection for a request, within the worker's share of the connection limit
    /// (the limit over the workers, rounded up: each worker's connections are its own, as
    /// nginx's max_conns per worker process), failures counted.
    async fn connect(
        &self,
    ) -> Result<
        (
            Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>,
            Option<ConnSlot>,
        ),
        UpstreamError,
    > {
        let slot = match self.max_connections {
            None => None,
            Some(limit) => {
                let slots = &self.shards().slots;
                let share = limit.div_ceil(slots.len() as u32).max(1);
                let counter = &slots[self.shard()];
                let taken = counter
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < share).then_some(n + 1)
                    })
                    .is_ok();
                if !taken {
                    return Err(UpstreamError::Overflow {
                        addr: self.addr,
                        limit: Overflow::ConnectionsPerEndpoint,
                    });
                }
                Some(ConnSlot(Arc::clone(counter)))
            }
        };
        let result = self.connect_uncounted().await;
        if result.is_err() {
            self.stats.endpoint.failed();
        }
        // A failed connect drops its slot here.
        result.map(|io| (io, slot))
    }

    /// A TCP connection within the connect timeout, with TLS on top when configured; not
    /// counted anywhere (health probes use it too).
    pub(super) async fn connect_uncounted(
        &self,
    ) -> Result<Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>, UpstreamError> {
        let started = Instant::now();
        let timed_out = || UpstreamError::ConnectTimeout {
            addr: self.addr,
            timeout: self.connect_timeout,
        };
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
}

/// Puts an HTTP/1.1 connection back into its pool once the response has been read.
#[derive(Debug)]
pub(super) struct Release {
    pub(super) sender: H1Sender,
    pub(super) pool: Arc<EndpointPool>,
    pub(super) shard: usize,
    /// The streamed request body, if any: a connection still uploading (the upstream answered
    /// early) would hold the next request until the upload ends, so it is closed instead.
    pub(super) request_body: Option<Arc<BodyState>>,
}

impl Release {
    pub(super) fn release(self) {
        if self.request_body.as_ref().is_none_or(|b| b.is_done()) {
            self.pool.release_h1(self.shard, self.sender);
        }
    }
}
