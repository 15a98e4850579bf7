//! A listener's route table: virtual hosts by domain (exact, then the longest wildcard, then
//! "*"), each with its rules in precedence order.

use foldhash::{HashMap, HashMapExt};
use std::borrow::Cow;
use std::sync::Arc;

use rauta_common::api::v1::{RequestPolicies, Resource, RouteRule, RouteRules, RouteTable};

use super::clusters::{ClusterPlan, Clusters};
use super::collect::exact;
use super::filters::session::{SessionError, SessionKeys};
use super::filters::{Inherited, SharedPart};
use super::kept::RuleStores;
use super::matchers::MatchRt;
use super::request::RequestView;
use assembly::Assembly;

mod assembly;
use super::rule::{RuleError, RuleRt};
use crate::observe::metrics::ProxyMetrics;

#[derive(Debug, Clone)]
pub struct VirtualHostRt {
    pub name: Arc<str>,
    rules: Arc<[RuleRt]>,
    /// What it was built from: the next state reuses it as it is where that is unchanged.
    source: Arc<VhostSource>,
}

/// A table's session keys as received, kept to tell whether they changed; never printed.
#[derive(Default)]
struct KeySource(Vec<String>);

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} session keys (redacted)", self.0.len())
    }
}

/// What a virtual host is built from, besides its table's session keys and the clusters its
/// rules are linked to.
#[derive(Debug)]
struct VhostSource {
    domains: Vec<String>,
    inline: Vec<RouteRule>,
    /// Its listener's policies (boxed: most virtual hosts have none, and there may be tens of
    /// thousands).
    policies: Option<Box<RequestPolicies>>,
    /// Each ranked rule as (the RouteRules resource as received, position in it), in order.
    /// The store keeps a resource that did not change as the same allocation, so an unchanged
    /// one is found by address, without comparing or copying any of it.
    ranked: Vec<(Arc<Resource>, usize)>,
}

impl VirtualHostRt {
    /// The first rule matching the request, in precedence order.
    #[inline]
    pub fn route(&self, req: &RequestView<'_>) -> Option<(&RuleRt, &MatchRt)> {
        self.rules
            .iter()
            .find_map(|r| r.matches.iter().find(|m| m.matches(req)).map(|m| (r, m)))
    }
}

#[derive(Debug, Default)]
pub struct RouteTableRt {
    name: Box<str>,
    /// Its `RouteTable` resource, as the store holds it.
    resource: Option<Arc<Resource>>,
    /// The session keys its rules were built with.
    session_keys: KeySource,
    /// Which virtual host (by position) serves a domain. Shared with the table before when
    /// its virtual hosts have the same domains in the same order, as after an edit of the
    /// rules of routes already there.
    index: Arc<DomainIndex>,
    vhosts: Vec<VirtualHostRt>,
}

#[derive(Debug, Default)]
struct DomainIndex {
    exact: HashMap<Box<str>, usize>,
    /// (suffix with its leading dot, vhost), longest suffix first.
    wildcards: Vec<(Box<str>, usize)>,
    any: Option<usize>,
}

