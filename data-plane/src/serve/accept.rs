//! Accepting client connections on a listener's socket and serving them: TLS termination,
//! then HTTP/1.1 (the fast path, then hyper), h2c or HTTP/2 (the proxy's own server), or a
//! relay (TCP and TLS listeners); the idle timeout and graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::{Duration, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use rauta_common::accept::AcceptBackoff;

use super::activity::{Activity, TrackedIo};
use super::context::{Connection, ListenerCtx};
use super::rewind::Rewind;
use super::{general, h1, http2, relay, udp};
use crate::body::client::ClientBody;
use crate::config::listeners::ListenerServer;
use crate::model::ListenerSpec;
use crate::shared::{Shared, drain_started};
use crate::workers;

/// Longest wait for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves listeners' sockets with the request path (given to the listener manager by `main`).
#[derive(Debug)]
pub struct Acceptor {
    pub shared: Arc<Shared>,
}

impl ListenerServer for Acceptor {
    fn serve(
        &self,
        listener: &ListenerSpec,
        socket: TcpListener,
        stop: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let ctx = Arc::new(ListenerCtx {
            name: Arc::from(listener.name.as_str()),
            port: listener.port,
            tls: listener.tls,
            relay: listener.relay,
        });
        Box::pin(accept_loop(socket, ctx, Arc::clone(&self.shared), stop))
    }

    fn serve_udp(
        &self,
        listener: &ListenerSpec,
        socket: tokio::net::UdpSocket,
        stop: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let ctx = Arc::new(ListenerCtx {
            name: Arc::from(listener.name.as_str()),
            port: listener.port,
            tls: false,
            relay: listener.relay,
        });
        Box::pin(udp::serve(Arc::clone(&self.shared), ctx, socket, stop))
    }
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
                if ctx.relay.is_some() {
                    tokio::spawn(async move {
                        relay::serve(shared, ctx, stream, peer).await;
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
                        let conn = Arc::new(Connection { peer, sni, activity });
                        if h2 && shared.own_http2 {
                            return log_end(peer, http2::serve(tls, Bytes::new(), shared, ctx, conn, open).await);
                        }
                        let fast = shared.http1_fast_path && !h2;
                        serve_http(tls, fast, conn, shared, ctx, builder, open).await
                    } else {
                        let conn = Arc::new(Connection { peer, sni: None, activity });
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
    conn: Arc<Connection>,
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
        general::handle(
            Arc::clone(&shared),
            Arc::clone(&ctx),
            Arc::clone(&conn),
            req.map(ClientBody::Hyper),
        )
    });
    let io = TokioIo::new(Rewind::new(prefix, io));
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

fn log_end(peer: SocketAddr, served: std::io::Result<()>) {
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
