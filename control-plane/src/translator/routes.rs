//! Compiles one HTTPRoute into route-table rules ordered by Gateway API precedence.

use std::cmp::Ordering;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use gateway_api::experimental::httproutes::{
    HttpRouteRules, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};
use rauta_common::api::v1::{
    ForwardAction, HeaderMatch, Mirror, PathMatch, PathMatchKind, QueryParamMatch, RetryPolicy,
    RouteMatch, RouteRule, ValueMatchKind, WeightedCluster, route_rule::Action,
};

use super::backends::{self, BackendRef, RefProblem, Referrer, ResolvedBackend};
use super::policies::{PolicyIndex, PolicyRead};
use super::precedence::Precedence;
use super::route_view::{RouteId, RouteObject, RouteView};
use super::sessions::compile_session;
use super::{backend_traffic, extensions, filters, kernel};
use crate::crds::rate_limit_policy::RateLimitPolicy;
use crate::objects::{ObjectRef, ObjectSet};

/// One match of one rule, ready to be placed in a virtual host.
#[derive(Debug, Clone)]
pub struct MatchEntry {
    pub precedence: Precedence,
    /// `precedence.key()`, computed once.
    pub key: Vec<u8>,
    pub rule: RouteRule,
}

impl PartialEq for MatchEntry {
    fn eq(&self, other: &Self) -> bool {
        self.precedence == other.precedence
    }
}
impl Eq for MatchEntry {}
impl PartialOrd for MatchEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MatchEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.precedence.cmp(&other.precedence)
    }
}

/// Everything a route contributes, whichever parent it attaches to.
#[derive(Debug)]
pub struct CompiledRoute {
    /// The route this is.
    pub id: RouteId,
    /// The route object this was compiled from.
    pub source: RouteObject,
    pub entries: Vec<MatchEntry>,
    pub backends: Vec<ResolvedBackend>,
    /// First backendRef problem, for the ResolvedRefs condition.
    pub ref_problem: Option<RefProblem>,
    /// A feature of the route this build cannot serve; the route is not accepted.
    pub unsupported: Option<String>,
    /// The Services compilation looked up, found or not: the only Services it read
    /// (`incremental.rs` compiles a route again when one of these changes).
    pub services_read: Vec<(ObjectRef, Option<Arc<Service>>)>,
    /// The policy targets compilation looked up and what applied there, and the
    /// RateLimitPolicies its ExtensionRef filters named: the route is compiled again when one
    /// of these changes, not when any policy does.
    pub policies_read: Vec<PolicyRead>,
    pub rate_limits_read: Vec<(ObjectRef, Option<Arc<RateLimitPolicy>>)>,
    /// Whether any entry could be answered in the kernel (`kernel::may_qualify`), decided
    /// once: each translation asks it of every placed route, and reading the rules
    /// themselves to answer cost a cache miss or two a route.
    pub kernel_candidates: bool,
}

impl CompiledRoute {
    /// `backends::resolve`, with the Service it looks up recorded.
    fn resolve(
        &mut self,
        objects: &ObjectSet,
        namespace: &str,
        referrer: Referrer,
        backend: BackendRef<'_>,
    ) -> Result<ResolvedBackend, RefProblem> {
        let key = ObjectRef::new(backend.namespace.unwrap_or(namespace), backend.name);
        let found = objects.services.get(&key).cloned();
        self.services_read.push((key, found));
        backends::resolve(objects, namespace, referrer, backend)
    }
}

impl CompiledRoute {
    /// The value, or `fallback` with the error recorded as the route's unsupported feature
    /// (the first one recorded is the one reported).
    fn or_unsupported<T>(&mut self, result: Result<T, String>, fallback: T) -> T {
        result.unwrap_or_else(|msg| {
            self.unsupported.get_or_insert(msg);
            fallback
        })
    }
}

