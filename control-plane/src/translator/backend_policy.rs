//! BackendPolicy: the endpoint settings of a Service port (load balancing, timeouts, outlier
//! detection, active health checks, circuit breakers, panic threshold), laid over what the
//! Service's `rauta.dev/*` annotations say, field by field. An invalid policy changes nothing
//! (the annotations or defaults stay) and says why in its status: a typo must not take a
//! backend down.

use std::collections::BTreeSet;

use rauta_common::api::v1::{
    CircuitBreakers, GrpcHealthCheck, HashKey, HealthCheck, HttpHealthCheck, LoadBalancerPolicy,
    StatusRange, TcpHealthCheck, hash_key, health_check,
};

use super::backend_tls::{Precedence, ServicePortKey, port_used, precedence_of};
use super::references::is_core_group;
use super::service_policy::{ServicePolicy, duration, proto};
use super::status::Condition;
use crate::crds::backend_policy::{self as crd, BackendPolicy, BackendPolicySpec};
use crate::objects::{ObjectRef, ObjectSet};

fn precedence(key: &ObjectRef, policy: &BackendPolicy) -> Precedence {
    precedence_of(key, &policy.metadata)
}

fn targets<'a>(
    key: &'a ObjectRef,
    policy: &'a BackendPolicy,
) -> impl Iterator<Item = ServicePortKey> + 'a {
    policy
        .spec
        .target_refs
        .iter()
        .filter(|t| is_core_group(&t.group) && t.kind == "Service")
        .map(|t| {
            (
                ObjectRef::new(&key.namespace, &t.name),
                t.section_name.clone(),
            )
        })
}

/// Lays the policy in effect for one Service port over `base`: one naming the port beats one
/// for the whole Service; among equals the oldest, then the first by name. An invalid policy
/// claims nothing (a valid one for the same target applies); with none, `base` stays.
pub fn apply_for(
    objects: &ObjectSet,
    (service, port_name): (&ObjectRef, Option<&str>),
    base: &mut ServicePolicy,
) {
    let winner = |section: Option<&str>| {
        objects
            .backend_policies
            .iter()
            .filter(|(key, policy)| {
                targets(key, policy).any(|(s, sec)| s == *service && sec.as_deref() == section)
            })
            // Each candidate validated once: the winner's settings are what applies.
            .filter_map(|(key, policy)| {
                Some((precedence(key, policy), settings(&policy.spec).ok()?))
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, settings)| settings)
    };
    if let Some(settings) = port_name
        .and_then(|n| winner(Some(n)))
        .or_else(|| winner(None))
    {
        settings.apply(base);
    }
}

/// Lays a valid policy over `base`; an invalid one leaves it as it is.
#[cfg(test)]
fn apply(spec: &BackendPolicySpec, base: &mut ServicePolicy) {
    if let Ok(settings) = settings(spec) {
        settings.apply(base);
    }
}

/// What a policy sets, validated.
#[derive(Default)]
struct Settings {
    lb: Option<(LoadBalancerPolicy, Option<HashKey>)>,
    connect_timeout: Option<prost_types::Duration>,
    idle_timeout: Option<prost_types::Duration>,
    outlier: (Option<u32>, Option<prost_types::Duration>, Option<u32>),
    health_check: Option<HealthCheck>,
    breakers: Option<CircuitBreakers>,
    panic: Option<u32>,
}

impl Settings {
    fn apply(self, base: &mut ServicePolicy) {
        if let Some((lb, hash)) = self.lb {
            base.lb_policy = lb;
            base.hash_key = hash;
        }
        base.connect_timeout = self.connect_timeout.or(base.connect_timeout);
        base.idle_timeout = self.idle_timeout;
        let o = &mut base.outlier_detection;
        o.consecutive_failures = self.outlier.0.unwrap_or(o.consecutive_failures);
        o.base_ejection_time = self.outlier.1.or(o.base_ejection_time);
        o.max_ejection_percent = self.outlier.2.unwrap_or(o.max_ejection_percent);
        base.health_check = self.health_check;
        base.circuit_breakers = self.breakers;
        base.panic_threshold_percent = self.panic;
    }
}

