//! TCP and TLS listeners (TCPRoute; TLSRoute in Passthrough and Terminate mode): a connection
//! is routed once by the listener's L4 route table (on TLS by the server name of the client's
//! ClientHello: a passthrough route relays the TLS untouched, any other is reached after the
//! handshake with the listener's certificates), a backend picked by weight and an endpoint by
//! the cluster's picker (Maglev on the client address by default, so a client keeps its
//! endpoint), then the bytes are relayed both ways until either side closes, or until a new
//! configuration no longer has the route, or until it is idle for --tcp-idle-timeout-ms (the
//! connection is then closed). A connect that
//! fails or times out is reported to outlier detection and tried at the next endpoint.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::client_hello;
use super::context::ListenerCtx;
use super::rewind::Rewind;
use crate::model::Relay;
use crate::model::request::RequestHeaders;
use crate::model::rule::Pick;
use crate::observe::l4_metrics::L4Stats;
use crate::shared::Shared;

/// Longest wait for a client's TLS handshake on a TLS Terminate listener.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Endpoints tried for one connection, at most.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Serves one connection of a TCP or TLS listener.
pub async fn serve(
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    if ctx.relay == Some(Relay::Tcp) {
        return relay(&shared, &ctx, client, peer, (None, false)).await;
    }
    let terminating = ctx.relay == Some(Relay::TlsTerminate);
    let passthrough_routes = {
        let state = shared.state.load();
        state
            .l4_table(&ctx.name)
            .is_some_and(|t| t.has_passthrough())
    };
    if terminating && !passthrough_routes {
        // Every route terminates: rustls reads the ClientHello (in as many records as the
        // client sends it) and the route is picked by the name it saw.
        return terminate(&shared, &ctx, client, peer).await;
    }
    // The server name picks the route, and the route whether TLS is terminated at all (a
    // Passthrough listener may share the port): the ClientHello is read first, then replayed.
    let Some((hello, sni)) = client_hello::read_client_hello(&mut client).await else {
        return debug!(%peer, listener = %ctx.name, "no ClientHello; closing");
    };
    let client = Rewind::new(hello.into(), client);
    let passthrough = {
        let state = shared.state.load();
        let route = state
            .l4_table(&ctx.name)
            .and_then(|t| t.route(sni.as_deref()));
        route.is_none_or(|r| r.passthrough)
    };
    if passthrough || !terminating {
        // No route: `relay` counts the connection as unrouted and closes it.
        return relay(&shared, &ctx, client, peer, (sni.as_deref(), true)).await;
    }
    terminate(&shared, &ctx, client, peer).await;
}

/// Terminates TLS with the listener's certificates and relays the plaintext, routed by the
/// server name the client sent (picked again here: a new snapshot may have come in since the
/// ClientHello was read).
async fn terminate<S>(shared: &Shared, ctx: &ListenerCtx, client: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
    relay(shared, ctx, tls, peer, (sni.as_deref(), false)).await;
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
    (sni, passthrough): (Option<&str>, bool),
) -> Option<Routed> {
    // A full reference: the connects below await, and the state must outlive them.
    let state = shared.state.load_full();
    let Some(route) = state.l4_table(&ctx.name).and_then(|t| t.route(sni)) else {
        debug!(%peer, listener = %ctx.name, ?sni, "no route; closing");
        return None;
    };
    if route.passthrough != passthrough {
        // Terminated for a passthrough route or the other way round: only a new snapshot
        // between reading the ClientHello and here, or a route on a listener without TLS.
        debug!(%peer, route = %route.name, "route's TLS mode differs from the connection's");
        return None;
    }
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

/// Relays a connection (plain, decrypted, or TLS passed through) to the endpoint its route
/// picks; `routing` is the client's server name and whether the connection is passed through.
async fn relay<S>(
    shared: &Shared,
    ctx: &ListenerCtx,
    client: S,
    peer: SocketAddr,
    routing: (Option<&str>, bool),
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut published = shared.publications();
    let Some(routed) = connect(shared, ctx, peer, routing).await else {
        shared.metrics.l4.unrouted.inc();
        return;
    };
    let stats = routed.stats;
    stats.connections.inc();
    stats.active.inc();
    let activity = AtomicU64::new(0);
    let mut client = Counted::new(client, &activity);
    let mut upstream = Counted::new(routed.upstream, &activity);
    let passthrough = routing.1;
    let mut removed = false;
    tokio::select! {
        result = super::copy::bidirectional(&mut client, &mut upstream) => {
            if let Err(err) = result {
                debug!(%peer, %err, "relayed connection ended with an error");
            }
        }
        () = route_gone(shared, &ctx.name, &routed.route, Some(passthrough), &mut published) => {
            debug!(%peer, route = %routed.route, "route removed; closing the connection");
            removed = true;
        }
        () = idle(&activity, shared.limits.tcp_idle_timeout) => {
            debug!(%peer, route = %routed.route, "idle; closing the connection");
            shared.metrics.l4.tcp_idle_closed.inc();
        }
    }
    stats.active.dec();
    stats.bytes_in.inc_by(client.read);
    stats.bytes_out.inc_by(upstream.read);
    if removed {
        // The route's series outlived the snapshot that removed it while this connection
        // held them; the last one to close takes them away.
        drop(stats);
        shared.metrics.l4.prune();
    }
}

/// Resolves once a published routing state no longer has `route` on `listener`.
pub async fn route_removed(
    shared: &Shared,
    listener: &str,
    route: &str,
    published: &mut watch::Receiver<u64>,
) {
    route_gone(shared, listener, route, None, published).await;
}

/// Resolves once a published routing state no longer has `route` on `listener`, or (when
/// `passthrough` is given) has it in the other TLS mode: a connection relayed untouched must
/// not go on once its route terminates TLS, nor the other way round.
async fn route_gone(
    shared: &Shared,
    listener: &str,
    route: &str,
    passthrough: Option<bool>,
    published: &mut watch::Receiver<u64>,
) {
    loop {
        if published.changed().await.is_err() {
            // The process is going away; the connection goes with it.
            return std::future::pending().await;
        }
        let state = shared.state.load();
        let current = state.l4_table(listener).and_then(|t| t.named(route));
        if current.is_none_or(|r| passthrough.is_some_and(|p| p != r.passthrough)) {
            return;
        }
    }
}

/// Resolves once `activity` has not moved for `timeout` (checked four times per timeout, so
/// a connection is closed between one and one and a quarter timeouts after its last byte).
async fn idle(activity: &AtomicU64, timeout: Duration) {
    let period = (timeout / 4).max(Duration::from_millis(1));
    let mut seen = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(period).await;
        let now = activity.load(Ordering::Relaxed);
        if now != seen {
            (seen, quiet) = (now, Duration::ZERO);
            continue;
        }
        quiet += period;
        if quiet >= timeout {
            return;
        }
    }
}

/// A stream that counts the bytes read from it, and adds them to the connection's activity.
struct Counted<'a, S> {
    inner: S,
    read: u64,
    activity: &'a AtomicU64,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: S, activity: &'a AtomicU64) -> Self {
        Counted {
            inner,
            read: 0,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        if n > 0 {
            self.read += n;
            self.activity.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
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
