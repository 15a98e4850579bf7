//! Opens and closes the proxy's listening sockets to follow the snapshot. New sockets are
//! bound before a snapshot is accepted, so a port that cannot be bound NACKs the snapshot.
//! Each worker accepts on its own SO_REUSEPORT socket for every listener; the kernel spreads
//! new connections across them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use rauta_common::accept::AcceptBackoff;

use crate::h1;
use crate::http2;
use crate::limits::{Activity, ClientBody, TrackedIo};
use crate::proxy::{self, ListenerCtx};
use crate::routing::ListenerSpec;
use crate::shared::{Shared, drain_started};
use crate::workers::{self, Workers};

/// Longest wait for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug)]
struct ActiveListener {
    port: u16,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Sockets bound for a snapshot that is not committed yet.
#[derive(Debug, Default)]
pub struct PreparedListeners {
    /// Per new listener, one socket per worker.
    new: Vec<(ListenerSpec, Vec<std::net::TcpListener>)>,
    keep: Vec<String>,
}

#[derive(Debug)]
pub struct ListenerManager {
    bind_ip: IpAddr,
    port_offset: u16,
    shared: Arc<Shared>,
    workers: Workers,
    active: HashMap<String, ActiveListener>,
}

impl ListenerManager {
    pub fn new(bind_ip: IpAddr, port_offset: u16, shared: Arc<Shared>, workers: Workers) -> Self {
        ListenerManager {
            bind_ip,
            port_offset,
            shared,
            workers,
            active: HashMap::new(),
        }
    }

    /// Binds what `specs` adds; nothing changes until [`ListenerManager::commit`].
    pub fn prepare(&self, specs: &[ListenerSpec]) -> Result<PreparedListeners, String> {
        let mut prepared = PreparedListeners::default();
        for spec in specs {
            if self
                .active
                .get(&spec.name)
                .is_some_and(|a| a.port == spec.port)
            {
                prepared.keep.push(spec.name.clone());
                continue;
            }
            let port = spec.port.checked_add(self.port_offset).ok_or_else(|| {
                format!(
                    "listener {}: port {} + offset {} exceeds 65535",
                    spec.name, spec.port, self.port_offset
                )
            })?;
            let addr = SocketAddr::new(self.bind_ip, port);
            let sockets = bind_per_worker(addr, self.workers.len())
                .map_err(|e| format!("listener {}: cannot bind {addr}: {e}", spec.name))?;
            prepared.new.push((spec.clone(), sockets));
        }
        Ok(prepared)
    }

    /// Starts the new sockets and closes those the snapshot no longer has. Connections already
    /// accepted on a closed socket run to completion.
    pub fn commit(&mut self, prepared: PreparedListeners) {
        let wanted: Vec<&str> = prepared
            .keep
            .iter()
            .map(String::as_str)
            .chain(prepared.new.iter().map(|(s, _)| s.name.as_str()))
            .collect();
        self.active.retain(|name, active| {
            let keep = wanted.contains(&name.as_str())
                && !prepared.new.iter().any(|(s, _)| s.name == *name);
            if !keep {
                info!(listener = %name, addr = %active.local, "closing listener");
                let _ = active.stop.send(true);
            }
            keep
        });
        for (spec, sockets) in prepared.new {
            let local = sockets
                .first()
                .and_then(|s| s.local_addr().ok())
                .unwrap_or_else(|| SocketAddr::new(self.bind_ip, spec.port));
            info!(listener = %spec.name, addr = %local, workers = sockets.len(), "listening");
            let (stop, stopped) = watch::channel(false);
            let ctx = Arc::new(ListenerCtx {
                name: Arc::from(spec.name.as_str()),
                port: spec.port,
                tls: spec.tls,
                passthrough: spec.passthrough,
            });
            for (socket, worker) in sockets.into_iter().zip(self.workers.handles()) {
                let (ctx, shared, stopped) =
                    (Arc::clone(&ctx), Arc::clone(&self.shared), stopped.clone());
                // Registered with the worker's own reactor, inside the worker.
                worker.spawn(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => accept_loop(listener, ctx, shared, stopped).await,
                        Err(err) => {
                            tracing::error!(listener = %ctx.name, %err, "cannot register socket")
                        }
                    }
                });
            }
            self.active.insert(
                spec.name,
                ActiveListener {
                    port: spec.port,
                    local,
                    stop,
                },
            );
        }
    }
}

fn socket_for(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Lets a restarted proxy rebind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    // Lets a listener that changes name (protocol) open its new socket on the same port
    // before the old one closes; a foreign socket without SO_REUSEPORT still conflicts.
    socket.set_reuseport(true)?;
    Ok(socket)
}