impl DomainIndex {
    /// The index of virtual hosts in this order, or why their domains cannot be served.
    fn of(vhosts: &[Assembly<'_>]) -> Result<DomainIndex, RouteTableError> {
        let mut index = DomainIndex {
            exact: HashMap::with_capacity(vhosts.len()),
            ..DomainIndex::default()
        };
        for (position, vhost) in vhosts.iter().enumerate() {
            for domain in vhost.domains.iter().map(|d| &**d) {
                if domain == "*" {
                    if index.any.replace(position).is_some() {
                        return Err(RouteTableError::TwoCatchAlls);
                    }
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    if !suffix.starts_with('.') || suffix.len() < 2 {
                        return Err(RouteTableError::Wildcard(domain.to_owned()));
                    }
                    index.wildcards.push((suffix.into(), position));
                } else if domain.is_empty() || domain.contains(['*', '/', ' ', ':']) {
                    return Err(RouteTableError::Domain(domain.to_owned()));
                } else if index.exact.insert(domain.into(), position).is_some() {
                    return Err(RouteTableError::Claimed(domain.to_owned()));
                }
            }
        }
        index
            .wildcards
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Ok(index)
    }
}

/// Whether a virtual host built for `before` serves the same domains as `now`.
fn same_domains(before: &[String], now: &[Cow<'_, str>]) -> bool {
    before.len() == now.len() && before.iter().zip(now).all(|(b, n)| **b == **n)
}

impl RouteTableRt {
    /// The virtual host for a lower-case host without port: exact, then longest wildcard, then "*".
    #[inline]
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHostRt> {
        let index = &*self.index;
        let position = index.exact.get(host).copied().or_else(|| {
            index
                .wildcards
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
                .map(|(_, i)| *i)
                .or(index.any)
        })?;
        self.vhosts.get(position)
    }
}

impl RouteTableRt {
    /// Each exact domain and its virtual host, for answers keyed by host (the kernel path).
    pub fn exact_domains(&self) -> impl Iterator<Item = (&str, &VirtualHostRt)> {
        self.index
            .exact
            .iter()
            .filter_map(|(d, i)| Some((&**d, self.vhosts.get(*i)?)))
    }

    /// Every virtual host.
    pub fn virtual_hosts(&self) -> &[VirtualHostRt] {
        &self.vhosts
    }

    /// The "*" virtual host when it is the table's only one: then every host reaches it.
    pub fn only_catch_all(&self) -> Option<&VirtualHostRt> {
        let index = &*self.index;
        match (
            index.exact.is_empty() && index.wildcards.is_empty(),
            index.any,
        ) {
            (true, Some(i)) => self.vhosts.get(i),
            _ => None,
        }
    }
}

impl VirtualHostRt {
    /// The rules, in precedence order.
    pub fn rules(&self) -> &[RuleRt] {
        &self.rules
    }
}

/// Why a route table is invalid (the NACK's text, after which table it is).
#[derive(Debug, thiserror::Error)]
pub enum RouteTableError {
    #[error("virtual host {vhost}: rule {rule}: {source}")]
    Rule {
        vhost: String,
        rule: String,
        source: RuleError,
    },
    #[error("two virtual hosts claim \"*\"")]
    TwoCatchAlls,
    #[error("invalid wildcard domain {0:?}")]
    Wildcard(String),
    #[error("invalid domain {0:?}")]
    Domain(String),
    #[error("two virtual hosts claim {0:?}")]
    Claimed(String),
    #[error(transparent)]
    SessionKeys(#[from] SessionError),
    #[error("route rules {0}: a ranked rule without its rule")]
    NoRule(String),
    #[error("route rules {name}: invalid domain {domain:?}")]
    RulesDomain { name: String, domain: String },
    #[error(
        "{placements} rules placed in virtual hosts (domains times rules), more than {MAX_PLACEMENTS}"
    )]
    TooManyPlacements { placements: usize },
}

/// Most rules one route table may hold once placed in its virtual hosts (a rule of a
/// `RouteRules` counts once per domain it joins, and is built once per domain): a bound on the
/// work a response can ask for, far above real tables (10,000 routes of 5 rules on 5
/// hostnames each is 250,000).
pub const MAX_PLACEMENTS: usize = 1 << 20;

/// Checks what can be checked of a `RouteRules` on its own, whether or not its table is here:
/// every ranked rule has its rule, every domain is well formed, and its size is bounded.
pub fn check_route_rules(r: &RouteRules) -> Result<(), RouteTableError> {
    if r.rules.iter().any(|ranked| ranked.rule.is_none()) {
        return Err(RouteTableError::NoRule(r.name.clone()));
    }
    if let Some(domain) = r.domains.iter().find(|d| !well_formed_domain(d)) {
        return Err(RouteTableError::RulesDomain {
            name: r.name.clone(),
            domain: domain.clone(),
        });
    }
    let placements = r.domains.len().saturating_mul(r.rules.len());
    if placements > MAX_PLACEMENTS {
        return Err(RouteTableError::TooManyPlacements { placements });
    }
    Ok(())
}

/// "*", a wildcard "*.suffix", or an exact host without port, path or spaces.
fn well_formed_domain(domain: &str) -> bool {
    match domain.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => suffix.starts_with('.') && suffix.len() >= 2 && !suffix[1..].contains('*'),
        None => !domain.is_empty() && !domain.contains(['*', '/', ' ', ':']),
    }
}

/// What a route table is built from: its resource (as the store holds it) and payload, the
/// `RouteRules` naming it, and whether those are the very ones of the state before (the
/// store's `RouteRules` did not change).
pub struct TableInputs<'a> {
    pub resource: &'a Arc<Resource>,
    pub table: &'a RouteTable,
    pub rules: &'a [(&'a RouteRules, &'a Arc<Resource>)],
    pub rules_unchanged: bool,
}

