//! ExtensionRef filters: objects of RAUTA's own group that a route rule names. A
//! DirectResponse makes the rule answer by itself; a ResponseCache keeps its backends' answers;
//! a RateLimitPolicy limits the rule's requests (over any policy attached to the rule, its
//! route or its Gateway). A reference to a kind RAUTA does not
//! define, or to an object that does not exist, makes the rule answer 500 and the route's
//! ResolvedRefs False (InvalidKind, BackendNotFound): the spec forbids skipping a custom
//! filter that cannot be resolved, and the route's other rules keep working.

use std::sync::Arc;

use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{DirectResponse, HeaderValue, RequestPolicies, ResponseCache};

use super::backends::{RefProblem, error_answer};
use super::filters::{ExtensionRef, RuleFilters};
use super::rate_limits;
use crate::crds::GROUP;
use crate::crds::direct_response::{self, DirectResponseSpec};
use crate::crds::rate_limit_policy::{RateLimitPolicy, RateLimitPolicySpec};
use crate::crds::response_cache::{self, ResponseCacheSpec};
use crate::objects::{ObjectRef, ObjectSet};

/// Headers a DirectResponse may not set: the proxy frames the answer and owns the connection.
const MANAGED_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What a rule's ExtensionRef filters give it.
#[derive(Debug, Default)]
pub struct Extended {
    /// An action replacing forwarding: a DirectResponse, or the 500 of an unresolved reference.
    pub action: Option<Action>,
    /// A ResponseCache for the backends' answers.
    pub cache: Option<ResponseCache>,
    /// What the RateLimitPolicies it names ask of its requests.
    pub policies: Option<RequestPolicies>,
    /// The RateLimitPolicies looked up, found or not (a route is compiled again when one of
    /// these changes, not when any policy does).
    pub rate_limits_read: Vec<(ObjectRef, Option<Arc<RateLimitPolicy>>)>,
    /// The first reference that did not resolve.
    pub problem: Option<RefProblem>,
}

/// One resolved ExtensionRef.
enum Resolved {
    Direct(DirectResponseSpec),
    Cache(ResponseCacheSpec),
    RateLimit(ObjectRef, Box<RateLimitPolicySpec>),
}

/// What a rule's ExtensionRef filters give it; `Err` when the rule cannot be served as written
/// (the route is then not accepted).
pub fn resolve_all(
    objects: &ObjectSet,
    namespace: &str,
    filters: &RuleFilters,
) -> Result<Extended, String> {
    let mut direct = None;
    let mut cache = None;
    let mut policies: Option<RequestPolicies> = None;
    let mut unresolved = None;
    let mut rate_limits_read = Vec::new();
    for e in &filters.extensions {
        match resolve(objects, namespace, e, &mut rate_limits_read) {
            Ok(Resolved::Direct(spec)) => {
                if filters.redirect.is_some()
                    || filters.url_rewrite.is_some()
                    || !filters.mirrors.is_empty()
                {
                    return Err(format!(
                        "DirectResponse {}: the rule answers by itself, so RequestRedirect, \
                         URLRewrite and RequestMirror cannot apply",
                        e.name
                    ));
                }
                if direct.is_some() {
                    return Err("a rule may name one DirectResponse".into());
                }
                direct = Some(direct_response(&e.name, &spec)?);
            }
            Ok(Resolved::Cache(spec)) => {
                if cache.is_some() {
                    return Err("a rule may name one ResponseCache".into());
                }
                cache = Some(response_cache(&e.name, &spec)?);
            }
            Ok(Resolved::RateLimit(key, spec)) => {
                if policies.is_some() {
                    return Err("a rule may name one RateLimitPolicy".into());
                }
                let named = rate_limits::policies(&key, &spec)
                    .map_err(|e| format!("RateLimitPolicy {key}: {e}"))?;
                policies = Some(named);
            }
            Err(problem) => {
                unresolved.get_or_insert(problem);
            }
        }
    }
    if cache.is_some() && (direct.is_some() || filters.redirect.is_some()) {
        return Err(
            "ResponseCache: the rule answers by itself (DirectResponse or RequestRedirect), \
             so no backend answer can be cached"
                .into(),
        );
    }
    // An unresolved reference wins: the rule answers 500.
    Ok(match unresolved {
        Some(problem) => Extended {
            action: Some(error_answer()),
            cache: None,
            policies: None,
            rate_limits_read,
            problem: Some(problem),
        },
        None => Extended {
            action: direct.map(Action::DirectResponse),
            cache,
            policies,
            rate_limits_read,
            problem: None,
        },
    })
}

