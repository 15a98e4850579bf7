//! Runtime form of a Cluster and its endpoints: the endpoint picker used per request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderName;
use prometheus::{Histogram, IntCounter};
use rauta_common::api::v1::{
    Cluster, ClusterEndpoints, LoadBalancerPolicy, UpstreamProtocol, hash_key,
};
use tracing::{debug, info};

use rauta_common::api::v1::resource::Payload;
use rauta_common::types::ResourceType;

use super::maglev::{MaglevTable, hash_key};
use super::request::RequestHeaders;
use super::retry_budget::RetryBudget;
use super::store::ResourceStore;
use crate::observe::metrics::ProxyMetrics;
use crate::upstream::outlier::OutlierPolicy;
use crate::upstream::{EndpointPool, Protocol, UpstreamPools};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A ready endpoint and its connection pool.
#[derive(Debug, Clone)]
pub struct EndpointRt {
    pub addr: SocketAddr,
    pub pool: Arc<EndpointPool>,
}

/// What Maglev hashes.
#[derive(Debug)]
enum HashOn {
    SourceIp,
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug)]
enum Picker {
    Maglev(MaglevTable, HashOn),
    RoundRobin(AtomicUsize),
    LeastRequest,
}

/// A cluster as the request path uses it.
#[derive(Debug)]
pub struct ClusterRt {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub request_timeout: Option<Duration>,
    pub latency: Histogram,
    /// Kept from the cluster's previous build: a config change does not refill it.
    pub retry_budget: Arc<RetryBudget>,
    /// Retries sent, and retries the budget refused.
    pub retries: IntCounter,
    pub retries_refused: IntCounter,
    endpoints: Vec<EndpointRt>,
    picker: Picker,
    outlier: Option<OutlierPolicy>,
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
        previous: Option<&ClusterRt>,
    ) -> Result<ClusterRt, String> {
        // A Maglev table never shrinks (fewer keys move) and the retry budget carries on.
        let min_table_size = previous.map_or(0, ClusterRt::table_size);
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

        let hash_on = match cluster.hash_key.as_ref().and_then(|k| k.key.as_ref()) {
            None => HashOn::SourceIp,
            Some(hash_key::Key::Header(h)) => HashOn::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|e| format!("cluster {name}: hash_key header {h:?}: {e}"))?,
            ),
            Some(hash_key::Key::Cookie(c)) => HashOn::Cookie(c.clone()),
        };
        let picker = match policy {
            LoadBalancerPolicy::RoundRobin => Picker::RoundRobin(AtomicUsize::new(0)),
            LoadBalancerPolicy::LeastRequest => Picker::LeastRequest,
            LoadBalancerPolicy::Unspecified | LoadBalancerPolicy::Maglev => {
                let ids: Vec<String> = ready.iter().map(|e| e.addr.to_string()).collect();
                // Never shrink a cluster's table: a size change would remap most clients.
                let size = MaglevTable::size_for(ids.len()).max(min_table_size);
                match MaglevTable::build_with_size(&ids, &weights, size) {
                    Some(table) => Picker::Maglev(table, hash_on),
                    None => Picker::RoundRobin(AtomicUsize::new(0)),
                }
            }
        };
        let outlier = match &cluster.outlier_detection {
            Some(o) if o.consecutive_failures > 0 => Some(OutlierPolicy {
                consecutive_failures: o.consecutive_failures,
                base_ejection: duration(o.base_ejection_time.as_ref())
                    .map_err(|e| format!("cluster {name}: base_ejection_time: {e}"))?
                    .unwrap_or(Duration::from_secs(30)),
                max_ejection_percent: match o.max_ejection_percent {
                    0 => 50,
                    p => p.min(100),
                },
            }),
            _ => None,
        };
        Ok(ClusterRt {
            name: Arc::from(name.as_str()),
            protocol,
            request_timeout,
            latency: metrics.upstream_latency(name),
            retry_budget: previous.map_or_else(Arc::default, |p| Arc::clone(&p.retry_budget)),
            retries: metrics.retries(name),
            retries_refused: metrics.retries_refused(name),
            endpoints: ready,
            picker,
            outlier,
        })
    }

    /// Picks a ready endpoint for a request, passing over ejected ones while others are
    /// left; `None` when the cluster has none.
    #[inline]
    pub fn pick(&self, client: IpAddr, headers: RequestHeaders<'_>) -> Option<&EndpointRt> {
        let count = self.endpoints.len();
        if count == 0 {
            return None;
        }
        let index = match &self.picker {
            Picker::Maglev(table, hash_on) => table.get(request_hash(hash_on, client, headers)),
            Picker::RoundRobin(next) => next.fetch_add(1, Ordering::Relaxed) % count,
            Picker::LeastRequest => {
                // Power of two choices: two endpoints at random, the one with fewer in flight.
                let r: u64 = rand::random();
                let a = (r as usize) % count;
                let b = ((r >> 32) as usize) % count;
                let load = |i: usize| {
                    let h = self.endpoints[i].pool.health();
                    (h.is_ejected(), h.in_flight())
                };
                if load(b) < load(a) { b } else { a }
            }
        };
        self.healthy_from(index)
    }

    /// The first endpoint from `index` on that is not ejected; `index`'s when all are.
    fn healthy_from(&self, index: usize) -> Option<&EndpointRt> {
        let first = self.endpoints.get(index)?;
        if self.outlier.is_none() || !first.pool.health().is_ejected() {
            return Some(first);
        }
        let count = self.endpoints.len();
        (1..count)
            .map(|n| &self.endpoints[(index + n) % count])
            .find(|e| !e.pool.health().is_ejected())
            .or(Some(first))
    }

    /// Records how a request to `endpoint` went (`failed`: 5xx, connect error, reset or
    /// timeout) and ejects the endpoint when it keeps failing.
    pub fn report(&self, endpoint: &EndpointRt, failed: bool) {
        let Some(policy) = &self.outlier else { return };
        let health = endpoint.pool.health();
        if !failed {
            health.succeeded(policy);
            return;
        }
        if !health.failed(policy) {
            return;
        }
        let mut ejected = self
            .endpoints
            .iter()
            .filter(|e| e.pool.health().is_ejected())
            .count();
        if !policy.may_eject(ejected, self.endpoints.len()) {
            // What is left in rotation keeps failing while others sit out their ejection,
            // some perhaps recovered: the one whose ejection ends soonest comes back now
            // (ejected again, for longer, if it still fails). Without this, a cluster whose
            // one live endpoint is ejected and whose other just died fails every request
            // until the ejection ends.
            let soonest = self
                .endpoints
                .iter()
                .filter_map(|e| Some((e.pool.health().ejection_ends()?, e)))
                .min_by_key(|(ends, _)| *ends);
            let Some((_, back)) = soonest else { return };
            back.pool.health().readmit();
            info!(cluster = %self.name, endpoint = %back.addr, failing = %endpoint.addr, "ejection ended early: the endpoints in rotation are failing");
            ejected -= 1;
        }
        if policy.may_eject(ejected, self.endpoints.len()) {
            let period = health.eject(policy);
            info!(cluster = %self.name, endpoint = %endpoint.addr, ?period, "endpoint ejected after consecutive failures");
        }
    }

    /// The ready endpoints.
    pub fn endpoints(&self) -> &[EndpointRt] {
        &self.endpoints
    }

    /// The endpoint `n` places after `first` (or the next one not ejected): retries go
    /// elsewhere when they can. When every endpoint not ejected is `first` itself (which just
    /// failed), the retry goes to the ejected one `n` places on: it may have recovered, and
    /// `first` has failed already.
    pub fn nth_after<'a>(&'a self, first: &'a EndpointRt, n: usize) -> &'a EndpointRt {
        let Some(index) = self.endpoints.iter().position(|e| e.addr == first.addr) else {
            return first;
        };
        let next = (index + n) % self.endpoints.len();
        match self.healthy_from(next) {
            Some(e) if e.addr != first.addr => e,
            _ => &self.endpoints[next],
        }
    }

    /// Whether the picker needs each endpoint's requests in flight (least request).
    #[inline]
    pub fn balances_on_load(&self) -> bool {
        matches!(self.picker, Picker::LeastRequest)
    }

    /// Size of the Maglev table (0 for other pickers).
    pub fn table_size(&self) -> usize {
        match &self.picker {
            Picker::Maglev(t, _) => t.len(),
            Picker::RoundRobin(_) | Picker::LeastRequest => 0,
        }
    }
}

