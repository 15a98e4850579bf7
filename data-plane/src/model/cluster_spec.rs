//! A Cluster resource validated into what the proxy will build from it (`TryFrom`-style: every
//! problem is a typed error that NACKs the snapshot), and the build itself once the whole
//! snapshot is valid.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::HeaderName;
use http::uri::PathAndQuery;
use rauta_common::api::v1::{
    Cluster, ClusterEndpoints, HealthCheck, LoadBalancerPolicy, UpstreamProtocol, hash_key,
    health_check,
};
use tracing::debug;

use super::circuit_breakers::{BreakerLimits, CircuitBreakers};
use super::cluster::{ClusterRt, EndpointRt, HashOn, Picker};
use super::maglev::MaglevTable;
use super::retry_budget::{BudgetParams, MAX_WINDOW_SECONDS, RetryBudget};
use crate::observe::metrics::ProxyMetrics;
use crate::upstream::health_check::{HealthCheckSpec, Probe};
use crate::upstream::outlier::OutlierPolicy;
use crate::upstream::tls::UpstreamTlsError;
use crate::upstream::{ClusterTls, PoolSettings, Protocol, UpstreamPools};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_PANIC_PERCENT: u32 = 50;
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Shortest probe interval: a proxy fleet probing every endpoint more often than this is a
/// load test on the backends.
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest probe interval, timeout and jitter: beyond these a check is a mistake, and sums of
/// durations stay far from overflowing.
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(3600);
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(60);

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
    #[error("health_check: {0}")]
    HealthCheck(String),
    #[error("panic_threshold_percent {0}: at most 100")]
    PanicThreshold(u32),
    #[error("retry_budget: {0}")]
    RetryBudget(String),
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
    pub(super) name: String,
    policy: LoadBalancerPolicy,
    settings: PoolSettings,
    request_timeout: Option<Duration>,
    tls: Option<ClusterTls>,
    /// Ready endpoints with their weights.
    endpoints: Vec<(SocketAddr, u32)>,
    hash_on: HashOn,
    outlier: Option<OutlierPolicy>,
    health_check: Option<Arc<HealthCheckSpec>>,
    panic_percent: Option<u32>,
    breakers: BreakerLimits,
    retry_budget: BudgetParams,
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
        let protocol = match UpstreamProtocol::try_from(cluster.protocol) {
            Ok(UpstreamProtocol::Unspecified | UpstreamProtocol::Http1) => Protocol::Http1,
            Ok(UpstreamProtocol::H2c) => Protocol::H2c,
            Err(_) => return Err(ClusterProblem::Protocol(cluster.protocol)),
        };
        let policy = LoadBalancerPolicy::try_from(cluster.lb_policy)
            .map_err(|_| ClusterProblem::LbPolicy(cluster.lb_policy))?;
        let breakers = BreakerLimits::from_proto(cluster.circuit_breakers.as_ref());
        let settings = PoolSettings {
            protocol,
            connect_timeout: duration(cluster.connect_timeout.as_ref(), "connect_timeout")?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            idle_timeout: duration(cluster.idle_timeout.as_ref(), "idle_timeout")?
                .unwrap_or(crate::upstream::DEFAULT_IDLE_TIMEOUT),
            max_connections: breakers.max_connections_per_endpoint,
        };
        let request_timeout = duration(cluster.request_timeout.as_ref(), "request_timeout")?;
        // Checked even without endpoints: bad TLS settings NACK the snapshot.
        let tls = cluster
            .tls
            .as_ref()
            .map(|t| pools.validate_tls(protocol, t))
            .transpose()?;
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
        let panic_percent = match cluster.panic_threshold_percent {
            None => Some(DEFAULT_PANIC_PERCENT),
            Some(0) => None,
            Some(p) if p <= 100 => Some(p),
            Some(p) => return Err(ClusterProblem::PanicThreshold(p)),
        };
        Ok(ClusterSpec {
            name: cluster.name.clone(),
            policy,
            settings,
            request_timeout,
            tls,
            endpoints: ready_endpoints(&cluster.name, endpoints),
            hash_on,
            outlier,
            health_check: cluster
                .health_check
                .as_ref()
                .map(health_check_spec)
                .transpose()?
                .map(Arc::new),
            panic_percent,
            breakers,
            retry_budget: cluster
                .retry_budget
                .as_ref()
                .map(budget_params)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// The runtime cluster: a pool for each endpoint (existing or new), its prober when the
    /// cluster checks health, and the picker. A rebuilt cluster keeps its predecessor's Maglev
    /// table size (a table never shrinks, so fewer keys move), its retry budget and what its
    /// circuit breakers count.
    pub fn instantiate(
        self,
        pools: &mut UpstreamPools,
        metrics: &ProxyMetrics,
        previous: Option<&ClusterRt>,
    ) -> ClusterRt {
        let min_table_size = previous.map_or(0, ClusterRt::table_size);
        let ready: Vec<EndpointRt> = self
            .endpoints
            .iter()
            .map(|(addr, _)| {
                let (pool, prober) = pools.endpoint(
                    (*addr, self.settings),
                    self.tls.as_ref(),
                    self.health_check.as_ref(),
                    metrics,
                );
                EndpointRt {
                    addr: *addr,
                    pool,
                    prober,
                }
            })
            .collect();
        let picker = match self.policy {
            LoadBalancerPolicy::RoundRobin => Picker::RoundRobin(AtomicUsize::new(0)),
            LoadBalancerPolicy::LeastRequest => Picker::LeastRequest,
            LoadBalancerPolicy::Random => Picker::Random,
            LoadBalancerPolicy::Unspecified | LoadBalancerPolicy::Maglev => {
                let ids: Vec<String> = ready.iter().map(|e| e.addr.to_string()).collect();
                let weights: Vec<u32> = self.endpoints.iter().map(|(_, w)| *w).collect();
                let size = MaglevTable::size_for(ids.len()).max(min_table_size);
                match MaglevTable::build_with_size(&ids, &weights, size) {
                    Some(table) => Picker::Maglev(table, self.hash_on),
                    None => Picker::RoundRobin(AtomicUsize::new(0)),
                }
            }
        };
        ClusterRt {
            stats: metrics.cluster_stats(&self.name),
            name: Arc::from(self.name.as_str()),
            protocol: self.settings.protocol,
            request_timeout: self.request_timeout,
            // Kept while its settings stay: a config change elsewhere does not refill it.
            retry_budget: previous
                .map(|p| &p.retry_budget)
                .filter(|b| b.params == self.retry_budget)
                .map_or_else(|| Arc::new(RetryBudget::new(self.retry_budget)), Arc::clone),
            breakers: CircuitBreakers {
                limits: self.breakers,
                counts: previous.map_or_else(Arc::default, |p| Arc::clone(&p.breakers.counts)),
            },
            endpoints: ready,
            picker,
            outlier: self.outlier,
            panic_percent: self.panic_percent,
        }
    }
}

/// A retry budget's settings, validated.
fn budget_params(b: &rauta_common::api::v1::RetryBudget) -> Result<BudgetParams, ClusterProblem> {
    let bad = |why: String| ClusterProblem::RetryBudget(why);
    if b.percent > 100 {
        return Err(bad(format!("percent {} over 100", b.percent)));
    }
    let window =
        duration(b.interval.as_ref(), "retry_budget.interval")?.unwrap_or(Duration::from_secs(10));
    let window_seconds = u32::try_from(window.as_secs()).unwrap_or(u32::MAX);
    if !(1..=MAX_WINDOW_SECONDS).contains(&window_seconds) {
        return Err(bad(format!(
            "interval {window:?}: 1 s to {MAX_WINDOW_SECONDS} s"
        )));
    }
    let min_interval = duration(
        b.min_retry_interval.as_ref(),
        "retry_budget.min_retry_interval",
    )?;
    let reserve_retries = match (b.min_retry_count, min_interval) {
        (0, None) => 10 * window_seconds,
        (count, None) => count.saturating_mul(window_seconds),
        (_, Some(i)) if i.is_zero() => return Err(bad("min_retry_interval 0".into())),
        // count per interval, over the window.
        (count, Some(i)) => (f64::from(count) * window.as_secs_f64() / i.as_secs_f64()) as u32,
    };
    Ok(BudgetParams {
        percent: if b.percent == 0 { 20 } else { b.percent },
        window_seconds,
        reserve_retries,
    })
}

/// The ready endpoints with usable addresses.
fn ready_endpoints(name: &str, endpoints: Option<&ClusterEndpoints>) -> Vec<(SocketAddr, u32)> {
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
    ready
}

/// A health check validated: an unusable one NACKs the snapshot rather than probe wrongly.
fn health_check_spec(hc: &HealthCheck) -> Result<HealthCheckSpec, ClusterProblem> {
    let bad = |why: String| ClusterProblem::HealthCheck(why);
    let interval =
        duration(hc.interval.as_ref(), "health_check.interval")?.unwrap_or(DEFAULT_PROBE_INTERVAL);
    if !(MIN_PROBE_INTERVAL..=MAX_PROBE_INTERVAL).contains(&interval) {
        return Err(bad(format!(
            "interval {interval:?}: {MIN_PROBE_INTERVAL:?} to {MAX_PROBE_INTERVAL:?}"
        )));
    }
    let timeout =
        duration(hc.timeout.as_ref(), "health_check.timeout")?.unwrap_or(DEFAULT_PROBE_TIMEOUT);
    if timeout.is_zero() || timeout > MAX_PROBE_TIMEOUT {
        return Err(bad(format!(
            "timeout {timeout:?}: above 0, at most {MAX_PROBE_TIMEOUT:?}"
        )));
    }
    let jitter = duration(hc.jitter.as_ref(), "health_check.jitter")?.unwrap_or_default();
    if jitter > MAX_PROBE_INTERVAL {
        return Err(bad(format!(
            "jitter {jitter:?}: at most {MAX_PROBE_INTERVAL:?}"
        )));
    }
    // Sent as Host or :authority: it must be a valid authority, or every probe would fail
    // and take the endpoints out.
    let header = |field: &str, value: &str| {
        (!value.is_empty())
            .then(|| {
                value
                    .parse::<http::uri::Authority>()
                    .ok()
                    .and_then(|_| http::HeaderValue::from_str(value).ok())
                    .ok_or_else(|| bad(format!("{field} {value:?} is not a host[:port]")))
            })
            .transpose()
    };
    let probe = match &hc.probe {
        None => return Err(bad("no probe (http, tcp or grpc)".into())),
        Some(health_check::Probe::Tcp(_)) => Probe::Tcp,
        Some(health_check::Probe::Http(h)) => {
            let path = PathAndQuery::try_from(h.path.as_str())
                .ok()
                .filter(|_| h.path.starts_with('/'))
                .ok_or_else(|| bad(format!("http path {:?} is not an absolute path", h.path)))?;
            let mut expected = Vec::new();
            for r in &h.expected_statuses {
                if !(100..=599).contains(&r.start) || !(r.start..=599).contains(&r.end) {
                    return Err(bad(format!("status range {}-{}", r.start, r.end)));
                }
                expected.push(r.start as u16..=r.end as u16);
            }
            Probe::Http {
                path,
                host: header("http host", &h.host)?,
                expected,
            }
        }
        Some(health_check::Probe::Grpc(g)) => Probe::Grpc {
            service: g.service.clone(),
            authority: header("grpc authority", &g.authority)?,
        },
    };
    Ok(HealthCheckSpec {
        interval,
        timeout,
        jitter,
        healthy_threshold: hc.healthy_threshold.max(1),
        unhealthy_threshold: match hc.unhealthy_threshold {
            0 => DEFAULT_UNHEALTHY_THRESHOLD,
            n => n,
        },
        probe,
    })
}

#[cfg(test)]
mod tests {
    use rauta_common::api::v1::{GrpcHealthCheck, TcpHealthCheck};

    use super::*;

    fn check(hc: HealthCheck) -> Result<HealthCheckSpec, ClusterProblem> {
        health_check_spec(&hc)
    }

    #[test]
    fn health_checks_out_of_bounds_are_refused_not_run() {
        let tcp = Some(health_check::Probe::Tcp(TcpHealthCheck {}));
        let secs = |s: i64| {
            Some(prost_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        assert!(
            check(HealthCheck {
                probe: tcp.clone(),
                ..HealthCheck::default()
            })
            .is_ok()
        );
        // An interval plus a jitter near the top of the range would overflow an Instant.
        for hc in [
            HealthCheck {
                interval: secs(i64::MAX / 4),
                probe: tcp.clone(),
                ..HealthCheck::default()
            },
            HealthCheck {
                jitter: secs(i64::MAX / 4),
                probe: tcp.clone(),
                ..HealthCheck::default()
            },
            HealthCheck {
                timeout: secs(3600),
                probe: tcp.clone(),
                ..HealthCheck::default()
            },
            HealthCheck {
                probe: Some(health_check::Probe::Grpc(GrpcHealthCheck {
                    service: String::new(),
                    authority: "not an authority".into(),
                })),
                ..HealthCheck::default()
            },
            HealthCheck::default(),
        ] {
            assert!(check(hc.clone()).is_err(), "{hc:?}");
        }
    }
}
