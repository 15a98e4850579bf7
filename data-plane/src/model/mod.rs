//! The immutable routing state the request path reads: listeners → route tables → virtual
//! hosts → ordered rules (matches, action, filters) → clusters → endpoints. Built and validated
//! from a [`store::ResourceStore`] off the request path, then published with one atomic swap
//! (`shared::Shared::state`).

pub mod circuit_breakers;
pub mod cluster;
pub mod cluster_spec;
pub mod clusters;
pub mod collect;
pub mod filters;
pub mod global_limit;
pub mod jwks;
pub mod jwt_claims;
pub mod kept;
pub mod l4;
pub mod maglev;
pub mod matchers;
pub mod rate_limit;
pub mod redirect;
pub mod request;
pub mod response_store;
pub mod retry_budget;
pub mod route_table;
pub mod rule;
pub mod store;
pub mod tls;

#[cfg(test)]
mod build_tests;
#[cfg(test)]
mod rate_limit_tests;
#[cfg(test)]
mod reuse_tests;
#[cfg(test)]
mod route_rules_tests;

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::{Listener, ListenerProtocol, Resource, RouteRules};
use rauta_common::types::ResourceType;

use crate::observe::metrics::{ProxyMetrics, RouteStats};
use crate::upstream::UpstreamPools;
use cluster::ClusterRt;
use cluster_spec::ClusterError;
use clusters::Clusters;
use kept::RuleStores;
use l4::{L4TableError, L4TableRt};
use route_table::{RouteTableError, RouteTableRt, TableInputs};
use store::{ResourceStore, TypeSet};

/// An HTTPS listener's TLS: the listener resource version it was built from, the server
/// configuration, and which Gateway listener each name belongs to.
type ListenerTls = (String, Arc<rustls::ServerConfig>, Arc<tls::ListenerNames>);

/// Everything the request path needs, at one configuration version.
#[derive(Debug, Default)]
pub struct RoutingState {
    /// Listener name -> its route table (`None` until the table arrives: 404).
    listeners: HashMap<String, Option<Arc<RouteTableRt>>>,
    clusters: Clusters,
    /// HTTPS and TLS Terminate listener name -> its TLS.
    tls: HashMap<String, ListenerTls>,
    /// TCP, UDP and TLS Terminate listener name -> its L4 route table (`None` until the table
    /// arrives: connections are closed).
    l4: HashMap<String, Option<Arc<L4TableRt>>>,
    /// The response caches and rate limiters of the rules that have them.
    stores: RuleStores,
    pub no_route: Option<Arc<RouteStats>>,
    /// The store's `RouteRules` this state was built from, each checked: the next state
    /// checks only those that are not the very same resources.
    route_rules: TypeSet,
}

/// A listener the proxy must have open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub port: u16,
    /// Terminates TLS (its configuration is in the routing state, so certificates can change
    /// without reopening the socket).
    pub tls: bool,
    /// Relays connections (TCP, TLS) or datagrams (UDP) by an L4 route table.
    pub relay: Option<Relay>,
}

/// What a relaying listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// TCP connections, relayed as they are.
    Tcp,
    /// TLS connections, relayed untouched; routed by the ClientHello's server name.
    TlsPassthrough,
    /// TLS connections, terminated (`ListenerSpec::tls` is set too) and the plaintext relayed,
    /// or relayed untouched where the route is a passthrough one; routed by the server name.
    TlsTerminate,
    /// UDP datagrams, relayed per client flow (the socket is a UDP socket).
    Udp,
}

impl RoutingState {
    #[inline]
    pub fn route_table(&self, listener: &str) -> Option<&RouteTableRt> {
        self.listeners.get(listener).and_then(|t| t.as_deref())
    }

    /// Every HTTP listener with its route table, by listener name.
    pub fn route_tables(&self) -> impl Iterator<Item = (&str, &RouteTableRt)> {
        self.listeners
            .iter()
            .filter_map(|(name, table)| Some((name.as_str(), table.as_deref()?)))
    }

    /// The L4 route table of a TCP, UDP or TLS Terminate listener.
    #[inline]
    pub fn l4_table(&self, listener: &str) -> Option<&L4TableRt> {
        self.l4.get(listener).and_then(|t| t.as_deref())
    }

    /// Which Gateway listener names belong to, on an HTTPS listener.
    pub fn listener_names(&self, listener: &str) -> Option<&tls::ListenerNames> {
        self.tls.get(listener).map(|(_, _, n)| n.as_ref())
    }

    /// Every rule's response cache, by rule name.
    pub fn caches(&self) -> impl Iterator<Item = (&str, &Arc<response_store::ResponseStore>)> {
        self.stores.caches.iter()
    }

