//! XBackendTrafficPolicy (gateway.networking.x-k8s.io/v1alpha1, GEP-3388 and GEP-1619): a
//! Service's retry budget (`retryConstraint`), which bounds the retries of every route to it,
//! and its session persistence, which every rule forwarding to it gets unless the rule sets
//! its own. Status ancestors are the Gateways whose routes use the Service, as for
//! BackendTLSPolicy. There is no conformance feature name for it upstream, so none is claimed.

use std::collections::BTreeSet;

use gateway_api::experimental::httproutes::{HttpRouteRules, HttpRouteRulesSessionPersistence};
use gateway_api::experimental::xbackendtrafficpolicies::XBackendTrafficPolicy;
use rauta_common::api::v1::{RetryBudget, SessionPersistence};

use super::backend_tls::{Precedence, ServicePortKey, port_used, precedence_of};
use super::references::is_core_group;
use super::service_policy::{duration, proto};
use super::sessions::session_persistence;
use super::status::Condition;
use crate::objects::{ObjectRef, ObjectSet};

fn targets<'a>(
    key: &'a ObjectRef,
    policy: &'a XBackendTrafficPolicy,
) -> impl Iterator<Item = ObjectRef> + 'a {
    policy
        .spec
        .target_refs
        .iter()
        .filter(|t| is_core_group(&t.group) && t.kind == "Service")
        .map(|t| ObjectRef::new(&key.namespace, &t.name))
}

fn precedence(key: &ObjectRef, policy: &XBackendTrafficPolicy) -> Precedence {
    precedence_of(key, &policy.metadata)
}

/// The policy in effect for a Service: the oldest naming it, then the first by name.
pub fn policy_for<'o>(
    objects: &'o ObjectSet,
    service: &ObjectRef,
) -> Option<(&'o ObjectRef, &'o XBackendTrafficPolicy)> {
    objects
        .x_backend_traffic_policies
        .iter()
        .filter(|(key, p)| targets(key, p).any(|s| s == *service))
        // An invalid policy claims nothing: a valid one for the same Service applies.
        .filter(|(key, p)| valid(key, p))
        .min_by_key(|(key, p)| precedence(key, p))
        .map(|(key, p)| (key, &**p))
}

fn valid(key: &ObjectRef, policy: &XBackendTrafficPolicy) -> bool {
    budget(policy).is_ok() && sticky(key, policy).is_ok()
}

/// The Service's retry budget, when the policy sets a valid one.
pub fn retry_budget(policy: &XBackendTrafficPolicy) -> Option<RetryBudget> {
    budget(policy).ok().flatten()
}

fn budget(policy: &XBackendTrafficPolicy) -> Result<Option<RetryBudget>, String> {
    let Some(c) = &policy.spec.retry_constraint else {
        return Ok(None);
    };
    let parse = |field: &str, v: &Option<String>| {
        v.as_ref()
            .map(|v| match duration(v) {
                Ok(d) if !d.is_zero() => proto(d).ok_or_else(|| format!("{field} {v:?}")),
                Ok(_) => Err(format!("{field} must be longer than 0")),
                Err(e) => Err(format!("{field} {v:?}: {e}")),
            })
            .transpose()
    };
    let (percent, interval) = match &c.budget {
        Some(b) => (
            b.percent,
            parse("retryConstraint.budget.interval", &b.interval)?,
        ),
        None => (None, None),
    };
    let percent = match percent {
        None => 0,
        Some(p) if (1..=100).contains(&p) => p as u32,
        Some(p) => return Err(format!("retryConstraint.budget.percent {p}: 1 to 100")),
    };
    if let Some(seconds) = interval.as_ref().map(|d| d.seconds)
        && !(1..=300).contains(&seconds)
    {
        return Err("retryConstraint.budget.interval: 1s to 300s".into());
    }
    let (count, min_interval) = match &c.min_retry_rate {
        Some(m) => (
            m.count.unwrap_or(10),
            parse("retryConstraint.minRetryRate.interval", &m.interval)?,
        ),
        None => (10, None),
    };
    let count = u32::try_from(count).map_err(|_| "retryConstraint.minRetryRate.count < 0")?;
    // Always sent: without an interval a count of 0 would read as "unset" (10 a second).
    let min_interval = min_interval.or(Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    }));
    Ok(Some(RetryBudget {
        percent,
        interval,
        min_retry_count: count,
        min_retry_interval: min_interval,
    }))
}

/// The session persistence a rule without its own gets from the policy of its first backend
/// Service, named after the policy when it names no session: one token for the Service,
/// whichever route was taken.
pub fn session_of_rule(
    objects: &ObjectSet,
    route_namespace: &str,
    rule: &HttpRouteRules,
) -> Option<SessionPersistence> {
    if objects.x_backend_traffic_policies.is_empty() {
        return None;
    }
    let backend = rule.backend_refs.as_deref()?.first()?;
    if !is_core_group(backend.group.as_deref().unwrap_or(""))
        || backend.kind.as_deref().is_some_and(|k| k != "Service")
    {
        return None;
    }
    let namespace = backend.namespace.as_deref().unwrap_or(route_namespace);
    let (key, policy) = policy_for(objects, &ObjectRef::new(namespace, &backend.name))?;
    sticky(key, policy).ok().flatten()
}

fn sticky(
    key: &ObjectRef,
    policy: &XBackendTrafficPolicy,
) -> Result<Option<SessionPersistence>, String> {
    let Some(s) = &policy.spec.session_persistence else {
        return Ok(None);
    };
    // The same fields, with the same meaning, as a rule's sessionPersistence.
    let as_rule: HttpRouteRulesSessionPersistence = serde_json::to_value(s)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("sessionPersistence: {e}"))?;
    session_persistence(&as_rule, &format!("XBackendTrafficPolicy/{key}"), || {
        "/".to_owned()
    })
    .map(Some)
}

/// The policy's Accepted condition, the same for every ancestor.
pub fn conditions(objects: &ObjectSet, key: &ObjectRef) -> Vec<Condition> {
    let Some(policy) = objects.x_backend_traffic_policies.get(key) else {
        return Vec::new();
    };
    let g = policy.metadata.generation.unwrap_or(0);
    let problem = budget(policy).err().or_else(|| sticky(key, policy).err());
    let winner = || {
        let mine = precedence(key, policy);
        let my_targets: Vec<ObjectRef> = targets(key, policy).collect();
        objects
            .x_backend_traffic_policies
            .iter()
            .filter(|(other, p)| *other != key && precedence(other, p) < mine && valid(other, p))
            .find(|(other, p)| targets(other, p).any(|t| my_targets.contains(&t)))
            .map(|(other, _)| other.clone())
    };
    let accepted = match (problem, winner()) {
        (Some(problem), _) => Condition::new("Accepted", false, "Invalid", problem, g),
        (None, Some(winner)) => Condition::new(
            "Accepted",
            false,
            "Conflicted",
            format!("XBackendTrafficPolicy {winner} targets the same Service and takes precedence"),
            g,
        ),
        (None, None) => Condition::new("Accepted", true, "Accepted", "", g),
    };
    vec![accepted]
}

/// The policies that name a Service in `used`.
pub fn policies_targeting<'a>(
    objects: &'a ObjectSet,
    used: &'a BTreeSet<ServicePortKey>,
) -> impl Iterator<Item = &'a ObjectRef> + 'a {
    objects
        .x_backend_traffic_policies
        .iter()
        .filter(move |(key, p)| targets(key, p).any(|s| port_used(used, &(s, None))))
        .map(|(key, _)| key)
}
