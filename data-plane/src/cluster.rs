//! Runtime form of a Cluster and its endpoints: the endpoint picker used per request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use prometheus::Histogram;
use rauta_common::api::v1::{Cluster, ClusterEndpoints, LoadBalancerPolicy, UpstreamProtocol};
use tracing::debug;

use crate::maglev::{MaglevTable, hash_key};
use crate::upstream::{ClientCache, HttpClient, Protocol};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A ready endpoint with its URI authority prepared once.
#[derive(Debug, Clone)]
pub struct EndpointRt {
    pub addr: SocketAddr,
    pub authority: Authority,
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
    /// `https` when the endpoints speak TLS (the connector picks TLS by scheme).
    pub scheme: Scheme,
    pub request_timeout: Option<Duration>,
    pub client: Arc<HttpClient>,
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
        clients: &mut ClientCache,
        latency: Histogram,
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
            let Ok(authority) = Authority::try_from(addr.to_string().as_str()) else {
                continue;
            };
            ready.push(EndpointRt { addr, authority });
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
            scheme: if cluster.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            client: clients
                .get(protocol, connect_timeout, cluster.tls.as_ref())
                .map_err(|e| format!("cluster {name}: tls: {e}"))?,
            latency,
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