/// The hash of what a request is balanced on; the source address when the header or cookie
/// is missing.
fn request_hash(hash_on: &HashOn, client: IpAddr, headers: RequestHeaders<'_>) -> u64 {
    let value = match hash_on {
        HashOn::SourceIp => None,
        HashOn::Header(name) => headers.get(name),
        HashOn::Cookie(name) => headers.cookie(name),
    };
    match (value, client) {
        (Some(v), _) => hash_key(v),
        (None, IpAddr::V4(ip)) => hash_key(&ip.octets()),
        (None, IpAddr::V6(ip)) => hash_key(&ip.octets()),
    }
}

/// The clusters of a routing state by name, each with the cluster and endpoints versions it
/// was built from, so that the next snapshot reuses those that did not change.
#[derive(Debug, Default)]
pub struct Clusters(HashMap<String, (String, String, Arc<ClusterRt>)>);

impl Clusters {
    /// Builds every cluster of `store`, reusing those of `previous` whose resources are
    /// unchanged; a rebuilt cluster keeps its predecessor's Maglev table size and retry budget.
    pub fn build(
        store: &ResourceStore,
        previous: &Clusters,
        pools: &mut UpstreamPools,
        metrics: &ProxyMetrics,
    ) -> Result<Clusters, String> {
        let mut clusters = HashMap::new();
        for resource in store.resources(ResourceType::Cluster) {
            let Some(Payload::Cluster(cluster)) = &resource.payload else {
                continue;
            };
            let endpoints = store.get(ResourceType::Endpoints, &cluster.name);
            let endpoints_version = endpoints.map(|e| e.version.clone()).unwrap_or_default();
            let before = previous.0.get(&cluster.name);
            let rt = match before
                .filter(|(cv, ev, _)| *cv == resource.version && *ev == endpoints_version)
            {
                Some((_, _, rt)) => Arc::clone(rt),
                None => {
                    let endpoints = endpoints.and_then(|e| match &e.payload {
                        Some(Payload::Endpoints(e)) => Some(e),
                        _ => None,
                    });
                    let before = before.map(|(_, _, rt)| &**rt);
                    Arc::new(ClusterRt::build(
                        cluster, endpoints, pools, metrics, before,
                    )?)
                }
            };
            clusters.insert(
                cluster.name.clone(),
                (resource.version.clone(), endpoints_version, rt),
            );
        }
        Ok(Clusters(clusters))
    }

    /// The cluster called `name`, if the snapshot has it.
    pub fn get(&self, name: &str) -> Option<Arc<ClusterRt>> {
        self.0.get(name).map(|(_, _, rt)| Arc::clone(rt))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ClusterRt)> {
        self.0
            .iter()
            .map(|(name, (_, _, rt))| (name.as_str(), rt.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderMap;

    #[test]
    fn the_hash_follows_the_key_and_falls_back_to_the_source() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        let on_header = HashOn::Header(HeaderName::from_static("x-user"));
        let (h, none) = (RequestHeaders::Map(&h), HeaderMap::new());
        assert_eq!(
            request_hash(&on_header, ip, h),
            request_hash(&on_header, other, h),
            "same user, different addresses"
        );
        assert_eq!(
            request_hash(&on_header, ip, RequestHeaders::Map(&none)),
            request_hash(&HashOn::SourceIp, ip, h)
        );
    }
}
