//! Opens and closes the proxy's listening sockets to follow the snapshot. New sockets are
//! bound before a snapshot is accepted, so a port that cannot be bound NACKs the snapshot.
//! Each worker accepts on its own SO_REUSEPORT socket for every listener; the kernel spreads
//! new connections across them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::watch;
use tracing::info;

use crate::model::{ListenerSpec, Relay};
use crate::workers::Workers;

/// What serves a listener's sockets: the request path's accept loop (`serve::accept`), handed
/// in by `main`, so that configuration never depends on the request path.
pub trait ListenerServer: Send + Sync + 'static {
    /// Serves the connections `socket` accepts for `listener` until `stop` changes. Called on
    /// the worker that owns the socket.
    fn serve(
        &self,
        listener: &ListenerSpec,
        socket: TcpListener,
        stop: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Serves the datagrams `socket` receives for a UDP `listener` until `stop` changes.
    /// Called on the worker that owns the socket.
    fn serve_udp(
        &self,
        listener: &ListenerSpec,
        socket: UdpSocket,
        stop: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A new listener's sockets, one per worker.
#[derive(Debug)]
enum Sockets {
    Tcp(Vec<std::net::TcpListener>),
    Udp(Vec<std::net::UdpSocket>),
}

impl Sockets {
    fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Sockets::Tcp(s) => s.first()?.local_addr().ok(),
            Sockets::Udp(s) => s.first()?.local_addr().ok(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Sockets::Tcp(s) => s.len(),
            Sockets::Udp(s) => s.len(),
        }
    }
}

#[derive(Debug)]
struct ActiveListener {
    /// What the socket serves: a listener whose spec changes under the same name (a TLS port
    /// turning from Passthrough to mixed, TCP to UDP) opens a new socket with the new spec.
    spec: ListenerSpec,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Why a listener's socket cannot be opened (the snapshot is NACKed).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("listener {listener}: port {port} + offset {offset} exceeds 65535")]
    PortOverflow {
        listener: String,
        port: u16,
        offset: u16,
    },
    #[error("listener {listener}: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Sockets bound for a snapshot that is not committed yet.
#[derive(Debug, Default)]
pub struct PreparedListeners {
    /// Per new listener, one socket per worker.
    new: Vec<(ListenerSpec, Sockets)>,
    keep: Vec<String>,
}

pub struct ListenerManager {
    bind_ip: IpAddr,
    port_offset: u16,
    server: Arc<dyn ListenerServer>,
    workers: Workers,
    active: HashMap<String, ActiveListener>,
}

impl ListenerManager {
    pub fn new(
        bind_ip: IpAddr,
        port_offset: u16,
        server: Arc<dyn ListenerServer>,
        workers: Workers,
    ) -> Self {
        ListenerManager {
            bind_ip,
            port_offset,
            server,
            workers,
            active: HashMap::new(),
        }
    }

    /// Binds what `specs` adds; nothing changes until [`ListenerManager::commit`].
    pub fn prepare(&self, specs: &[ListenerSpec]) -> Result<PreparedListeners, BindError> {
        let mut prepared = PreparedListeners::default();
        for spec in specs {
            if self.active.get(&spec.name).is_some_and(|a| a.spec == *spec) {
                prepared.keep.push(spec.name.clone());
                continue;
            }
            let port =
                spec.port
                    .checked_add(self.port_offset)
                    .ok_or_else(|| BindError::PortOverflow {
                        listener: spec.name.clone(),
                        port: spec.port,
                        offset: self.port_offset,
                    })?;
            let addr = SocketAddr::new(self.bind_ip, port);
            let bound = match spec.relay {
                Some(Relay::Udp) => bind_udp_per_worker(addr, self.workers.len()).map(Sockets::Udp),
                _ => bind_per_worker(addr, self.workers.len()).map(Sockets::Tcp),
            };
            let sockets = bound.map_err(|source| BindError::Bind {
                listener: spec.name.clone(),
                addr,
                source,
            })?;
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
                .local_addr()
                .unwrap_or_else(|| SocketAddr::new(self.bind_ip, spec.port));
            info!(listener = %spec.name, addr = %local, workers = sockets.len(), "listening");
            let (stop, stopped) = watch::channel(false);
            self.start(&spec, sockets, &stopped);
            self.active
                .insert(spec.name.clone(), ActiveListener { spec, local, stop });
        }
    }
}

impl ListenerManager {
    /// Hands each worker its socket, registered with the worker's own reactor inside it.
    fn start(&self, spec: &ListenerSpec, sockets: Sockets, stopped: &watch::Receiver<bool>) {
        let workers = self.workers.handles();
        match sockets {
            Sockets::Tcp(sockets) => {
                for (socket, worker) in sockets.into_iter().zip(workers) {
                    let (server, spec, stopped) =
                        (Arc::clone(&self.server), spec.clone(), stopped.clone());
                    worker.spawn(async move {
                        match TcpListener::from_std(socket) {
                            Ok(listener) => server.serve(&spec, listener, stopped).await,
                            Err(err) => {
                                tracing::error!(listener = %spec.name, %err, "cannot register socket")
                            }
                        }
                    });
                }
            }
            Sockets::Udp(sockets) => {
                for (socket, worker) in sockets.into_iter().zip(workers) {
                    let (server, spec, stopped) =
                        (Arc::clone(&self.server), spec.clone(), stopped.clone());
                    worker.spawn(async move {
                        match UdpSocket::from_std(socket) {
                            Ok(socket) => server.serve_udp(&spec, socket, stopped).await,
                            Err(err) => {
                                tracing::error!(listener = %spec.name, %err, "cannot register socket")
                            }
                        }
                    });
                }
            }
        }
    }
}

/// One UDP socket per worker on the same address (SO_REUSEPORT: the kernel hands each
/// client address to the same socket every time), non-blocking, unregistered.
fn bind_udp_per_worker(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut sockets = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let socket: std::net::UdpSocket = socket.into();
        // Port 0 picks a port once; the other workers' sockets join that one.
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
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

impl std::fmt::Debug for ListenerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerManager")
            .field("bind_ip", &self.bind_ip)
            .field("port_offset", &self.port_offset)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}
