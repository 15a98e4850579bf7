//! The route table of a listener that relays connections or datagrams instead of serving
//! HTTP: TCP (TCPRoute), UDP (UDPRoute) and TLS in Terminate mode (TLSRoute). A connection
//! (UDP: a client flow) is routed once, when it starts: by the client's server name on a TLS
//! listener (exact, then the longest wildcard, then any), to the first route of that name;
//! on TCP and UDP to the first route. It stays open while a route of the same name is in the
//! listener's table (`contains`), across snapshots.

use std::collections::HashMap;
use std::sync::Arc;

use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{L4Route, L4RouteTable};

use super::clusters::Clusters;
use super::rule::{ActionRt, RuleError};
use crate::observe::l4_metrics::L4Stats;
use crate::observe::metrics::ProxyMetrics;

/// One route of an L4 table.
#[derive(Debug)]
pub struct L4RouteRt {
    pub name: Arc<str>,
    /// Always `ActionRt::Forward`: weighted clusters and the share of unresolved backends.
    pub action: ActionRt,
    /// On a TLS listener: the connection's TLS is relayed untouched, not terminated.
    pub passthrough: bool,
    pub stats: Arc<L4Stats>,
}

/// A listener's L4 routes, looked up by server name.
#[derive(Debug, Default)]
pub struct L4TableRt {
    routes: Vec<L4RouteRt>,
    /// Exact name -> the first route serving it.
    exact: HashMap<Box<str>, usize>,
    /// (suffix with its leading dot, first route), longest suffix first.
    wildcards: Vec<(Box<str>, usize)>,
    /// The first route serving any name (and connections without one).
    any: Option<usize>,
}

/// Why an L4 route table is invalid (the NACK's text).
#[derive(Debug, thiserror::Error)]
pub enum L4TableError {
    #[error("route {route}: no forward action")]
    NoForward { route: String },
    #[error("route {route}: header modifiers do not apply to connections")]
    HeaderModifiers { route: String },
    #[error("route {route}: {source}")]
    Action { route: String, source: RuleError },
    #[error("route {route}: invalid server name {name:?}")]
    ServerName { route: String, name: String },
    #[error("two routes are named {0:?}")]
    Duplicate(String),
}

impl L4RouteRt {
    fn build(route: &L4Route, metrics: &ProxyMetrics) -> Result<L4RouteRt, L4TableError> {
        let forward = route
            .forward
            .as_ref()
            .ok_or_else(|| L4TableError::NoForward {
                route: route.name.clone(),
            })?;
        if forward
            .clusters
            .iter()
            .any(|c| c.request_headers.is_some() || c.response_headers.is_some())
        {
            return Err(L4TableError::HeaderModifiers {
                route: route.name.clone(),
            });
        }
        let action =
            ActionRt::build(Some(&Action::Forward(forward.clone()))).map_err(|source| {
                L4TableError::Action {
                    route: route.name.clone(),
                    source,
                }
            })?;
        Ok(L4RouteRt {
            name: Arc::from(route.name.as_str()),
            action,
            passthrough: route.passthrough,
            stats: metrics.l4.route(&route.name),
        })
    }
}

impl L4TableRt {
    /// Validates a table: its routes' backends and server names.
    pub fn build(table: &L4RouteTable, metrics: &ProxyMetrics) -> Result<L4TableRt, L4TableError> {
        let mut rt = L4TableRt::default();
        for route in &table.routes {
            if rt.routes.iter().any(|r| *r.name == *route.name) {
                return Err(L4TableError::Duplicate(route.name.clone()));
            }
            let index = rt.routes.len();
            rt.routes.push(L4RouteRt::build(route, metrics)?);
            let any = [String::from("*")];
            let names = match route.server_names.is_empty() {
                true => &any[..],
                false => &route.server_names[..],
            };
            for name in names {
                let name = name.to_ascii_lowercase();
                let invalid = || L4TableError::ServerName {
                    route: route.name.clone(),
                    name: name.clone(),
                };
                if name == "*" {
                    rt.any.get_or_insert(index);
                } else if let Some(suffix) = name.strip_prefix('*') {
                    if !suffix.starts_with('.') || suffix.len() < 2 || suffix[1..].contains('*') {
                        return Err(invalid());
                    }
                    if !rt.wildcards.iter().any(|(s, _)| **s == *suffix) {
                        rt.wildcards.push((suffix.into(), index));
                    }
                } else if name.is_empty() || name.contains(['*', '/', ' ', ':']) {
                    return Err(invalid());
                } else {
                    rt.exact.entry(name.clone().into()).or_insert(index);
                }
            }
        }
        rt.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Ok(rt)
    }