/// The object an ExtensionRef names, or why it cannot be used.
fn resolve(
    objects: &ObjectSet,
    namespace: &str,
    e: &ExtensionRef,
    rate_limits_read: &mut Vec<(ObjectRef, Option<Arc<RateLimitPolicy>>)>,
) -> Result<Resolved, RefProblem> {
    let key = ObjectRef::new(namespace, e.name.as_str());
    let found = match (e.group.as_str(), e.kind.as_str()) {
        (GROUP, "DirectResponse") => objects
            .direct_responses
            .get(&key)
            .map(|o| Resolved::Direct(o.spec.clone())),
        (GROUP, "ResponseCache") => objects
            .response_caches
            .get(&key)
            .map(|o| Resolved::Cache(o.spec.clone())),
        (GROUP, "RateLimitPolicy") => {
            let found = objects.rate_limit_policies.get(&key).cloned();
            rate_limits_read.push((key.clone(), found.clone()));
            found.map(|o| Resolved::RateLimit(key.clone(), Box::new(o.spec.clone())))
        }
        _ => {
            return Err(RefProblem {
                reason: "InvalidKind",
                message: format!(
                    "ExtensionRef {}/{} is not a kind RAUTA defines \
                     (gateway.rauta.dev/DirectResponse, ResponseCache, RateLimitPolicy)",
                    e.group, e.kind
                ),
            });
        }
    };
    found.ok_or_else(|| RefProblem {
        reason: "BackendNotFound",
        message: format!("{} {key} not found", e.kind),
    })
}

/// A ResponseCache as the proxy applies it; `Err` says what is wrong with the object.
fn response_cache(name: &str, spec: &ResponseCacheSpec) -> Result<ResponseCache, String> {
    let problem = |what: String| format!("ResponseCache {name}: {what}");
    let ttl: gateway_api::Duration = spec
        .max_ttl
        .parse()
        .map_err(|e| problem(format!("maxTTL {:?}: {e}", spec.max_ttl)))?;
    let ttl = std::time::Duration::from_millis(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    if ttl.is_zero() {
        return Err(problem("maxTTL must be more than 0s".into()));
    }
    let max_body_bytes = spec
        .max_body_bytes
        .unwrap_or(response_cache::DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 || max_body_bytes > response_cache::LIMIT_MAX_BODY_BYTES {
        return Err(problem(format!(
            "maxBodyBytes must be 1 to {}",
            response_cache::LIMIT_MAX_BODY_BYTES
        )));
    }
    let statuses = spec
        .statuses
        .iter()
        .map(|s| {
            u32::try_from(*s)
                .ok()
                .filter(|s| (200..=599).contains(s) && ![206, 304].contains(s))
                .ok_or_else(|| {
                    problem(format!(
                        "status {s} cannot be cached (200 to 599, not 206 or 304: those \
                         answer one request's Range or condition)"
                    ))
                })
        })
        .collect::<Result<Vec<u32>, String>>()?;
    let max_entries = spec
        .max_entries
        .unwrap_or(response_cache::DEFAULT_MAX_ENTRIES);
    if max_entries == 0 || max_entries > response_cache::LIMIT_MAX_ENTRIES {
        return Err(problem(format!(
            "maxEntries must be 1 to {}",
            response_cache::LIMIT_MAX_ENTRIES
        )));
    }
    Ok(ResponseCache {
        max_ttl: prost_types::Duration::try_from(ttl).ok(),
        max_body_bytes,
        statuses,
        max_entries,
    })
}

/// A DirectResponse as the proxy serves it; `Err` says what is wrong with the object.
fn direct_response(name: &str, spec: &DirectResponseSpec) -> Result<DirectResponse, String> {
    let problem = |what: String| format!("DirectResponse {name}: {what}");
    let status = u32::try_from(spec.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .ok_or_else(|| problem(format!("status {} is not 200 to 599", spec.status)))?;
    if spec.body.len() > direct_response::MAX_BODY_BYTES {
        return Err(problem(format!(
            "body is over {} bytes",
            direct_response::MAX_BODY_BYTES
        )));
    }
    if spec.headers.len() > direct_response::MAX_HEADERS {
        return Err(problem(format!(
            "more than {} headers",
            direct_response::MAX_HEADERS
        )));
    }
    let content_type = spec.content_type.iter().map(|value| HeaderValue {
        name: "content-type".into(),
        value: value.clone(),
    });
    if let Some(h) = spec
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
    {
        return Err(problem(format!(
            "header {:?}: set contentType instead",
            h.name
        )));
    }
    let others = spec.headers.iter().map(|h| HeaderValue {
        name: h.name.to_ascii_lowercase(),
        value: h.value.clone(),
    });
    let headers: Vec<HeaderValue> = content_type.chain(others).collect();
    for h in &headers {
        let token = !h.name.is_empty()
            && h.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let value = h
            .value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !token || !value || MANAGED_HEADERS.contains(&h.name.as_str()) {
            return Err(problem(format!("header {:?} cannot be set", h.name)));
        }
    }
    Ok(DirectResponse {
        status,
        body: spec.body.clone(),
        headers,
    })
}
