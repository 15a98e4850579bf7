//! A listener's route table: virtual hosts by domain (exact, then the longest wildcard, then
//! "*"), each with its rules in precedence order.

use std::collections::HashMap;

use rauta_common::api::v1::{RouteTable, VirtualHost};

use super::cluster::Clusters;
use super::filters::session::SessionKeys;
use super::matchers::MatchRt;
use super::request::RequestView;
use super::rule::RuleRt;
use crate::observe::metrics::ProxyMetrics;

#[derive(Debug)]
pub struct VirtualHostRt {
    pub name: String,
    rules: Vec<RuleRt>,
}

impl VirtualHostRt {
    /// The rule a TLS passthrough connection uses: the first (TLSRoutes have no matches).
    pub fn first_rule(&self) -> Option<&RuleRt> {
        self.rules.first()
    }

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

impl VirtualHostRt {
    fn build(
        vhost: &VirtualHost,
        clusters: &Clusters,
        metrics: &ProxyMetrics,
        session_keys: &SessionKeys,
    ) -> Result<VirtualHostRt, String> {
        let rules = vhost
            .rules
            .iter()
            .map(|rule| {
                RuleRt::build(rule, clusters, metrics, session_keys).map_err(|msg| {
                    format!("virtual host {}: rule {}: {msg}", vhost.name, rule.name)
                })
            })
            .collect::<Result<_, _>>()?;
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
        clusters: &Clusters,
        metrics: &ProxyMetrics,
    ) -> Result<RouteTableRt, String> {
        let mut rt = RouteTableRt::default();
        let keys = SessionKeys::build(&table.session_keys)?;
        for vhost in &table.virtual_hosts {
            let index = rt.vhosts.len();
            rt.vhosts
                .push(VirtualHostRt::build(vhost, clusters, metrics, &keys)?);
            for domain in &vhost.domains {
                let domain = domain.to_ascii_lowercase();
                if domain == "*" {
                    if rt.any.replace(index).is_some() {
                        return Err("two virtual hosts claim \"*\"".into());
                    }
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    if !suffix.starts_with('.') || suffix.len() < 2 {
                        return Err(format!("invalid wildcard domain {domain:?}"));
                    }
                    rt.wildcards.push((suffix.into(), index));
                } else if domain.is_empty() || domain.contains(['*', '/', ' ', ':']) {
                    return Err(format!("invalid domain {domain:?}"));
                } else if rt.exact.insert(domain.clone().into(), index).is_some() {
                    return Err(format!("two virtual hosts claim {domain:?}"));
                }
            }
        }
        rt.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Ok(rt)
    }
}
