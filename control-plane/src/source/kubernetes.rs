//! Kubernetes source: one list+watch per kind against the API server, folded into one
//! [`ObjectSet`] that is published once every kind has been listed, then after each change.
//!
//! Objects are watched untyped and decoded by [`Object::decode`], the same decoder the
//! directory source uses, so one object the decoder rejects is reported and skipped (its last
//! good version stays) instead of failing the whole list.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{FutureExt, StreamExt, stream};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::metrics::ControllerMetrics;
use crate::objects::{Kind, Object, ObjectError, ObjectRef, ObjectSet};
use crate::publish::{PublishThread, PublisherStopped};

/// Where the API server serves a kind (group, version, plural).
pub fn api_resource(kind: Kind) -> ApiResource {
    kind.api_resource()
}

/// An object as the API server sent it, decoded into the translator's types.
fn decode(kind: Kind, object: &DynamicObject) -> Result<(ObjectRef, Object), ObjectError> {
    let key = key_of(kind, object).ok_or(ObjectError::NoName)?;
    let invalid = |source| ObjectError::invalid(kind, &key, &source);
    let mut value = serde_json::to_value(object).map_err(invalid)?;
    // List items come without their type; the typed decoders want it.
    let resource = api_resource(kind);
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(resource.api_version));
        map.insert("kind".into(), Value::String(resource.kind));
        // Status is the translator's output, not its input (but for a Service, whose load
        // balancer addresses are the Gateway's), and the resource version and managed
        // fields change with every write: without them, our own status writes leave the
        // object equal to what was translated, and cause no re-translation.
        if kind != Kind::Service {
            map.remove("status");
        }
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
    }
    let object = Object::decode(kind, &key, value)?;
    Ok((key, object))
}

fn key_of(kind: Kind, object: &DynamicObject) -> Option<ObjectRef> {
    let name = object.metadata.name.clone()?;
    let namespace = match kind.is_namespaced() {
        true => object.metadata.namespace.clone().unwrap_or_default(),
        false => String::new(),
    };
    Some(ObjectRef::new(namespace, name))
}

/// The API server does not serve this kind: a Gateway API CRD that is not installed (the
/// experimental ones often are not). Core kinds are always served, so a failure to list one
/// (RBAC, say) is not absence: treating Secrets or EndpointSlices as empty would take
/// listeners and backends away from every proxy.
fn absent(kind: Kind, err: &watcher::Error) -> bool {
    let core = matches!(
        kind,
        Kind::Service | Kind::EndpointSlice | Kind::Secret | Kind::ConfigMap | Kind::Namespace
    );
    !core
        && matches!(err,
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            if status.code == 404)
}

/// What the watches have delivered so far.
#[derive(Default)]
pub struct ClusterStore {
    objects: ObjectSet,
    /// Objects of a re-list in progress, per kind, swapped in when the list is complete
    /// (None: listed, but never valid).
    relisting: BTreeMap<Kind, BTreeMap<ObjectRef, Option<Object>>>,
    /// The uid of every object seen.
    uids: BTreeMap<(Kind, ObjectRef), String>,
    /// Objects deleted or replaced since `take_gone` was last called.
    gone: Vec<(Kind, ObjectRef)>,
    /// Kinds listed at least once (or known to be absent).
    listed: BTreeSet<Kind>,
    /// Objects the decoder rejected, with why; their last good version (if any) stays.
    problems: BTreeMap<(Kind, ObjectRef), String>,
    /// Kinds whose watch is failing, so each failure is logged once.
    failing: BTreeSet<Kind>,
}

impl ClusterStore {
    /// Every kind has been listed: publishing now cannot drop objects that merely have not
    /// arrived yet.
    pub fn ready(&self) -> bool {
        self.listed.len() == Kind::ALL.len()
    }

    pub fn objects(&self) -> &ObjectSet {
        &self.objects
    }

    pub fn problems(&self) -> impl Iterator<Item = (&(Kind, ObjectRef), &String)> {
        self.problems.iter()
    }

    fn decoded(&mut self, kind: Kind, object: &DynamicObject) -> Option<(ObjectRef, Object)> {
        match decode(kind, object) {
            Ok((key, object)) => {
                self.problems.remove(&(kind, key.clone()));
                Some((key, object))
            }
            Err(err) => {
                let key = key_of(kind, object).unwrap_or_else(|| ObjectRef::new("", "?"));
                warn!(%kind, object = %key, %err, "object ignored; its last good version stays");
                self.problems.insert((kind, key), err.to_string());
                None
            }
        }
    }

