//! Runtime form of a Cluster and its endpoints: the endpoint picker used per request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::Histogram;
use rauta_common::api::v1::{Cluster, ClusterEndpoints, LoadBalancerPolicy, UpstreamProtocol};
use tracing::debug;

use crate::maglev::{MaglevTable, hash_key};
use crate::metrics::ProxyMetrics;
use crate::upstream::{EndpointPool, Protocol, UpstreamPools};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A ready endpoint and its connection pool.
#[derive(Debug, Clone)]
pub struct EndpointRt {
    pub addr: SocketAddr,
    pub pool: Arc<EndpointPool>,
}

#[derive(Debug)]
enum Picker {
    Maglev(MaglevTable),
    RoundRobin(AtomicUsize),
}

/// A cluster as the request path uses it.
#[derive(Debug)]
pub struct ClusterRt {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub request_timeout: Option<Duration>,
    pub latency: Histogram,
    endpoints: Vec<EndpointRt>,
    picker: Picker,
}

fn duration(d: Option<&prost_types::Duration>) -> Result<Option<Duration>, String> {
    d.map(|d| Duration::try_from(*d).map_err(|e| format!("invalid duration: {e}")))
        .transpose()
}

impl ClusterRt {
    /// Validates a Cluster and its endpoints (which may be absent yet) and prepares the picker.
    pub fn build(
        cluster: &Cluster,
        endpoints: Option<&ClusterEndpoints>,
        pools: &mut UpstreamPools,
        metrics: &ProxyMetrics,
        min_table_size: usize,
    ) -> Result<ClusterRt, String> {
        let name = &cluster.name;
        let protocol = match UpstreamProtocol::try_from(cluster.protocol) {
            Ok(UpstreamProtocol::Unspecified | UpstreamProtocol::Http1) => Protocol::Http1,
            Ok(UpstreamProtocol::H2c) => Protocol::H2c,
            Err(_) => {
                return Err(format!(
                    "cluster {name}: unknown protocol {}",
                    cluster.protocol
                ));
            }
        };
        let policy = LoadBalancerPolicy::try_from(cluster.lb_policy)
            .map_err(|_| format!("cluster {name}: unknown lb_policy {}", cluster.lb_policy))?;
        let connect_timeout = duration(cluster.connect_timeout.as_ref())
            .map_err(|e| format!("cluster {name}: connect_timeout: {e}"))?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let request_timeout = duration(cluster.request_timeout.as_ref())
            .map_err(|e| format!("cluster {name}: request_timeout: {e}"))?;
        // Checked even without endpoints: bad TLS settings NACK the snapshot.
        let tls = cluster
            .tls
            .as_ref()
            .map(|t| pools.tls(protocol, t))
            .transpose()
            .map_err(|e| format!("cluster {name}: tls: {e}"))?;
        let mut ready = Vec::new();
        let mut weights = Vec::new();
        for ep in endpoints
            .map(|e| e.endpoints.as_slice())
            .unwrap_or_default()
        {
            if !ep.ready {
                continue;
            }
            // One unusable address must not cost the whole cluster: skip it and keep the rest.
            let (Ok(ip), Ok(port)) = (ep.address.parse::<IpAddr>(), u16::try_from(ep.port)) else {
                debug!(cluster = %name, address = %ep.address, port = ep.port, "skipping unusable endpoint");
                continue;
            };
            if port == 0 {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            let pool = pools.endpoint(addr, protocol, connect_timeout, tls.as_ref(), metrics);
            ready.push(EndpointRt { addr, pool });
            weights.push(ep.weight);
        }

        let picker = match policy {
            LoadBalancerPolicy::RoundRobin => Picker::RoundRobin(AtomicUsize::new(0)),
            LoadBalancerPolicy::Unspecified | LoadBalancerPolicy::Maglev => {
                let ids: Vec<String> = ready.iter().map(|e| e.addr.to_string()).collect();
                // Never shrink a cluster's table: a size change would remap most clients.
                let size = MaglevTable::size_for(ids.len()).max(min_table_size);
                match MaglevTable::build_with_size(&ids, &weights, size) {
                    Some(table) => Picker::Maglev(table),
                    None => Picker::RoundRobin(AtomicUsize::new(0)),
                }
            }
        };
        Ok(ClusterRt {
            name: Arc::from(name.as_str()),
            protocol,
            request_timeout,
            latency: metrics.upstream_latency(name),
            endpoints: ready,
            picker,
        })
    }

    /// Picks a ready endpoint for a client; `None` when the cluster has none.
    #[inline]
    pub fn pick(&self, client: IpAddr) -> Option<&EndpointRt> {
        if self.endpoints.is_empty() {
            return None;
        }
        let index = match &self.picker {
            Picker::Maglev(table) => match client {
                IpAddr::V4(ip) => table.get(hash_key(&ip.octets())),
                IpAddr::V6(ip) => table.get(hash_key(&ip.octets())),
            },
            Picker::RoundRobin(next) => next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len(),
        };
        self.endpoints.get(index)
    }

    /// The endpoint `n` places after `first`: retries go elsewhere when they can.
    pub fn nth_after<'a>(&'a self, first: &'a EndpointRt, n: usize) -> &'a EndpointRt {
        let Some(index) = self.endpoints.iter().position(|e| e.addr == first.addr) else {
            return first;
        };
        self.endpoints
            .get((index + n) % self.endpoints.len())
            .unwrap_or(first)
    }

    /// Size of the Maglev table (0 for other pickers).
    pub fn table_size(&self) -> usize {
        match &self.picker {
            Picker::Maglev(t) => t.len(),
            Picker::RoundRobin(_) => 0,
        }
    }
}
