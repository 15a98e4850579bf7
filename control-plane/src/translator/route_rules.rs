//! A plain HTTP or HTTPS port's routing as discovery resources: one `RouteTable` listing the
//! virtual hosts that exist whatever the routes (the listeners' hostnames), and one
//! `RouteRules` per attached route with the domains it serves there and its rules, each with
//! its precedence key. An edit to one route then changes one small resource, which is all
//! the proxies are sent; they assemble each virtual host from the keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rauta_common::api::v1::{RankedRule, RouteRule, RouteRules, RouteTable, VirtualHost};

use super::kernel;
use super::route_view::RouteId;
use super::routes::{CompiledRoute, MatchEntry};

/// A route placed in a virtual host of a port.
pub struct Placed {
    pub route: RouteId,
    /// Attached through a TLS Passthrough listener (L4 tables only).
    pub passthrough: bool,
    pub compiled: Arc<CompiledRoute>,
}

impl Placed {
    pub fn entries(&self) -> impl Iterator<Item = &MatchEntry> {
        self.compiled.entries.iter()
    }
}

/// The route table of port `name` and the rules of each route on it. `vhosts`: the placed
/// routes by domain, listener isolation applied, with an entry (maybe empty) for every
/// listener hostname. `kernel`: whether rules may be answered in the kernel (plain HTTP).
pub fn table(
    name: &str,
    listener_hostnames: &[String],
    vhosts: BTreeMap<String, Vec<Placed>>,
    kernel: bool,
) -> (RouteTable, Vec<RouteRules>) {
    let verdicts = if kernel {
        kernel_verdicts(&vhosts)
    } else {
        HashMap::new()
    };
    let mut by_route: BTreeMap<&RouteId, (BTreeSet<&str>, &CompiledRoute)> = BTreeMap::new();
    for (domain, placed) in &vhosts {
        for p in placed {
            let entry = by_route
                .entry(&p.route)
                .or_insert((BTreeSet::new(), &p.compiled));
            entry.0.insert(domain);
        }
    }
    let rules = by_route
        .into_iter()
        .map(|((kind, key), (domains, compiled))| {
            let mut ranked: Vec<RankedRule> = compiled
                .entries
                .iter()
                .map(|e| {
                    let mut rule = e.rule.clone();
                    rule.kernel_answerable =
                        verdicts.get(e.key.as_slice()).copied().unwrap_or(false);
                    RankedRule {
                        precedence: e.key.clone(),
                        rule: Some(Box::new(rule)),
                    }
                })
                .collect();
            ranked.sort_by(|a, b| a.precedence.cmp(&b.precedence));
            RouteRules {
                name: format!("{name}/{}/{key}", kind.name()),
                route_table: name.to_owned(),
                domains: domains.into_iter().map(str::to_owned).collect(),
                rules: ranked,
            }
        })
        .collect();
    // Session keys are the cache's to add: the translator has no secrets.
    let table = RouteTable {
        name: name.to_owned(),
        virtual_hosts: listener_hostnames
            .iter()
            .map(|h| VirtualHost {
                name: h.clone(),
                domains: vec![h.clone()],
                rules: Vec::new(),
            })
            .collect(),
        session_keys: Vec::new(),
    };
    (table, rules)
}

/// Whether each rule (by precedence key) may be answered in the kernel: decided on each
/// virtual host as the proxy assembles it, and true only where it is true in every virtual
/// host the rule joins. Rules that can never qualify are left out (false).
fn kernel_verdicts(vhosts: &BTreeMap<String, Vec<Placed>>) -> HashMap<&[u8], bool> {
    let alone = vhosts.len() == 1;
    let mut verdicts: HashMap<&[u8], bool> = HashMap::new();
    for (domain, placed) in vhosts {
        // In the proxies' order: by key (the route rules' names break ties there; a route
        // placed twice is there once).
        let mut seen = BTreeSet::new();
        let mut entries: Vec<&MatchEntry> = placed
            .iter()
            .filter(|p| seen.insert(&p.route))
            .flat_map(Placed::entries)
            .collect();
        if !entries.iter().any(|e| kernel::may_qualify(&e.rule)) {
            continue;
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let rules: Vec<&RouteRule> = entries.iter().map(|e| &e.rule).collect();
        let marks = kernel::verdicts(std::slice::from_ref(domain), alone, &rules);
        for (entry, mark) in entries.iter().zip(marks) {
            if kernel::may_qualify(&entry.rule) {
                *verdicts.entry(entry.key.as_slice()).or_insert(true) &= mark;
            }
        }
    }
    verdicts
}

/// A route table with the rules of its `RouteRules` put in its virtual hosts, as a proxy
/// assembles it: the shape to read a port's routing as a whole (tests, inspection).
pub fn assembled(table: &RouteTable, rules: &[&RouteRules]) -> RouteTable {
    let mut out = table.clone();
    // By domain: (precedence key, RouteRules name, rule).
    type Ranked<'a> = Vec<(&'a [u8], &'a str, &'a RouteRule)>;
    let mut ranked: BTreeMap<&str, Ranked<'_>> = BTreeMap::new();
    for r in rules.iter().filter(|r| r.route_table == table.name) {
        for domain in &r.domains {
            let list = ranked.entry(domain).or_default();
            for rule in &r.rules {
                if let Some(inner) = &rule.rule {
                    list.push((&rule.precedence, &r.name, inner));
                }
            }
        }
    }
    for (domain, mut list) in ranked {
        list.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let position = out
            .virtual_hosts
            .iter()
            .position(|v| v.domains.iter().any(|d| d == domain));
        let index = position.unwrap_or_else(|| {
            out.virtual_hosts.push(VirtualHost {
                name: domain.to_owned(),
                domains: vec![domain.to_owned()],
                rules: Vec::new(),
            });
            out.virtual_hosts.len() - 1
        });
        let vhost = &mut out.virtual_hosts[index];
        vhost
            .rules
            .extend(list.into_iter().map(|(_, _, r)| r.clone()));
    }
    out.virtual_hosts
        .sort_by(|a, b| a.domains.first().cmp(&b.domains.first()));
    out
}

/// Route table `name` of a Gateway's resources, assembled with its `RouteRules`.
pub fn assembled_table(set: &super::ResourceSet, name: &str) -> Option<RouteTable> {
    use rauta_common::api::v1::resource::Payload;
    use rauta_common::types::ResourceType;
    let Some(Payload::RouteTable(table)) = set.get(&ResourceType::RouteTable)?.get(name) else {
        return None;
    };
    let rules: Vec<&RouteRules> = set
        .get(&ResourceType::RouteRules)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|p| match p {
            Payload::RouteRules(r) => Some(r),
            _ => None,
        })
        .collect();
    Some(assembled(table, &rules))
}
