//! Writes every object's status as a YAML file (`<Kind>.<namespace>.<name>.yaml`) into a
//! directory, so a person sees in standalone mode what Kubernetes users see with kubectl.
//! A file is rewritten only when its content changes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rauta_common::api::v1 as api;
use serde_json::{Value, json};
use tracing::warn;

use crate::registry::ProxyRegistry;
use crate::status_store::StatusStore;
use crate::translator::status::StatusReport;

fn time(t: Option<&prost_types::Timestamp>) -> Value {
    let ts = t.and_then(|t| k8s_openapi::jiff::Timestamp::new(t.seconds, 0).ok());
    ts.map_or(Value::Null, |t| Value::String(t.to_string()))
}

fn conditions(cs: &[api::Condition]) -> Value {
    cs.iter()
        .map(|c| {
            json!({
                "type": c.r#type, "status": c.status, "reason": c.reason, "message": c.message,
                "observedGeneration": c.observed_generation,
                "lastTransitionTime": time(c.last_transition_time.as_ref()),
            })
        })
        .collect()
}

fn listeners(ls: &[api::ListenerStatus]) -> Value {
    ls.iter()
        .map(|l| {
            json!({
                "name": l.name,
                "attachedRoutes": l.attached_routes,
                "supportedKinds": l.supported_kinds.iter().map(|k| json!({"group": k.group, "kind": k.kind})).collect::<Vec<_>>(),
                "conditions": conditions(&l.conditions),
            })
        })
        .collect()
}

fn parent_ref(r: api::ParentReference) -> Value {
    let mut out =
        json!({"group": r.group, "kind": r.kind, "namespace": r.namespace, "name": r.name});
    if let Some(s) = r.section_name {
        out["sectionName"] = json!(s);
    }
    if let Some(port) = r.port {
        out["port"] = json!(port);
    }
    out
}

/// The object with its status, in the shape `kubectl get -o yaml` prints.
pub fn to_manifest(o: &api::ObjectStatus) -> Value {
    let mut metadata = json!({"name": o.name, "generation": o.generation});
    if !o.namespace.is_empty() {
        metadata["namespace"] = json!(o.namespace);
    }
    let status = match o.kind.as_str() {
        "GatewayClass" => json!({
            "conditions": conditions(&o.conditions),
            "supportedFeatures": o.supported_features.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
        }),
        "Gateway" => json!({
            "addresses": o.addresses.iter().map(|a| json!({"type": a.r#type, "value": a.value})).collect::<Vec<_>>(),
            "conditions": conditions(&o.conditions),
            "listeners": listeners(&o.listeners),
            "attachedListenerSets": o.attached_listener_sets,
        }),
        "ListenerSet" => json!({
            "conditions": conditions(&o.conditions),
            "listeners": listeners(&o.listeners),
        }),
        "BackendTLSPolicy" => json!({
            "ancestors": o.ancestors.iter().map(|a| json!({
                "ancestorRef": parent_ref(a.ancestor_ref.clone().unwrap_or_default()),
                "controllerName": a.controller_name,
                "conditions": conditions(&a.conditions),
            })).collect::<Vec<_>>(),
        }),
        _ => json!({
            "parents": o.parents.iter().map(|p| json!({
                "parentRef": parent_ref(p.parent_ref.clone().unwrap_or_default()),
                "controllerName": p.controller_name,
                "conditions": conditions(&p.conditions),
            })).collect::<Vec<_>>(),
        }),
    };
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": o.kind, "metadata": metadata, "status": status})
}

fn file_name(kind: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{kind}.{name}.yaml")
    } else {
        format!("{kind}.{namespace}.{name}.yaml")
    }
}

/// The status files in `dir`, kept in step with the store: each change renders and writes
/// only the statuses that changed.
struct StatusFiles {
    dir: PathBuf,
    /// Each file's content as last written.
    written: BTreeMap<PathBuf, String>,
    rendered_from: Option<Arc<StatusReport>>,
}

impl StatusFiles {
    fn update(&mut self, store: &StatusStore, registry: &ProxyRegistry) {
        let changes = store.render_changes(registry, self.rendered_from.as_deref());
        self.rendered_from = Some(changes.report);
        for object in changes.changed {
            let name = file_name(&object.kind, &object.namespace, &object.name);
            let path = self.dir.join(&name);
            let text = match serde_saphyr::to_string(&to_manifest(&object)) {
                Ok(t) => t,
                Err(err) => {
                    warn!(%err, "cannot render status as YAML");
                    continue;
                }
            };
            if self.written.get(&path) == Some(&text) {
                continue;
            }
            let tmp = self.dir.join(format!(".{name}.tmp"));
            if let Err(err) =
                std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &path))
            {
                warn!(path = %path.display(), %err, "cannot write status file");
                // Written again with the next change of anything.
                self.written.remove(&path);
                self.rendered_from = None;
                continue;
            }
            self.written.insert(path, text);
        }
        for (kind, key) in changes.removed {
            let path = self.dir.join(file_name(kind, &key.namespace, &key.name));
            if self.written.remove(&path).is_some() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Keeps `dir` in step with the status store and proxy membership, forever.
pub async fn run(dir: PathBuf, store: Arc<StatusStore>, registry: Arc<ProxyRegistry>) {
    if let Err(err) = std::fs::create_dir_all(&dir) {
        warn!(dir = %dir.display(), %err, "cannot create the status directory; status files are off");
        return;
    }
    let mut statuses = store.subscribe();
    let mut members = registry.subscribe();
    let mut files = StatusFiles {
        dir,
        written: BTreeMap::new(),
        rendered_from: None,
    };
    loop {
        files.update(&store, &registry);
        tokio::select! {
            r = statuses.changed() => if r.is_err() { return },
            r = members.changed() => if r.is_err() { return },
        }
        // Coalesce bursts (a config reload and a reconnecting fleet).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
