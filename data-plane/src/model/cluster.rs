//! Runtime form of a Cluster and its endpoints: the endpoint picker used per request.

use foldhash::{HashMap, HashSet, HashSetExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderName;
use rauta_common::api::v1::{
    Cluster, ClusterEndpoints, LoadBalancerPolicy, Resource, UpstreamProtocol, hash_key,
};
use tracing::{debug, info};

use rauta_common::api::v1::resource::Payload;
use rauta_common::types::ResourceType;

use super::maglev::{MaglevTable, hash_key};
use super::request::RequestHeaders;
use super::retry_budget::RetryBudget;
use super::store::{ResourceStore, TypeSet};
use crate::observe::metrics::ProxyMetrics;
use crate::observe::upstream_stats::ClusterStats;
use crate::upstream::outlier::OutlierPolicy;
use crate::upstream::tls::UpstreamTlsError;
use crate::upstream::{ClusterTls, EndpointPool, Protocol, UpstreamPools};

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
    /// Upstream latency, retries sent and retries the budget refused.
    pub stats: Arc<ClusterStats>,
    /// Kept from the cluster's previous build: a config change does not refill it.
    pub retry_budget: Arc<RetryBudget>,
    endpoints: Vec<EndpointRt>,
    picker: Picker,
    outlier: Option<OutlierPolicy>,
}

/// Why a cluster in a snapshot is invalid (the NACK's text).
#[derive(Debug, thiserror::Error)]
#[error("cluster {cluster}: {problem}")]
pub struct ClusterError {
    pub cluster: String,
    pub problem: ClusterProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterProblem {
    #[error("unknown protocol {0}")]
    Protocol(i32),
    #[error("unknown lb_policy {0}")]
    LbPolicy(i32),
    #[error("{field}: invalid duration: {reason}")]
    Duration { field: &'static str, reason: String },
    #[error("tls: {0}")]
    Tls(#[from] UpstreamTlsError),
    #[error("hash_key header {header:?}: {reason}")]
    HashHeader { header: String, reason: String },
}

fn duration(
    d: Option<&prost_types::Duration>,
    field: &'static str,
) -> Result<Option<Duration>, ClusterProblem> {
    d.map(|d| {
        Duration::try_from(*d).map_err(|e| ClusterProblem::Duration {
            field,
            reason: e.to_string(),
        })
    })
    .transpose()
}

/// A cluster validated from its resources, before any connection pool exists for it:
/// [`ClusterSpec::instantiate`] makes it a [`ClusterRt`] once the whole snapshot is valid.
#[derive(Debug)]
pub struct ClusterSpec {
    name: String,
    protocol: Protocol,
    policy: LoadBalancerPolicy,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    tls: Option<ClusterTls>,
    /// Ready endpoints with their weights.
    endpoints: Vec<(SocketAddr, u32)>,
    hash_on: HashOn,
    outlier: Option<OutlierPolicy>,
}

impl ClusterSpec {
    /// Validates a Cluster and its endpoints (which may be absent yet). Reads `pools` only to
    /// share TLS settings already in use.
    pub fn validate(
        cluster: &Cluster,
        endpoints: Option<&ClusterEndpoints>,
        pools: &UpstreamPools,
    ) -> Result<ClusterSpec, ClusterError> {
        Self::check(cluster, endpoints, pools).map_err(|problem| ClusterError {
            cluster: cluster.name.clone(),
            problem,
        })
    }

    fn check(
        cluster: &Cluster,
        endpoints: Option<&ClusterEndpoints>,
        pools: &UpstreamPools,
    ) -> Result<ClusterSpec, ClusterProblem> {
        let name = &cluster.name;
        let protocol = match UpstreamProtocol::try_from(cluster.protocol) {
            Ok(UpstreamProtocol::Unspecified | UpstreamProtocol::Http1) => Protocol::Http1,
            Ok(UpstreamProtocol::H2c) => Protocol::H2c,
            Err(_) => return Err(ClusterProblem::Protocol(cluster.protocol)),
        };
        let policy = LoadBalancerPolicy::try_from(cluster.lb_policy)
            .map_err(|_| ClusterProblem::LbPolicy(cluster.lb_policy))?;
        let connect_timeout = duration(cluster.connect_timeout.as_ref(), "connect_timeout")?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let request_timeout = duration(cluster.request_timeout.as_ref(), "request_timeout")?;
        // Checked even without endpoints: bad TLS settings NACK the snapshot.
        let tls = cluster
            .tls
            .as_ref()
            .map(|t| pools.validate_tls(protocol, t))
            .transpose()?;
        let mut ready = Vec::new();
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
            if port != 0 {
                ready.push((SocketAddr::new(ip, port), ep.weight));
            }
        }
        let hash_on = match cluster.hash_key.as_ref().and_then(|k| k.key.as_ref()) {
            None => HashOn::SourceIp,
            Some(hash_key::Key::Header(h)) => {
                HashOn::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|e| {
                    ClusterProblem::HashHeader {
                        header: h.clone(),
                        reason: e.to_string(),
                    }
                })?)
            }
            Some(hash_key::Key::Cookie(c)) => HashOn::Cookie(c.clone()),
        };
        let outlier = match &cluster.outlier_detection {
            Some(o) if o.consecutive_failures > 0 => Some(OutlierPolicy {
                consecutive_failures: o.consecutive_failures,
                base_ejection: duration(o.base_ejection_time.as_ref(), "base_ejection_time")?
                    .unwrap_or(Duration::from_secs(30)),
                max_ejection_percent: match o.max_ejection_percent {
                    0 => 50,
                    p => p.min(100),
                },
            }),
            _ => None,
        };
        Ok(ClusterSpec {
            name: name.clone(),
            protocol,
            policy,
            connect_timeout,
            request_timeout,
            tls,
            endpoints: ready,
            hash_on,
            outlier,
        })
    }