/// Compiles a route's rules, whichever its kind.
pub fn compile(
    objects: &ObjectSet,
    policies: &PolicyIndex,
    route: &RouteView<'_>,
) -> CompiledRoute {
    let mut out = CompiledRoute {
        id: route.id(),
        source: route.object.clone(),
        entries: Vec::new(),
        backends: Vec::new(),
        ref_problem: None,
        unsupported: None,
        services_read: Vec::new(),
        policies_read: Vec::new(),
        rate_limits_read: Vec::new(),
        kernel_candidates: false,
    };
    let rules = match &route.rules {
        Ok(rules) => rules,
        Err(message) => {
            out.unsupported = Some(message.clone());
            return out;
        }
    };
    let (key, created, referrer) = (route.key, route.created, route.kind.referrer());
    for (rule_index, rule) in rules.iter().enumerate() {
        // A GRPCRoute may share its namespace and name with an HTTPRoute: its rules (metrics,
        // access log) are told apart by a prefix.
        let kind = if referrer.grpc { "grpc:" } else { "" };
        let name = match &rule.name {
            Some(n) if !n.is_empty() => format!("{kind}{key}/{n}"),
            _ => format!("{kind}{key}/rule/{rule_index}"),
        };
        let default_match = [HttpRouteRulesMatches::default()];
        let matches = match rule.matches.as_deref() {
            Some(m) if !m.is_empty() => m,
            _ => &default_match,
        };
        let prefix_ok = matches.iter().all(|m| {
            m.path.as_ref().is_none_or(|p| {
                p.r#type.is_none() || p.r#type == Some(HttpRouteRulesMatchesPathType::PathPrefix)
            })
        });
        // Each setting that cannot be served makes the route unsupported (the first reason
        // is reported); the rest of the rule still compiles.
        let filters = filters::compile(rule.filters.as_deref().unwrap_or_default(), prefix_ok)
            .map_err(|e| e.to_string());
        let filters = out.or_unsupported(filters, filters::RuleFilters::default());
        let retry = out.or_unsupported(compile_retry(rule), None);
        let session = out
            .or_unsupported(compile_session(rule, &name, matches), None)
            .or_else(|| backend_traffic::session_of_rule(objects, &key.namespace, rule));
        let timeouts = out.or_unsupported(compile_timeouts(rule), (None, None));
        let mirrors = resolve_mirrors(
            objects,
            &key.namespace,
            referrer,
            &filters.mirrors,
            &mut out,
        );
        let extended = extensions::resolve_all(objects, &key.namespace, &filters);
        let mut extended = out.or_unsupported(extended, extensions::Extended::default());
        out.rate_limits_read.append(&mut extended.rate_limits_read);
        if let Some(problem) = extended.problem {
            out.ref_problem.get_or_insert(problem);
        }
        let rule_policies = policies
            .for_rule(
                (route.kind, key),
                rule.name.as_deref(),
                extended.policies.as_ref(),
                &mut out.policies_read,
            )
            .map(Box::new);
        let action = match (extended.action, &filters.redirect) {
            (Some(action), _) => action,
            (None, Some(redirect)) => Action::Redirect(redirect.clone()),
            (None, None) => compile_action(objects, &key.namespace, referrer, rule, &mut out),
        };
        for (match_index, m) in matches.iter().enumerate() {
            let route_match = match compile_match(m) {
                Ok(rm) => rm,
                Err(msg) => {
                    out.unsupported.get_or_insert(msg);
                    continue;
                }
            };
            let precedence = Precedence::of(m, &route_match, created, key, rule_index, match_index);
            let rule = RouteRule {
                name: name.clone(),
                matches: vec![route_match],
                action: Some(action.clone()),
                request_timeout: timeouts.0,
                backend_request_timeout: timeouts.1,
                mirrors: mirrors.clone(),
                cors: filters.cors.clone().map(Box::new),
                retry: retry.clone().map(Box::new),
                session_persistence: session.clone().map(Box::new),
                request_headers: filters.request_headers.clone().map(Box::new),
                response_headers: filters.response_headers.clone().map(Box::new),
                url_rewrite: filters.url_rewrite.clone().map(Box::new),
                cache: extended.cache.clone().map(Box::new),
                policies: rule_policies.clone(),
                // Decided once the table's precedence is known (`kernel.rs`).
                kernel_answerable: false,
            };
            out.entries.push(MatchEntry {
                key: precedence.key(),
                precedence,
                rule,
            });
        }
    }
    // Compiled routes live until the next translation, thousands at a time.
    out.entries.shrink_to_fit();
    out.kernel_candidates = out.entries.iter().any(|e| kernel::may_qualify(&e.rule));
    out.services_read.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.services_read.dedup_by(|a, b| a.0 == b.0);
    out.services_read.shrink_to_fit();
    // The route-wide target is looked up for every rule: kept once.
    out.policies_read.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.policies_read.dedup_by(|a, b| a.0 == b.0);
    out.policies_read.shrink_to_fit();
    out.rate_limits_read.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.rate_limits_read.dedup_by(|a, b| a.0 == b.0);
    out
}