    /// Folds one watch event in; returns whether the object set changed.
    pub fn apply(
        &mut self,
        kind: Kind,
        event: Result<watcher::Event<DynamicObject>, watcher::Error>,
    ) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                if absent(kind, &err) && self.listed.insert(kind) {
                    warn!(%kind, "the API server does not serve this kind (CRD not installed); treated as empty, and watched for in case it is installed later");
                    return true;
                }
                if matches!(&err, watcher::Error::WatchError(status) if status.code == 410) {
                    // Routine: the API server's history moved past our version; the
                    // watcher lists again, and the re-list replaces this kind.
                    debug!(%kind, "resource version expired; listing again");
                    return false;
                }
                if !self.failing.insert(kind) {
                    debug!(%kind, %err, "watch still failing");
                } else if self.listed.contains(&kind) {
                    warn!(%kind, %err, "watch failed; retrying with backoff, the last known objects stay");
                } else {
                    warn!(%kind, %err, "cannot list this kind; nothing is published until every kind has been listed (check RBAC)");
                }
                return false;
            }
        };
        // Init comes before the list is even tried: only what follows shows a working watch.
        if !matches!(event, watcher::Event::Init) && self.failing.remove(&kind) {
            info!(%kind, "watch recovered");
        }
        // Controller replicas' proxy reports change with every ACK and are nobody's
        // configuration: they must not cost a translation each.
        if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = &event
            && kind == Kind::ConfigMap
            && crate::replicas::is_report(&o.metadata)
        {
            return false;
        }
        match event {
            watcher::Event::Init => {
                self.relisting.insert(kind, BTreeMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                let Some(key) = key_of(kind, &object) else {
                    return false;
                };
                self.seen(kind, &key, &object);
                // An object the decoder rejects stays as it last was, if it ever was valid.
                let decoded = match self.decoded(kind, &object) {
                    Some((_, object)) => Some(object),
                    None => self.objects.get(kind, &key),
                };
                self.relisting.entry(kind).or_default().insert(key, decoded);
                false
            }
            watcher::Event::InitDone => {
                let listed = self.relisting.remove(&kind).unwrap_or_default();
                for key in self.objects.keys(kind) {
                    if !listed.contains_key(&key) {
                        self.objects.remove(kind, &key);
                        self.forget(kind, key);
                    }
                }
                let stale: Vec<ObjectRef> = self
                    .problems
                    .keys()
                    .filter(|(k, key)| *k == kind && !listed.contains_key(key))
                    .map(|(_, key)| key.clone())
                    .collect();
                for key in stale {
                    self.forget(kind, key);
                }
                for (key, object) in listed {
                    if let Some(object) = object
                        && !self.unchanged(kind, &key, &object)
                    {
                        self.objects.insert(key, object);
                    }
                }
                if self.listed.insert(kind) {
                    debug!(%kind, "listed");
                }
                true
            }
            watcher::Event::Apply(object) => {
                let Some(key) = key_of(kind, &object) else {
                    return false;
                };
                self.seen(kind, &key, &object);
                let had_problem = self.problems.contains_key(&(kind, key));
                match self.decoded(kind, &object) {
                    // Our own status write, or an update that changed nothing RAUTA reads.
                    Some((key, object)) if !had_problem && self.unchanged(kind, &key, &object) => {
                        false
                    }
                    Some((key, object)) => {
                        debug!(%kind, object = %key, "changed");
                        self.objects.insert(key, object);
                        true
                    }
                    None => false,
                }
            }
            watcher::Event::Delete(object) => {
                let Some(key) = key_of(kind, &object) else {
                    return false;
                };
                let removed = self.objects.remove(kind, &key);
                self.forget(kind, key);
                removed
            }
        }
    }

    /// Whether `object` equals the one held: then the held allocation stays, which tells
    /// the publisher and the translator at a glance that nothing changed (status is not
    /// decoded, so each status write would otherwise bring an equal copy to compare deeply).
    fn unchanged(&self, kind: Kind, key: &ObjectRef, object: &Object) -> bool {
        self.objects
            .get(kind, key)
            .is_some_and(|held| held.same(object))
    }

    /// Notes the object's uid: a new uid under a known name is another object (deleted and
    /// created again), whose status starts from nothing.
    fn seen(&mut self, kind: Kind, key: &ObjectRef, object: &DynamicObject) {
        let uid = object.metadata.uid.clone().unwrap_or_default();
        if let Some(old) = self.uids.insert((kind, key.clone()), uid.clone())
            && old != uid
        {
            self.gone.push((kind, key.clone()));
        }
    }

    /// The object is gone: forget what was known of it.
    fn forget(&mut self, kind: Kind, key: ObjectRef) {
        self.problems.remove(&(kind, key.clone()));
        self.uids.remove(&(kind, key.clone()));
        self.gone.push((kind, key));
    }

    /// Objects deleted (or replaced by another of the same name) since the last call.
    pub fn take_gone(&mut self) -> Vec<(Kind, ObjectRef)> {
        std::mem::take(&mut self.gone)
    }
}