    /// The runtime cluster: a pool for each endpoint (existing or new) and the picker. A
    /// rebuilt cluster keeps its predecessor's Maglev table size (a table never shrinks, so
    /// fewer keys move) and its retry budget.
    pub fn instantiate(
        self,
        pools: &mut UpstreamPools,
        metrics: &ProxyMetrics,
        previous: Option<&ClusterRt>,
    ) -> ClusterRt {
        let min_table_size = previous.map_or(0, ClusterRt::table_size);
        let ClusterSpec {
            name,
            protocol,
            policy,
            connect_timeout,
            request_timeout,
            tls,
            endpoints,
            hash_on,
            outlier,
        } = self;
        let ready: Vec<EndpointRt> = endpoints
            .iter()
            .map(|(addr, _)| EndpointRt {
                addr: *addr,
                pool: pools.endpoint(*addr, protocol, connect_timeout, tls.as_ref(), metrics),
            })
            .collect();
        let picker = match policy {
            LoadBalancerPolicy::RoundRobin => Picker::RoundRobin(AtomicUsize::new(0)),
            LoadBalancerPolicy::LeastRequest => Picker::LeastRequest,
            LoadBalancerPolicy::Unspecified | LoadBalancerPolicy::Maglev => {
                let ids: Vec<String> = ready.iter().map(|e| e.addr.to_string()).collect();
                let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
                let size = MaglevTable::size_for(ids.len()).max(min_table_size);
                match MaglevTable::build_with_size(&ids, &weights, size) {
                    Some(table) => Picker::Maglev(table, hash_on),
                    None => Picker::RoundRobin(AtomicUsize::new(0)),
                }
            }
        };
        ClusterRt {
            name: Arc::from(name.as_str()),
            protocol,
            request_timeout,
            stats: metrics.cluster_stats(&name),
            retry_budget: previous.map_or_else(Arc::default, |p| Arc::clone(&p.retry_budget)),
            endpoints: ready,
            picker,
            outlier,
        }
    }
}

