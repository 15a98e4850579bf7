//! A listener's route table: virtual hosts by domain (exact, then the longest wildcard, then
//! "*"), each with its rules in precedence order.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::Arc;

use rauta_common::api::v1::{Resource, RouteRule, RouteRules, RouteTable};

use super::cluster::{ClusterPlan, Clusters};
use super::collect::exact;
use super::filters::SharedPart;
use super::filters::session::{SessionError, SessionKeys};
use super::matchers::MatchRt;
use super::request::RequestView;
use super::response_store::CacheStores;
use super::rule::{RuleError, RuleRt};
use crate::observe::metrics::ProxyMetrics;

#[derive(Debug, Clone)]
pub struct VirtualHostRt {
    pub name: String,
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
    /// The session keys its rules were built with.
    session_keys: KeySource,
    exact: HashMap<Box<str>, usize>,
    /// (suffix with its leading dot, vhost), longest suffix first.
    wildcards: Vec<(Box<str>, usize)>,
    any: Option<usize>,
    vhosts: Vec<VirtualHostRt>,
}

impl RouteTableRt {
    /// The virtual host for a lower-case host without port: exact, then longest wildcard, then "*".
    #[inline]
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHostRt> {
        let index = self.exact.get(host).copied().or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
                .map(|(_, i)| *i)
                .or(self.any)
        })?;
        self.vhosts.get(index)
    }
}

impl RouteTableRt {
    /// Each exact domain and its virtual host, for answers keyed by host (the kernel path).
    pub fn exact_domains(&self) -> impl Iterator<Item = (&str, &VirtualHostRt)> {
        self.exact
            .iter()
            .filter_map(|(d, i)| Some((&**d, self.vhosts.get(*i)?)))
    }

    /// Every virtual host.
    pub fn virtual_hosts(&self) -> &[VirtualHostRt] {
        &self.vhosts
    }

    /// The "*" virtual host when it is the table's only one: then every host reaches it.
    pub fn only_catch_all(&self) -> Option<&VirtualHostRt> {
        match (self.exact.is_empty() && self.wildcards.is_empty(), self.any) {
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

/// Up to this many domains, a route's duplicates are found by comparing each with the ones
/// before it.
const FEW_DOMAINS: usize = 16;

/// A ranked rule in a virtual host: (precedence, RouteRules name, the RouteRules resource,
/// position in it, rule).
type Ranked<'a> = (&'a [u8], &'a str, &'a Arc<Resource>, usize, &'a RouteRule);

/// A virtual host being assembled: its domains, its own rules, and the ranked rules of the
/// `RouteRules` that join it.
struct Assembly<'a> {
    name: &'a str,
    domains: Vec<String>,
    inline: &'a [RouteRule],
    ranked: Vec<Ranked<'a>>,
}

impl<'a> Assembly<'a> {
    /// The table's virtual hosts, joined by the rules of `rules` (those naming this table):
    /// each to the virtual host listing its domain, or to a new one of that domain.
    fn of(
        table: &'a RouteTable,
        rules: &[(&'a RouteRules, &'a Arc<Resource>)],
    ) -> Result<Vec<Self>, RouteTableError> {
        let mut out: Vec<Assembly<'a>> = table
            .virtual_hosts
            .iter()
            .map(|v| Assembly {
                name: &v.name,
                domains: v.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                inline: &v.rules,
                ranked: Vec::new(),
            })
            .collect();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, a) in out.iter().enumerate() {
            for d in &a.domains {
                index.entry(d.clone()).or_insert(i);
            }
        }
        let mut placements = out.iter().map(|a| a.inline.len()).sum::<usize>();
        let mut seen = HashSet::new();
        for &(r, resource) in rules {
            seen.clear();
            for (j, domain) in r.domains.iter().enumerate() {
                // A domain listed twice (in any case) joins its virtual host once. Most routes
                // list one or a few: those are compared, not hashed.
                let again = if r.domains.len() <= FEW_DOMAINS {
                    r.domains[..j]
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(domain))
                } else {
                    !seen.insert(domain.to_ascii_lowercase())
                };
                if again {
                    continue;
                }
                let domain = domain.to_ascii_lowercase();
                placements = placements.saturating_add(r.rules.len());
                if placements > MAX_PLACEMENTS {
                    return Err(RouteTableError::TooManyPlacements { placements });
                }
                let i = match index.get(&domain) {
                    Some(i) => *i,
                    None => {
                        out.push(Assembly {
                            name: domain_name(r, &domain),
                            domains: vec![domain.clone()],
                            inline: &[],
                            ranked: Vec::new(),
                        });
                        index.insert(domain, out.len() - 1);
                        out.len() - 1
                    }
                };
                for (position, ranked) in r.rules.iter().enumerate() {
                    let rule = ranked
                        .rule
                        .as_ref()
                        .ok_or_else(|| RouteTableError::NoRule(r.name.clone()))?;
                    out[i]
                        .ranked
                        .push((&ranked.precedence, &r.name, resource, position, rule));
                }
            }
        }
        for a in &mut out {
            a.ranked
                .sort_unstable_by(|x, y| (x.0, x.1, x.3).cmp(&(y.0, y.1, y.3)));
        }
        Ok(out)
    }
}