/// Watches every kind through `client`, publishing as described above through `publishing`,
/// until the watches end. Objects that are deleted or replaced go to `gone`, for the status
/// writer to forget.
pub async fn run(
    client: kube::Client,
    mut publishing: PublishThread,
    metrics: Arc<ControllerMetrics>,
    gone: mpsc::UnboundedSender<(Kind, ObjectRef)>,
) -> Result<(), PublisherStopped> {
    let watches = Kind::ALL.map(|kind| {
        let api = Api::<DynamicObject>::all_with(client.clone(), &api_resource(kind));
        watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |event| (kind, event))
            .boxed()
    });
    let mut events = stream::select_all(watches);
    let mut store = ClusterStore::default();
    let mut dirty = false;
    let mut published = false;
    info!(kinds = Kind::ALL.len(), "watching the Kubernetes API");
    loop {
        // Events are taken in while a translation runs on the publishing thread: the watches
        // never back up behind it, and the next translation starts from everything that
        // arrived meanwhile. No fixed batching delay: an idle thread starts at once.
        tokio::select! {
            next = events.next() => {
                let Some((kind, event)) = next else { return Ok(()) };
                dirty |= store.apply(kind, event);
                while let Some(Some((kind, event))) = events.next().now_or_never() {
                    dirty |= store.apply(kind, event);
                }
            }
            finished = publishing.finished(), if !publishing.idle() => finished?,
        }
        if !publishing.idle() {
            continue;
        }
        // With no translation in flight, the next status published comes from a set without
        // the deleted objects (handed over just below): the status writer forgets them and is
        // not handed their status again by a translation that was already running.
        for key in store.take_gone() {
            let _ = gone.send(key);
        }
        if !dirty || !store.ready() {
            continue;
        }
        if !published {
            info!(
                objects = store.objects.len(),
                "every kind listed: publishing"
            );
            published = true;
        }
        dirty = false;
        metrics
            .config_problems
            .set(i64::try_from(store.problems.len()).unwrap_or(i64::MAX));
        publishing.submit(store.objects.clone())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use serde_json::json;

    fn service(name: &str, port: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "apps", "resourceVersion": "7"},
            "spec": {"ports": [{"name": "http", "port": port}]},
            "status": {"loadBalancer": {}},
        }))
        .unwrap()
    }

    fn list(store: &mut ClusterStore, kind: Kind, objects: Vec<DynamicObject>) -> bool {
        store.apply(kind, Ok(watcher::Event::Init));
        for o in objects {
            store.apply(kind, Ok(watcher::Event::InitApply(o)));
        }
        store.apply(kind, Ok(watcher::Event::InitDone))
    }

    fn list_everything_else(store: &mut ClusterStore) {
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Service) {
            list(store, kind, Vec::new());
        }
    }

    #[test]
    fn publishes_only_once_every_kind_is_listed_or_absent() {
        let mut store = ClusterStore::default();
        list(&mut store, Kind::Service, vec![service("a", json!(80))]);
        assert!(!store.ready());
        for kind in Kind::ALL
            .into_iter()
            .filter(|k| !matches!(k, Kind::Service | Kind::TlsRoute))
        {
            list(&mut store, kind, Vec::new());
        }
        assert!(!store.ready(), "TLSRoute not listed yet");
        // A failure that is not "absent" does not count as listed...
        let down = kube::Error::Api(
            Status::failure("down", "InternalError")
                .with_code(500)
                .boxed(),
        );
        assert!(!store.apply(Kind::TlsRoute, Err(watcher::Error::InitialListFailed(down))));
        assert!(!store.ready());
        // ...nor does a core kind RBAC refuses...
        let forbidden = kube::Error::Api(Status::failure("no", "Forbidden").with_code(403).boxed());
        let mut refused = ClusterStore::default();
        assert!(!refused.apply(
            Kind::Secret,
            Err(watcher::Error::InitialListFailed(forbidden))
        ));
        assert!(!refused.listed.contains(&Kind::Secret));
        // ...a CRD that is not installed does.
        let missing = kube::Error::Api(Status::failure("no", "NotFound").with_code(404).boxed());
        assert!(store.apply(
            Kind::TlsRoute,
            Err(watcher::Error::InitialListFailed(missing))
        ));
        assert!(store.ready());
    }

    #[test]
    fn a_status_write_changes_nothing_and_keeps_the_object_held() {
        let mut store = ClusterStore::default();
        list_everything_else(&mut store);
        list(&mut store, Kind::Service, Vec::new());
        let route = |version: &str, status: Value, path: &str| -> DynamicObject {
            serde_json::from_value(json!({
                "metadata": {"name": "r", "namespace": "apps", "resourceVersion": version},
                "spec": {"rules": [{"matches": [{"path": {"value": path}}]}]},
                "status": status,
            }))
            .unwrap()
        };
        let apply = |store: &mut ClusterStore, o| {
            store.apply(Kind::HttpRoute, Ok(watcher::Event::Apply(o)))
        };
        let held = |store: &ClusterStore| {
            Arc::clone(&store.objects().http_routes[&ObjectRef::new("apps", "r")])
        };
        assert!(apply(&mut store, route("1", json!({}), "/a")));
        let first = held(&store);
        // Our status written back: a new resource version, the same route.
        assert!(!apply(
            &mut store,
            route(
                "2",
                json!({"parents": [{"parentRef": {"name": "gw"}, "controllerName": "x", "conditions": []}]}),
                "/a"
            )
        ));
        assert!(Arc::ptr_eq(&first, &held(&store)));
        // The same objects listed again after a watch desync: kept as they are.
        let mut listed = ClusterStore::default();
        list(
            &mut listed,
            Kind::HttpRoute,
            vec![route("3", json!({}), "/a")],
        );
        let relisted = Arc::clone(&listed.objects().http_routes[&ObjectRef::new("apps", "r")]);
        list(
            &mut listed,
            Kind::HttpRoute,
            vec![route("4", json!({}), "/a")],
        );
        assert!(Arc::ptr_eq(
            &relisted,
            &listed.objects().http_routes[&ObjectRef::new("apps", "r")]
        ));
        // An edit is a change.
        assert!(apply(&mut store, route("5", json!({}), "/b")));
        assert!(!Arc::ptr_eq(&first, &held(&store)));
        // An invalid update (the held version stays, with a problem), then one equal to the
        // held version: the problem is gone, which is a change to publish.
        let invalid: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "apps", "resourceVersion": "6"},
            "spec": {"rules": "nope"},
        }))
        .unwrap();
        assert!(!apply(&mut store, invalid));
        assert_eq!(store.problems().count(), 1);
        assert!(apply(&mut store, route("7", json!({}), "/b")));
        assert_eq!(store.problems().count(), 0);
    }

    #[test]
    fn a_relist_drops_what_is_gone_and_keeps_the_last_good_version_of_what_is_invalid() {
        let mut store = ClusterStore::default();
        list_everything_else(&mut store);
        list(
            &mut store,
            Kind::Service,
            vec![service("a", json!(80)), service("b", json!(80))],
        );
        assert_eq!(store.objects().services.len(), 2);
        // Resource versions are not inputs, nor is status but a Service's (its load balancer
        // addresses are the Gateway's): they are dropped on the way in.
        let a = &store.objects().services[&ObjectRef::new("apps", "a")];
        assert!(a.status.is_some() && a.metadata.resource_version.is_none());
        let route: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "apps", "resourceVersion": "9"},
            "spec": {}, "status": {"parents": []},
        }))
        .unwrap();
        assert!(store.apply(Kind::HttpRoute, Ok(watcher::Event::Apply(route))));
        let r = &store.objects().http_routes[&ObjectRef::new("apps", "r")];
        assert!(r.status.is_none() && r.metadata.resource_version.is_none());

        // An invalid update is reported and the last good version stays.
        let changed = store.apply(
            Kind::Service,
            Ok(watcher::Event::Apply(service("a", json!("eighty")))),
        );
        assert!(!changed);
        assert_eq!(store.problems().count(), 1);
        let port = |store: &ClusterStore| {
            store.objects().services[&ObjectRef::new("apps", "a")]
                .spec
                .as_ref()
                .unwrap()
                .ports
                .as_ref()
                .unwrap()[0]
                .port
        };
        assert_eq!(port(&store), 80);

        // A re-list (after a watch desync) without b removes b; a stays as last good.
        assert!(list(
            &mut store,
            Kind::Service,
            vec![service("a", json!("eighty"))]
        ));
        assert_eq!(
            store.objects().services.keys().cloned().collect::<Vec<_>>(),
            vec![ObjectRef::new("apps", "a")]
        );
        assert_eq!(port(&store), 80);

        // Fixed: the problem goes away.
        assert!(store.apply(
            Kind::Service,
            Ok(watcher::Event::Apply(service("a", json!(81))))
        ));
        assert_eq!(port(&store), 81);
        assert_eq!(store.problems().count(), 0);
        assert!(store.apply(
            Kind::Service,
            Ok(watcher::Event::Delete(service("a", json!(81))))
        ));
        assert!(store.objects().services.is_empty());
    }
}
