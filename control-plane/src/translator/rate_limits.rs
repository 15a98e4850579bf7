//! A RateLimitPolicy's limits as the proxy counts them (`LocalRateLimits`), or why they cannot
//! be counted.

use rauta_common::api::v1::{
    ClientAddressKey, GlobalRateLimits, LocalRateLimits, RateLimit as Limit, RateLimitKey,
    RequestPolicies, RouteKey, rate_limit_key,
};

use crate::crds::rate_limit_policy::{
    self, FailureMode, RateLimit, RateLimitKeyType, RateLimitPolicySpec, RateLimitUnit,
};
use crate::objects::ObjectRef;

/// The policy's local limits, each named after the policy and its place in it; `Ok(None)`
/// when it sets none.
pub fn local(
    key: &ObjectRef,
    spec: &RateLimitPolicySpec,
) -> Result<Option<LocalRateLimits>, String> {
    let Some(local) = &spec.local else {
        return Ok(None);
    };
    if local.limits.is_empty() || local.limits.len() > rate_limit_policy::MAX_LIMITS {
        return Err(format!(
            "local.limits must list 1 to {} limits",
            rate_limit_policy::MAX_LIMITS
        ));
    }
    let limits = local
        .limits
        .iter()
        .enumerate()
        .map(|(i, limit)| {
            one(format!("{key}/{i}"), limit).map_err(|e| format!("local.limits[{i}]: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(LocalRateLimits { limits }))
}

/// The policy's global limits, named `<policy>/global/<index>`; `Ok(None)` when it sets none.
pub fn global(
    key: &ObjectRef,
    spec: &RateLimitPolicySpec,
) -> Result<Option<GlobalRateLimits>, String> {
    let Some(global) = &spec.global else {
        return Ok(None);
    };
    if global.limits.is_empty() || global.limits.len() > rate_limit_policy::MAX_LIMITS {
        return Err(format!(
            "global.limits must list 1 to {} limits",
            rate_limit_policy::MAX_LIMITS
        ));
    }
    let limits = global
        .limits
        .iter()
        .enumerate()
        .map(|(i, limit)| {
            if limit.burst.is_some() {
                return Err(format!(
                    "global.limits[{i}]: burst applies to local limits only (global ones count fixed windows)"
                ));
            }
            one(format!("{key}/global/{i}"), limit).map_err(|e| format!("global.limits[{i}]: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(GlobalRateLimits {
        limits,
        fail_closed: global.failure_mode == Some(FailureMode::Closed),
    }))
}

/// Both kinds of limits of a policy, as the concerns they are.
pub fn policies(key: &ObjectRef, spec: &RateLimitPolicySpec) -> Result<RequestPolicies, String> {
    Ok(RequestPolicies {
        local_rate_limits: local(key, spec)?,
        global_rate_limits: global(key, spec)?,
        ..Default::default()
    })
}

fn one(name: String, limit: &RateLimit) -> Result<Limit, String> {
    if limit.requests == 0 {
        return Err("requests must be at least 1".into());
    }
    if limit.burst == Some(0) {
        return Err("burst must be at least 1".into());
    }
    let max_keys = limit
        .max_keys
        .unwrap_or(rate_limit_policy::DEFAULT_MAX_KEYS);
    if max_keys == 0 || max_keys > rate_limit_policy::LIMIT_MAX_KEYS {
        return Err(format!(
            "maxKeys must be 1 to {}",
            rate_limit_policy::LIMIT_MAX_KEYS
        ));
    }
    let seconds = match limit.unit {
        RateLimitUnit::Second => 1,
        RateLimitUnit::Minute => 60,
        RateLimitUnit::Hour => 3600,
    };
    let key = limit
        .key
        .iter()
        .map(|k| {
            let part = match (k.type_, k.name.as_deref()) {
                (RateLimitKeyType::ClientAddress, None) => {
                    rate_limit_key::Part::ClientAddress(ClientAddressKey {})
                }
                (RateLimitKeyType::Route, None) => rate_limit_key::Part::Route(RouteKey {}),
                (RateLimitKeyType::Header, Some(name)) if is_token(name) => {
                    rate_limit_key::Part::Header(name.to_ascii_lowercase())
                }
                (RateLimitKeyType::Header, Some(name)) => {
                    return Err(format!("key: {name:?} is not a header name"));
                }
                (RateLimitKeyType::Header, None) => {
                    return Err("key: Header needs a name".into());
                }
                (t, Some(_)) => return Err(format!("key: {t:?} takes no name")),
            };
            Ok(RateLimitKey { part: Some(part) })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Limit {
        name,
        requests: limit.requests,
        period: Some(prost_types::Duration { seconds, nanos: 0 }),
        burst: limit.burst.unwrap_or(0),
        key,
        max_keys,
    })
}

/// An HTTP field name (RFC 9110 token).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