/// The name of a virtual host made for a domain of `r`: the domain as `r` spells it.
fn domain_name<'a>(r: &'a RouteRules, lower: &str) -> &'a str {
    r.domains
        .iter()
        .find(|d| d.eq_ignore_ascii_case(lower))
        .map_or("", String::as_str)
}

impl VirtualHostRt {
    fn build(
        vhost: &Assembly<'_>,
        metrics: &ProxyMetrics,
        session_keys: &SessionKeys,
        caches: &mut CacheStores,
    ) -> Result<VirtualHostRt, RouteTableError> {
        let mut all: Vec<&RouteRule> = Vec::with_capacity(vhost.inline.len() + vhost.ranked.len());
        all.extend(vhost.inline);
        all.extend(vhost.ranked.iter().map(|(.., rule)| *rule));
        let rules = exact(all.into_iter().map(|rule| {
            RuleRt::build(rule, metrics, session_keys, caches).map_err(|source| {
                RouteTableError::Rule {
                    vhost: vhost.name.to_owned(),
                    rule: rule.name.clone(),
                    source,
                }
            })
        }))?;
        let source = VhostSource {
            domains: vhost.domains.clone(),
            inline: vhost.inline.to_vec(),
            ranked: vhost
                .ranked
                .iter()
                .map(|(_, _, resource, position, _)| (Arc::clone(resource), *position))
                .collect(),
        };
        Ok(VirtualHostRt {
            name: vhost.name.to_owned(),
            rules: rules.into(),
            source: Arc::new(source),
        })
    }

    /// Whether this virtual host, of the previous state, is what `vhost` would build: same
    /// name, domains and rules (the same RouteRules resources), and every cluster its rules
    /// are linked to the same in the new state. The caller checks the session keys.
    fn same_as(&self, vhost: &Assembly<'_>, clusters: &ClusterPlan, caches: &CacheStores) -> bool {
        let source = &self.source;
        let same_rules = source.ranked.len() == vhost.ranked.len()
            && source.ranked.iter().zip(&vhost.ranked).all(
                |((resource, position), (_, _, r, p, _))| Arc::ptr_eq(resource, r) && position == p,
            );
        self.name == vhost.name
            && source.domains == vhost.domains
            && source.inline == vhost.inline
            && same_rules
            && self.rules.iter().all(|rule| {
                let mut linked_the_same = true;
                rule.shared_parts(&mut |part| match part {
                    SharedPart::Cluster(name, linked) => {
                        linked_the_same &= clusters.keeps(name, linked);
                    }
                    // Another copy of the rule (same name, another table) already has a
                    // store of its own in the new state: built again, this copy shares it.
                    SharedPart::Cache(store) => {
                        linked_the_same &= !caches.has_other(&rule.name, store);
                    }
                });
                linked_the_same
            })
    }

    /// This virtual host in a new state: its rules' response stores go with it.
    fn reused(&self, caches: &mut CacheStores) -> VirtualHostRt {
        for rule in self.rules.iter() {
            rule.shared_parts(&mut |part| match part {
                SharedPart::Cache(store) => caches.keep(&rule.name, store),
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
        table: &RouteTable,
        rules: &[(&RouteRules, &Arc<Resource>)],
        previous: Option<&RouteTableRt>,
        clusters: &ClusterPlan,
        metrics: &ProxyMetrics,
        caches: &mut CacheStores,
    ) -> Result<RouteTableRt, RouteTableError> {
        let mut rt = RouteTableRt {
            name: table.name.as_str().into(),
            session_keys: KeySource(table.session_keys.clone()),
            ..RouteTableRt::default()
        };
        let keys = SessionKeys::build(&table.session_keys)?;
        // Rules built with other session keys are built again.
        let previous = previous.filter(|p| p.session_keys.0 == table.session_keys);
        let before: HashMap<&[String], &VirtualHostRt> = previous
            .map(|p| p.vhosts.iter())
            .into_iter()
            .flatten()
            .map(|v| (v.source.domains.as_slice(), v))
            .collect();
        for vhost in Assembly::of(table, rules)? {
            let index = rt.vhosts.len();
            let reusable = before
                .get(vhost.domains.as_slice())
                .filter(|old| old.same_as(&vhost, clusters, caches));
            rt.vhosts.push(match reusable {
                Some(old) => old.reused(caches),
                None => VirtualHostRt::build(&vhost, metrics, &keys, caches)?,
            });
            for domain in vhost.domains {
                if domain == "*" {
                    if rt.any.replace(index).is_some() {
                        return Err(RouteTableError::TwoCatchAlls);
                    }
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    if !suffix.starts_with('.') || suffix.len() < 2 {
                        return Err(RouteTableError::Wildcard(domain));
                    }
                    rt.wildcards.push((suffix.into(), index));
                } else if domain.is_empty() || domain.contains(['*', '/', ' ', ':']) {
                    return Err(RouteTableError::Domain(domain));
                } else if rt.exact.insert(domain.clone().into(), index).is_some() {
                    return Err(RouteTableError::Claimed(domain));
                }
            }
        }
        rt.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Ok(rt)
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
