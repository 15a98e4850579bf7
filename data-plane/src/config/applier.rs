//! Applies discovery responses: validate everything off the request path, then publish the
//! new routing state with one swap. A response that fails validation changes nothing. With
//! `--state-dir`, each state applied is persisted, and the one persisted is served at start.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rauta_common::api::v1::DeltaDiscoveryResponse;
use rauta_common::types::ResourceType;
use tracing::{info, warn};

use super::listeners::{BindError, ListenerManager};
use super::persisted::{PersistError, StateDir, StateWriter};
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
    /// `--state-dir`: where each state applied is written.
    persist: Option<Persistence>,
    /// Types read back from `--state-dir` that no controller response has confirmed yet.
    unconfirmed: BTreeSet<ResourceType>,
}

struct Persistence {
    dir: Arc<StateDir>,
    writer: StateWriter,
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
            persist: None,
            unconfirmed: BTreeSet::new(),
        }
    }

    /// Persists every complete state applied in `dir` (on a thread of its own), and lets
    /// [`Applier::restore`] read it back.
    pub fn with_state_dir(mut self, dir: StateDir) -> std::io::Result<Self> {
        let dir = Arc::new(dir);
        let writer = StateWriter::start(Arc::clone(&dir))?;
        self.persist = Some(Persistence { dir, writer });
        Ok(self)
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

/// Why the configuration in `--state-dir` is not served.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    File(#[from] PersistError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl ConfigHandler for Applier {
    type Error = ApplyError;

    /// Applies one response, or explains why it was rejected (the NACK message).
    fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), ApplyError> {
        let ty = ResourceType::parse(&response.type_url)
            .ok_or_else(|| ApplyError::UnknownType(response.type_url.clone()))?;
        let candidate = self.store.with_response(ty, response)?;
        self.install(candidate)?;
        self.applied(ty, &response.system_version_info);
        self.confirm(ty);
        if let Some(persist) = &self.persist
            && self.shared.is_ready()
        {
            // Only complete states: a file from the middle of the first sync would serve a
            // Gateway with half its resource types after a restart.
            persist.writer.submit(Arc::clone(&self.store));
        }
        Ok(())
    }

    /// What the proxy holds of a type, to resume a stream without resending it.
    fn known_versions(&self, ty: ResourceType) -> HashMap<String, String> {
        self.store.known_versions(ty)
    }
}

impl Applier {
    /// Builds `candidate` into a routing state, binds its listeners and publishes it; on any
    /// failure nothing changes.
    fn install(&mut self, candidate: ResourceStore) -> Result<(), ApplyError> {
        let timer = self.shared.metrics.apply_duration.start_timer();
        let previous = self.shared.state.load();
        let (state, listener_specs) =
            RoutingState::build(&candidate, &previous, &mut self.pools, &self.shared.metrics)?;
        drop(previous);
        let prepared = match self.listeners.prepare(&listener_specs) {
            Ok(prepared) => prepared,
            Err(e) => {
                // The state built is dropped: its new pools and probers go now, not at the
                // next successful apply (probers would keep probing meanwhile).
                drop(state);
                self.pools.prune(&self.shared.metrics);
                return Err(e.into());
            }
        };
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
        Ok(())
    }

    /// Records that `ty` was applied at `version`; ready once every type has been.
    fn applied(&mut self, ty: ResourceType, version: &str) {
        if let Ok(v) = version.parse::<i64>() {
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
    }

    /// Serves the configuration persisted in `--state-dir`, if there is one, before any
    /// controller answers: built and bound exactly as a discovery response is, and marked
    /// stale until a controller has confirmed or replaced every type it holds. The stream
    /// then presents its versions (`known_versions`), so the controller sends only what
    /// differs. A file that cannot be read, decoded or built is refused whole (nothing of it
    /// is served) and set aside.
    pub fn restore(&mut self) {
        let Some(dir) = self.persist.as_ref().map(|p| Arc::clone(&p.dir)) else {
            return;
        };
        let path = dir.path();
        let state = match dir.load() {
            Ok(Some(state)) => state,
            Ok(None) => {
                info!(path = %path.display(), "no persisted configuration; waiting for the controller");
                return;
            }
            Err(e) => return self.refuse(&dir, &e.into()),
        };
        let saved = state.saved_at();
        let types: Vec<(ResourceType, String)> =
            state.types().map(|(t, v)| (t, v.to_owned())).collect();
        let installed = match state.into_store(dir.gateway()) {
            Ok(store) => self.install(store).map_err(RestoreError::from),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = installed {
            return self.refuse(&dir, &e);
        }
        for (ty, version) in types {
            self.applied(ty, &version);
            self.unconfirmed.insert(ty);
        }
        dir.metrics().restored(true);
        let detail = format!(
            "serving the configuration persisted in {} at {saved}, not yet confirmed by a controller",
            path.display()
        );
        info!(path = %path.display(), %saved, "serving the persisted configuration until a controller confirms it");
        self.shared.set_stale(Some(detail));
    }

    fn refuse(&self, dir: &StateDir, reason: &RestoreError) {
        let path = dir.path();
        let aside = dir.set_aside();
        warn!(path = %path.display(), %reason, moved_to = ?aside, "refusing the persisted configuration; serving nothing until a controller answers");
        dir.metrics().restored(false);
        self.shared
            .set_restore_refused(format!("{}: {reason}", path.display()));
    }

    /// A controller's response for `ty` was applied: once every type read back from disk
    /// has had one, what the proxy serves is the controller's again.
    fn confirm(&mut self, ty: ResourceType) {
        self.unconfirmed.remove(&ty);
        if self.unconfirmed.is_empty() && self.shared.stale().is_some() {
            info!("a controller confirmed the configuration; no longer stale");
            self.shared.set_stale(None);
        }
    }
}
