//! Per-Service traffic settings the Gateway API has no field for (load balancing, session
//! affinity, connect timeout, outlier detection), read from `rauta.dev/*` annotations on the
//! Service, as ingress controllers do. A value that does not parse keeps the default and is
//! reported: a typo must not take a backend down. Deprecated for BackendPolicy
//! (`backend_policy.rs`), which sets all of these and more, and wins field by field.

use std::collections::BTreeMap;
use std::time::Duration;

use rauta_common::api::v1::{
    CircuitBreakers, HashKey, HealthCheck, LoadBalancerPolicy, OutlierDetection, hash_key,
};

pub const LOAD_BALANCER: &str = "rauta.dev/load-balancer";
pub const HASH_ON: &str = "rauta.dev/hash-on";
pub const CONNECT_TIMEOUT: &str = "rauta.dev/connect-timeout";
pub const OUTLIER_FAILURES: &str = "rauta.dev/outlier-consecutive-failures";
pub const OUTLIER_EJECTION_TIME: &str = "rauta.dev/outlier-base-ejection-time";
pub const OUTLIER_MAX_PERCENT: &str = "rauta.dev/outlier-max-ejection-percent";

/// Defaults when a Service says nothing: as nginx's passive checks, failing endpoints are
/// taken out by default; thresholds as Envoy's consecutive-5xx detector.
const DEFAULT_FAILURES: u32 = 5;
const DEFAULT_EJECTION_TIME: Duration = Duration::from_secs(30);
const DEFAULT_MAX_PERCENT: u32 = 50;

/// The settings of one Service, plus what could not be understood.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    pub lb_policy: LoadBalancerPolicy,
    pub hash_key: Option<HashKey>,
    pub connect_timeout: Option<prost_types::Duration>,
    pub outlier_detection: OutlierDetection,
    /// BackendPolicy only.
    pub idle_timeout: Option<prost_types::Duration>,
    pub health_check: Option<HealthCheck>,
    pub panic_threshold_percent: Option<u32>,
    pub circuit_breakers: Option<CircuitBreakers>,
    /// One message per annotation that was ignored.
    pub problems: Vec<String>,
}

pub(super) fn duration(value: &str) -> Result<Duration, String> {
    let d = value
        .parse::<gateway_api::Duration>()
        .map_err(|e| e.to_string())?;
    Ok(Duration::from_millis(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    ))
}