    /// Every global rate limit's local state, by its name among the kept stores.
    pub fn global_limiters(
        &self,
    ) -> impl Iterator<Item = (&str, &Arc<global_limit::GlobalLimiter>)> {
        self.stores.global_limiters.iter()
    }

    /// Every rate limiter, by its name among the kept stores.
    pub fn limiters(&self) -> impl Iterator<Item = (&str, &Arc<rate_limit::Limiter>)> {
        self.stores.limiters.iter()
    }

    /// Every cluster, by name.
    pub fn clusters(&self) -> impl Iterator<Item = (&str, &ClusterRt)> {
        self.clusters.iter()
    }

    /// The TLS configuration of an HTTPS listener.
    pub fn tls_config(&self, listener: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.get(listener).map(|(_, c, _)| Arc::clone(c))
    }

    /// Validates `store` and builds the state; reuses what did not change in `previous`
    /// (clusters, TLS configurations). Everything is validated before anything is made: a
    /// snapshot that fails opens no connection pool.
    pub fn build(
        store: &ResourceStore,
        previous: &RoutingState,
        pools: &mut UpstreamPools,
        metrics: &ProxyMetrics,
    ) -> Result<(RoutingState, Vec<ListenerSpec>), BuildError> {
        let clusters = Clusters::validate(store, &previous.clusters, pools)?;
        let mut stores = RuleStores::after(&previous.stores);
        // Each table's route rules; those of a table the store lacks serve nothing.
        let mut rules_of: HashMap<&str, Vec<(&RouteRules, &Arc<Resource>)>> = HashMap::new();
        // The previous state's, checked already: both in name order, walked side by side.
        let mut checked = previous.route_rules.resources().peekable();
        for resource in store.resources(ResourceType::RouteRules) {
            let unchanged = checked.next_if(|c| Arc::ptr_eq(c, resource)).is_some();
            if !unchanged {
                while checked.next_if(|c| c.name <= resource.name).is_some() {}
            }
            if let Some(Payload::RouteRules(rules)) = &resource.payload {
                if !unchanged {
                    route_table::check_route_rules(rules).map_err(|source| {
                        BuildError::RouteTable {
                            table: rules.route_table.clone(),
                            source,
                        }
                    })?;
                }
                let named = (rules, resource);
                rules_of.entry(&rules.route_table).or_default().push(named);
            }
        }
        // The previous state's tables: their virtual hosts that nothing changed are reused.
        let before: HashMap<&str, &RouteTableRt> = previous
            .listeners
            .values()
            .flatten()
            .map(|t| (t.name(), &**t))
            .collect();
        let rules_unchanged = previous
            .route_rules
            .is(&store.type_set(ResourceType::RouteRules));
        let mut tables = HashMap::new();
        for resource in store.resources(ResourceType::RouteTable) {
            let Some(Payload::RouteTable(table)) = &resource.payload else {
                continue;
            };
            let rules = rules_of
                .get(table.name.as_str())
                .map_or(&[][..], Vec::as_slice);
            let previous = before.get(table.name.as_str()).copied();
            let inputs = TableInputs {
                resource,
                table,
                rules,
                rules_unchanged,
            };
            let rt = RouteTableRt::build(inputs, previous, &clusters, metrics, &mut stores)
                .map_err(|source| BuildError::RouteTable {
                    table: table.name.clone(),
                    source,
                })?;
            tables.insert(table.name.clone(), rt);
        }
        let mut l4_tables = HashMap::new();
        for resource in store.resources(ResourceType::L4RouteTable) {
            let Some(Payload::L4RouteTable(table)) = &resource.payload else {
                continue;
            };
            let rt = L4TableRt::build(table, metrics).map_err(|source| BuildError::L4Table {
                table: table.name.clone(),
                source,
            })?;
            l4_tables.insert(table.name.clone(), rt);
        }
        let mut listeners = Vec::new();
        let mut tls_configs = HashMap::new();
        let mut specs: Vec<ListenerSpec> = Vec::new();
        for resource in store.resources(ResourceType::Listener) {
            let Some(Payload::Listener(l)) = &resource.payload else {
                continue;
            };
            let spec = listener_spec(l, &specs)?;
            if spec.tls {
                let tls = listener_tls(l, &resource.version, previous).map_err(|problem| {
                    BuildError::Listener {
                        listener: l.name.clone(),
                        problem,
                    }
                })?;
                tls_configs.insert(l.name.clone(), tls);
            }
            specs.push(spec);
            listeners.push((
                l.name.clone(),
                l.route_table.clone(),
                l.l4_route_table.clone(),
            ));
        }
        // Valid: now the pools of new endpoints, and the routes pointed at the clusters.
        let clusters = clusters.instantiate(&previous.clusters, pools, metrics);
        let tables: HashMap<String, Arc<RouteTableRt>> = tables
            .into_iter()
            .map(|(name, mut table)| {
                table.link(&clusters);
                (name, Arc::new(table))
            })
            .collect();
        let l4_tables: HashMap<String, Arc<L4TableRt>> = l4_tables
            .into_iter()
            .map(|(name, mut table)| {
                table.link(&clusters);
                (name, Arc::new(table))
            })
            .collect();
        let l4 = listeners
            .iter()
            .filter(|(_, _, l4)| !l4.is_empty())
            .map(|(name, _, table)| (name.clone(), l4_tables.get(table).cloned()))
            .collect();
        let listeners = listeners
            .into_iter()
            .filter(|(_, _, l4)| l4.is_empty())
            .map(|(name, table, _)| (name, tables.get(&table).cloned()))
            .collect();
        stores.finish();
        let state = RoutingState {
            listeners,
            clusters,
            tls: tls_configs,
            l4,
            stores,
            no_route: Some(metrics.route_counters("")),
            route_rules: store.type_set(ResourceType::RouteRules),
        };
        Ok((state, specs))
    }
}

