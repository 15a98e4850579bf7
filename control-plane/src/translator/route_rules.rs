//! A plain HTTP or HTTPS port's routing as discovery resources: one `RouteTable` listing the
//! virtual hosts that exist whatever the routes (the listeners' hostnames), and one
//! `RouteRules` per attached route with the domains it serves there and its rules, each with
//! its precedence key. An edit to one route then changes one small resource, which is all
//! the proxies are sent; they assemble each virtual host from the keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::{RankedRule, RouteRule, RouteRules, RouteTable, VirtualHost};

use super::generations::Generations;
use super::kernel;
use super::routes::{CompiledRoute, MatchEntry};

/// A route placed in a virtual host of a port.
pub struct Placed<'a> {
    /// Attached through a TLS Passthrough listener (L4 tables only).
    pub passthrough: bool,
    pub compiled: &'a Arc<CompiledRoute>,
}

impl<'a> Placed<'a> {
    pub fn entries(&self) -> impl Iterator<Item = &'a MatchEntry> + use<'a> {
        self.compiled.entries.iter()
    }
}

/// One `RouteRules` a translation built (its route table and domains are in it), with what
/// else it was built from.
struct BuiltRules {
    compiled: Arc<CompiledRoute>,
    /// The kernel verdict of each of the compiled route's entries.
    kernel: Vec<bool>,
    /// A `RouteRules`.
    payload: Arc<Payload>,
}

impl BuiltRules {
    fn rules(&self) -> Option<&RouteRules> {
        match &*self.payload {
            Payload::RouteRules(rules) => Some(rules),
            _ => None,
        }
    }

    fn built_from(
        &self,
        compiled: &Arc<CompiledRoute>,
        route_table: &str,
        domains: &[&str],
        kernel: impl Iterator<Item = bool>,
    ) -> bool {
        Arc::ptr_eq(&self.compiled, compiled)
            && self.rules().is_some_and(|r| {
                r.route_table == route_table
                    && r.domains
                        .iter()
                        .map(String::as_str)
                        .eq(domains.iter().copied())
            })
            && self.kernel.iter().copied().eq(kernel)
    }

    /// The resource's name and payload, as a Gateway's resources hold them.
    fn handed_on(&self) -> (String, Arc<Payload>) {
        let name = self.rules().map_or_else(String::new, |r| r.name.clone());
        (name, Arc::clone(&self.payload))
    }
}

/// Which `RouteRules` the previous translation built, so that this one hands on the very
/// same allocation for a route placed as before and compiled to the same (reused)
/// `CompiledRoute`: not rebuilt here, not compared in the snapshot. One edit then costs the
/// edited route's rules, not every route's.
#[derive(Default)]
pub struct RulesMemo {
    // Boxed: entries move from one map to the other, and a box moves in one word.
    built: Generations<MemoKey, Box<BuiltRules>>,
    /// Seeded per process: domains are names users choose.
    hasher: foldhash::fast::RandomState,
}

/// The compiled route (by address: the memo holds it, so the address is not reused while
/// the entry lives) and a hash of where it is placed and its kernel verdicts (two Gateways
/// placing a route alike keep an entry each); an entry is used only if everything it was
/// built from is equal, so a hash collision costs a rebuild, never a wrong resource.
type MemoKey = (usize, u64);

impl RulesMemo {
    /// What this translation built becomes what the next one may reuse.
    pub fn advance(&mut self) {
        self.built.advance();
    }

    fn key(
        &self,
        compiled: &Arc<CompiledRoute>,
        route_table: &str,
        domains: &[&str],
        kernel: impl Iterator<Item = bool>,
    ) -> MemoKey {
        let mut h = self.hasher.build_hasher();
        route_table.hash(&mut h);
        domains.hash(&mut h);
        kernel.for_each(|v| v.hash(&mut h));
        (Arc::as_ptr(compiled) as usize, h.finish())
    }
}

