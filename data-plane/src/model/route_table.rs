//! A listener's route table: virtual hosts by domain (exact, then the longest wildcard, then
//! "*"), each with its rules in precedence order.

use std::collections::HashMap;

use rauta_common::api::v1::{RouteTable, VirtualHost};

use super::cluster::Clusters;
use super::collect::exact;
use super::filters::session::{SessionError, SessionKeys};
use super::matchers::MatchRt;
use super::request::RequestView;
use super::response_store::CacheStores;
use super::rule::{RuleError, RuleRt};
use crate::observe::metrics::ProxyMetrics;

#[derive(Debug)]
pub struct VirtualHostRt {
    pub name: String,
    rules: Vec<RuleRt>,
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
}

impl VirtualHostRt {
    fn build(
        vhost: &VirtualHost,
        metrics: &ProxyMetrics,
        session_keys: &SessionKeys,
        caches: &mut CacheStores,
    ) -> Result<VirtualHostRt, RouteTableError> {
        let rules = exact(vhost.rules.iter().map(|rule| {
            RuleRt::build(rule, metrics, session_keys, caches).map_err(|source| {
                RouteTableError::Rule {
                    vhost: vhost.name.clone(),
                    rule: rule.name.clone(),
                    source,
                }
            })
        }))?;
        Ok(VirtualHostRt {
            name: vhost.name.clone(),
            rules,
        })
    }
}

impl RouteTableRt {
    /// Validates a route table: its virtual hosts' domains and rules.
    pub fn build(
        table: &RouteTable,
        metrics: &ProxyMetrics,
        caches: &mut CacheStores,
    ) -> Result<RouteTableRt, RouteTableError> {
        let mut rt = RouteTableRt::default();
        let keys = SessionKeys::build(&table.session_keys)?;
        for vhost in &table.virtual_hosts {
            let index = rt.vhosts.len();
            rt.vhosts
                .push(VirtualHostRt::build(vhost, metrics, &keys, caches)?);
            for domain in &vhost.domains {
                let domain = domain.to_ascii_lowercase();
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

    /// Points every rule's backends and mirrors at the snapshot's clusters.
    pub fn link(&mut self, clusters: &Clusters) {
        for rule in self.vhosts.iter_mut().flat_map(|v| v.rules.iter_mut()) {
            rule.link(clusters);
        }
    }
}
