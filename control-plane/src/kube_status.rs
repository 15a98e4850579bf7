//! Writes status back to the Kubernetes API: what `kubectl get gateway -o yaml` shows. The
//! Kubernetes counterpart of `status_files`, fed by the same store and rendering.
//!
//! Only the leader writes, and only objects whose status changed since it last wrote them,
//! so a reconnecting fleet or an endpoint change does not rewrite every route.
//! Routes and policies carry one status entry per controller (`parents`, `ancestors`); those
//! lists are shared with other Gateway implementations, so RAUTA replaces only the entries
//! with its own controllerName, under the object's resourceVersion (a conflict is retried).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::metrics::ControllerMetrics;
use crate::objects::{Kind, ObjectRef};
use crate::registry::ProxyRegistry;
use crate::source::kubernetes::api_resource;
use crate::status_files::to_manifest;
use crate::status_store::StatusStore;

/// Wait before writing what failed again.
const RETRY: Duration = Duration::from_secs(2);

/// The status list shared between controllers, for the kinds that have one.
fn shared_list(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute => Some("parents"),
        Kind::BackendTlsPolicy => Some("ancestors"),
        _ => None,
    }
}

enum Outcome {
    Written,
    /// The object no longer exists: nothing to write.
    Gone,
    /// Someone else changed the object between our read and our write.
    Conflict,
}

pub struct StatusWriter {
    client: kube::Client,
    controller_name: String,
    metrics: Arc<ControllerMetrics>,
    /// What this replica last wrote, per object, since it became the leader.
    written: BTreeMap<(Kind, ObjectRef), Value>,
}

impl StatusWriter {
    pub fn new(
        client: kube::Client,
        controller_name: String,
        metrics: Arc<ControllerMetrics>,
    ) -> Self {
        StatusWriter {
            client,
            controller_name,
            metrics,
            written: BTreeMap::new(),
        }
    }

    fn api(&self, kind: Kind, key: &ObjectRef) -> Api<DynamicObject> {
        let resource: ApiResource = api_resource(kind);
        match kind.is_namespaced() {
            true => Api::namespaced_with(self.client.clone(), &key.namespace, &resource),
            false => Api::all_with(self.client.clone(), &resource),
        }
    }

    /// Writes `desired` (a whole `status`), or for shared lists our entries of it; `None`
    /// takes our entries out of a shared list.
    async fn write(
        &self,
        kind: Kind,
        key: &ObjectRef,
        desired: Option<&Value>,
    ) -> Result<Outcome, kube::Error> {
        let api = self.api(kind, key);
        let patch = match shared_list(kind) {
            None => match desired {
                Some(status) => json!({ "status": status }),
                None => return Ok(Outcome::Written),
            },
            Some(list) => {
                let current = match api.get_status(&key.name).await {
                    Ok(object) => object,
                    Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Outcome::Gone),
                    Err(err) => return Err(err),
                };
                let ours = |entry: &Value| {
                    entry.get("controllerName").and_then(Value::as_str)
                        == Some(self.controller_name.as_str())
                };
                let mut entries: Vec<Value> = current
                    .data
                    .pointer(&format!("/status/{list}"))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter(|e| !ours(e)).cloned().collect())
                    .unwrap_or_default();
                if let Some(mine) = desired.and_then(|d| d.get(list)).and_then(Value::as_array) {
                    entries.extend(mine.iter().cloned());
                }
                json!({
                    "metadata": { "resourceVersion": current.metadata.resource_version },
                    "status": { list: entries },
                })
            }
        };
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(Outcome::Written),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Outcome::Gone),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Conflict),
            Err(err) => Err(err),
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .status_writes
            .with_label_values(&[result])
            .inc();
    }

    /// Brings the cluster in step with the store; returns false if something must be retried.
    pub async fn sync(&mut self, store: &StatusStore, registry: &ProxyRegistry) -> bool {
        let mut desired = BTreeMap::new();
        for object in store.render(registry) {
            let Some(kind) = Kind::from_type_meta("gateway.networking.k8s.io/v1", &object.kind)
            else {
                continue;
            };
            let key = ObjectRef::new(object.namespace.clone(), object.name.clone());
            let manifest = to_manifest(&object);
            desired.insert((kind, key), manifest["status"].clone());
        }
        // A Gateway or GatewayClass that is gone or no longer ours keeps what it has.
        self.written
            .retain(|k, _| desired.contains_key(k) || shared_list(k.0).is_some());
        let stale: Vec<(Kind, ObjectRef)> = self
            .written
            .keys()
            .filter(|k| !desired.contains_key(*k) && shared_list(k.0).is_some())
            .cloned()
            .collect();
        let mut complete = true;
        let changes = desired
            .iter()
            .filter(|(k, v)| self.written.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .chain(stale.into_iter().map(|k| (k, None)))
            .collect::<Vec<_>>();
        for ((kind, key), status) in changes {
            match self.write(kind, &key, status.as_ref()).await {
                Ok(outcome) => {
                    self.count(match outcome {
                        Outcome::Written => "ok",
                        Outcome::Gone => "gone",
                        Outcome::Conflict => "conflict",
                    });
                    if matches!(outcome, Outcome::Conflict) {
                        debug!(%kind, object = %key, "status write conflicted; retrying");
                        complete = false;
                        continue;
                    }
                    match status {
                        Some(status) => self.written.insert((kind, key), status),
                        None => self.written.remove(&(kind, key)),
                    };
                }
                Err(err) => {
                    self.count("error");
                    warn!(%kind, object = %key, %err, "cannot write status; retrying");
                    complete = false;
                }
            }
        }
        complete
    }

    /// Writes status while this replica leads, forever.
    pub async fn run(
        mut self,
        store: Arc<StatusStore>,
        registry: Arc<ProxyRegistry>,
        mut leader: watch::Receiver<bool>,
    ) {
        let mut statuses = store.subscribe();
        let mut members = registry.subscribe();
        loop {
            let leads = *leader.borrow_and_update();
            self.metrics.leader.set(i64::from(leads));
            let mut retry = false;
            if leads {
                retry = !self.sync(&store, &registry).await;
            } else {
                // Whoever leads next may have written something else: write everything then.
                self.written.clear();
            }
            tokio::select! {
                r = statuses.changed() => if r.is_err() { return },
                r = members.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                () = tokio::time::sleep(RETRY), if retry => {}
            }
            // Coalesce bursts (a configuration change and a reconnecting fleet).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