    /// Points the routes' backends at the snapshot's clusters.
    pub fn link(&mut self, clusters: &Clusters) {
        for route in &mut self.routes {
            if let ActionRt::Forward { backends, .. } = &mut route.action {
                for backend in backends {
                    backend.cluster = clusters.get(&backend.cluster_name);
                }
            }
        }
    }

    /// The route for a connection: by its server name (lower case) on a TLS listener, the
    /// first route on TCP and UDP (`None`).
    pub fn route(&self, server_name: Option<&str>) -> Option<&L4RouteRt> {
        let index = match server_name {
            Some(name) => self.exact.get(name).copied().or_else(|| {
                self.wildcards
                    .iter()
                    .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(&**suffix))
                    .map(|(_, i)| *i)
                    .or(self.any)
            }),
            None => self.any,
        }?;
        self.routes.get(index)
    }

    /// Whether a route of this name is in the table (a connection it routed stays open).
    pub fn contains(&self, route: &str) -> bool {
        self.named(route).is_some()
    }

    /// The route of this name.
    pub fn named(&self, route: &str) -> Option<&L4RouteRt> {
        self.routes.iter().find(|r| *r.name == *route)
    }

    /// Whether a route relays TLS untouched: then a TLS listener reads the ClientHello to
    /// choose before any handshake.
    pub fn has_passthrough(&self) -> bool {
        self.routes.iter().any(|r| r.passthrough)
    }

    /// Every route, in table order.
    pub fn routes(&self) -> &[L4RouteRt] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rauta_common::api::v1::{ForwardAction, WeightedCluster};

    fn route(name: &str, names: &[&str]) -> L4Route {
        L4Route {
            name: name.into(),
            server_names: names.iter().map(|s| s.to_string()).collect(),
            forward: Some(ForwardAction {
                clusters: vec![WeightedCluster {
                    cluster: "c".into(),
                    weight: 1,
                    ..Default::default()
                }],
                invalid_weight: 0,
            }),
            passthrough: false,
        }
    }

    fn table(routes: Vec<L4Route>) -> Result<L4TableRt, L4TableError> {
        let metrics = ProxyMetrics::new().unwrap();
        L4TableRt::build(
            &L4RouteTable {
                name: "t".into(),
                routes,
            },
            &metrics,
        )
    }

    #[test]
    fn routes_by_exact_then_longest_wildcard_then_any() {
        let t = table(vec![
            route("any", &["*"]),
            route("wild", &["*.example.com"]),
            route("deeper", &["*.b.example.com"]),
            route("exact", &["a.example.com"]),
            route("exact-later", &["a.example.com"]),
        ])
        .unwrap();
        let name = |sni: Option<&str>| t.route(sni).map(|r| r.name.to_string());
        assert_eq!(name(Some("a.example.com")).as_deref(), Some("exact"));
        assert_eq!(name(Some("x.b.example.com")).as_deref(), Some("deeper"));
        assert_eq!(name(Some("z.example.com")).as_deref(), Some("wild"));
        assert_eq!(name(Some("other.org")).as_deref(), Some("any"));
        assert_eq!(name(None).as_deref(), Some("any"));
        assert!(t.contains("exact-later") && !t.contains("gone"));
    }

    #[test]
    fn tcp_tables_use_the_first_route() {
        let t = table(vec![route("older", &[]), route("newer", &[])]).unwrap();
        assert_eq!(t.route(None).map(|r| &*r.name), Some("older"));
    }

    #[test]
    fn invalid_tables_are_refused_with_the_route_named() {
        let err = table(vec![route("r", &["*a.example.com"])])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "route r: invalid server name \"*a.example.com\"");
        let mut headers = route("h", &[]);
        headers.forward.as_mut().unwrap().clusters[0].request_headers = Some(Default::default());
        assert!(matches!(
            table(vec![headers]),
            Err(L4TableError::HeaderModifiers { .. })
        ));
        assert!(matches!(
            table(vec![route("d", &[]), route("d", &[])]),
            Err(L4TableError::Duplicate(_))
        ));
        let mut none = route("n", &[]);
        none.forward = None;
        assert!(matches!(
            table(vec![none]),
            Err(L4TableError::NoForward { .. })
        ));
    }
}
