//! TCP and TLS Terminate listeners (TCPRoute; TLSRoute in Terminate mode): a connection is
//! routed once by the listener's L4 route table (by the client's SNI on TLS, after the
//! handshake with the listener's certificates), a backend picked by weight and an endpoint by
//! the cluster's picker (Maglev on the client address by default, so a client keeps its
//! endpoint), then the bytes are relayed both ways until either side closes, or until a new
//! configuration no longer has the route (the connection is then closed). A connect that
//! fails or times out is reported to outlier detection and tried at the next endpoint.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::context::ListenerCtx;
use crate::model::Relay;
use crate::model::request::RequestHeaders;
use crate::model::rule::Pick;
use crate::observe::l4_metrics::L4Stats;
use crate::shared::Shared;

/// Longest wait for a client's TLS handshake on a TLS Terminate listener.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Endpoints tried for one connection, at most.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Serves one connection of a TCP or TLS Terminate listener.
pub async fn serve(
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    client: TcpStream,
    peer: SocketAddr,
) {
    if ctx.relay != Some(Relay::TlsTerminate) {
        return relay(&shared, &ctx, client, peer, None).await;
    }
    // The configuration of the current snapshot: certificates change without a new socket.
    let Some(config) = shared.state.load().tls_config(&ctx.name) else {
        return;
    };
    let handshake = TlsAcceptor::from(config).accept(client);
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => return debug!(%peer, %err, "TLS handshake failed"),
        Err(_) => return debug!(%peer, "TLS handshake timed out"),
    };
    let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
    relay(&shared, &ctx, tls, peer, sni.as_deref()).await;
}

/// A connection's route and the upstream connection made for it.
struct Routed {
    route: Arc<str>,
    stats: Arc<L4Stats>,
    upstream: TcpStream,
}

/// Routes a connection and connects upstream; `None` when there is no route, backend or
/// endpoint, or every endpoint tried failed.
async fn connect(
    shared: &Shared,
    ctx: &ListenerCtx,
    peer: SocketAddr,
    sni: Option<&str>,
) -> Option<Routed> {
    // A full reference: the connects below await, and the state must outlive them.
    let state = shared.state.load_full();
    let Some(route) = state.l4_table(&ctx.name).and_then(|t| t.route(sni)) else {
        debug!(%peer, listener = %ctx.name, ?sni, "no route; closing");
        return None;
    };
    let Pick::Backend(backend) = route.action.pick(rand::random()) else {
        debug!(%peer, route = %route.name, "backend not resolved; closing");
        return None;
    };
    let cluster = backend.cluster.as_ref()?;
    let Some(first) = cluster.pick(peer.ip(), RequestHeaders::Raw(&[])) else {
        debug!(%peer, cluster = %cluster.name, "no ready endpoint; closing");
        return None;
    };
    let attempts = cluster.endpoints().len().min(MAX_CONNECT_ATTEMPTS);
    for n in 0..attempts {
        let endpoint = match n {
            0 => first,
            n => cluster.nth_after(first, n),
        };
        match endpoint.pool.connect_relay().await {
            Ok(upstream) => {
                cluster.report(endpoint, false);
                let _ = upstream.set_nodelay(true);
                return Some(Routed {
                    route: Arc::clone(&route.name),
                    stats: Arc::clone(&route.stats),
                    upstream,
                });
            }
            Err(err) => {
                debug!(%peer, endpoint = %endpoint.addr, %err, "relay connect failed");
                route.stats.connect_failures.inc();
                cluster.report(endpoint, true);
            }
        }
    }
    None
}

/// Relays a connection (plain or decrypted) to the endpoint its route picks.
async fn relay<S>(
    shared: &Shared,
    ctx: &ListenerCtx,
    client: S,
    peer: SocketAddr,
    sni: Option<&str>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut published = shared.publications();
    let Some(routed) = connect(shared, ctx, peer, sni).await else {
        shared.metrics.l4.unrouted.inc();
        return;
    };
    let stats = routed.stats;
    stats.connections.inc();
    stats.active.inc();
    let mut client = Counted::new(client);
    let mut upstream = Counted::new(routed.upstream);
    tokio::select! {
        result = super::copy::bidirectional(&mut client, &mut upstream) => {
            if let Err(err) = result {
                debug!(%peer, %err, "relayed connection ended with an error");
            }
        }
        () = route_removed(shared, &ctx.name, &routed.route, &mut published) => {
            debug!(%peer, route = %routed.route, "route removed; closing the connection");
        }
    }
    stats.active.dec();
    stats.bytes_in.inc_by(client.read);
    stats.bytes_out.inc_by(upstream.read);
}

/// Resolves once a published routing state no longer has `route` on `listener`.
pub async fn route_removed(
    shared: &Shared,
    listener: &str,
    route: &str,
    published: &mut watch::Receiver<u64>,
) {
    loop {
        if published.changed().await.is_err() {
            // The process is going away; the connection goes with it.
            return std::future::pending().await;
        }
        let state = shared.state.load();
        if !state.l4_table(listener).is_some_and(|t| t.contains(route)) {
            return;
        }
    }
}

/// A stream that counts the bytes read from it.
struct Counted<S> {
    inner: S,
    read: u64,
}

impl<S> Counted<S> {
    fn new(inner: S) -> Self {
        Counted { inner, read: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read += n as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
