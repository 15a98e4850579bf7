//! Writes status back to the Kubernetes API: what `kubectl get gateway -o yaml` shows. The
//! Kubernetes counterpart of `status_files`, fed by the same store and rendering.
//!
//! Only the leader writes, and only objects whose status changed since it last wrote them,
//! so a reconnecting fleet or an endpoint change does not rewrite every route. Each write
//! reads the object first and keeps the transition times of unchanged conditions; a status
//! already there is left alone, so a new leader does not restamp the cluster.
//! Routes and policies carry one status entry per controller (`parents`, `ancestors`); those
//! lists are shared with other Gateway implementations, so RAUTA replaces only the entries
//! with its own controllerName, under the object's resourceVersion (a conflict is retried).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::metrics::ControllerMetrics;
use crate::objects::{Kind, ObjectRef};
use crate::registry::ProxyRegistry;
use crate::source::kubernetes::api_resource;
use crate::status_files::to_manifest;
use crate::status_store::StatusStore;
use crate::translator::status::StatusReport;

/// Wait before writing what failed again.
const RETRY: Duration = Duration::from_secs(2);

/// The status list shared between controllers, for the kinds that have one.
fn shared_list(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute | Kind::TcpRoute | Kind::UdpRoute => {
            Some("parents")
        }
        Kind::BackendTlsPolicy
        | Kind::RateLimitPolicy
        | Kind::SecurityPolicy
        | Kind::BackendPolicy
        | Kind::TrafficPolicy
        | Kind::XBackendTrafficPolicy => Some("ancestors"),
        _ => None,
    }
}