/// The route table of port `name` and the rules of each route on it, by `RouteRules` name.
/// `vhosts`: the placed routes by domain, listener isolation applied, with an entry (maybe
/// empty) for every listener hostname. `kernel`: whether rules may be answered in the kernel
/// (plain HTTP). Rules the memo holds from the previous translation are handed on as they are.
pub fn table(
    name: &str,
    listener_hostnames: &[String],
    vhosts: BTreeMap<&str, Vec<Placed<'_>>>,
    kernel: bool,
    memo: &mut RulesMemo,
) -> (RouteTable, Vec<(String, Arc<Payload>)>) {
    let verdicts = if kernel {
        kernel_verdicts(&vhosts)
    } else {
        HashMap::new()
    };
    // Each route's domains, in order (the virtual hosts are): by its compiled route, of which
    // a translation has one per route. Thousands of routes: found by address, not by name.
    let mut by_route: HashMap<*const CompiledRoute, (Vec<&str>, &Arc<CompiledRoute>), _> =
        HashMap::with_hasher(foldhash::fast::RandomState::default());
    for (domain, placed) in &vhosts {
        for p in placed {
            let (domains, _) = by_route
                .entry(Arc::as_ptr(p.compiled))
                .or_insert_with(|| (Vec::with_capacity(1), p.compiled));
            if !domains.contains(domain) {
                domains.push(domain);
            }
        }
    }
    let verdict = |e: &MatchEntry| verdicts.get(e.key.as_slice()).copied().unwrap_or(false);
    let rules = by_route
        .into_values()
        .map(|(domains, compiled)| {
            let memo_key = memo.key(
                compiled,
                name,
                &domains,
                compiled.entries.iter().map(verdict),
            );
            let built_now = |b: &BuiltRules| {
                b.built_from(
                    compiled,
                    name,
                    &domains,
                    compiled.entries.iter().map(verdict),
                )
            };
            // Built already in this translation (another Gateway with the same placement).
            if let Some(built) = memo.built.reused(&memo_key, |b| built_now(b)) {
                return built.handed_on();
            }
            let mut ranked: Vec<RankedRule> = compiled
                .entries
                .iter()
                .map(|e| {
                    let mut rule = e.rule.clone();
                    rule.kernel_answerable = verdict(e);
                    RankedRule {
                        precedence: e.key.clone(),
                        rule: Some(Box::new(rule)),
                    }
                })
                .collect();
            ranked.sort_by(|a, b| a.precedence.cmp(&b.precedence));
            let (kind, key) = &compiled.id;
            let rules = RouteRules {
                name: format!("{name}/{}/{key}", kind.name()),
                route_table: name.to_owned(),
                domains: domains.iter().map(|d| (*d).to_owned()).collect(),
                rules: ranked,
            };
            let out = (rules.name.clone(), Arc::new(Payload::RouteRules(rules)));
            let built = Box::new(BuiltRules {
                compiled: Arc::clone(compiled),
                kernel: compiled.entries.iter().map(verdict).collect(),
                payload: Arc::clone(&out.1),
            });
            memo.built.insert(memo_key, built);
            out
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
fn kernel_verdicts<'a>(vhosts: &BTreeMap<&str, Vec<Placed<'a>>>) -> HashMap<&'a [u8], bool> {
    let alone = vhosts.len() == 1;
    let mut verdicts: HashMap<&[u8], bool> = HashMap::new();
    for (domain, placed) in vhosts {
        let mut candidates = placed.iter().flat_map(Placed::entries);
        if !candidates.any(|e| kernel::may_qualify(&e.rule)) {
            continue;
        }
        // In the proxies' order: by key (the route rules' names break ties there; a route
        // placed twice is there once).
        let mut seen = HashSet::new();
        let mut entries: Vec<&MatchEntry> = placed
            .iter()
            .filter(|p| seen.insert(Arc::as_ptr(p.compiled)))
            .flat_map(Placed::entries)
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let rules: Vec<&RouteRule> = entries.iter().map(|e| &e.rule).collect();
        let marks = kernel::verdicts(std::slice::from_ref(&(*domain).to_owned()), alone, &rules);
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
    use rauta_common::types::ResourceType;
    let Payload::RouteTable(table) = &**set.get(&ResourceType::RouteTable)?.get(name)? else {
        return None;
    };
    let rules: Vec<&RouteRules> = set
        .get(&ResourceType::RouteRules)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|p| match &**p {
            Payload::RouteRules(r) => Some(r),
            _ => None,
        })
        .collect();
    Some(assembled(table, &rules))
}
