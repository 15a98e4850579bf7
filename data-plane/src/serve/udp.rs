//! UDP listeners (UDPRoute): datagrams are relayed per client flow. The first datagram of a
//! client address and port opens a flow: a route from the listener's L4 route table, a
//! backend by weight, an endpoint by the cluster's picker (Maglev on the client address by
//! default), and an upstream socket of its own connected to it. Later datagrams of the client
//! go out on that socket, answers come back from the listener's socket. A flow ends after
//! `--udp-idle-timeout-ms` without a datagram either way, when its endpoint refuses (ICMP
//! port unreachable: reported to outlier detection), or when a new configuration no longer
//! has its route. At most `--udp-max-flows` flows are open at once; datagrams of new clients
//! past that are dropped.
//!
//! Each worker's socket has its own flow table, owned by its receive loop (no lock): the
//! kernel hands a client's datagrams to the same SO_REUSEPORT socket every time. A flow's
//! task reads its upstream socket into a per-thread buffer, so an idle flow costs a socket
//! and a small task, not a datagram buffer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::debug;

use super::context::ListenerCtx;
use super::relay::route_removed;
use crate::model::cluster::{ClusterRt, EndpointRt};
use crate::model::request::RequestHeaders;
use crate::model::rule::Pick;
use crate::observe::l4_metrics::{L4Metrics, L4Stats};
use crate::shared::{Shared, drain_started};

/// The largest UDP payload (IPv4: 65535 - 20 - 8).
const MAX_DATAGRAM: usize = 65_507;

