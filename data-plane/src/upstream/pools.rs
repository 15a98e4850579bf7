//! Every endpoint pool, kept across snapshots while a cluster still reaches it.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prost::Message;
use rauta_common::api::v1::UpstreamTls;
use tokio_rustls::TlsConnector;

use super::health_check::{HealthCheckSpec, Prober};
use super::pool::{EndpointPool, PoolSettings, TlsRt};
use super::tls::{UpstreamTlsError, client_config, server_name};
use super::{PoolStats, Protocol};
use crate::observe::metrics::ProxyMetrics;
use crate::upstream::outlier::EndpointHealth;

/// Pool identity: endpoint, settings and a digest of the TLS settings.
type PoolKey = (SocketAddr, PoolSettings, Option<u64>);

/// Every endpoint pool, keyed by its settings, so pools survive snapshot swaps that keep them;
/// and every prober, by pool and check, so that probes (and what they found) survive them too.
#[derive(Debug, Default)]
pub struct UpstreamPools {
    pools: HashMap<PoolKey, Arc<EndpointPool>>,
    tls: HashMap<(u64, Protocol), Arc<TlsRt>>,
    probers: HashMap<(PoolKey, Arc<HealthCheckSpec>), Arc<Prober>>,
}

/// The TLS settings of a cluster, validated once and shared by its endpoints' pools.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    digest: u64,
    protocol: Protocol,
    rt: Arc<TlsRt>,
}

impl UpstreamPools {
    /// Validates a cluster's upstream TLS settings (an error NACKs the snapshot); settings
    /// already in use are shared. Changes nothing: the settings are kept once a pool uses them.
    pub fn validate_tls(
        &self,
        protocol: Protocol,
        tls: &UpstreamTls,
    ) -> Result<ClusterTls, UpstreamTlsError> {
        let digest = rauta_common::hash::fnv1a64(&tls.encode_to_vec());
        if let Some(rt) = self.tls.get(&(digest, protocol)) {
            return Ok(ClusterTls {
                digest,
                protocol,
                rt: Arc::clone(rt),
            });
        }
        let mut config = client_config(tls)?;
        config.alpn_protocols = match protocol {
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::H2c => vec![b"h2".to_vec()],
        };
        let rt = Arc::new(TlsRt {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: server_name(&tls.server_name)?,
        });
        Ok(ClusterTls {
            digest,
            protocol,
            rt,
        })
    }

    /// The pool for an endpoint with these settings, existing or new, and the prober of the
    /// health check, existing or new: one per pool and check, however many clusters use it.
    pub fn endpoint(
        &mut self,
        (addr, settings): (SocketAddr, PoolSettings),
        tls: Option<&ClusterTls>,
        health_check: Option<&Arc<HealthCheckSpec>>,
        metrics: &ProxyMetrics,
    ) -> (Arc<EndpointPool>, Option<Arc<Prober>>) {
        if let Some(t) = tls {
            self.tls
                .entry((t.digest, t.protocol))
                .or_insert_with(|| Arc::clone(&t.rt));
        }
        let key = (addr, settings, tls.map(|t| t.digest));
        let pool = self.pools.entry(key).or_insert_with(|| {
            let endpoint = metrics.endpoint_stats(&addr.to_string());
            let health = EndpointHealth::new(Arc::clone(&endpoint));
            let stats = PoolStats::new(metrics, endpoint, settings.protocol);
            let tls = tls.map(|t| Arc::clone(&t.rt));
            Arc::new(EndpointPool::new(addr, settings, tls, stats, health))
        });
        let pool = Arc::clone(pool);
        let prober = health_check.map(|spec| {
            let prober = self
                .probers
                .entry((key, Arc::clone(spec)))
                .or_insert_with(|| Arc::new(Prober::start(&pool, Arc::clone(spec))));
            Arc::clone(prober)
        });
        (pool, prober)
    }

    /// Probers running now.
    pub fn probers(&self) -> usize {
        self.probers.len()
    }

    /// Forgets pools and TLS settings nothing uses any more (their connections close), and
    /// the metric series of endpoints no pool reaches any more.
    pub fn prune(&mut self, metrics: &ProxyMetrics) {
        // Probers first: a prober is used while a cluster holds its pool too.
        self.probers
            .retain(|_, prober| Arc::strong_count(prober) > 1);
        let mut gone = Vec::new();
        self.pools.retain(|key, pool| {
            let used = Arc::strong_count(pool) > 1;
            if !used {
                gone.push(key.0);
            }
            used
        });
        for addr in gone {
            if !self.pools.keys().any(|k| k.0 == addr) {
                metrics.forget_endpoint(&addr.to_string());
            }
        }
        self.tls.retain(|_, tls| Arc::strong_count(tls) > 1);
    }

    /// Pools currently known.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}