pub(super) fn proto(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// Reads a Service's annotations.
pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> ServicePolicy {
    let get = |name: &str| annotations.and_then(|a| a.get(name)).map(|v| v.trim());
    let mut problems = Vec::new();
    let mut bad = |name: &str, value: &str, why: &str| {
        problems.push(format!("annotation {name}={value:?} ignored: {why}"));
    };

    let lb_policy = match get(LOAD_BALANCER) {
        None | Some("maglev") => LoadBalancerPolicy::Maglev,
        Some("round-robin") => LoadBalancerPolicy::RoundRobin,
        Some("least-request") => LoadBalancerPolicy::LeastRequest,
        Some(other) => {
            bad(
                LOAD_BALANCER,
                other,
                "expected maglev, round-robin or least-request",
            );
            LoadBalancerPolicy::Maglev
        }
    };
    let hash_key = match get(HASH_ON) {
        None | Some("source-ip") => None,
        Some(v) => match v.split_once(':') {
            Some(("header", name)) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                Some(hash_key::Key::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ']) => {
                Some(hash_key::Key::Cookie(name.to_owned()))
            }
            _ => {
                bad(HASH_ON, v, "expected source-ip, header:NAME or cookie:NAME");
                None
            }
        },
    }
    .map(|key| HashKey { key: Some(key) });
    if hash_key.is_some() && lb_policy != LoadBalancerPolicy::Maglev {
        bad(
            HASH_ON,
            get(HASH_ON).unwrap_or_default(),
            "only the maglev load balancer hashes",
        );
    }
    let connect_timeout = match get(CONNECT_TIMEOUT) {
        None => None,
        Some(v) => match duration(v) {
            Ok(d) if !d.is_zero() => proto(d),
            Ok(_) => {
                bad(CONNECT_TIMEOUT, v, "must be longer than 0");
                None
            }
            Err(e) => {
                bad(CONNECT_TIMEOUT, v, &e);
                None
            }
        },
    };
    let consecutive_failures = match get(OUTLIER_FAILURES) {
        None => DEFAULT_FAILURES,
        Some(v) => v.parse().unwrap_or_else(|_| {
            bad(
                OUTLIER_FAILURES,
                v,
                "expected a whole number (0 never ejects)",
            );
            DEFAULT_FAILURES
        }),
    };
    let base_ejection_time = match get(OUTLIER_EJECTION_TIME) {
        None => DEFAULT_EJECTION_TIME,
        Some(v) => match duration(v) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                bad(OUTLIER_EJECTION_TIME, v, "must be longer than 0");
                DEFAULT_EJECTION_TIME
            }
            Err(e) => {
                bad(OUTLIER_EJECTION_TIME, v, &e);
                DEFAULT_EJECTION_TIME
            }
        },
    };
    let max_ejection_percent = match get(OUTLIER_MAX_PERCENT) {
        None => DEFAULT_MAX_PERCENT,
        Some(v) => match v.parse::<u32>() {
            Ok(p) if (1..=100).contains(&p) => p,
            _ => {
                bad(OUTLIER_MAX_PERCENT, v, "expected 1 to 100");
                DEFAULT_MAX_PERCENT
            }
        },
    };
    ServicePolicy {
        lb_policy,
        hash_key: hash_key.filter(|_| lb_policy == LoadBalancerPolicy::Maglev),
        connect_timeout,
        outlier_detection: OutlierDetection {
            consecutive_failures,
            base_ejection_time: proto(base_ejection_time),
            max_ejection_percent,
        },
        idle_timeout: None,
        health_check: None,
        panic_threshold_percent: None,
        circuit_breakers: None,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, &str)]) -> ServicePolicy {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_annotations(Some(&map))
    }

    #[test]
    fn defaults_without_annotations() {
        let p = from_annotations(None);
        assert_eq!(p.lb_policy, LoadBalancerPolicy::Maglev);
        assert_eq!(p.hash_key, None);
        assert_eq!(p.connect_timeout, None);
        assert_eq!(p.outlier_detection.consecutive_failures, 5);
        assert_eq!(p.outlier_detection.max_ejection_percent, 50);
        assert_eq!(
            p.outlier_detection.base_ejection_time,
            Some(prost_types::Duration {
                seconds: 30,
                nanos: 0
            })
        );
        assert!(p.problems.is_empty());
    }

    #[test]
    fn annotations_are_read() {
        let p = policy(&[
            (HASH_ON, "cookie:session"),
            (CONNECT_TIMEOUT, "250ms"),
            (OUTLIER_FAILURES, "3"),
            (OUTLIER_EJECTION_TIME, "1s"),
            (OUTLIER_MAX_PERCENT, "100"),
        ]);
        assert_eq!(
            p.hash_key,
            Some(HashKey {
                key: Some(hash_key::Key::Cookie("session".into()))
            })
        );
        assert_eq!(
            p.connect_timeout,
            Some(prost_types::Duration {
                seconds: 0,
                nanos: 250_000_000
            })
        );
        assert_eq!(p.outlier_detection.consecutive_failures, 3);
        assert_eq!(p.outlier_detection.max_ejection_percent, 100);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let header = policy(&[(HASH_ON, "header:X-User")]);
        assert_eq!(
            header.hash_key,
            Some(HashKey {
                key: Some(hash_key::Key::Header("x-user".into()))
            })
        );
        assert_eq!(
            policy(&[(LOAD_BALANCER, "least-request")]).lb_policy,
            LoadBalancerPolicy::LeastRequest
        );
    }

    #[test]
    fn bad_values_keep_defaults_and_are_reported() {
        let p = policy(&[
            (LOAD_BALANCER, "random"),
            (HASH_ON, "header:bad header"),
            (CONNECT_TIMEOUT, "soon"),
            (OUTLIER_FAILURES, "-1"),
            (OUTLIER_MAX_PERCENT, "0"),
        ]);
        assert_eq!(p.lb_policy, LoadBalancerPolicy::Maglev);
        assert_eq!(p.hash_key, None);
        assert_eq!(p.connect_timeout, None);
        assert_eq!(p.outlier_detection.consecutive_failures, 5);
        assert_eq!(p.outlier_detection.max_ejection_percent, 50);
        assert_eq!(p.problems.len(), 5, "{:?}", p.problems);
        assert!(p.problems[0].contains("rauta.dev/load-balancer=\"random\""));
        let p = policy(&[(LOAD_BALANCER, "round-robin"), (HASH_ON, "header:x-user")]);
        assert_eq!(p.hash_key, None);
        assert_eq!(p.problems.len(), 1);
    }
}
