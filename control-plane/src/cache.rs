//! The snapshot cache: the current snapshot of every Gateway, and a watch channel per
//! Gateway that every proxy stream of that Gateway follows. One translation serves all
//! proxies of a Gateway.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::objects::ObjectRef;
use crate::snapshot::Snapshot;
use crate::translator::ResourceSet;

#[derive(Debug, Default)]
pub struct SnapshotCache {
    gateways: Mutex<BTreeMap<ObjectRef, watch::Sender<Arc<Snapshot>>>>,
}

/// What an update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    /// Gateways whose snapshot got a new version, with that version.
    pub changed: Vec<(ObjectRef, u64)>,
}

impl SnapshotCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes new content for every Gateway in `gateways`; Gateways the cache knows but
    /// `gateways` lacks get an empty snapshot. A Gateway's version moves only if its content changed.
    pub fn update(&self, mut gateways: BTreeMap<ObjectRef, ResourceSet>) -> UpdateSummary {
        let mut map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        for key in map.keys() {
            gateways.entry(key.clone()).or_default();
        }
        let mut summary = UpdateSummary::default();
        for (key, set) in gateways {
            let sender = map
                .entry(key.clone())
                .or_insert_with(|| watch::Sender::new(Arc::new(Snapshot::empty(key.clone()))));
            let current = sender.borrow().clone();
            let candidate = Snapshot::build(key.clone(), current.version + 1, set);
            if !candidate.same_content(&current) {
                summary.changed.push((key, candidate.version));
                sender.send_replace(Arc::new(candidate));
            }
        }
        // Forget Gateways that have no content and nobody following them (a proxy that named a
        // Gateway which never existed, or one deleted after its proxies left).
        map.retain(|_, sender| {
            sender.receiver_count() > 0 || !sender.borrow().resources.is_empty()
        });
        summary
    }

    /// Follows a Gateway's snapshots; an unknown Gateway starts with an empty snapshot.
    pub fn subscribe(&self, gateway: &ObjectRef) -> watch::Receiver<Arc<Snapshot>> {
        let mut map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(gateway.clone())
            .or_insert_with(|| watch::Sender::new(Arc::new(Snapshot::empty(gateway.clone()))))
            .subscribe()
    }

    pub fn get(&self, gateway: &ObjectRef) -> Option<Arc<Snapshot>> {
        let map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(gateway).map(|s| s.borrow().clone())
    }

    pub fn all(&self) -> Vec<Arc<Snapshot>> {
        let map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        map.values().map(|s| s.borrow().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rauta_common::api::v1::resource::Payload;
    use rauta_common::api::v1::{Cluster, Listener};
    use rauta_common::types::ResourceType;

    fn set(cluster: &str) -> ResourceSet {
        let mut s = ResourceSet::new();
        s.entry(ResourceType::Cluster).or_default().insert(
            cluster.into(),
            Payload::Cluster(Cluster {
                name: cluster.into(),
                ..Default::default()
            }),
        );
        s.entry(ResourceType::Listener).or_default().insert(
            "http-80".into(),
            Payload::Listener(Listener {
                name: "http-80".into(),
                port: 80,
                ..Default::default()
            }),
        );
        s
    }

    #[test]
    fn version_moves_only_when_content_changes() {
        let cache = SnapshotCache::new();
        let gw = ObjectRef::new("ns", "gw");
        let rx = cache.subscribe(&gw);
        assert_eq!(rx.borrow().version, 0);
        let one = BTreeMap::from([(gw.clone(), set("a"))]);
        assert_eq!(cache.update(one.clone()).changed, vec![(gw.clone(), 1)]);
        assert_eq!(cache.update(one).changed, vec![]);
        assert_eq!(cache.get(&gw).unwrap().version, 1);
        let two = BTreeMap::from([(gw.clone(), set("b"))]);
        assert_eq!(cache.update(two).changed, vec![(gw.clone(), 2)]);
        assert_eq!(rx.borrow().count(ResourceType::Cluster), 1);
    }

    #[test]
    fn a_gateway_that_disappears_gets_an_empty_snapshot() {
        let cache = SnapshotCache::new();
        let gw = ObjectRef::new("ns", "gw");
        let proxy = cache.subscribe(&gw);
        cache.update(BTreeMap::from([(gw.clone(), set("a"))]));
        assert_eq!(cache.update(BTreeMap::new()).changed, vec![(gw.clone(), 2)]);
        assert!(
            proxy.borrow().resources.is_empty(),
            "its proxies are told to drop everything"
        );
    }

    #[test]
    fn empty_unfollowed_gateways_are_forgotten() {
        let cache = SnapshotCache::new();
        let ghost = ObjectRef::new("ns", "never-existed");
        let rx = cache.subscribe(&ghost);
        cache.update(BTreeMap::new());
        assert!(cache.get(&ghost).is_some(), "kept while a proxy follows it");
        drop(rx);
        cache.update(BTreeMap::new());
        assert!(cache.get(&ghost).is_none());
    }

    #[test]
    fn equal_content_gives_equal_resource_versions() {
        let a = Snapshot::build(ObjectRef::new("n", "g"), 1, set("a"));
        let b = Snapshot::build(ObjectRef::new("n", "g"), 7, set("a"));
        assert!(a.same_content(&b));
        let va = &a.of_type(ResourceType::Cluster).unwrap()["a"].version;
        let vb = &b.of_type(ResourceType::Cluster).unwrap()["a"].version;
        assert_eq!(va, vb);
    }
}