impl VirtualHostRt {
    fn build(
        vhost: &Assembly<'_>,
        metrics: &ProxyMetrics,
        session_keys: &SessionKeys,
        stores: &mut RuleStores,
    ) -> Result<VirtualHostRt, RouteTableError> {
        // Each rule with the route it belongs to: its RouteRules, or itself for an inline rule.
        let mut all: Vec<(&RouteRule, &str)> =
            Vec::with_capacity(vhost.inline.len() + vhost.ranked.len());
        all.extend(vhost.inline.iter().map(|rule| (rule, rule.name.as_str())));
        all.extend(
            vhost
                .ranked
                .iter()
                .map(|(_, route, .., rule)| (*rule, *route)),
        );
        let rules = exact(all.into_iter().map(|(rule, route)| {
            let inherited = Inherited {
                policies: vhost.policies,
                route,
            };
            RuleRt::build(rule, metrics, session_keys, stores, inherited).map_err(|source| {
                RouteTableError::Rule {
                    vhost: vhost.name.to_owned(),
                    rule: rule.name.clone(),
                    source,
                }
            })
        }))?;
        let source = VhostSource {
            domains: vhost.domains.iter().map(|d| d.to_string()).collect(),
            inline: vhost.inline.to_vec(),
            policies: vhost.policies.cloned().map(Box::new),
            ranked: vhost
                .ranked
                .iter()
                .map(|(_, _, resource, position, _)| (Arc::clone(resource), *position))
                .collect(),
        };
        Ok(VirtualHostRt {
            name: Arc::from(vhost.name),
            rules: rules.into(),
            source: Arc::new(source),
        })
    }

    /// Whether this virtual host, of the previous state, is what `vhost` would build: same
    /// name, domains and rules (the same RouteRules resources), and every cluster its rules
    /// are linked to the same in the new state. The caller checks the session keys.
    fn same_as(&self, vhost: &Assembly<'_>, clusters: &ClusterPlan, stores: &RuleStores) -> bool {
        let source = &self.source;
        let same_rules = source.ranked.len() == vhost.ranked.len()
            && source.ranked.iter().zip(&vhost.ranked).all(
                |((resource, position), (_, _, r, p, _))| Arc::ptr_eq(resource, r) && position == p,
            );
        *self.name == *vhost.name
            && same_domains(&source.domains, &vhost.domains)
            && source.inline == vhost.inline
            && source.policies.as_deref() == vhost.policies
            && same_rules
            && self.links_kept(clusters, stores)
    }

    /// Whether every cluster its rules are linked to is the same in the new state, and
    /// every response store of its rules is its own there.
    fn links_kept(&self, clusters: &ClusterPlan, stores: &RuleStores) -> bool {
        self.rules.iter().all(|rule| {
            let mut linked_the_same = true;
            rule.shared_parts(&mut |part| match part {
                SharedPart::Cluster(name, linked) => {
                    linked_the_same &= clusters.keeps(name, linked);
                }
                // Another copy of the rule (same name, another table) already has a store
                // of its own in the new state: built again, this copy shares it.
                SharedPart::Cache(store) => {
                    linked_the_same &= !stores.caches.has_other(&rule.name, store);
                }
                // Likewise for a limiter made anew in the new state.
                SharedPart::Limiter(name, limiter) => {
                    linked_the_same &= !stores.limiters.has_other(name, limiter);
                }
                SharedPart::GlobalLimiter(name, limiter) => {
                    linked_the_same &= !stores.global_limiters.has_other(name, limiter);
                }
                SharedPart::Jwt(name, verifier) => {
                    linked_the_same &= !stores.jwt.has_other(name, verifier);
                }
                SharedPart::BasicAuth(name, users) => {
                    linked_the_same &= !stores.basic_auth.has_other(name, users);
                }
            });
            linked_the_same
        })
    }

    /// This virtual host in a new state: its rules' response stores go with it.
    fn reused(&self, stores: &mut RuleStores) -> VirtualHostRt {
        for rule in self.rules.iter() {
            rule.shared_parts(&mut |part| match part {
                SharedPart::Cache(store) => stores.caches.keep(&rule.name, store),
                SharedPart::Limiter(name, limiter) => stores.limiters.keep(name, limiter),
                SharedPart::GlobalLimiter(name, limiter) => {
                    stores.global_limiters.keep(name, limiter)
                }
                SharedPart::Jwt(name, verifier) => stores.jwt.keep(name, verifier),
                SharedPart::BasicAuth(name, users) => stores.basic_auth.keep(name, users),
                SharedPart::Cluster(..) => {}
            });
        }
        self.clone()
    }
}

