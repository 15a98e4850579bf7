//! Runtime form of a Cluster and its endpoints: the endpoint picker used per request, which
//! passes over endpoints that are ejected (passive health) or failing their probes (active
//! health) while enough others are left.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderName;
use tracing::info;

use super::circuit_breakers::CircuitBreakers;
use super::maglev::{MaglevTable, hash_key};
use super::request::RequestHeaders;
use super::retry_budget::RetryBudget;
use crate::observe::upstream_stats::ClusterStats;
use crate::upstream::health_check::Prober;
use crate::upstream::outlier::OutlierPolicy;
use crate::upstream::{EndpointPool, Protocol};

/// A ready endpoint, its connection pool and its prober when the cluster checks health.
#[derive(Debug, Clone)]
pub struct EndpointRt {
    pub addr: SocketAddr,
    pub pool: Arc<EndpointPool>,
    pub prober: Option<Arc<Prober>>,
}

impl EndpointRt {
    /// Whether the endpoint's probes find it healthy (true when nothing probes it).
    #[inline]
    pub fn probed_healthy(&self) -> bool {
        self.prober.as_ref().is_none_or(|p| p.health.is_healthy())
    }
}

/// What Maglev hashes.
#[derive(Debug)]
pub(super) enum HashOn {
    SourceIp,
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug)]
pub(super) enum Picker {
    Maglev(MaglevTable, HashOn),
    RoundRobin(AtomicUsize),
    LeastRequest,
    Random,
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
    /// Limits on requests and retries in flight (their counts kept across builds).
    pub breakers: CircuitBreakers,
    pub(super) endpoints: Vec<EndpointRt>,
    pub(super) picker: Picker,
    pub(super) outlier: Option<OutlierPolicy>,
    /// Below this share of usable endpoints (percent), health is ignored; None: never.
    pub(super) panic_percent: Option<u32>,
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
        // The index, and a per-request number that spreads a replacement for an unusable
        // choice over the usable endpoints as the picker spreads requests over all.
        let (index, spread) = match &self.picker {
            Picker::Maglev(table, hash_on) => {
                let hash = request_hash(hash_on, client, headers);
                (table.get(hash), hash)
            }
            Picker::RoundRobin(next) => {
                // The round, not the counter: the counters that land on one unusable index
                // share its residue, and would reach only some of the usable endpoints.
                let n = next.fetch_add(1, Ordering::Relaxed);
                (n % count, (n / count) as u64)
            }
            Picker::LeastRequest => {
                // Power of two choices: two endpoints at random, the one with fewer in flight.
                let r: u64 = rand::random();
                let a = (r as usize) % count;
                let b = ((r >> 32) as usize) % count;
                let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
                // Health decides first, unless the cluster is in panic (counted only when one
                // of the two is unusable).
                let health = |e: &EndpointRt| !self.usable(e);
                let (ua, ub) = (health(ea), health(eb));
                let by_health = ua != ub && !self.panicking();
                let fewer = |x: &EndpointRt, y: &EndpointRt| {
                    x.pool.health().in_flight() < y.pool.health().in_flight()
                };
                let pick_b = if by_health { ua } else { fewer(eb, ea) };
                (if pick_b { b } else { a }, r.rotate_left(16))
            }
            Picker::Random => {
                let r: u64 = rand::random();
                ((r as usize) % count, r.rotate_left(32))
            }
        };
        self.healthy_from(index, spread)
    }

    /// Whether requests may go to `endpoint`: not ejected by outlier detection, not failing
    /// its health check.
    #[inline]
    pub fn usable(&self, endpoint: &EndpointRt) -> bool {
        endpoint.probed_healthy()
            && (self.outlier.is_none() || !endpoint.pool.health().is_ejected())
    }

    /// Whether so few endpoints are usable that the cluster spreads requests over all of them
    /// (the panic threshold).
    pub fn panicking(&self) -> bool {
        let Some(percent) = self.panic_percent else {
            return false;
        };
        let usable = self.endpoints.iter().filter(|e| self.usable(e)).count();
        usable * 100 < self.endpoints.len() * percent as usize
    }

    /// `index`'s endpoint when it is usable; else the `spread`-th usable one (modulo their
    /// number), so that an unusable endpoint's share is spread over all the others, not handed
    /// to its neighbour (benches/failover.sh saw round robin double one endpoint's load);
    /// `index`'s when none is usable or the cluster is below its panic threshold. The usable
    /// ones are only counted when the first choice is not.
    fn healthy_from(&self, index: usize, spread: u64) -> Option<&EndpointRt> {
        let first = self.endpoints.get(index)?;
        if self.usable(first) {
            return Some(first);
        }
        let usable = self.endpoints.iter().filter(|e| self.usable(e)).count();
        let panicking = self
            .panic_percent
            .is_some_and(|p| usable * 100 < self.endpoints.len() * p as usize);
        if usable == 0 || panicking {
            return Some(first);
        }
        let nth = (spread % usable as u64) as usize;
        // An endpoint may have left the rotation since it was counted.
        self.endpoints
            .iter()
            .filter(|e| self.usable(e))
            .nth(nth)
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

    /// The endpoint `n` places after `first` (or the next usable one): retries go
    /// elsewhere when they can. When every endpoint not ejected is `first` itself (which just
    /// failed), the retry goes to the ejected one `n` places on: it may have recovered, and
    /// `first` has failed already.
    pub fn nth_after<'a>(&'a self, first: &'a EndpointRt, n: usize) -> &'a EndpointRt {
        let Some(index) = self.endpoints.iter().position(|e| e.addr == first.addr) else {
            return first;
        };
        let count = self.endpoints.len();
        let next = (index + n) % count;
        (0..count)
            .map(|k| &self.endpoints[(next + k) % count])
            .find(|e| e.addr != first.addr && self.usable(e))
            .unwrap_or(&self.endpoints[next])
    }

    /// Whether each endpoint's requests in flight must be counted: the picker balances on
    /// them (least request), or a circuit breaker limits them.
    #[inline]
    pub fn counts_endpoint_load(&self) -> bool {
        matches!(self.picker, Picker::LeastRequest)
            || self.breakers.limits.max_requests_per_endpoint.is_some()
    }

    /// Size of the Maglev table (0 for other pickers).
    pub fn table_size(&self) -> usize {
        match &self.picker {
            Picker::Maglev(t, _) => t.len(),
            Picker::RoundRobin(_) | Picker::LeastRequest | Picker::Random => 0,
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

#[cfg(test)]
mod health_tests {
    use std::collections::HashSet;

    use rauta_common::api::v1::{
        Cluster, ClusterEndpoints, Endpoint, HealthCheck, LoadBalancerPolicy, TcpHealthCheck,
        health_check,
    };

    use super::*;
    use crate::model::cluster_spec::ClusterSpec;
    use crate::observe::metrics::ProxyMetrics;
    use crate::upstream::UpstreamPools;
    use crate::upstream::health_check::ProbeOutcome;

    /// Four round-robin endpoints with a TCP health check; the panic threshold as given.
    fn cluster(panic: Option<u32>) -> ClusterRt {
        let cluster = Cluster {
            name: "c".into(),
            lb_policy: LoadBalancerPolicy::RoundRobin as i32,
            health_check: Some(HealthCheck {
                unhealthy_threshold: 1,
                probe: Some(health_check::Probe::Tcp(TcpHealthCheck {})),
                ..HealthCheck::default()
            }),
            panic_threshold_percent: panic,
            ..Cluster::default()
        };
        let endpoints = ClusterEndpoints {
            cluster: "c".into(),
            endpoints: (1..=4)
                .map(|i| Endpoint {
                    address: format!("10.0.0.{i}"),
                    port: 80,
                    weight: 1,
                    ready: true,
                })
                .collect(),
        };
        let mut pools = UpstreamPools::default();
        let spec = ClusterSpec::validate(&cluster, Some(&endpoints), &pools).unwrap();
        spec.instantiate(&mut pools, &ProxyMetrics::new().unwrap(), None)
    }

    fn fail(rt: &ClusterRt, i: usize) {
        let prober = rt.endpoints()[i].prober.as_ref().unwrap();
        prober
            .health
            .record(ProbeOutcome::ConnectFailed, &prober.spec);
    }

    fn picked(rt: &ClusterRt) -> HashSet<SocketAddr> {
        let headers = http::HeaderMap::new();
        (0..40)
            .map(|_| {
                rt.pick("10.1.1.1".parse().unwrap(), RequestHeaders::Map(&headers))
                    .unwrap()
                    .addr
            })
            .collect()
    }

    #[test]
    fn unhealthy_endpoints_are_passed_over_until_the_panic_threshold() {
        let rt = cluster(None);
        fail(&rt, 0);
        assert_eq!(picked(&rt).len(), 3, "one failing endpoint is passed over");
        assert!(!rt.panicking());
        fail(&rt, 1);
        assert_eq!(
            picked(&rt).len(),
            2,
            "half usable: not below the default 50%"
        );
        fail(&rt, 2);
        assert!(rt.panicking(), "one of four usable");
        assert_eq!(
            picked(&rt).len(),
            4,
            "below the threshold, all share the load"
        );

        // An unusable endpoint's share goes to all the others, not to its neighbour.
        let spread = cluster(Some(0));
        fail(&spread, 1);
        let headers = http::HeaderMap::new();
        let mut counts = std::collections::HashMap::new();
        for _ in 0..300 {
            let e = spread
                .pick("10.1.1.1".parse().unwrap(), RequestHeaders::Map(&headers))
                .unwrap();
            *counts.entry(e.addr).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|n| *n == 100), "{counts:?}");
        // Two unusable endpoints whose indices share a residue with the usable count: the
        // replacements still reach both usable ones alike (a counter modulo 2 did not).
        let two = cluster(Some(0));
        fail(&two, 1);
        fail(&two, 3);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..400 {
            let e = two
                .pick("10.1.1.1".parse().unwrap(), RequestHeaders::Map(&headers))
                .unwrap();
            *counts.entry(e.addr).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 2);
        assert!(counts.values().all(|n| *n == 200), "{counts:?}");

        let never = cluster(Some(0));
        for i in 0..3 {
            fail(&never, i);
        }
        assert!(!never.panicking());
        assert_eq!(
            picked(&never).len(),
            1,
            "panic mode off: the one healthy endpoint"
        );
    }
}