fn positive_duration(field: &str, value: &str) -> Result<prost_types::Duration, String> {
    let d = duration(value).map_err(|e| format!("{field} {value:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{field} must be longer than 0"));
    }
    proto(d).ok_or_else(|| format!("{field} {value:?} is too long"))
}

fn optional_duration(
    field: &str,
    value: Option<&String>,
) -> Result<Option<prost_types::Duration>, String> {
    value.map(|v| positive_duration(field, v)).transpose()
}

/// Validates every field; the first problem is the status message.
fn settings(spec: &BackendPolicySpec) -> Result<Settings, String> {
    let mut out = Settings {
        connect_timeout: optional_duration("connectTimeout", spec.connect_timeout.as_ref())?,
        idle_timeout: optional_duration("idleTimeout", spec.idle_timeout.as_ref())?,
        panic: spec.panic_threshold,
        ..Settings::default()
    };
    if let Some(p) = spec.panic_threshold.filter(|p| *p > 100) {
        return Err(format!("panicThreshold {p}: at most 100"));
    }
    if let Some(lb) = &spec.load_balancer {
        let policy = match lb.type_ {
            crd::LoadBalancerType::Maglev => LoadBalancerPolicy::Maglev,
            crd::LoadBalancerType::RoundRobin => LoadBalancerPolicy::RoundRobin,
            crd::LoadBalancerType::LeastRequest => LoadBalancerPolicy::LeastRequest,
            crd::LoadBalancerType::Random => LoadBalancerPolicy::Random,
        };
        let hash = match &lb.hash_on {
            None => None,
            Some(_) if policy != LoadBalancerPolicy::Maglev => {
                return Err("loadBalancer.hashOn: only the Maglev load balancer hashes".into());
            }
            Some(h) => Some(HashKey {
                key: Some(match (&h.header, &h.cookie) {
                    (Some(name), None) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                        hash_key::Key::Header(name.to_ascii_lowercase())
                    }
                    (None, Some(name))
                        if !name.is_empty() && !name.contains([';', '=', ' ', ',']) =>
                    {
                        hash_key::Key::Cookie(name.clone())
                    }
                    _ => {
                        return Err("loadBalancer.hashOn: one valid header or cookie name".into());
                    }
                }),
            }),
        };
        out.lb = Some((policy, hash));
    }
    if let Some(o) = &spec.outlier_detection {
        if let Some(p) = o.max_ejection_percent.filter(|p| !(1..=100).contains(p)) {
            return Err(format!("outlierDetection.maxEjectionPercent {p}: 1 to 100"));
        }
        out.outlier = (
            o.consecutive_failures,
            optional_duration(
                "outlierDetection.baseEjectionTime",
                o.base_ejection_time.as_ref(),
            )?,
            o.max_ejection_percent,
        );
    }
    out.health_check = spec.health_check.as_ref().map(health_check).transpose()?;
    out.breakers = spec.circuit_breaker.as_ref().map(|b| CircuitBreakers {
        max_connections_per_endpoint: b.max_connections_per_endpoint.unwrap_or(0),
        max_requests: b.max_requests.unwrap_or(0),
        max_requests_per_endpoint: b.max_requests_per_endpoint.unwrap_or(0),
        max_retries: b.max_retries.unwrap_or(0),
    });
    Ok(out)
}

/// `200` or `200-299`.
fn status_range(text: &str) -> Result<StatusRange, String> {
    let bad =
        || format!("healthCheck.http.expectedStatuses {text:?}: a status or a range like 200-299");
    let (start, end) = match text.trim().split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let (start, end): (u32, u32) = (
        start.parse().map_err(|_| bad())?,
        end.parse().map_err(|_| bad())?,
    );
    if !(100..=599).contains(&start) || !(start..=599).contains(&end) {
        return Err(bad());
    }
    Ok(StatusRange { start, end })
}