impl ClusterRt {
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
pub struct Clusters {
    by_name: Arc<ByName>,
    /// The store's clusters and endpoints these were built from: a snapshot with the very same
    /// ones (a route change) keeps them all without looking at each.
    built_from: (TypeSet, TypeSet),
}

/// Each cluster with the Cluster and Endpoints resources it was built from.
type ByName = HashMap<Arc<str>, (Arc<Resource>, Option<Arc<Resource>>, Arc<ClusterRt>)>;

/// Whether a cluster built from resource `then` is what `now` would build: the store keeps an
/// unchanged resource as the same allocation; one sent again (a reconnection) has its version.
fn same_resource(then: &Arc<Resource>, now: &Arc<Resource>) -> bool {
    Arc::ptr_eq(then, now) || then.version == now.version
}

/// A cluster of a validated snapshot: the previous one, unchanged, or a new one to make.
#[derive(Debug)]
enum Planned {
    Reused(Arc<ClusterRt>),
    New(Box<ClusterSpec>),
}

/// Every cluster of a snapshot, validated; [`ClusterPlan::instantiate`] makes them.
#[derive(Debug)]
pub struct ClusterPlan {
    change: PlannedChange,
    built_from: (TypeSet, TypeSet),
}

#[derive(Debug)]
enum PlannedChange {
    /// The snapshot has the previous state's very clusters and endpoints.
    None(Arc<ByName>),
    Some {
        /// Each cluster with the Cluster and Endpoints resources it is built from.
        planned: Vec<(Arc<Resource>, Option<Arc<Resource>>, Planned)>,
        /// The clusters reused from the previous state (their addresses).
        reused: HashSet<usize>,
    },
}

impl Clusters {
    /// Validates every cluster of `store`; those whose resources did not change since
    /// `previous` are reused as they are.
    pub fn validate(
        store: &ResourceStore,
        previous: &Clusters,
        pools: &UpstreamPools,
    ) -> Result<ClusterPlan, ClusterError> {
        let built_from = (
            store.type_set(ResourceType::Cluster),
            store.type_set(ResourceType::Endpoints),
        );
        if built_from.0.is(&previous.built_from.0) && built_from.1.is(&previous.built_from.1) {
            return Ok(ClusterPlan {
                change: PlannedChange::None(Arc::clone(&previous.by_name)),
                built_from,
            });
        }
        let mut plan = Vec::with_capacity(previous.by_name.len());
        let mut reused = HashSet::with_capacity(previous.by_name.len());
        // Endpoints are named by their cluster: both in name order, walked side by side.
        let mut all_endpoints = store.resources(ResourceType::Endpoints).peekable();
        for resource in store.resources(ResourceType::Cluster) {
            let Some(Payload::Cluster(cluster)) = &resource.payload else {
                continue;
            };
            let mut endpoints = all_endpoints.next_if(|e| e.name == cluster.name);
            if endpoints.is_none() {
                while all_endpoints
                    .next_if(|e| e.name.as_str() < cluster.name.as_str())
                    .is_some()
                {}
                endpoints = all_endpoints.next_if(|e| e.name == cluster.name);
            }
            let unchanged = previous
                .by_name
                .get(cluster.name.as_str())
                .filter(|(c, e, _)| {
                    same_resource(c, resource)
                        && match (e, endpoints) {
                            (Some(then), Some(now)) => same_resource(then, now),
                            (then, now) => then.is_none() && now.is_none(),
                        }
                });
            let planned = match unchanged {
                Some((_, _, rt)) => Planned::Reused(Arc::clone(rt)),
                None => {
                    let endpoints = endpoints.and_then(|e| match &e.payload {
                        Some(Payload::Endpoints(e)) => Some(e),
                        _ => None,
                    });
                    Planned::New(Box::new(ClusterSpec::validate(cluster, endpoints, pools)?))
                }
            };
            if let Planned::Reused(rt) = &planned {
                reused.insert(Arc::as_ptr(rt).addr());
            }
            plan.push((Arc::clone(resource), endpoints.cloned(), planned));
        }
        Ok(ClusterPlan {
            change: PlannedChange::Some {
                planned: plan,
                reused,
            },
            built_from,
        })
    }

    /// Whether both are the very same clusters, kept whole (no cluster or endpoints change).
    #[cfg(test)]
    pub(super) fn kept_whole(&self, before: &Clusters) -> bool {
        Arc::ptr_eq(&self.by_name, &before.by_name)
    }

    /// The cluster called `name`, if the snapshot has it.
    pub fn get(&self, name: &str) -> Option<Arc<ClusterRt>> {
        self.by_name.get(name).map(|(_, _, rt)| Arc::clone(rt))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ClusterRt)> {
        self.by_name
            .iter()
            .map(|(name, (_, _, rt))| (&**name, rt.as_ref()))
    }
}

impl ClusterPlan {
    /// Whether a rule linked to `linked` for cluster `name` would be linked the same in this
    /// snapshot: the cluster is reused as it was, or it was missing and still is.
    pub fn keeps(&self, name: &str, linked: Option<&Arc<ClusterRt>>) -> bool {
        match (&self.change, linked) {
            // Every rule of the previous state is linked to that state's own cluster of its
            // name, or to none when it had none (reused rules because this method said so,
            // the others by `link`): with the very same clusters, each stays right. "The very
            // same" is pointer identity of the store's sets, which the previous `Clusters`
            // holds, so no other set can have taken their address.
            (PlannedChange::None(by_name), linked) => {
                debug_assert_eq!(
                    by_name.get(name).map(|(_, _, kept)| Arc::as_ptr(kept)),
                    linked.map(Arc::as_ptr)
                );
                true
            }
            (PlannedChange::Some { reused, .. }, Some(rt)) => {
                reused.contains(&Arc::as_ptr(rt).addr())
            }
            (PlannedChange::Some { .. }, None) => !self.built_from.0.contains(name),
        }
    }

    /// Makes the new clusters (pools for their endpoints) and keeps the reused ones.
    pub fn instantiate(
        self,
        previous: &Clusters,
        pools: &mut UpstreamPools,
        metrics: &ProxyMetrics,
    ) -> Clusters {
        let planned = match self.change {
            PlannedChange::None(by_name) => {
                return Clusters {
                    by_name,
                    built_from: self.built_from,
                };
            }
            PlannedChange::Some { planned, .. } => planned,
        };
        let by_name = planned
            .into_iter()
            .map(|(cluster, endpoints, planned)| {
                let rt = match planned {
                    Planned::Reused(rt) => rt,
                    Planned::New(spec) => {
                        let before = previous
                            .by_name
                            .get(spec.name.as_str())
                            .map(|(_, _, rt)| &**rt);
                        Arc::new(spec.instantiate(pools, metrics, before))
                    }
                };
                (Arc::clone(&rt.name), (cluster, endpoints, rt))
            })
            .collect();
        Clusters {
            by_name: Arc::new(by_name),
            built_from: self.built_from,
        }
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
