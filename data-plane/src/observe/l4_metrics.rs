//! Metrics of the TCP, UDP and TLS-terminating relays: per L4 route, connections (UDP:
//! client flows), those open, bytes and datagrams each way, failed upstream connects; and
//! the UDP flow table's size, refusals and expiries. A route's handles are resolved when a
//! snapshot is built, so a relay only touches atomics; byte counts are added when a
//! connection ends. A route keeps its series across snapshots; a route that is gone loses
//! them once nothing uses it (no connection of it is open).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The handles of one L4 route.
#[derive(Debug)]
pub struct L4Stats {
    /// Connections relayed (UDP: flows opened).
    pub connections: IntCounter,
    /// Connections (UDP: flows) open now.
    pub active: IntGauge,
    /// Upstream connects that failed or timed out.
    pub connect_failures: IntCounter,
    /// Bytes from clients to backends.
    pub bytes_in: IntCounter,
    /// Bytes from backends to clients.
    pub bytes_out: IntCounter,
    /// UDP datagrams from clients to backends.
    pub datagrams_in: IntCounter,
    /// UDP datagrams from backends to clients.
    pub datagrams_out: IntCounter,
}

/// The relays' metric families.
#[derive(Debug, Clone)]
pub struct L4Metrics {
    connections: IntCounterVec,
    active: IntGaugeVec,
    connect_failures: IntCounterVec,
    bytes: IntCounterVec,
    datagrams: IntCounterVec,
    /// Connections and datagrams closed or dropped without a route, a backend or an endpoint.
    pub unrouted: IntCounter,
    /// UDP client flows open, over every UDP listener and worker.
    pub udp_flows: IntGauge,
    /// The flows the --udp-max-flows bound counts: slots taken before a flow opens.
    pub udp_flow_slots: Arc<AtomicUsize>,
    /// Datagrams of new UDP clients dropped because --udp-max-flows flows were open.
    pub udp_flows_refused: IntCounter,
    /// UDP flows forgotten after --udp-idle-timeout-ms without a datagram.
    pub udp_flows_expired: IntCounter,
    /// Relayed TCP connections closed after --tcp-idle-timeout-ms without a byte.
    pub tcp_idle_closed: IntCounter,
    /// Each route's handles, by route name; only snapshot builds and pruning lock it.
    routes: Arc<Mutex<HashMap<Arc<str>, Arc<L4Stats>>>>,
}

fn add<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl L4Metrics {
    pub fn new(registry: &Registry) -> Result<L4Metrics, prometheus::Error> {
        let counters = |name: &str, help: &str, labels: &[&str]| {
            add(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        Ok(L4Metrics {
            connections: counters(
                "l4_connections_total",
                "Connections relayed by TCP and TLS Terminate listeners, and UDP flows opened, by route",
                &["route"],
            )?,
            active: add(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "l4_connections_active",
                        "Relayed connections (UDP: flows) open now, by route",
                    ),
                    &["route"],
                )?,
            )?,
            connect_failures: counters(
                "l4_upstream_connect_failures_total",
                "Upstream connects of relayed connections that failed or timed out, by route",
                &["route"],
            )?,
            bytes: counters(
                "l4_bytes_total",
                "Bytes relayed, by route and direction (in: client to backend; out: back), \
                 counted when a connection or flow ends",
                &["route", "direction"],
            )?,
            datagrams: counters(
                "udp_datagrams_total",
                "UDP datagrams relayed, by route and direction (in: client to backend; out: back)",
                &["route", "direction"],
            )?,
            unrouted: add(
                registry,
                IntCounter::new(
                    "l4_unrouted_total",
                    "Connections closed and UDP datagrams dropped for want of a route, a backend \
                     or a ready endpoint",
                )?,
            )?,
            udp_flows: add(
                registry,
                IntGauge::new("udp_flows", "UDP client flows open, over all UDP listeners")?,
            )?,
            udp_flow_slots: Arc::default(),
            udp_flows_refused: add(
                registry,
                IntCounter::new(
                    "udp_flows_refused_total",
                    "Datagrams of new UDP clients dropped because --udp-max-flows flows were open",
                )?,
            )?,
            udp_flows_expired: add(
                registry,
                IntCounter::new(
                    "udp_flows_expired_total",
                    "UDP flows closed after --udp-idle-timeout-ms without a datagram",
                )?,
            )?,
            tcp_idle_closed: add(
                registry,
                IntCounter::new(
                    "l4_idle_closed_total",
                    "Relayed TCP connections closed after --tcp-idle-timeout-ms without a byte",
                )?,
            )?,
            routes: Arc::default(),
        })
    }

    /// The handles of a route (the same series across snapshots).
    pub fn route(&self, route: &str) -> Arc<L4Stats> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = routes.get(route) {
            return Arc::clone(stats);
        }
        let stats = Arc::new(L4Stats {
            connections: self.connections.with_label_values(&[route]),
            active: self.active.with_label_values(&[route]),
            connect_failures: self.connect_failures.with_label_values(&[route]),
            bytes_in: self.bytes.with_label_values(&[route, "in"]),
            bytes_out: self.bytes.with_label_values(&[route, "out"]),
            datagrams_in: self.datagrams.with_label_values(&[route, "in"]),
            datagrams_out: self.datagrams.with_label_values(&[route, "out"]),
        });
        routes.insert(Arc::from(route), Arc::clone(&stats));
        stats
    }

    /// Removes the series of routes nothing uses any more: no routing state has them and no
    /// connection or flow of theirs is open.
    pub fn prune(&self) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.retain(|route, stats| {
            if Arc::strong_count(stats) > 1 {
                return true;
            }
            let route: &str = route;
            let _ = self.connections.remove_label_values(&[route]);
            let _ = self.active.remove_label_values(&[route]);
            let _ = self.connect_failures.remove_label_values(&[route]);
            for direction in ["in", "out"] {
                let _ = self.bytes.remove_label_values(&[route, direction]);
                let _ = self.datagrams.remove_label_values(&[route, direction]);
            }
            false
        });
    }
}
