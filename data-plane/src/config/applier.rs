//! Applies discovery responses: validate everything off the request path, then publish the
//! new routing state with one swap. A response that fails validation changes nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rauta_common::api::v1::DeltaDiscoveryResponse;
use rauta_common::types::ResourceType;
use tracing::info;

use super::listeners::{BindError, ListenerManager};
use super::xds::ConfigHandler;
use crate::model::store::ResourceStore;
use crate::model::store::StoreError;
use crate::model::{BuildError, ListenerSpec, RoutingState};
use crate::shared::Shared;
use crate::upstream::UpstreamPools;

/// Told each new routing state just before it is published: the XDP fast path
/// (`kernel::KernelPath`), handed in by `main`, so that configuration never imports it. It
/// must stop answering what the new state drops before returning.
pub trait KernelSync: Send + Sync + 'static {
    /// Called with each new state before it is published; the kernel keeps it, so that its
    /// own refreshes never read an older state than the one it was last given.
    fn sync(&self, state: &Arc<RoutingState>, listeners: &[ListenerSpec]);
}

pub struct Applier {
    store: Arc<ResourceStore>,
    kernel: Option<Arc<dyn KernelSync>>,
    pools: UpstreamPools,
    listeners: ListenerManager,
    shared: Arc<Shared>,
    applied: BTreeSet<ResourceType>,
}

impl Applier {
    pub fn new(listeners: ListenerManager, shared: Arc<Shared>) -> Self {
        Applier {
            store: Arc::default(),
            kernel: None,
            pools: UpstreamPools::default(),
            listeners,
            shared,
            applied: BTreeSet::new(),
        }
    }

    /// Keeps `kernel` in step with every state published.
    pub fn with_kernel(mut self, kernel: Arc<dyn KernelSync>) -> Self {
        self.kernel = Some(kernel);
        self
    }
}

/// Why a discovery response is rejected (the NACK's text).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("unknown type_url {0:?}")]
    UnknownType(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Listeners(#[from] BindError),
}

impl ConfigHandler for Applier {
    type Error = ApplyError;

    /// Applies one response, or explains why it was rejected (the NACK message).
    fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), ApplyError> {
        let ty = ResourceType::parse(&response.type_url)
            .ok_or_else(|| ApplyError::UnknownType(response.type_url.clone()))?;
        let timer = self.shared.metrics.apply_duration.start_timer();
        let candidate = self.store.with_response(ty, response)?;
        let previous = self.shared.state.load();
        let (state, listener_specs) =
            RoutingState::build(&candidate, &previous, &mut self.pools, &self.shared.metrics)?;
        drop(previous);
        let prepared = self.listeners.prepare(&listener_specs)?;
        let state = Arc::new(state);
        if let Some(kernel) = &self.kernel {
            kernel.sync(&state, &listener_specs);
        }
        self.store = Arc::new(candidate);
        self.shared.publish_shared(state);
        self.shared.config.store(Arc::clone(&self.store));
        self.listeners.commit(prepared);
        timer.observe_duration();
        // Endpoints the new state dropped: their pools close once in-flight requests finish.
        self.pools.prune(&self.shared.metrics);
        self.shared.metrics.prune_routes();
        if let Ok(v) = response.system_version_info.parse::<i64>() {
            self.shared
                .metrics
                .snapshot_version
                .with_label_values(&[ty.short_name()])
                .set(v);
        }
        if self.applied.insert(ty) && self.applied.len() == ResourceType::ALL.len() {
            info!("all resource types applied: ready");
            self.shared.set_ready();
        }
        Ok(())
    }

    /// What the proxy holds of a type, to resume a stream without resending it.
    fn known_versions(&self, ty: ResourceType) -> HashMap<String, String> {
        self.store.known_versions(ty)
    }
}