/// The clusters of a rule's RequestMirror filters; a mirror whose backend does not resolve is
/// left out, and its problem reported in ResolvedRefs.
fn resolve_mirrors(
    objects: &ObjectSet,
    namespace: &str,
    referrer: Referrer,
    mirrors: &[filters::MirrorRef],
    out: &mut CompiledRoute,
) -> Vec<Mirror> {
    mirrors
        .iter()
        .filter_map(|m| {
            let backend = BackendRef {
                group: m.group.as_deref(),
                kind: m.kind.as_deref(),
                name: &m.name,
                namespace: m.namespace.as_deref(),
                port: m.port,
            };
            match out.resolve(objects, namespace, referrer, backend) {
                Ok(resolved) => {
                    let cluster = resolved.cluster.name.clone();
                    if !out.backends.iter().any(|b| b.cluster.name == cluster) {
                        out.backends.push(resolved);
                    }
                    Some(Mirror {
                        cluster,
                        numerator: m.fraction.0,
                        denominator: m.fraction.1,
                    })
                }
                Err(problem) => {
                    out.ref_problem.get_or_insert(problem);
                    None
                }
            }
        })
        .collect()
}

/// A pattern the proxies could not compile is the route's problem, reported in its status.
fn check_regex(what: &str, pattern: &str) -> Result<(), String> {
    rauta_common::matching::full_match(pattern)
        .map(drop)
        .map_err(|e| format!("invalid RegularExpression {what} match {pattern:?}: {e}"))
}

fn compile_match(m: &HttpRouteRulesMatches) -> Result<RouteMatch, String> {
    let method = match &m.method {
        Some(method) => serde_json::to_value(method)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .ok_or("unreadable method match")?,
        None => String::new(),
    };
    let mut query_params: Vec<QueryParamMatch> = Vec::new();
    for q in m.query_params.iter().flatten() {
        let kind = match q.r#type {
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                check_regex("query parameter", &q.value)?;
                ValueMatchKind::Regex
            }
            _ => ValueMatchKind::Exact,
        };
        // Multiple matches on the same parameter: only the first counts (spec).
        if !query_params.iter().any(|x| x.name == q.name) {
            query_params.push(QueryParamMatch {
                name: q.name.clone(),
                value: q.value.clone(),
                kind: kind as i32,
            });
        }
    }
    let (kind, value) = match &m.path {
        None => (PathMatchKind::Prefix, "/".to_owned()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".to_owned());
            let kind = match p.r#type {
                None | Some(HttpRouteRulesMatchesPathType::PathPrefix) => PathMatchKind::Prefix,
                Some(HttpRouteRulesMatchesPathType::Exact) => PathMatchKind::Exact,
                Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                    check_regex("path", &value)?;
                    PathMatchKind::Regex
                }
            };
            if kind != PathMatchKind::Regex && !value.starts_with('/') {
                return Err(format!("path {value:?} must start with '/'"));
            }
            (kind, value)
        }
    };
    let mut headers = Vec::new();
    for h in m.headers.iter().flatten() {
        let kind = match h.r#type {
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                check_regex("header", &h.value)?;
                ValueMatchKind::Regex
            }
            _ => ValueMatchKind::Exact,
        };
        // Multiple matches on the same header name: only the first counts (spec).
        if !headers
            .iter()
            .any(|x: &HeaderMatch| x.name.eq_ignore_ascii_case(&h.name))
        {
            headers.push(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
                kind: kind as i32,
            });
        }
    }
    Ok(RouteMatch {
        path: Some(PathMatch {
            kind: kind as i32,
            value,
        }),
        headers,
        query_params,
        method,
    })
}

