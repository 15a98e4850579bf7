//! Writes every object's status as a YAML file (`<Kind>.<namespace>.<name>.yaml`) into a
//! directory, so a person sees in standalone mode what Kubernetes users see with kubectl.
//! A file is rewritten only when its content changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
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
        "BackendTLSPolicy"
        | "RateLimitPolicy"
        | "SecurityPolicy"
        | "BackendPolicy"
        | "TrafficPolicy"
        | "XBackendTrafficPolicy" => json!({
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
    let api_version = match o.kind.as_str() {
        "RateLimitPolicy" | "SecurityPolicy" | "BackendPolicy" | "TrafficPolicy" => {
            "gateway.rauta.dev/v1alpha1"
        }
        "XBackendTrafficPolicy" => "gateway.networking.x-k8s.io/v1alpha1",
        _ => "gateway.networking.k8s.io/v1",
    };
    json!({"apiVersion": api_version, "kind": o.kind, "metadata": metadata, "status": status})
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
        let since = self.rendered_from.take();
        let changes = store.render_changes(registry, since.as_deref());
        // Rendered whole (the first round, or after a failed write): files of objects that
        // are no longer there go too.
        let mut produced = since.is_none().then(BTreeSet::new);
        let mut failed = false;
        for object in changes.changed {
            let name = file_name(&object.kind, &object.namespace, &object.name);
            let path = self.dir.join(&name);
            if let Some(produced) = &mut produced {
                produced.insert(path.clone());
            }
            let text = match serde_saphyr::to_string(&to_manifest(&object)) {
                Ok(t) => t,
                Err(err) => {
                    // Rendering is deterministic: no retry, and no stale file either.
                    warn!(%err, "cannot render status as YAML");
                    self.remove(&path);
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
                failed = true;
                continue;
            }
            self.written.insert(path, text);
        }
        for (kind, key) in changes.removed {
            self.remove(&self.dir.join(file_name(kind, &key.namespace, &key.name)));
        }
        if let Some(produced) = produced {
            let gone: Vec<PathBuf> = self
                .written
                .keys()
                .filter(|p| !produced.contains(*p))
                .cloned()
                .collect();
            gone.iter().for_each(|path| self.remove(path));
        }
        // After a failed write, the next round renders everything again (and so retries).
        if !failed {
            self.rendered_from = Some(changes.report);
        }
    }

    fn remove(&mut self, path: &Path) {
        self.written.remove(path);
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => warn!(path = %path.display(), %err, "cannot remove status file"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectRef;
    use crate::translator::status::RouteStatus;

    fn report(routes: &[&str]) -> StatusReport {
        let mut r = StatusReport::default();
        for name in routes {
            let status = RouteStatus {
                generation: 1,
                parents: vec![],
            };
            r.http_routes
                .insert(ObjectRef::new("apps", *name), status.into());
        }
        r
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn files_follow_the_statuses_also_after_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = StatusStore::new();
        let registry = ProxyRegistry::default();
        let mut status_files = StatusFiles {
            dir: dir.path().to_owned(),
            written: BTreeMap::new(),
            rendered_from: None,
        };
        store.publish(report(&["a", "b", "c"]));
        status_files.update(&store, &registry);
        let all = [
            "HTTPRoute.apps.a.yaml",
            "HTTPRoute.apps.b.yaml",
            "HTTPRoute.apps.c.yaml",
        ];
        assert_eq!(files(dir.path()), all);

        // c goes: its file goes.
        store.publish(report(&["a", "b"]));
        status_files.update(&store, &registry);
        assert_eq!(files(dir.path()), all[..2]);

        // A write fails (d's file name is taken by a directory); b goes meanwhile. The next
        // round, once d can be written, writes it and still removes b's file.
        std::fs::create_dir(dir.path().join("HTTPRoute.apps.d.yaml")).unwrap();
        store.publish(report(&["a", "b", "d"]));
        status_files.update(&store, &registry);
        std::fs::remove_dir(dir.path().join("HTTPRoute.apps.d.yaml")).unwrap();
        store.publish(report(&["a", "d"]));
        status_files.update(&store, &registry);
        let now = files(dir.path());
        assert_eq!(
            now,
            ["HTTPRoute.apps.a.yaml", "HTTPRoute.apps.d.yaml"],
            "{now:?}"
        );
    }
}
