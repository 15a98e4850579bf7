//! The immutable routing state the request path reads: listeners → route tables → virtual
//! hosts → ordered rules (matches, action, filters) → clusters → endpoints. Built and validated
//! from a [`store::ResourceStore`] off the request path, then published with one atomic swap
//! (`shared::Shared::state`).

pub mod cluster;
pub mod filters;
pub mod maglev;
pub mod matchers;
pub mod redirect;
pub mod request;
pub mod retry_budget;
pub mod route_table;
pub mod rule;
pub mod store;
pub mod tls;

#[cfg(test)]
mod build_tests;

use std::collections::HashMap;
use std::sync::Arc;

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::{Listener, ListenerProtocol};
use rauta_common::types::ResourceType;

use crate::observe::metrics::{ProxyMetrics, RouteStats};
use crate::upstream::UpstreamPools;
use cluster::{ClusterRt, Clusters};
use route_table::RouteTableRt;
use store::ResourceStore;

/// An HTTPS listener's TLS: the listener resource version it was built from, the server
/// configuration, and which Gateway listener each name belongs to.
type ListenerTls = (String, Arc<rustls::ServerConfig>, Arc<tls::ListenerNames>);

/// Everything the request path needs, at one configuration version.
#[derive(Debug, Default)]
pub struct RoutingState {
    /// Listener name -> its route table (`None` until the table arrives: 404).
    listeners: HashMap<String, Option<Arc<RouteTableRt>>>,
    clusters: Clusters,
    /// HTTPS listener name -> its TLS.
    tls: HashMap<String, ListenerTls>,
    pub no_route: Option<Arc<RouteStats>>,
}

/// A listener the proxy must have open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub port: u16,
    /// Terminates TLS (its configuration is in the routing state, so certificates can change
    /// without reopening the socket).
    pub tls: bool,
    /// Relays TLS untouched, routed by the ClientHello's server name.
    pub passthrough: bool,
}

impl RoutingState {
    #[inline]
    pub fn route_table(&self, listener: &str) -> Option<&RouteTableRt> {
        self.listeners.get(listener).and_then(|t| t.as_deref())
    }

    /// Which Gateway listener names belong to, on an HTTPS listener.
    pub fn listener_names(&self, listener: &str) -> Option<&tls::ListenerNames> {
        self.tls.get(listener).map(|(_, _, n)| n.as_ref())
    }

    /// Every cluster, by name.
    pub fn clusters(&self) -> impl Iterator<Item = (&str, &ClusterRt)> {
        self.clusters.iter()
    }

    /// Sets the per-endpoint ejection gauge from the clusters' current endpoints.
    pub fn record_ejections(&self, metrics: &ProxyMetrics) {
        metrics.endpoint_ejected.reset();
        for (name, cluster) in self.clusters.iter() {
            for endpoint in cluster.endpoints() {
                metrics
                    .endpoint_ejected
                    .with_label_values(&[name, &endpoint.addr.to_string()])
                    .set(i64::from(endpoint.pool.health().is_ejected()));
            }
        }
    }

    /// The TLS configuration of an HTTPS listener.
    pub fn tls_config(&self, listener: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.get(listener).map(|(_, c, _)| Arc::clone(c))
    }

    /// Validates `store` and builds the state; reuses what did not change in `previous`
    /// (clusters, TLS configurations).
    pub fn build(
        store: &ResourceStore,
        previous: &RoutingState,
        pools: &mut UpstreamPools,
        metrics: &ProxyMetrics,
    ) -> Result<(RoutingState, Vec<ListenerSpec>), String> {
        let clusters = Clusters::build(store, &previous.clusters, pools, metrics)?;
        let mut tables = HashMap::new();
        for resource in store.resources(ResourceType::RouteTable) {
            let Some(Payload::RouteTable(table)) = &resource.payload else {
                continue;
            };
            let rt = RouteTableRt::build(table, &clusters, metrics)
                .map_err(|e| format!("route table {}: {e}", table.name))?;
            tables.insert(table.name.clone(), Arc::new(rt));
        }
        let mut listeners = HashMap::new();
        let mut tls_configs = HashMap::new();
        let mut specs: Vec<ListenerSpec> = Vec::new();
        for resource in store.resources(ResourceType::Listener) {
            let Some(Payload::Listener(l)) = &resource.payload else {
                continue;
            };
            let spec = listener_spec(l, &specs)?;
            if spec.tls {
                tls_configs.insert(
                    l.name.clone(),
                    listener_tls(l, &resource.version, previous)?,
                );
            }
            specs.push(spec);
            listeners.insert(l.name.clone(), tables.get(&l.route_table).cloned());
        }
        let state = RoutingState {
            listeners,
            clusters,
            tls: tls_configs,
            no_route: Some(metrics.route_counters("")),
        };
        Ok((state, specs))
    }
}

/// Validates a listener's protocol and port (one listener per port).
fn listener_spec(l: &Listener, others: &[ListenerSpec]) -> Result<ListenerSpec, String> {
    let (tls, passthrough) = match ListenerProtocol::try_from(l.protocol) {
        Ok(ListenerProtocol::Http) => (false, false),
        Ok(ListenerProtocol::TlsPassthrough) => (false, true),
        Ok(ListenerProtocol::Https) => (true, false),
        _ => {
            return Err(format!(
                "listener {}: unsupported protocol {}",
                l.name, l.protocol
            ));
        }
    };
    let port = u16::try_from(l.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("listener {}: invalid port {}", l.name, l.port))?;
    if let Some(other) = others.iter().find(|s| s.port == port) {
        return Err(format!(
            "listeners {} and {} both use port {port}",
            other.name, l.name
        ));
    }
    Ok(ListenerSpec {
        name: l.name.clone(),
        port,
        tls,
        passthrough,
    })
}

/// An HTTPS listener's TLS, reused while the listener resource is unchanged.
fn listener_tls(
    l: &Listener,
    version: &str,
    previous: &RoutingState,
) -> Result<ListenerTls, String> {
    if let Some((_, config, names)) = previous.tls.get(&l.name).filter(|(v, _, _)| v == version) {
        return Ok((version.to_owned(), Arc::clone(config), Arc::clone(names)));
    }
    let config = tls::server_config(&l.certificates, l.client_validation.as_ref())
        .map_err(|e| format!("listener {}: {e}", l.name))?;
    let names = Arc::new(tls::ListenerNames::from_certificates(&l.certificates));
    Ok((version.to_owned(), config, names))
}
