//! A RateLimitPolicy's limits as the proxy counts them (`LocalRateLimits`), or why they cannot
//! be counted.

use rauta_common::api::v1::{
    ClientAddressKey, LocalRateLimit, LocalRateLimits, RateLimitKey, RouteKey, rate_limit_key,
};

use crate::crds::rate_limit_policy::{
    self, RateLimit, RateLimitKeyType, RateLimitPolicySpec, RateLimitUnit,
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

fn one(name: String, limit: &RateLimit) -> Result<LocalRateLimit, String> {
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
    Ok(LocalRateLimit {
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