fn compile_action(
    objects: &ObjectSet,
    namespace: &str,
    referrer: Referrer,
    rule: &HttpRouteRules,
    out: &mut CompiledRoute,
) -> Action {
    let refs = rule.backend_refs.as_deref().unwrap_or_default();
    if refs.is_empty() {
        // A rule without backends answers 500 (spec: HTTPRouteRule.backendRefs).
        return backends::error_answer();
    }
    let mut clusters = Vec::new();
    let mut invalid_weight = 0u32;
    for r in refs {
        let weight = u32::try_from(r.weight.unwrap_or(1)).unwrap_or(0);
        let backend = BackendRef {
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
            port: r.port,
        };
        match out.resolve(objects, namespace, referrer, backend) {
            Ok(resolved) => {
                let filters = backend_filters(r.filters.as_deref().unwrap_or_default())
                    .unwrap_or_else(|msg| {
                        out.unsupported.get_or_insert(msg);
                        filters::RuleFilters::default()
                    });
                clusters.push(WeightedCluster {
                    cluster: resolved.cluster.name.clone(),
                    weight,
                    request_headers: filters.request_headers.map(Box::new),
                    response_headers: filters.response_headers.map(Box::new),
                });
                if !out
                    .backends
                    .iter()
                    .any(|b| b.cluster.name == resolved.cluster.name)
                {
                    out.backends.push(resolved);
                }
            }
            Err(problem) => {
                invalid_weight = invalid_weight.saturating_add(weight);
                out.ref_problem.get_or_insert(problem);
            }
        }
    }
    if clusters.iter().all(|c| c.weight == 0) && invalid_weight > 0 {
        // Only invalid backends carry weight: every request gets 500 (spec).
        return backends::error_answer();
    }
    Action::Forward(ForwardAction {
        clusters,
        invalid_weight,
    })
}

pub(super) fn parse_timeout(
    field: &str,
    value: Option<&String>,
) -> Result<Option<std::time::Duration>, String> {
    let Some(value) = value else { return Ok(None) };
    let d: gateway_api::Duration = value
        .parse()
        .map_err(|e| format!("timeouts.{field} {value:?}: {e}"))?;
    let d = std::time::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // "0s" disables the timeout (spec).
    Ok((!d.is_zero()).then_some(d))
}

/// (request, backendRequest) timeouts of a rule.
fn compile_timeouts(
    rule: &HttpRouteRules,
) -> Result<(Option<prost_types::Duration>, Option<prost_types::Duration>), String> {
    let Some(t) = &rule.timeouts else {
        return Ok((None, None));
    };
    let request = parse_timeout("request", t.request.as_ref())?;
    let backend = parse_timeout("backendRequest", t.backend_request.as_ref())?;
    if let (Some(r), Some(b)) = (request, backend)
        && b > r
    {
        return Err("timeouts.backendRequest must not be longer than timeouts.request".into());
    }
    let proto = |d: std::time::Duration| prost_types::Duration::try_from(d).ok();
    Ok((request.and_then(proto), backend.and_then(proto)))
}

/// backendRef filters: the same shapes as rule filters, but only header modifiers apply.
fn backend_filters(
    filters: &[gateway_api::experimental::httproutes::HttpRouteRulesBackendRefsFilters],
) -> Result<filters::RuleFilters, String> {
    // The generated backendRef filter type mirrors the rule filter type field for field.
    let as_rule_filters: Vec<gateway_api::experimental::httproutes::HttpRouteRulesFilters> =
        filters
            .iter()
            .map(|f| serde_json::to_value(f).and_then(serde_json::from_value))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("backendRef filter: {e}"))?;
    let compiled = filters::compile(&as_rule_filters, false).map_err(|e| e.to_string())?;
    if compiled.redirect.is_some()
        || compiled.url_rewrite.is_some()
        || !compiled.mirrors.is_empty()
        || compiled.cors.is_some()
        || !compiled.extensions.is_empty()
    {
        return Err("only header modifier filters are supported on backendRefs".into());
    }
    Ok(compiled)
}

/// A rule's retry policy (GEP-1731): attempts are retries after the first try.
fn compile_retry(rule: &HttpRouteRules) -> Result<Option<RetryPolicy>, String> {
    let Some(r) = &rule.retry else {
        return Ok(None);
    };
    let attempts = u32::try_from(r.attempts.unwrap_or(1))
        .map_err(|_| "retry.attempts must not be negative")?;
    let codes = r
        .codes
        .iter()
        .flatten()
        .map(|c| {
            u32::try_from(*c)
                .ok()
                .filter(|c| (400..=599).contains(c))
                .ok_or_else(|| format!("retry code {c} is not an error status"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let backoff = parse_timeout("retry.backoff", r.backoff.as_ref())?
        .and_then(|d| prost_types::Duration::try_from(d).ok());
    Ok((attempts > 0).then_some(RetryPolicy {
        attempts,
        codes,
        backoff,
    }))
}