fn health_check(hc: &crd::HealthCheck) -> Result<HealthCheck, String> {
    let probes = [hc.http.is_some(), hc.tcp.is_some(), hc.grpc.is_some()];
    if probes.iter().filter(|p| **p).count() != 1 {
        return Err("healthCheck: exactly one of http, tcp or grpc".into());
    }
    let interval = optional_duration("healthCheck.interval", hc.interval.as_ref())?;
    let within = |d: Option<&prost_types::Duration>, min_ms: u64, max_s: u64| {
        d.and_then(|d| std::time::Duration::try_from(*d).ok())
            .is_none_or(|d| {
                (std::time::Duration::from_millis(min_ms)..=std::time::Duration::from_secs(max_s))
                    .contains(&d)
            })
    };
    if !within(interval.as_ref(), 100, 3600) {
        return Err("healthCheck.interval: 100ms to 1h".into());
    }
    let timeout = optional_duration("healthCheck.timeout", hc.timeout.as_ref())?;
    if !within(timeout.as_ref(), 1, 60) {
        return Err("healthCheck.timeout: at most 60s".into());
    }
    // Host and :authority of the probes: a typo would fail every probe.
    let authority = |field: &str, value: &str| {
        if value.is_empty() || value.parse::<http::uri::Authority>().is_ok() {
            Ok(())
        } else {
            Err(format!("healthCheck.{field} {value:?}: host[:port]"))
        }
    };
    let probe = if let Some(h) = &hc.http {
        if !h.path.starts_with('/') || http::uri::PathAndQuery::try_from(h.path.as_str()).is_err() {
            return Err(format!(
                "healthCheck.http.path {:?}: an absolute path",
                h.path
            ));
        }
        let host = h.host.clone().unwrap_or_default();
        authority("http.host", &host)?;
        health_check::Probe::Http(HttpHealthCheck {
            path: h.path.clone(),
            host,
            expected_statuses: h
                .expected_statuses
                .iter()
                .map(|s| status_range(s))
                .collect::<Result<_, _>>()?,
        })
    } else if let Some(g) = &hc.grpc {
        let grpc_authority = g.authority.clone().unwrap_or_default();
        authority("grpc.authority", &grpc_authority)?;
        health_check::Probe::Grpc(GrpcHealthCheck {
            service: g.service.clone().unwrap_or_default(),
            authority: grpc_authority,
        })
    } else {
        health_check::Probe::Tcp(TcpHealthCheck {})
    };
    let jitter = hc
        .jitter
        .as_ref()
        .map(|j| {
            duration(j)
                .map_err(|e| format!("healthCheck.jitter {j:?}: {e}"))
                .map(proto)
        })
        .transpose()?
        .flatten();
    if !within(jitter.as_ref(), 0, 3600) {
        return Err("healthCheck.jitter: at most 1h".into());
    }
    Ok(HealthCheck {
        interval,
        timeout,
        jitter,
        healthy_threshold: hc.healthy_threshold.unwrap_or(1),
        unhealthy_threshold: hc.unhealthy_threshold.unwrap_or(3),
        probe: Some(probe),
    })
}

/// A policy's Accepted condition, the same for every ancestor.
pub fn conditions(objects: &ObjectSet, key: &ObjectRef) -> Vec<Condition> {
    let Some(policy) = objects.backend_policies.get(key) else {
        return Vec::new();
    };
    let g = policy.metadata.generation.unwrap_or(0);
    let accepted = match settings(&policy.spec) {
        Err(problem) => Condition::new("Accepted", false, "Invalid", problem, g),
        Ok(_) => match conflict_winner(objects, key, policy) {
            Some(winner) => Condition::new(
                "Accepted",
                false,
                "Conflicted",
                format!(
                    "BackendPolicy {winner} targets the same Service port and takes precedence"
                ),
                g,
            ),
            None => Condition::new("Accepted", true, "Accepted", "", g),
        },
    };
    vec![accepted]
}

