//! A plain HTTP or HTTPS port's routing as discovery resources: one `RouteTable` listing the
//! virtual hosts that exist whatever the routes (the listeners' hostnames), and one
//! `RouteRules` per attached route with the domains it serves there and its rules, each with
//! its precedence key. An edit to one route then changes one small resource, which is all
//! the proxies are sent; they assemble each virtual host from the keys.

use std::cell::Cell;
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
    /// `compiled.kernel_candidates`, carried here so that finding the virtual hosts with
    /// none does not visit every compiled route.
    pub kernel_candidates: bool,
}

impl<'a> Placed<'a> {
    pub fn entries(&self) -> impl Iterator<Item = &'a MatchEntry> + use<'a> {
        self.compiled.entries.iter()
    }
}

/// One `RouteRules` a translation built (its route table and domains are in it), with what
/// else it was built from. Everything reuse compares is held here, in the memo's own entry,
/// by address: with thousands of routes, reading the resource itself to compare its route
/// table and domains cost a cache miss each, and most of what reuse saved.
struct BuiltRules {
    compiled: Arc<CompiledRoute>,
    /// Its route table and domains, interned: the same allocation means the same name.
    route_table: Arc<str>,
    domains: Domains,
    /// The kernel verdict of each of the compiled route's entries.
    kernel: Marks,
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
        route_table: &Arc<str>,
        domains: &[&Arc<str>],
        kernel: &Marks,
    ) -> bool {
        Arc::ptr_eq(&self.compiled, compiled)
            && Arc::ptr_eq(&self.route_table, route_table)
            && self.domains.same(domains)
            && self.kernel == *kernel
    }

    /// The resource's name and payload, as a Gateway's resources hold them.
    fn handed_on(&self) -> (String, Arc<Payload>) {
        let name = self.rules().map_or_else(String::new, |r| r.name.clone());
        (name, Arc::clone(&self.payload))
    }
}

/// A route's domains on a port, interned: nearly always one, held without a box.
enum Domains {
    One(Arc<str>),
    Many(Box<[Arc<str>]>),
}

impl Domains {
    fn new(domains: &[&Arc<str>]) -> Self {
        match domains {
            [one] => Domains::One(Arc::clone(one)),
            many => Domains::Many(many.iter().map(|d| Arc::clone(d)).collect()),
        }
    }

    fn as_slice(&self) -> &[Arc<str>] {
        match self {
            Domains::One(one) => std::slice::from_ref(one),
            Domains::Many(many) => many,
        }
    }

    /// The same interned names in the same order.
    fn same(&self, other: &[&Arc<str>]) -> bool {
        let mine = self.as_slice();
        mine.len() == other.len() && mine.iter().zip(other).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// The kernel verdicts of a compiled route's entries, in order: as bits when there are at
/// most 64 (nearly always), held without a box; `None` for a route with no entry the kernel
/// could answer (`CompiledRoute::kernel_candidates`), which is known without reading it.
#[derive(PartialEq, Eq, Hash)]
enum Marks {
    None,
    Bits { len: u8, bits: u64 },
    Long(Box<[bool]>),
}

impl Marks {
    fn new(verdicts: impl ExactSizeIterator<Item = bool>) -> Self {
        match u8::try_from(verdicts.len()) {
            Ok(len) if len <= 64 => Marks::Bits {
                len,
                bits: verdicts
                    .enumerate()
                    .fold(0, |bits, (i, v)| bits | (u64::from(v) << i)),
            },
            _ => Marks::Long(verdicts.collect()),
        }
    }

    fn get(&self, index: usize) -> bool {
        match self {
            Marks::None => false,
            Marks::Bits { bits, .. } => index < 64 && bits & (1 << index) != 0,
            Marks::Long(marks) => marks.get(index).copied().unwrap_or(false),
        }
    }
}

/// Which `RouteRules` the previous translation built, so that this one hands on the very
/// same allocation for a route placed as before and compiled to the same (reused)
/// `CompiledRoute`: not rebuilt here, not compared in the snapshot. One edit then costs the
/// edited route's rules, not every route's.
#[derive(Default)]
pub struct RulesMemo {
    built: Generations<MemoKey, BuiltRules>,
    /// Route table names and domains as the entries hold them, each with the last
    /// translation that used it. Interned once per port and virtual host, so that each
    /// route's entry compares them by address.
    interned: HashMap<Arc<str>, Cell<u64>, foldhash::fast::RandomState>,
    /// The translation under way, counted from 0.
    translation: u64,
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
        let now = self.translation;
        self.interned.retain(|_, used| used.get() == now);
        self.translation += 1;
    }

    /// The interned copy of `name`. An entry holds its names, so an address is not reused
    /// for another name while an entry could compare with it.
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some((interned, used)) = self.interned.get_key_value(name) {
            used.set(self.translation);
            return Arc::clone(interned);
        }
        let interned: Arc<str> = Arc::from(name);
        let used = Cell::new(self.translation);
        self.interned.insert(Arc::clone(&interned), used);
        interned
    }