thread_local! {
    /// Where flow tasks read answers: one buffer per worker thread, borrowed only between
    /// a readiness event and the non-blocking send that follows it.
    static ANSWER: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// One client flow, as its worker's receive loop holds it.
struct Flow {
    id: u64,
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the loop's epoch at the last datagram either way.
    last: Arc<AtomicU64>,
    stats: Arc<L4Stats>,
    task: AbortHandle,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A worker's receive loop and flow table.
struct FlowTable {
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    socket: Arc<UdpSocket>,
    flows: HashMap<SocketAddr, Flow>,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    next_id: u64,
    epoch: Instant,
}

/// Serves one worker's socket of a UDP listener until `stop` changes or draining starts.
pub async fn serve(
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    socket: UdpSocket,
    mut stop: watch::Receiver<bool>,
) {
    let (ended, mut ended_rx) = mpsc::unbounded_channel();
    let mut drain = shared.drain_watch();
    let mut table = FlowTable {
        shared,
        ctx,
        socket: Arc::new(socket),
        flows: HashMap::new(),
        ended,
        next_id: 0,
        epoch: Instant::now(),
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            received = table.socket.recv_from(&mut buf) => match received {
                Ok((n, peer)) => table.forward(&buf[..n], peer),
                Err(err) => debug!(listener = %table.ctx.name, %err, "UDP receive failed"),
            },
            Some((peer, id)) = ended_rx.recv() => {
                if table.flows.get(&peer).is_some_and(|f| f.id == id) {
                    table.flows.remove(&peer);
                }
            }
            _ = stop.changed() => break,
            _ = drain_started(&mut drain) => break,
        }
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl FlowTable {
    /// Sends a client's datagram on its flow, opening one if it has none.
    fn forward(&mut self, datagram: &[u8], peer: SocketAddr) {
        if let Some(flow) = self.flows.get(&peer) {
            flow.last.store(millis_since(self.epoch), Ordering::Relaxed);
            send_upstream(&flow.upstream, &flow.stats, datagram);
            return;
        }
        let shared = Arc::clone(&self.shared);
        let l4 = &shared.metrics.l4;
        // Taken before the flow is opened: two workers checking the count and then opening
        // could both take the last slot.
        let Some(slot) = FlowSlot::take(l4, shared.limits.udp_max_flows) else {
            l4.udp_flows_refused.inc();
            return;
        };
        match self.open(peer, slot) {
            Some(flow) => {
                send_upstream(&flow.upstream, &flow.stats, datagram);
                self.flows.insert(peer, flow);
            }
            None => l4.unrouted.inc(),
        }
    }

    /// Opens a flow for a new client: route, backend, endpoint, upstream socket, task.
    fn open(&mut self, peer: SocketAddr, slot: FlowSlot) -> Option<Flow> {
        let state = self.shared.state.load();
        let route = state.l4_table(&self.ctx.name).and_then(|t| t.route(None))?;
        let Pick::Backend(backend) = route.action.pick(rand::random()) else {
            return None;
        };
        let cluster = backend.cluster.clone()?;
        let endpoint = cluster.pick(peer.ip(), RequestHeaders::Raw(&[]))?.clone();
        let upstream = match connected_socket(endpoint.addr) {
            Ok(s) => Arc::new(s),
            Err(err) => {
                debug!(%peer, endpoint = %endpoint.addr, %err, "cannot open an upstream UDP socket");
                return None;
            }
        };
        self.next_id += 1;
        let last = Arc::new(AtomicU64::new(millis_since(self.epoch)));
        let run = FlowTask {
            shared: Arc::clone(&self.shared),
            ctx: Arc::clone(&self.ctx),
            listener: Arc::clone(&self.socket),
            upstream: Arc::clone(&upstream),
            peer,
            route: Arc::clone(&route.name),
            stats: Arc::clone(&route.stats),
            cluster,
            endpoint,
            last: Arc::clone(&last),
            epoch: self.epoch,
            _open: OpenFlow::new(&self.shared.metrics.l4, &route.stats),
            _slot: slot,
        };
        let (ended, id) = (self.ended.clone(), self.next_id);
        let task = tokio::spawn(async move {
            run.run().await;
            let _ = ended.send((peer, id));
        });
        Some(Flow {
            id,
            upstream,
            last,
            stats: Arc::clone(&route.stats),
            task: task.abort_handle(),
        })
    }
}

/// Sends a datagram upstream without waiting: when the socket's buffer is full it is dropped,
/// as the network would. A direct non-blocking send: tokio's `try_send` would refuse until
/// the reactor has seen the new socket writable, and drop a new flow's first datagram.
fn send_upstream(upstream: &UdpSocket, stats: &L4Stats, datagram: &[u8]) {
    if socket2::SockRef::from(upstream).send(datagram).is_ok() {
        stats.datagrams_in.inc();
        stats.bytes_in.inc_by(datagram.len() as u64);
    }
}

/// A non-blocking UDP socket on an ephemeral port, connected to `endpoint` (so only its
/// answers arrive on it, and an ICMP refusal shows as an error).
fn connected_socket(endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match endpoint {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = StdUdpSocket::bind(any)?;
    socket.connect(endpoint)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// One of the `--udp-max-flows` slots, counted over every worker, held while its flow lives.
struct FlowSlot(Arc<AtomicUsize>);

impl FlowSlot {
    /// A free slot, if there is one.
    fn take(metrics: &L4Metrics, max: usize) -> Option<FlowSlot> {
        let taken = &metrics.udp_flow_slots;
        if taken.fetch_add(1, Ordering::AcqRel) >= max {
            taken.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(FlowSlot(Arc::clone(taken)))
    }
}

impl Drop for FlowSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a flow as open, in the metrics, from when it is opened until its task ends (also
/// when it is aborted).
struct OpenFlow {
    metrics: L4Metrics,
    stats: Arc<L4Stats>,
}

impl OpenFlow {
    fn new(metrics: &L4Metrics, stats: &Arc<L4Stats>) -> Self {
        metrics.udp_flows.inc();
        stats.connections.inc();
        stats.active.inc();
        OpenFlow {
            metrics: metrics.clone(),
            stats: Arc::clone(stats),
        }
    }
}

impl Drop for OpenFlow {
    fn drop(&mut self) {
        self.metrics.udp_flows.dec();
        self.stats.active.dec();
    }
}

/// What a flow's task needs: it relays answers until the flow ends.
struct FlowTask {
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    peer: SocketAddr,
    route: Arc<str>,
    stats: Arc<L4Stats>,
    cluster: Arc<ClusterRt>,
    endpoint: EndpointRt,
    last: Arc<AtomicU64>,
    epoch: Instant,
    /// Counts the flow as open until the task ends.
    _open: OpenFlow,
    _slot: FlowSlot,
}

impl FlowTask {
    async fn run(self) {
        let idle = self.shared.limits.udp_idle_timeout;
        let mut published = self.shared.publications();
        let removed = route_removed(&self.shared, &self.ctx.name, &self.route, &mut published);
        tokio::pin!(removed);
        // Fires at most once per idle period: then it checks when the last datagram passed.
        let expiry = tokio::time::sleep(idle);
        tokio::pin!(expiry);
        let mut answered = false;
        loop {
            tokio::select! {
                // An ICMP refusal only makes the socket ready with an error (EPOLLERR, not
                // EPOLLIN): without ERROR interest a flow to a dead endpoint would never fail.
                ready = self.upstream.ready(Interest::READABLE | Interest::ERROR) => {
                    let Ok(ready) = ready else {
                        return;
                    };
                    if ready.is_error() {
                        let err = self.upstream.take_error().ok().flatten();
                        debug!(peer = %self.peer, endpoint = %self.endpoint.addr, ?err, "UDP flow ends: the endpoint refused");
                        self.stats.connect_failures.inc();
                        self.cluster.report(&self.endpoint, true);
                        return;
                    }
                    match self.answer() {
                        Ok(false) => {}
                        Ok(true) if !answered => {
                            answered = true;
                            self.cluster.report(&self.endpoint, false);
                        }
                        Ok(true) => {}
                        Err(err) => {
                            debug!(peer = %self.peer, endpoint = %self.endpoint.addr, %err, "UDP flow ends");
                            self.stats.connect_failures.inc();
                            self.cluster.report(&self.endpoint, true);
                            return;
                        }
                    }
                }
                () = &mut expiry => {
                    let last = self.last.load(Ordering::Relaxed);
                    let quiet = Duration::from_millis(millis_since(self.epoch).saturating_sub(last));
                    if quiet >= idle {
                        self.shared.metrics.l4.udp_flows_expired.inc();
                        return;
                    }
                    expiry.as_mut().reset(Instant::now() + (idle - quiet));
                }
                () = &mut removed => {
                    debug!(peer = %self.peer, route = %self.route, "route removed; UDP flow ends");
                    return;
                }
            }
        }
    }

    /// Relays one answer, if one is there: `Ok(true)` when it did, `Ok(false)` on a spurious
    /// wake-up; an error (ICMP refusal) ends the flow.
    fn answer(&self) -> io::Result<bool> {
        ANSWER.with_borrow_mut(|buf| match self.upstream.try_recv(buf) {
            Ok(n) => {
                self.last.store(millis_since(self.epoch), Ordering::Relaxed);
                let back = socket2::SockRef::from(&*self.listener);
                if back.send_to(&buf[..n], &self.peer.into()).is_ok() {
                    self.stats.datagrams_out.inc();
                    self.stats.bytes_out.inc_by(n as u64);
                }
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(err) => Err(err),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_slots_hold_the_bound_across_workers() {
        let metrics = L4Metrics::new(&prometheus::Registry::new()).unwrap();
        // Two workers opening flows at once, as a flood from many source ports makes them.
        let taken: Vec<Vec<FlowSlot>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1000)
                            .filter_map(|_| FlowSlot::take(&metrics, 20))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(taken.iter().map(Vec::len).sum::<usize>(), 20);
        drop(taken);
        assert!(FlowSlot::take(&metrics, 20).is_some(), "slots come back");
    }
}