/// The policy that takes precedence over `key` for one of its targets, if any.
fn conflict_winner(
    objects: &ObjectSet,
    key: &ObjectRef,
    policy: &BackendPolicy,
) -> Option<ObjectRef> {
    let mine = precedence(key, policy);
    let my_targets: Vec<ServicePortKey> = targets(key, policy).collect();
    objects
        .backend_policies
        .iter()
        .filter(|(other, _)| *other != key)
        .filter(|(other, p)| precedence(other, p) < mine && settings(&p.spec).is_ok())
        .find(|(other, p)| targets(other, p).any(|t| my_targets.contains(&t)))
        .map(|(other, _)| other.clone())
}

/// The policies that name a Service port in `used`: whose ancestors the Gateways using
/// that port become.
pub fn policies_targeting<'a>(
    objects: &'a ObjectSet,
    used: &'a BTreeSet<ServicePortKey>,
) -> impl Iterator<Item = &'a ObjectRef> + 'a {
    objects
        .backend_policies
        .iter()
        .filter(move |(key, policy)| targets(key, policy).any(|t| port_used(used, &t)))
        .map(|(key, _)| key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> BackendPolicySpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn a_valid_policy_overrides_field_by_field() {
        let mut base = super::super::service_policy::from_annotations(None);
        apply(
            &spec(
                "targetRefs: [{kind: Service, name: echo}]\n\
                 loadBalancer: {type: Maglev, hashOn: {header: X-User}}\n\
                 connectTimeout: 250ms\n\
                 outlierDetection: {consecutiveFailures: 2}\n\
                 healthCheck: {interval: 1s, http: {path: /healthz, expectedStatuses: ['200', '300-399']}}\n\
                 circuitBreaker: {maxRequests: 10}\n\
                 panicThreshold: 0\n",
            ),
            &mut base,
        );
        assert_eq!(base.outlier_detection.consecutive_failures, 2);
        assert_eq!(
            base.outlier_detection.max_ejection_percent, 50,
            "default kept"
        );
        assert_eq!(
            base.hash_key.and_then(|k| k.key),
            Some(hash_key::Key::Header("x-user".into()))
        );
        let hc = base.health_check.unwrap();
        let Some(health_check::Probe::Http(http)) = hc.probe else {
            panic!("http probe")
        };
        assert_eq!(
            http.expected_statuses[1],
            StatusRange {
                start: 300,
                end: 399
            }
        );
        assert_eq!(hc.unhealthy_threshold, 3);
        assert_eq!(base.circuit_breakers.unwrap().max_requests, 10);
        assert_eq!(base.panic_threshold_percent, Some(0));
    }

    #[test]
    fn an_invalid_policy_changes_nothing_and_says_why() {
        for (yaml, why) in [
            ("healthCheck: {interval: 1s}", "exactly one of"),
            ("healthCheck: {interval: 10ms, tcp: {}}", "100ms to 1h"),
            ("healthCheck: {interval: 2h, tcp: {}}", "100ms to 1h"),
            ("healthCheck: {jitter: 100000h, tcp: {}}", "jitter"),
            (
                "healthCheck: {http: {path: /h, host: 'a b'}}",
                "host[:port]",
            ),
            ("healthCheck: {http: {path: healthz}}", "absolute path"),
            (
                "healthCheck: {http: {path: /h, expectedStatuses: ['99']}}",
                "expectedStatuses",
            ),
            (
                "loadBalancer: {type: RoundRobin, hashOn: {header: x}}",
                "only the Maglev",
            ),
            ("connectTimeout: soon", "connectTimeout"),
            ("panicThreshold: 101", "at most 100"),
        ] {
            let s = spec(&format!(
                "targetRefs: [{{kind: Service, name: echo}}]\n{yaml}\n"
            ));
            let problem = settings(&s).err().unwrap_or_default();
            assert!(problem.contains(why), "{yaml}: {problem}");
            let mut base = super::super::service_policy::from_annotations(None);
            let before = base.clone();
            apply(&s, &mut base);
            assert_eq!(base, before, "{yaml}");
        }
    }
}