/// One listening socket per worker on the same address (SO_REUSEPORT), handed over
/// unregistered so each worker registers its own with its reactor.
fn bind_per_worker(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let socket = socket_for(addr)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?.into_std()?;
        // Port 0 picks a port once; the other workers' sockets join that one.
        addr = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = shared.limits;
    let builder = http_builder(&limits);
    let mut drain = shared.drain_watch();
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => {
                        backoff.succeeded();
                        a
                    }
                    Err(err) => {
                        // Out of file descriptors and similar: keep serving what we have.
                        debug!(listener = %ctx.name, %err, "accept failed");
                        backoff.failed().await;
                        continue;
                    }
                };
                let Some(slot) = workers::connection_slot(limits.max_connections_per_worker) else {
                    // Closed at once: cheaper for both sides than a connection left waiting.
                    shared.metrics.connections_refused.inc();
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let ctx = Arc::clone(&ctx);
                let open = shared.drain_watch();
                if ctx.passthrough {
                    tokio::spawn(async move {
                        crate::passthrough::serve(shared, ctx, stream, peer).await;
                        drop((open, slot));
                    });
                    continue;
                }
                let activity = Arc::new(Activity::default());
                let stream = TrackedIo::new(stream, Arc::clone(&activity), limits.send_timeout);
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let served = if ctx.tls {
                        // The configuration of the current snapshot: certificates change without
                        // reopening the socket.
                        let Some(config) = shared.state.load().tls_config(&ctx.name) else { return };
                        let handshake = TlsAcceptor::from(config).accept(stream);
                        let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(err)) => {
                                debug!(%peer, %err, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let (_, session) = tls.get_ref();
                        let sni = session.server_name().map(|n| Arc::from(n.to_ascii_lowercase()));
                        let h2 = session.alpn_protocol() == Some(b"h2");
                        let conn = Arc::new(proxy::Connection { peer, sni, activity });
                        if h2 && shared.own_http2 {
                            return log_end(peer, http2::serve(tls, Bytes::new(), shared, ctx, conn, open).await);
                        }
                        let fast = shared.http1_fast_path && !h2;
                        serve_http(tls, fast, conn, shared, ctx, builder, open).await
                    } else {
                        let conn = Arc::new(proxy::Connection { peer, sni: None, activity });
                        let fast = shared.http1_fast_path;
                        serve_http(stream, fast, conn, shared, ctx, builder, open).await
                    };
                    if let Err(err) = served {
                        debug!(%peer, %err, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
            _ = drain_started(&mut drain) => break,
        }
    }
}

/// hyper's server, for the connections the proxy's own code does not serve, within the
/// client limits.
pub(crate) fn http_builder(limits: &crate::limits::Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves an HTTP connection: on the HTTP/1.1 fast path while it takes the requests (when
/// `fast`), then with hyper.
pub(crate) async fn serve_http<IO>(
    mut io: IO,
    fast: bool,
    conn: Arc<proxy::Connection>,
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    builder: auto::Builder<TokioExecutor>,
    mut open: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let prefix = if fast {
        match h1::serve(&mut io, &shared, &ctx, &conn, &mut open).await {
            h1::Ended::Closed => return Ok(()),
            h1::Ended::Handoff(prefix) => prefix,
        }
    } else if shared.own_http2 {
        sniff_preface(&mut io, shared.limits.header_timeout).await?
    } else {
        Bytes::new()
    };
    if shared.own_http2 && prefix.starts_with(&http2::PREFACE[..PREFACE_LINE]) {
        // h2c with prior knowledge (a wrong preface after its first line is answered by the
        // HTTP/2 server, with GOAWAY: the client meant to speak HTTP/2).
        return Ok(http2::serve(io, prefix, shared, ctx, conn, open).await?);
    }
    let idle_timeout = shared.limits.idle_timeout;
    let activity = Arc::clone(&conn.activity);
    let service = service_fn(move |req| {
        proxy::handle(
            Arc::clone(&shared),
            Arc::clone(&ctx),
            Arc::clone(&conn),
            req.map(ClientBody::Hyper),
        )
    });
    let io = TokioIo::new(h1::Rewind::new(prefix, io));
    serve_draining(
        builder.serve_connection_with_upgrades(io, service),
        open,
        &activity,
        idle_timeout,
    )
    .await
}

/// The length of the preface's first line, "PRI * HTTP/2.0\r\n".
const PREFACE_LINE: usize = 16;

/// Reads until the bytes read either are the HTTP/2 preface or cannot be; returns them.
async fn sniff_preface<IO: AsyncRead + Unpin>(
    io: &mut IO,
    timeout: std::time::Duration,
) -> std::io::Result<Bytes> {
    let mut buf = bytes::BytesMut::with_capacity(4096);
    while buf.len() < http2::PREFACE.len() && http2::PREFACE.starts_with(&buf) {
        let read = tokio::time::timeout(timeout, io.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(buf.freeze())
}

fn log_end(peer: std::net::SocketAddr, served: std::io::Result<()>) {
    if let Err(err) = served {
        debug!(%peer, %err, "connection ended with an error");
    }
}

/// Serves a connection until it ends; once draining starts, or once the connection has been
/// idle (no request open, no bytes moving) for between one and two `idle_timeout`s, it finishes
/// the requests in flight and closes (HTTP/1.1: after the current response, at once if idle;
/// HTTP/2: GOAWAY).
async fn serve_draining<C: GracefulConnection>(
    conn: C,
    mut drain: watch::Receiver<bool>,
    activity: &Activity,
    idle_timeout: Duration,
) -> Result<(), C::Error> {
    tokio::pin!(conn);
    let mut idle_check = tokio::time::interval_at(Instant::now() + idle_timeout, idle_timeout);
    let mut mark = activity.mark();
    loop {
        tokio::select! {
            served = conn.as_mut() => return served,
            _ = drain_started(&mut drain) => break,
            _ = idle_check.tick() => {
                if activity.idle_since(mark) {
                    debug!("closing idle connection");
                    break;
                }
                mark = activity.mark();
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}
