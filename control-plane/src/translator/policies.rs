//! Policy attachment (Gateway API GEP-713, direct policies): which of RAUTA's policies apply to
//! each Gateway, listener, route and rule, and what they ask of requests there.
//!
//! Kinds: RateLimitPolicy (rate limits), SecurityPolicy (authentication), TrafficPolicy
//! (compression, request limits, default timeouts).
//!
//! A policy names its targets (`targetRefs`): a Gateway, optionally one listener
//! (`sectionName`), or an HTTPRoute or GRPCRoute, optionally one named rule. Two policies of
//! the same kind naming the same target conflict: the older one (then the first by namespace
//! and name) applies there, the other is Conflicted for that target. Invalid policies apply
//! nowhere. What applies to a request is merged by concern (`RequestPolicies`' fields), the
//! most specific attachment first: an ExtensionRef filter, the rule, the route, the listener,
//! the Gateway. Routes and rules are merged here, into each `RouteRule`; listeners and
//! Gateways into the route table's `listener_policies`, which the proxy puts under each rule.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rauta_common::api::v1::RequestPolicies;
use rauta_common::api::v1::resource::Payload;

use super::backends::SharedCluster;
use super::output::ResourceSet;
use super::references::GATEWAY_GROUP;
use super::route_view::RouteKind;
use super::security::MissingRef;
use super::{rate_limits, security, traffic};
use crate::crds::policy::PolicyTargetRef;
use crate::objects::{ObjectRef, ObjectSet};
use rauta_common::types::ResourceType;

/// A target a compiled route looked up, and what applied there.
pub type PolicyRead = (Target, Option<Arc<RequestPolicies>>);

/// Whether the index gives every target what it gave when `read` was recorded.
pub fn same_reads(index: &PolicyIndex, read: &[PolicyRead]) -> bool {
    read.iter()
        .all(|(target, before)| match (before, index.get(target)) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        })
}

/// What a target reference names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Gateway(ObjectRef, Option<String>),
    Route(RouteKind, ObjectRef, Option<String>),
}

impl Target {
    fn of(namespace: &str, t: &PolicyTargetRef) -> Option<Target> {
        if t.group != GATEWAY_GROUP {
            return None;
        }
        let key = ObjectRef::new(namespace, t.name.as_str());
        let section = t.section_name.clone();
        match t.kind.as_str() {
            "Gateway" => Some(Target::Gateway(key, section)),
            "HTTPRoute" => Some(Target::Route(RouteKind::Http, key, section)),
            "GRPCRoute" => Some(Target::Route(RouteKind::Grpc, key, section)),
            _ => None,
        }
    }
}

/// How one of a policy's target references ended up.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It applies there (unless the policy is invalid).
    Applied(Target),
    /// An older policy of the same kind applies there instead.
    Conflicted(Target, ObjectRef),
    /// Not a kind policies can target.
    Unsupported(PolicyTargetRef),
}

/// One policy as attachment sees it.
#[derive(Debug)]
pub struct PolicyEntry {
    pub kind: &'static str,
    pub generation: i64,
    /// Why the policy cannot be used; it then applies nowhere.
    pub invalid: Option<String>,
    /// For kinds that refer to Secrets: those that do not exist.
    pub missing: Option<Vec<MissingRef>>,
    pub outcomes: Vec<Outcome>,
}