/// Why a snapshot cannot become a routing state (the NACK's text).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("route table {table}: {source}")]
    RouteTable {
        table: String,
        source: RouteTableError,
    },
    #[error("L4 route table {table}: {source}")]
    L4Table { table: String, source: L4TableError },
    #[error("listener {listener}: {problem}")]
    Listener {
        listener: String,
        problem: ListenerProblem,
    },
    #[error("listeners {first} and {second} both use port {port}")]
    SharedPort {
        first: String,
        second: String,
        port: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerProblem {
    #[error("unsupported protocol {0}")]
    Protocol(i32),
    #[error("invalid port {0}")]
    Port(u32),
    #[error("TCP, UDP and TLS listeners (only) name an L4 route table")]
    Table,
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Validates a listener's protocol and port (one TCP and one UDP listener per port).
fn listener_spec(l: &Listener, others: &[ListenerSpec]) -> Result<ListenerSpec, BuildError> {
    let problem = |problem| BuildError::Listener {
        listener: l.name.clone(),
        problem,
    };
    let (tls, relay) = match ListenerProtocol::try_from(l.protocol) {
        Ok(ListenerProtocol::Http) => (false, None),
        Ok(ListenerProtocol::Https) => (true, None),
        Ok(ListenerProtocol::TlsPassthrough) => (false, Some(Relay::TlsPassthrough)),
        Ok(ListenerProtocol::Tcp) => (false, Some(Relay::Tcp)),
        Ok(ListenerProtocol::Udp) => (false, Some(Relay::Udp)),
        Ok(ListenerProtocol::TlsTerminate) => (true, Some(Relay::TlsTerminate)),
        _ => return Err(problem(ListenerProblem::Protocol(l.protocol))),
    };
    if relay.is_some() == l.l4_route_table.is_empty() {
        return Err(problem(ListenerProblem::Table));
    }
    let port = u16::try_from(l.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| problem(ListenerProblem::Port(l.port)))?;
    // TCP and UDP sockets may share a port number (a TCP and a UDP Gateway listener).
    let udp = relay == Some(Relay::Udp);
    if let Some(other) = others
        .iter()
        .find(|s| s.port == port && (s.relay == Some(Relay::Udp)) == udp)
    {
        return Err(BuildError::SharedPort {
            first: other.name.clone(),
            second: l.name.clone(),
            port,
        });
    }
    Ok(ListenerSpec {
        name: l.name.clone(),
        port,
        tls,
        relay,
    })
}

/// An HTTPS listener's TLS, reused while the listener resource is unchanged.
fn listener_tls(
    l: &Listener,
    version: &str,
    previous: &RoutingState,
) -> Result<ListenerTls, ListenerProblem> {
    if let Some((_, config, names)) = previous.tls.get(&l.name).filter(|(v, _, _)| v == version) {
        return Ok((version.to_owned(), Arc::clone(config), Arc::clone(names)));
    }
    let mut config = tls::server_config(&l.certificates, l.client_validation.as_ref())?;
    if l.protocol == ListenerProtocol::TlsTerminate as i32 {
        // The relay carries whatever the client speaks: no application protocol is offered.
        let mut plain = (*config).clone();
        plain.alpn_protocols.clear();
        config = Arc::new(plain);
    }
    let names = Arc::new(tls::ListenerNames::from_certificates(&l.certificates));
    Ok((version.to_owned(), config, names))
}