impl RouteTableRt {
    /// Validates a route table with the `RouteRules` naming it (each with its resource): the
    /// virtual hosts' domains and rules, each virtual host's own rules first, then the ranked
    /// ones by precedence. A virtual host of `previous` (this table in the state before) that
    /// nothing it is built from changed is reused as it is, not built again: a one-route
    /// change rebuilds the virtual hosts that route joins.
    pub fn build(
        inputs: TableInputs<'_>,
        previous: Option<&RouteTableRt>,
        clusters: &ClusterPlan,
        metrics: &ProxyMetrics,
        stores: &mut RuleStores,
    ) -> Result<RouteTableRt, RouteTableError> {
        let TableInputs {
            resource,
            table,
            rules,
            rules_unchanged,
        } = inputs;
        let keys = SessionKeys::build(&table.session_keys)?;
        if let Some(previous) = previous.filter(|p| {
            rules_unchanged
                && p.resource
                    .as_ref()
                    .is_some_and(|r| Arc::ptr_eq(r, resource))
        }) {
            return previous.relinked(clusters, metrics, &keys, stores);
        }
        // Rules built with other session keys are built again.
        let previous = previous.filter(|p| p.session_keys.0 == table.session_keys);
        let assembled = Assembly::of(table, rules)?;
        // An edit of routes already there leaves every virtual host where it was: then each
        // is compared with the one at its position, and the domain index is the same.
        let same_layout = previous.filter(|p| {
            p.vhosts.len() == assembled.len()
                && p.vhosts
                    .iter()
                    .zip(&assembled)
                    .all(|(old, new)| same_domains(&old.source.domains, &new.domains))
        });
        let index = match same_layout {
            Some(p) => Arc::clone(&p.index),
            None => Arc::new(DomainIndex::of(&assembled)?),
        };
        // Otherwise the previous virtual hosts by first domain (a candidate: the comparison
        // below decides).
        let by_domain: HashMap<&str, &VirtualHostRt> = match (same_layout, previous) {
            (None, Some(p)) => {
                let mut map = HashMap::with_capacity(p.vhosts.len());
                for v in &p.vhosts {
                    let first = v.source.domains.first().map_or("", String::as_str);
                    map.entry(first).or_insert(v);
                }
                map
            }
            _ => HashMap::new(),
        };
        let mut vhosts = Vec::with_capacity(assembled.len());
        for (position, vhost) in assembled.iter().enumerate() {
            let candidate = match same_layout {
                Some(p) => p.vhosts.get(position),
                None => by_domain
                    .get(vhost.domains.first().map_or("", |d| &**d))
                    .copied(),
            };
            let reusable = candidate.filter(|old| old.same_as(vhost, clusters, stores));
            vhosts.push(match reusable {
                Some(old) => old.reused(stores),
                None => VirtualHostRt::build(vhost, metrics, &keys, stores)?,
            });
        }
        Ok(RouteTableRt {
            name: table.name.as_str().into(),
            resource: Some(Arc::clone(resource)),
            session_keys: KeySource(table.session_keys.clone()),
            index,
            vhosts,
        })
    }

    /// This table again, built from the very same resources (only clusters or endpoints
    /// changed): its virtual hosts stay where they are, and only those linked to a cluster
    /// the new state replaces are built again, from what they were built from.
    fn relinked(
        &self,
        clusters: &ClusterPlan,
        metrics: &ProxyMetrics,
        keys: &SessionKeys,
        stores: &mut RuleStores,
    ) -> Result<RouteTableRt, RouteTableError> {
        let mut vhosts = Vec::with_capacity(self.vhosts.len());
        for old in &self.vhosts {
            vhosts.push(if old.links_kept(clusters, stores) {
                old.reused(stores)
            } else {
                VirtualHostRt::build(&Assembly::again(old)?, metrics, keys, stores)?
            });
        }
        Ok(RouteTableRt {
            name: self.name.clone(),
            resource: self.resource.clone(),
            session_keys: KeySource(self.session_keys.0.clone()),
            index: Arc::clone(&self.index),
            vhosts,
        })
    }

    /// Where its domain index lives: equal for two tables that share it.
    #[cfg(test)]
    pub(super) fn index_address(&self) -> usize {
        Arc::as_ptr(&self.index).addr()
    }

    /// The route table's name (its resource's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Points every rule's backends and mirrors at the snapshot's clusters. Reused virtual
    /// hosts are shared with the previous state and already point at the same clusters.
    pub fn link(&mut self, clusters: &Clusters) {
        for vhost in &mut self.vhosts {
            if let Some(rules) = Arc::get_mut(&mut vhost.rules) {
                rules.iter_mut().for_each(|rule| rule.link(clusters));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeySource;

    #[test]
    fn session_keys_kept_for_comparison_are_never_printed() {
        let keys = KeySource(vec!["c2VjcmV0LWtleQ==".into()]);
        let printed = format!("{keys:?}");
        assert!(!printed.contains("c2VjcmV0"), "{printed}");
    }
}