/// Every policy's attachments, built once per translation (policies are few).
#[derive(Debug, Default)]
pub struct PolicyIndex {
    /// What applies at each target.
    applied: HashMap<Target, Arc<RequestPolicies>>,
    /// Every policy, by kind and key, with how each of its targets ended up.
    pub entries: BTreeMap<(&'static str, ObjectRef), PolicyEntry>,
    /// The clusters policies call (external authorization services), by name.
    clusters: BTreeMap<String, SharedCluster>,
}

/// `general`'s concerns that `specific` does not set, added to it.
pub fn fill_from(specific: &mut RequestPolicies, general: &RequestPolicies) {
    let RequestPolicies {
        local_rate_limits,
        global_rate_limits,
        api_key_auth,
        jwt_auth,
        basic_auth,
        authorization,
        ext_auth,
        compression,
        request_limits,
        access_log,
    } = specific;
    if local_rate_limits.is_none() {
        local_rate_limits.clone_from(&general.local_rate_limits);
    }
    if global_rate_limits.is_none() {
        global_rate_limits.clone_from(&general.global_rate_limits);
    }
    if api_key_auth.is_none() {
        api_key_auth.clone_from(&general.api_key_auth);
    }
    if jwt_auth.is_none() {
        jwt_auth.clone_from(&general.jwt_auth);
    }
    if basic_auth.is_none() {
        basic_auth.clone_from(&general.basic_auth);
    }
    if authorization.is_none() {
        authorization.clone_from(&general.authorization);
    }
    if ext_auth.is_none() {
        ext_auth.clone_from(&general.ext_auth);
    }
    if compression.is_none() {
        compression.clone_from(&general.compression);
    }
    // Limits merge field by field: each is a concern of its own.
    match (request_limits.as_mut(), &general.request_limits) {
        (None, general) => request_limits.clone_from(general),
        (Some(specific), Some(general)) => specific.fill_from(general),
        (Some(_), None) => {}
    }
    if access_log.is_none() {
        access_log.clone_from(&general.access_log);
    }
}

/// The policies merged by concern, most specific first; `None` when none sets anything.
pub fn merged<'a>(
    layers: impl IntoIterator<Item = Option<&'a RequestPolicies>>,
) -> Option<RequestPolicies> {
    let mut out: Option<RequestPolicies> = None;
    for layer in layers.into_iter().flatten() {
        match &mut out {
            Some(o) => fill_from(o, layer),
            None => out = Some(layer.clone()),
        }
    }
    out
}

/// One policy of any kind, as attachment reads it.
struct Candidate<'a> {
    key: &'a ObjectRef,
    created: Option<k8s_openapi::jiff::Timestamp>,
    generation: i64,
    target_refs: &'a [PolicyTargetRef],
    /// What it asks of requests and the Secrets it names that are missing, or why it
    /// cannot be used.
    resolved: Result<(RequestPolicies, Vec<MissingRef>), String>,
    /// What applies at its targets when it cannot be used: nothing for most kinds; for an
    /// authentication policy, refusing every request (a typo must not open a route).
    when_invalid: Option<RequestPolicies>,
}

impl PolicyIndex {
    /// Adds the clusters that the policies in a Gateway's tables call (its listeners' and
    /// its rules'), which no route names as a backend.
    pub fn add_clusters(&self, resources: &mut ResourceSet) {
        if self.clusters.is_empty() {
            return;
        }
        let mut named = std::collections::BTreeSet::new();
        let mut note = |p: Option<&RequestPolicies>| {
            if let Some(e) = p.and_then(|p| p.ext_auth.as_ref()) {
                named.insert(e.cluster.clone());
            }
        };
        for payload in resources.values().flat_map(|by_name| by_name.values()) {
            match &**payload {
                Payload::RouteTable(t) => {
                    for l in &t.listener_policies {
                        note(l.policies.as_ref());
                    }
                }
                Payload::RouteRules(r) => {
                    for ranked in &r.rules {
                        note(ranked.rule.as_ref().and_then(|r| r.policies.as_deref()));
                    }
                }
                _ => {}
            }
        }
        let clusters = resources.entry(ResourceType::Cluster).or_default();
        for name in named {
            if let Some(cluster) = self.clusters.get(&name) {
                clusters.insert(name, Arc::clone(cluster.payload()));
            }
        }
    }

    pub fn new(objects: &ObjectSet) -> PolicyIndex {
        let mut index = PolicyIndex::default();
        let mut applied: HashMap<Target, RequestPolicies> = HashMap::new();
        let rate_limits = objects
            .rate_limit_policies
            .iter()
            .map(|(key, p)| Candidate {
                key,
                created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                generation: p.metadata.generation.unwrap_or(0),
                target_refs: &p.spec.target_refs,
                resolved: rate_limits::policies(key, &p.spec).map(|r| (r, Vec::new())),
                when_invalid: None,
            });
        index.attach("RateLimitPolicy", rate_limits.collect(), &mut applied);
        let mut security = Vec::new();
        for (key, p) in &objects.security_policies {
            let resolved = security::policies(objects, key, &p.spec).map(|r| {
                for backend in r.clusters {
                    let cluster = backend.cluster;
                    index.clusters.insert(cluster.name.clone(), cluster);
                }
                (r.policies, r.missing)
            });
            security.push(Candidate {
                key,
                created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                generation: p.metadata.generation.unwrap_or(0),
                target_refs: &p.spec.target_refs,
                resolved,
                when_invalid: Some(security::refusing_all(key)),
            });
        }
        index.attach("SecurityPolicy", security, &mut applied);
        let traffic = objects.traffic_policies.iter().map(|(key, p)| Candidate {
            key,
            created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            generation: p.metadata.generation.unwrap_or(0),
            target_refs: &p.spec.target_refs,
            resolved: traffic::policies(&p.spec).map(|r| (r, Vec::new())),
            when_invalid: None,
        });
        index.attach("TrafficPolicy", traffic.collect(), &mut applied);
        index.applied = applied.into_iter().map(|(t, p)| (t, Arc::new(p))).collect();
        index
    }