/// Gives each condition in `desired` the lastTransitionTime of the same condition in `live`
/// when its status and reason are the same there: the time a condition last changed belongs
/// to the cluster's history, not to this process (a new leader must not restamp everything).
/// Entries of lists are matched by their name, parentRef or ancestorRef, and controller.
fn keep_transition_times(desired: &mut Value, live: &Value) {
    match desired {
        Value::Object(fields) => {
            for (k, v) in fields.iter_mut() {
                let Some(l) = live.get(k) else { continue };
                if k == "conditions" {
                    keep_condition_times(v, l);
                } else {
                    keep_transition_times(v, l);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let counterpart = ["name", "parentRef", "ancestorRef"].iter().find_map(|id| {
                    let value = item.get(*id)?;
                    live.as_array()?.iter().find(|l| {
                        l.get(*id) == Some(value)
                            && l.get("controllerName") == item.get("controllerName")
                    })
                });
                if let Some(l) = counterpart {
                    keep_transition_times(item, l);
                }
            }
        }
        _ => {}
    }
}

fn keep_condition_times(desired: &mut Value, live: &Value) {
    let same = |a: &Value, b: &Value, field: &str| a.get(field) == b.get(field);
    for c in desired.as_array_mut().into_iter().flatten() {
        let previous = live.as_array().and_then(|l| {
            l.iter()
                .find(|p| same(c, p, "type") && same(c, p, "status") && same(c, p, "reason"))
        });
        if let Some(at) = previous.and_then(|p| p.get("lastTransitionTime")) {
            c["lastTransitionTime"] = at.clone();
        }
    }
}

enum Outcome {
    Written,
    /// What is there already says what we would write.
    Unchanged,
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
    written: BTreeMap<(Kind, ObjectRef), Arc<Value>>,
    /// Every object's status as last rendered, and the report it was rendered from.
    desired: BTreeMap<(Kind, ObjectRef), Arc<Value>>,
    rendered_from: Option<Arc<StatusReport>>,
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
            desired: BTreeMap::new(),
            rendered_from: None,
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
        let current = match api.get_status(&key.name).await {
            Ok(object) => object,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Outcome::Gone),
            Err(err) => return Err(err),
        };
        let status = match shared_list(kind) {
            None => match desired {
                Some(status) => status.clone(),
                None => return Ok(Outcome::Written),
            },
            Some(list) => {
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
                json!({ list: entries })
            }
        };
        self.patch(&api, key, &current, status).await
    }

    /// Patches `status` over what `current` holds, under its resourceVersion; conditions that
    /// did not change keep the transition time already there (another process may have set
    /// it), and a status that is already there is not written at all.
    async fn patch(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectRef,
        current: &DynamicObject,
        mut status: Value,
    ) -> Result<Outcome, kube::Error> {
        let live = current.data.get("status").cloned().unwrap_or(Value::Null);
        keep_transition_times(&mut status, &live);
        let unchanged = status
            .as_object()
            .is_some_and(|fields| fields.iter().all(|(k, v)| live.get(k) == Some(v)));
        if unchanged {
            return Ok(Outcome::Unchanged);
        }
        let patch = json!({
            "metadata": { "resourceVersion": current.metadata.resource_version },
            "status": status,
        });
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

    /// Finds RAUTA's entries in shared status lists that a previous leader (or this replica
    /// before a restart) left: they are treated as written, so the next sync takes out those
    /// of objects that no longer reach a RAUTA Gateway.
    async fn seed_from_cluster(&mut self) {
        for kind in Kind::ALL {
            let Some(list) = shared_list(kind) else {
                continue;
            };
            let api = Api::<DynamicObject>::all_with(self.client.clone(), &api_resource(kind));
            let objects = match api.list(&ListParams::default()).await {
                Ok(objects) => objects,
                // Not installed, or not listable: nothing of ours can be there to clean.
                Err(err) => {
                    debug!(%kind, %err, "not looking for stale status entries");
                    continue;
                }
            };
            for object in objects {
                let ours = object
                    .data
                    .pointer(&format!("/status/{list}"))
                    .and_then(Value::as_array)
                    .is_some_and(|entries| {
                        entries.iter().any(|e| {
                            e.get("controllerName").and_then(Value::as_str)
                                == Some(self.controller_name.as_str())
                        })
                    });
                let name = object.metadata.name.clone().unwrap_or_default();
                let namespace = object.metadata.namespace.clone().unwrap_or_default();
                if ours {
                    self.written
                        .entry((kind, ObjectRef::new(namespace, name)))
                        .or_insert_with(|| Arc::new(Value::Null));
                }
            }
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .status_writes
            .with_label_values(&[result])
            .inc();
    }

    /// Brings the cluster in step with the store while `leader` says we lead; returns false
    /// if something must be retried.
    pub async fn sync(
        &mut self,
        store: &StatusStore,
        registry: &ProxyRegistry,
        leader: &watch::Receiver<bool>,
    ) -> bool {
        // Only what changed since the last round is rendered again.
        let changes = store.render_changes(registry, self.rendered_from.as_deref());
        for object in changes.changed {
            let Some(kind) = Kind::from_name(&object.kind) else {
                continue;
            };
            let key = ObjectRef::new(object.namespace.clone(), object.name.clone());
            let mut manifest = to_manifest(&object);
            let status = manifest["status"].take();
            self.desired.insert((kind, key), Arc::new(status));
        }
        for (kind, key) in changes.removed {
            if let Some(kind) = Kind::from_name(kind) {
                self.desired.remove(&(kind, key));
            }
        }
        self.rendered_from = Some(changes.report);
        let desired = &self.desired;
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
            .filter(|(k, v)| {
                // What was written from this very rendering needs no deeper look.
                !self
                    .written
                    .get(*k)
                    .is_some_and(|w| Arc::ptr_eq(w, v) || w == *v)
            })
            .map(|(k, v)| (k.clone(), Some(Arc::clone(v))))
            .chain(stale.into_iter().map(|k| (k, None)))
            .collect::<Vec<_>>();
        for ((kind, key), status) in changes {
            // Leadership can end during a long round: the next leader writes the rest.
            if !*leader.borrow() {
                return false;
            }
            match self.write(kind, &key, status.as_deref()).await {
                Ok(outcome) => {
                    self.count(match outcome {
                        Outcome::Written => "ok",
                        Outcome::Unchanged => "unchanged",
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
                // The API server refuses this status (a schema it validates against, say):
                // writing it again changes nothing until the status itself changes.
                Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => {
                    self.count("rejected");
                    warn!(%kind, object = %key, code = s.code, reason = %s.reason, message = %s.message, "status rejected by the API server; not retried until it changes");
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

    /// Writes status while this replica leads, forever. Objects on `gone` were deleted or
    /// replaced: what was written for them no longer stands.
    pub async fn run(
        mut self,
        store: Arc<StatusStore>,
        registry: Arc<ProxyRegistry>,
        mut leader: watch::Receiver<bool>,
        mut gone: mpsc::UnboundedReceiver<(Kind, ObjectRef)>,
    ) {
        let mut statuses = store.subscribe();
        let mut members = registry.subscribe();
        let mut leading = false;
        loop {
            let leads = *leader.borrow_and_update();
            self.metrics.leader.set(i64::from(leads));
            let mut retry = false;
            if leads {
                if !leading {
                    self.seed_from_cluster().await;
                }
                retry = !self.sync(&store, &registry, &leader).await;
            } else {
                // Whoever leads next may have written something else: write everything then.
                self.written.clear();
            }
            leading = leads;
            tokio::select! {
                r = statuses.changed() => if r.is_err() { return },
                r = members.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                key = gone.recv() => {
                    let Some(key) = key else { return };
                    self.written.remove(&key);
                    while let Ok(key) = gone.try_recv() {
                        self.written.remove(&key);
                    }
                }
                () = tokio::time::sleep(RETRY), if retry => {}
            }
            // Coalesce bursts (a configuration change and a reconnecting fleet).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_conditions_keep_the_time_the_cluster_has() {
        let live = json!({
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "listeners": [{"name": "http", "conditions": [
                {"type": "Programmed", "status": "True", "reason": "Programmed", "lastTransitionTime": "2026-01-02T00:00:00Z"}]}],
            "parents": [{"parentRef": {"name": "gw"}, "controllerName": "c", "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": "2026-01-03T00:00:00Z"}]}],
        });
        let now = "2026-11-27T00:00:00Z";
        let mut desired = json!({
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": now},
                {"type": "Programmed", "status": "False", "reason": "Invalid", "lastTransitionTime": now}],
            "listeners": [{"name": "http", "conditions": [
                {"type": "Programmed", "status": "False", "reason": "Invalid", "lastTransitionTime": now}]}],
            "parents": [
                {"parentRef": {"name": "gw"}, "controllerName": "c", "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": now}]},
                {"parentRef": {"name": "gw"}, "controllerName": "other", "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": now}]}],
        });
        keep_transition_times(&mut desired, &live);
        let time = |pointer: &str| {
            desired
                .pointer(pointer)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            time("/conditions/0/lastTransitionTime"),
            "2026-01-01T00:00:00Z"
        );
        // Changed status: the new time stands.
        assert_eq!(time("/conditions/1/lastTransitionTime"), now);
        assert_eq!(time("/listeners/0/conditions/0/lastTransitionTime"), now);
        assert_eq!(
            time("/parents/0/conditions/0/lastTransitionTime"),
            "2026-01-03T00:00:00Z"
        );
        // Another controller's entry for the same parent is another entry.
        assert_eq!(time("/parents/1/conditions/0/lastTransitionTime"), now);
    }
}
