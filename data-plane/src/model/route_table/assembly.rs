//! A route table's virtual hosts as assembled from its resource and the `RouteRules` naming
//! it, before their rules are built: each virtual host's domains, its own rules, the ranked
//! rules joining it, and the policies of the listener it belongs to.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::{RequestPolicies, Resource, RouteRule, RouteRules, RouteTable};

use super::{MAX_PLACEMENTS, RouteTableError, VirtualHostRt};

/// Up to this many domains, a route's duplicates are found by comparing each with the ones
/// before it.
const FEW_DOMAINS: usize = 16;

/// A ranked rule in a virtual host: (precedence, RouteRules name, the RouteRules resource,
/// position in it, rule).
pub(super) type Ranked<'a> = (&'a [u8], &'a str, &'a Arc<Resource>, usize, &'a RouteRule);

/// A virtual host being assembled: its domains, its own rules, and the ranked rules of the
/// `RouteRules` that join it.
pub(super) struct Assembly<'a> {
    pub(super) name: &'a str,
    /// In lower case.
    pub(super) domains: Vec<Cow<'a, str>>,
    pub(super) inline: &'a [RouteRule],
    pub(super) ranked: Vec<Ranked<'a>>,
    /// The policies of the listener it belongs to, which its rules take where they set none.
    pub(super) policies: Option<&'a RequestPolicies>,
}

/// `domain` in lower case: borrowed when it is already, as the controller sends them.
pub(super) fn lower(domain: &str) -> Cow<'_, str> {
    if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(domain.to_ascii_lowercase())
    } else {
        Cow::Borrowed(domain)
    }
}

impl<'a> Assembly<'a> {
    /// The assembly `vhost` was built from, again.
    pub(super) fn again(vhost: &'a VirtualHostRt) -> Result<Self, RouteTableError> {
        let source = &*vhost.source;
        let mut ranked = Vec::with_capacity(source.ranked.len());
        for (resource, position) in &source.ranked {
            let Some(Payload::RouteRules(rules)) = &resource.payload else {
                return Err(RouteTableError::NoRule(resource.name.clone()));
            };
            let rule = rules
                .rules
                .get(*position)
                .and_then(|r| Some((&r.precedence, r.rule.as_deref()?)));
            let Some((precedence, rule)) = rule else {
                return Err(RouteTableError::NoRule(rules.name.clone()));
            };
            ranked.push((&precedence[..], &rules.name[..], resource, *position, rule));
        }
        Ok(Assembly {
            name: &vhost.name,
            domains: source.domains.iter().map(|d| Cow::Borrowed(&**d)).collect(),
            inline: &source.inline,
            ranked,
            policies: source.policies.as_deref(),
        })
    }

    /// The table's virtual hosts, joined by the rules of `rules` (those naming this table):
    /// each to the virtual host listing its domain, or to a new one of that domain.
    pub(super) fn of(
        table: &'a RouteTable,
        rules: &[(&'a RouteRules, &'a Arc<Resource>)],
    ) -> Result<Vec<Self>, RouteTableError> {
        // Most routes have a domain (a virtual host) of their own.
        let mut out: Vec<Assembly<'a>> =
            Vec::with_capacity(table.virtual_hosts.len() + rules.len());
        out.extend(table.virtual_hosts.iter().map(|v| Assembly {
            name: &v.name,
            domains: v.domains.iter().map(|d| lower(d)).collect(),
            inline: &v.rules,
            ranked: Vec::new(),
            policies: None,
        }));
        let mut index: HashMap<Cow<'a, str>, usize> = HashMap::with_capacity(out.capacity());
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
                placements = placements.saturating_add(r.rules.len());
                if placements > MAX_PLACEMENTS {
                    return Err(RouteTableError::TooManyPlacements { placements });
                }
                let i = match index.entry(lower(domain)) {
                    Entry::Occupied(e) => *e.get(),
                    Entry::Vacant(e) => {
                        out.push(Assembly {
                            name: domain_name(r, e.key()),
                            domains: vec![e.key().clone()],
                            inline: &[],
                            ranked: Vec::with_capacity(r.rules.len()),
                            policies: None,
                        });
                        *e.insert(out.len() - 1)
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
            if !table.listener_policies.is_empty() {
                a.policies = listener_policies(table, a.domains.first().map_or("", |d| d));
            }
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

/// The policies of the listener a virtual host of `domain` belongs to: the listener whose
/// hostname (a domain of the table's own virtual hosts) is the domain, else the wildcard one
/// covering it with the longest suffix, else the one without hostname ("").
fn listener_policies<'t>(table: &'t RouteTable, domain: &str) -> Option<&'t RequestPolicies> {
    // "*" is no listener's hostname: the listener without one serves it.
    let hostnames = (table.virtual_hosts.iter())
        .flat_map(|v| &v.domains)
        .filter(|h| *h != "*");
    let exact = hostnames.clone().find(|h| h.eq_ignore_ascii_case(domain));
    let covering = || {
        hostnames
            .filter_map(|h| Some((h, h.strip_prefix('*')?)))
            .filter(|(_, suffix)| {
                suffix.starts_with('.')
                    && domain.len() > suffix.len()
                    && domain[domain.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            })
            .max_by_key(|(_, suffix)| suffix.len())
            .map(|(h, _)| h)
    };
    let listener = exact.or_else(covering).map_or("", String::as_str);
    table
        .listener_policies
        .iter()
        .find(|l| l.hostname.eq_ignore_ascii_case(listener))?
        .policies
        .as_ref()
}

#[cfg(test)]
mod tests {
    use rauta_common::api::v1::{ListenerPolicies, VirtualHost};

    use super::*;

    #[test]
    fn a_domain_belongs_to_the_most_specific_listener_covering_it() {
        let policies = |n: u32| RequestPolicies {
            local_rate_limits: Some(rauta_common::api::v1::LocalRateLimits {
                limits: vec![rauta_common::api::v1::RateLimit {
                    requests: n,
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let listener = |hostname: &str, n| ListenerPolicies {
            hostname: hostname.into(),
            policies: Some(policies(n)),
        };
        let vhost = |d: &str| VirtualHost {
            name: d.into(),
            domains: vec![d.into()],
            rules: vec![],
        };
        let table = RouteTable {
            virtual_hosts: vec![
                vhost("*.example.com"),
                vhost("*.a.example.com"),
                vhost("b.example.com"),
            ],
            listener_policies: vec![
                listener("", 1),
                listener("*.example.com", 2),
                listener("*.a.example.com", 3),
            ],
            ..Default::default()
        };
        let of = |domain| {
            listener_policies(&table, domain)
                .and_then(|p| p.local_rate_limits.as_ref())
                .map(|l| l.limits[0].requests)
        };
        assert_eq!(of("x.example.com"), Some(2));
        assert_eq!(of("*.x.example.com"), Some(2));
        assert_eq!(of("x.a.example.com"), Some(3));
        assert_eq!(of("X.A.Example.com"), Some(3));
        assert_eq!(
            of("b.example.com"),
            None,
            "its own listener, without policies"
        );
        assert_eq!(of("other.org"), Some(1));
        assert_eq!(of("*"), Some(1));
        assert_eq!(
            of("example.com"),
            Some(1),
            "a wildcard needs a label before its suffix"
        );
    }
}