    /// The policies of one kind: oldest first, then by namespace and name, the first to claim
    /// a target keeps it. Kinds set different concerns, so what they apply at one target adds
    /// up.
    fn attach(
        &mut self,
        kind: &'static str,
        mut candidates: Vec<Candidate<'_>>,
        applied: &mut HashMap<Target, RequestPolicies>,
    ) {
        candidates.sort_by(|a, b| (a.created, a.key).cmp(&(b.created, b.key)));
        let mut claimed: HashMap<Target, &ObjectRef> = HashMap::new();
        for c in candidates {
            let mut entry = PolicyEntry {
                kind,
                generation: c.generation,
                invalid: None,
                missing: None,
                outcomes: Vec::new(),
            };
            let policies = match c.resolved {
                Ok((policies, missing)) => {
                    entry.missing = (kind == "SecurityPolicy").then_some(missing);
                    Some(policies)
                }
                Err(e) => {
                    entry.invalid = Some(e);
                    c.when_invalid
                }
            };
            for t in c.target_refs {
                let Some(target) = Target::of(&c.key.namespace, t) else {
                    entry.outcomes.push(Outcome::Unsupported(t.clone()));
                    continue;
                };
                // An invalid policy of most kinds claims nothing: it applies nowhere.
                let Some(policies) = &policies else {
                    entry.outcomes.push(Outcome::Applied(target));
                    continue;
                };
                match claimed.get(&target) {
                    Some(winner) if *winner != c.key => {
                        let winner = (*winner).clone();
                        entry.outcomes.push(Outcome::Conflicted(target, winner));
                    }
                    _ => {
                        claimed.insert(target.clone(), c.key);
                        let at = applied.entry(target.clone()).or_default();
                        fill_from(at, policies);
                        entry.outcomes.push(Outcome::Applied(target));
                    }
                }
            }
            self.entries.insert((kind, c.key.clone()), entry);
        }
    }

    /// What applies at one target, if anything.
    pub fn get(&self, target: &Target) -> Option<&Arc<RequestPolicies>> {
        if self.applied.is_empty() {
            return None; // The common case, without hashing the target.
        }
        self.applied.get(target)
    }

    /// What applies to one rule of a route (`section`: the rule's name, if it has one), under
    /// what its ExtensionRef filters set. Each target looked up is recorded in `read` with what
    /// was found, so that the route is compiled again only when one of those changes.
    pub fn for_rule(
        &self,
        (kind, route): (RouteKind, &ObjectRef),
        section: Option<&str>,
        extension: Option<&RequestPolicies>,
        read: &mut Vec<PolicyRead>,
    ) -> Option<RequestPolicies> {
        let mut at = |section: Option<&str>| {
            let target = Target::Route(kind, route.clone(), section.map(str::to_owned));
            let found = self.get(&target).cloned();
            read.push((target, found.clone()));
            found
        };
        let rule = section.and_then(|s| at(Some(s)));
        let whole = at(None);
        merged([extension, rule.as_deref(), whole.as_deref()])
    }

    /// What applies to one listener of a Gateway (`None`: a listener of a ListenerSet, which
    /// only the Gateway's own policies reach).
    pub fn for_listener(
        &self,
        gateway: &ObjectRef,
        listener: Option<&str>,
    ) -> Option<RequestPolicies> {
        if self.applied.is_empty() {
            return None;
        }
        let at = |section: Option<&str>| {
            self.applied
                .get(&Target::Gateway(
                    gateway.clone(),
                    section.map(str::to_owned),
                ))
                .map(|p| &**p)
        };
        merged([listener.and_then(|l| at(Some(l))), at(None)])
    }
}