    fn key(
        &self,
        compiled: &Arc<CompiledRoute>,
        route_table: &str,
        domains: &[&Arc<str>],
        kernel: &Marks,
    ) -> MemoKey {
        let mut h = self.hasher.build_hasher();
        route_table.hash(&mut h);
        for domain in domains {
            domain.hash(&mut h);
        }
        kernel.hash(&mut h);
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
        Verdicts::default()
    };
    let route_table = memo.intern(name);
    // Each route's domains, in order (the virtual hosts are): by its compiled route, of which
    // a translation has one per route. Thousands of routes: found by address, not by name.
    let placed_vhosts: Vec<(Arc<str>, &Vec<Placed<'_>>)> = (vhosts.iter())
        .filter(|(_, placed)| !placed.is_empty())
        .map(|(domain, placed)| (memo.intern(domain), placed))
        .collect();
    type ByRoute<'r, 'c> = (Vec<&'r Arc<str>>, &'c Arc<CompiledRoute>, bool);
    let mut by_route: HashMap<*const CompiledRoute, ByRoute<'_, '_>, _> =
        HashMap::with_hasher(foldhash::fast::RandomState::default());
    for (domain, placed) in &placed_vhosts {
        for p in placed.iter() {
            let (domains, ..) = by_route
                .entry(Arc::as_ptr(p.compiled))
                .or_insert_with(|| (Vec::with_capacity(1), p.compiled, p.kernel_candidates));
            if !domains.iter().any(|d| Arc::ptr_eq(d, domain)) {
                domains.push(domain);
            }
        }
    }
    let verdict = |e: &MatchEntry| verdicts.get(e.key.as_slice()).copied().unwrap_or(false);
    let rules = by_route
        .into_values()
        .map(|(domains, compiled, kernel_candidates)| {
            let marks = if kernel_candidates {
                Marks::new(compiled.entries.iter().map(verdict))
            } else {
                Marks::None
            };
            let memo_key = memo.key(compiled, name, &domains, &marks);
            let built_now = |b: &BuiltRules| b.built_from(compiled, &route_table, &domains, &marks);
            // Built already in this translation (another Gateway with the same placement).
            if let Some(built) = memo.built.reused(&memo_key, built_now) {
                return built.handed_on();
            }
            let mut ranked: Vec<RankedRule> = compiled
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let mut rule = e.rule.clone();
                    rule.kernel_answerable = marks.get(i);
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
                domains: domains.iter().map(|d| d.to_string()).collect(),
                rules: ranked,
            };
            let out = (rules.name.clone(), Arc::new(Payload::RouteRules(rules)));
            let built = BuiltRules {
                compiled: Arc::clone(compiled),
                route_table: Arc::clone(&route_table),
                domains: Domains::new(&domains),
                kernel: marks,
                payload: Arc::clone(&out.1),
            };
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
        // The Gateway's to add (`gateway_resources.rs`).
        listener_policies: Vec::new(),
    };
    (table, rules)
}

/// Kernel verdicts by precedence key; looked up once per rule of every route in each
/// translation. Keys derive from paths users write: the hasher is seeded per process.
type Verdicts<'a> = HashMap<&'a [u8], bool, foldhash::fast::RandomState>;

/// Whether each rule (by precedence key) may be answered in the kernel: decided on each
/// virtual host as the proxy assembles it, and true only where it is true in every virtual
/// host the rule joins. Rules that can never qualify are left out (false).
fn kernel_verdicts<'a>(vhosts: &BTreeMap<&str, Vec<Placed<'a>>>) -> Verdicts<'a> {
    let alone = vhosts.len() == 1;
    let mut verdicts = Verdicts::default();
    for (domain, placed) in vhosts {
        if !placed.iter().any(|p| p.kernel_candidates) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_keep_each_verdict_in_order_and_differ_when_one_does() {
        for len in [0, 1, 63, 64, 65, 200] {
            let verdicts: Vec<bool> = (0..len).map(|i| i % 3 == 1).collect();
            let marks = Marks::new(verdicts.iter().copied());
            assert_eq!(matches!(marks, Marks::Bits { .. }), len <= 64, "{len}");
            for (i, v) in verdicts.iter().enumerate() {
                assert_eq!(marks.get(i), *v, "{len}: {i}");
            }
            assert!(!marks.get(len), "past the end");
            assert!(marks == Marks::new(verdicts.iter().copied()));
            if let Some(last) = len.checked_sub(1) {
                let mut flipped = verdicts.clone();
                flipped[last] = !flipped[last];
                assert!(marks != Marks::new(flipped.into_iter()), "{len}");
            }
            // One more false verdict: a longer route, not the same marks.
            let longer: Vec<bool> = verdicts.iter().copied().chain([false]).collect();
            assert!(marks != Marks::new(longer.into_iter()), "{len}");
        }
    }

    #[test]
    fn domains_are_the_same_only_as_the_same_interned_names_in_the_same_order() {
        let mut memo = RulesMemo::default();
        let (a, b) = (memo.intern("a.example"), memo.intern("b.example"));
        let one = Domains::new(&[&a]);
        assert!(matches!(one, Domains::One(_)));
        assert!(one.same(&[&a]));
        assert!(!one.same(&[&b]));
        assert!(!one.same(&[&a, &b]));
        assert!(!one.same(&[]));
        // Equal text in another allocation is not the same name (the memo rebuilds, safely).
        let copy: Arc<str> = Arc::from("a.example");
        assert!(!one.same(&[&copy]));
        let two = Domains::new(&[&a, &b]);
        assert!(two.same(&[&a, &b]));
        assert!(!two.same(&[&b, &a]));
        assert!(!two.same(&[&a]));
        // A route with no candidate entry: no verdict is true, and it differs from bits.
        assert!(!Marks::None.get(0));
        assert!(Marks::None != Marks::new([false].into_iter()));
    }

    #[test]
    fn interned_names_are_shared_while_used_and_dropped_after() {
        let mut memo = RulesMemo::default();
        let a = memo.intern("a.example");
        assert!(Arc::ptr_eq(&a, &memo.intern("a.example")));
        assert!(!Arc::ptr_eq(&a, &memo.intern("b.example")));
        memo.advance();
        // Used in the second translation: the same allocation.
        assert!(Arc::ptr_eq(&a, &memo.intern("a.example")));
        memo.advance();
        memo.advance();
        // Not used in the third: forgotten (the old copy lives on only where it is held).
        assert!(!Arc::ptr_eq(&a, &memo.intern("a.example")));
        assert_eq!(memo.interned.len(), 1);
    }
}
