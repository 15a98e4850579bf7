//! The controller's shared parts, created once and handed to every task.

use std::sync::Arc;

use crate::cache::SnapshotCache;
use crate::metrics::ControllerMetrics;
use crate::registry::ProxyRegistry;
use crate::status_store::StatusStore;

#[derive(Debug, Clone)]
pub struct ControllerState {
    /// Per-Gateway snapshots proxies follow.
    pub cache: Arc<SnapshotCache>,
    /// Connected proxies.
    pub registry: Arc<ProxyRegistry>,
    /// Status of owned objects.
    pub statuses: Arc<StatusStore>,
    pub metrics: Arc<ControllerMetrics>,
}

impl ControllerState {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(ControllerState {
            cache: Arc::new(SnapshotCache::new()),
            registry: Arc::new(ProxyRegistry::default()),
            statuses: Arc::new(StatusStore::new()),
            metrics: Arc::new(ControllerMetrics::new()?),
        })
    }
}
