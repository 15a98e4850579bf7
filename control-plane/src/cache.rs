//! The snapshot cache: the current snapshot of every Gateway, and a watch channel per
//! Gateway that every proxy stream of that Gateway follows. One translation serves all
//! proxies of a Gateway.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rauta_common::api::v1::{VersionEvent, version_event};
use tokio::sync::{broadcast, watch};

use crate::objects::ObjectRef;
use crate::session_keys::MasterKeys;
use crate::snapshot::Snapshot;
use crate::translator::ResourceSet;
use rauta_common::api::v1::resource::Payload;
use rauta_common::types::ResourceType;

/// Snapshots kept per Gateway for DiffSnapshots.
pub const HISTORY: usize = 32;

#[derive(Debug)]
struct GatewayEntry {
    current: watch::Sender<Arc<Snapshot>>,
    /// The last HISTORY versions, oldest first (the current one last).
    history: VecDeque<Arc<Snapshot>>,
}

impl GatewayEntry {
    fn new(gateway: &ObjectRef) -> Self {
        GatewayEntry {
            current: watch::Sender::new(Arc::new(Snapshot::empty(gateway.clone()))),
            history: VecDeque::new(),
        }
    }
}

#[derive(Debug)]
pub struct SnapshotCache {
    gateways: Mutex<BTreeMap<ObjectRef, GatewayEntry>>,
    /// False until the source's first full load has been published: until then every snapshot
    /// is empty, and a proxy served one would drop its routes (or, new, report ready with none).
    synced: watch::Sender<bool>,
    /// New snapshot versions, for WatchVersions.
    events: broadcast::Sender<VersionEvent>,
    /// What route tables with session persistence get their signing keys from. Locked after
    /// `gateways`, never before.
    session_keys: Mutex<MasterKeys>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache {
            gateways: Mutex::default(),
            synced: watch::Sender::new(false),
            events: broadcast::Sender::new(8192),
            // A key of this process until the controller sets the one it was given; should the
            // system have no random numbers, none (and proxies refuse sticky rules).
            session_keys: Mutex::new(MasterKeys::random().unwrap_or_default()),
        }
    }
}

/// What an update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    /// Gateways whose snapshot got a new version, with that version.
    pub changed: Vec<(ObjectRef, u64)>,
    /// Gateways whose new content was not published because a reference in it does not
    /// resolve; their proxies keep the previous version.
    pub inconsistent: Vec<(ObjectRef, crate::snapshot::DanglingReference)>,
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
        let keys = self.keys();
        let mut summary = UpdateSummary::default();
        for (key, set) in gateways {
            let entry = map
                .entry(key.clone())
                .or_insert_with(|| GatewayEntry::new(&key));
            self.publish(entry, key, set, &keys, &mut summary);
        }
        // Forget Gateways that have no content and nobody following them (a proxy that named a
        // Gateway which never existed, or one deleted after its proxies left).
        map.retain(|_, entry| {
            entry.current.receiver_count() > 0 || !entry.current.borrow().resources.is_empty()
        });
        self.synced.send_replace(true);
        summary
    }

    /// Publishes new endpoints for Gateways whose other resources did not change (only
    /// EndpointSlices did): the other types are shared with the current snapshot, neither
    /// rebuilt nor compared again, so the cost follows the endpoints, not the routes.
    pub fn update_endpoints(
        &self,
        endpoints: BTreeMap<ObjectRef, BTreeMap<String, Arc<Payload>>>,
    ) -> UpdateSummary {
        let mut map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        let mut summary = UpdateSummary::default();
        for (key, by_name) in endpoints {
            let Some(entry) = map.get_mut(&key) else {
                continue;
            };
            let current = entry.current.borrow().clone();
            let candidate = current.with_type(ResourceType::Endpoints, by_name);
            if candidate
                .delta
                .as_ref()
                .is_some_and(|d| !d.changes.is_empty())
            {
                self.install(entry, key, candidate, &mut summary);
            }
        }
        summary
    }

    fn keys(&self) -> MasterKeys {
        self.session_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets the keys session tokens are signed with, and republishes every Gateway whose
    /// route tables carry them.
    pub fn set_session_keys(&self, keys: MasterKeys) -> UpdateSummary {
        let mut map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        *self
            .session_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = keys.clone();
        let mut summary = UpdateSummary::default();
        for (key, entry) in map.iter_mut() {
            let current = entry.current.borrow().clone();
            if current.version == 0 {
                continue; // Nothing published yet: the first update brings the keys.
            }
            let set: ResourceSet = current
                .resources
                .iter()
                .map(|(ty, by_name)| {
                    let payloads = by_name
                        .iter()
                        .map(|(name, r)| (name.clone(), Arc::clone(&r.payload)))
                        .collect();
                    (*ty, payloads)
                })
                .collect();
            self.publish(entry, key.clone(), set, &keys, &mut summary);
        }
        summary
    }

    /// Publishes `set` as the Gateway's next version, if it is consistent and differs.
    fn publish(
        &self,
        entry: &mut GatewayEntry,
        key: ObjectRef,
        mut set: ResourceSet,
        keys: &MasterKeys,
        summary: &mut UpdateSummary,
    ) {
        keys.apply(&key, &mut set);
        let current = entry.current.borrow().clone();
        let candidate = Snapshot::build(key.clone(), current.version + 1, set, &current);
        if let Err(problem) = candidate.check_references_since(&current) {
            summary.inconsistent.push((key, problem));
            return;
        }
        if !candidate.same_content(&current) {
            self.install(entry, key, candidate, summary);
        }
    }

    /// Makes `candidate` the Gateway's current version: history, followers, the feed.
    fn install(
        &self,
        entry: &mut GatewayEntry,
        key: ObjectRef,
        candidate: Snapshot,
        summary: &mut UpdateSummary,
    ) {
        {
            summary.changed.push((key.clone(), candidate.version));
            let candidate = Arc::new(candidate);
            if entry.history.len() == HISTORY {
                entry.history.pop_front();
            }
            entry.history.push_back(Arc::clone(&candidate));
            entry.current.send_replace(candidate.clone());
            // Nobody watching is fine.
            let _ = self.events.send(VersionEvent {
                gateway: key.to_string(),
                at: Some(prost_types::Timestamp::from(SystemTime::now())),
                event: Some(version_event::Event::SnapshotVersion(candidate.version)),
            });
        }
    }

    /// Resolves once the first update has been published.
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        // Err only if the cache is gone, and then nobody waits on it.
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Follows a Gateway's snapshots; an unknown Gateway starts with an empty snapshot.
    pub fn subscribe(&self, gateway: &ObjectRef) -> watch::Receiver<Arc<Snapshot>> {
        let mut map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(gateway.clone())
            .or_insert_with(|| GatewayEntry::new(gateway))
            .current
            .subscribe()
    }

    pub fn get(&self, gateway: &ObjectRef) -> Option<Arc<Snapshot>> {
        let map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(gateway).map(|e| e.current.borrow().clone())
    }

    /// A kept version of a Gateway's snapshot (0: the empty snapshot it started from).
    pub fn version(&self, gateway: &ObjectRef, version: u64) -> Option<Arc<Snapshot>> {
        if version == 0 {
            return Some(Arc::new(Snapshot::empty(gateway.clone())));
        }
        let map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(gateway)?
            .history
            .iter()
            .find(|s| s.version == version)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Snapshot>> {
        let map = self.gateways.lock().unwrap_or_else(PoisonError::into_inner);
        map.values().map(|e| e.current.borrow().clone()).collect()
    }

    /// New snapshot versions from now on.
    pub fn events(&self) -> broadcast::Receiver<VersionEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rauta_common::api::v1::resource::Payload;
    use rauta_common::api::v1::route_rule::Action;
    use rauta_common::api::v1::{
        Cluster, ForwardAction, Listener, RouteRule, RouteTable, VirtualHost, WeightedCluster,
    };
    use rauta_common::types::ResourceType;

    fn set(cluster: &str) -> ResourceSet {
        let mut s = ResourceSet::new();
        s.entry(ResourceType::Cluster).or_default().insert(
            cluster.into(),
            Arc::new(Payload::Cluster(Box::new(Cluster {
                name: cluster.into(),
                ..Default::default()
            }))),
        );
        s.entry(ResourceType::Listener).or_default().insert(
            "http-80".into(),
            Arc::new(Payload::Listener(Box::new(Listener {
                name: "http-80".into(),
                port: 80,
                route_table: "http-80".into(),
                ..Default::default()
            }))),
        );
        // Only what reference checking looks at: one host whose rule forwards to `cluster`.
        let forward = ForwardAction {
            clusters: vec![WeightedCluster {
                cluster: cluster.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let host = VirtualHost {
            rules: vec![RouteRule {
                action: Some(Action::Forward(forward)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let table = RouteTable {
            name: "http-80".into(),
            virtual_hosts: vec![host],
            ..Default::default()
        };
        s.entry(ResourceType::RouteTable)
            .or_default()
            .insert("http-80".into(), Arc::new(Payload::RouteTable(table)));
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
        assert_eq!(cache.version(&gw, 1).unwrap().version, 1, "kept for diffs");
        assert!(cache.version(&gw, 3).is_none());
    }

    #[test]
    fn inconsistent_content_is_not_published() {
        let cache = SnapshotCache::new();
        let gw = ObjectRef::new("ns", "gw");
        cache.update(BTreeMap::from([(gw.clone(), set("a"))]));
        // A rule forwarding to a cluster the set lacks.
        let mut broken = set("b");
        broken.remove(&ResourceType::Cluster);
        let summary = cache.update(BTreeMap::from([(gw.clone(), broken)]));
        assert!(summary.changed.is_empty());
        assert_eq!(summary.inconsistent.len(), 1, "{summary:?}");
        assert!(
            summary.inconsistent[0].1.to_string().contains("cluster b"),
            "{summary:?}"
        );
        assert_eq!(
            cache.get(&gw).unwrap().version,
            1,
            "the previous version stays"
        );
    }

    #[test]
    fn an_endpoint_update_equals_a_full_update_with_those_endpoints() {
        use rauta_common::api::v1::{ClusterEndpoints, Endpoint};
        let gw = ObjectRef::new("ns", "gw");
        let endpoints = |port: u32| {
            let e = ClusterEndpoints {
                cluster: "a".into(),
                endpoints: vec![Endpoint {
                    address: "10.0.0.1".into(),
                    port,
                    ..Default::default()
                }],
            };
            BTreeMap::from([("a".to_owned(), Arc::new(Payload::Endpoints(e)))])
        };
        let mut first = set("a");
        first.insert(ResourceType::Endpoints, endpoints(80));
        let mut second = first.clone();
        second.insert(ResourceType::Endpoints, endpoints(81));

        let (fast, full) = (SnapshotCache::new(), SnapshotCache::new());
        for cache in [&fast, &full] {
            cache.set_session_keys(MasterKeys::new(vec![1; 32]).unwrap());
        }
        fast.update(BTreeMap::from([(gw.clone(), first.clone())]));
        full.update(BTreeMap::from([(gw.clone(), first)]));
        let summary = fast.update_endpoints(BTreeMap::from([(gw.clone(), endpoints(81))]));
        assert_eq!(summary.changed, vec![(gw.clone(), 2)]);
        full.update(BTreeMap::from([(gw.clone(), second)]));
        let (a, b) = (fast.get(&gw).unwrap(), full.get(&gw).unwrap());
        assert!(a.same_content(&b));
        let changes = |s: &Snapshot| s.delta.as_ref().map(|d| (d.from, d.changes.clone()));
        assert_eq!(changes(&a), changes(&b));
        // The same endpoints again: no new version.
        let summary = fast.update_endpoints(BTreeMap::from([(gw.clone(), endpoints(81))]));
        assert!(summary.changed.is_empty(), "{summary:?}");
    }

    #[test]
    fn route_rules_must_name_a_table_and_clusters_of_the_snapshot() {
        use rauta_common::api::v1::{RankedRule, RouteRules};
        let cache = SnapshotCache::new();
        let gw = ObjectRef::new("ns", "gw");
        let with_rules = |table: &str, cluster: &str| {
            let mut s = set("a");
            let rule = RouteRule {
                name: "apps/r/rule/0".into(),
                action: Some(Action::Forward(ForwardAction {
                    clusters: vec![WeightedCluster {
                        cluster: cluster.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
                ..Default::default()
            };
            let rules = RouteRules {
                name: "rules".into(),
                route_table: table.into(),
                domains: vec!["*".into()],
                rules: vec![RankedRule {
                    precedence: vec![0],
                    rule: Some(Box::new(rule)),
                }],
            };
            s.entry(ResourceType::RouteRules)
                .or_default()
                .insert("rules".into(), Arc::new(Payload::RouteRules(rules)));
            s
        };
        let good = cache.update(BTreeMap::from([(gw.clone(), with_rules("http-80", "a"))]));
        assert_eq!(good.changed, vec![(gw.clone(), 1)], "{good:?}");
        for (table, cluster, problem) in [
            ("http-81", "a", "route table http-81"),
            ("http-80", "b", "cluster b"),
        ] {
            let summary = cache.update(BTreeMap::from([(gw.clone(), with_rules(table, cluster))]));
            assert!(summary.changed.is_empty(), "{summary:?}");
            let found = summary.inconsistent[0].1.to_string();
            assert!(found.contains(problem), "{found}");
        }
        // The cluster an unchanged route's rules forward to, taken away: only the rules that
        // changed are checked, except when a cluster or route table goes.
        let mut without_cluster = with_rules("http-80", "a");
        without_cluster.remove(&ResourceType::Cluster);
        let summary = cache.update(BTreeMap::from([(gw.clone(), without_cluster)]));
        let found = summary.inconsistent[0].1.to_string();
        assert!(found.contains("cluster a"), "{found}");
        assert_eq!(cache.get(&gw).unwrap().version, 1);
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

    /// The Gateway's current resources as a set, as a source would give them again.
    fn sticky_set_of(cache: &SnapshotCache, gw: &ObjectRef) -> ResourceSet {
        cache
            .get(gw)
            .unwrap()
            .resources
            .iter()
            .map(|(ty, by_name)| {
                let payloads = by_name
                    .iter()
                    .map(|(n, r)| (n.clone(), Arc::clone(&r.payload)))
                    .collect();
                (*ty, payloads)
            })
            .collect()
    }

    fn session_keys_of(cache: &SnapshotCache, gw: &ObjectRef) -> Vec<String> {
        let snapshot = cache.get(gw).unwrap();
        match &*snapshot.of_type(ResourceType::RouteTable).unwrap()["http-80"].payload {
            Payload::RouteTable(t) => t.session_keys.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn new_session_keys_republish_gateways_with_route_tables() {
        let cache = SnapshotCache::new();
        cache.set_session_keys(MasterKeys::new(vec![1; 32]).unwrap());
        let (sticky, plain) = (
            ObjectRef::new("ns", "sticky"),
            ObjectRef::new("ns", "plain"),
        );
        let mut sticky_set = set("a");
        if let Some(Payload::RouteTable(t)) = sticky_set
            .get_mut(&ResourceType::RouteTable)
            .and_then(|m| m.get_mut("http-80"))
            .map(Arc::make_mut)
        {
            t.virtual_hosts[0].rules[0].session_persistence = Some(Default::default());
        }
        cache.update(BTreeMap::from([
            (sticky.clone(), sticky_set),
            (plain.clone(), set("a")),
        ]));
        let first = session_keys_of(&cache, &sticky);
        assert_eq!(first.len(), 1);
        assert_eq!(session_keys_of(&cache, &plain).len(), 1);
        let empty = ObjectRef::new("ns", "empty");
        cache.update(BTreeMap::from([
            (sticky.clone(), sticky_set_of(&cache, &sticky)),
            (plain.clone(), set("a")),
            (empty.clone(), ResourceSet::new()),
        ]));

        let rotated = MasterKeys::new(vec![1; 32]).unwrap().rotated(vec![2; 32]);
        let summary = cache.set_session_keys(rotated);
        assert_eq!(
            summary.changed,
            vec![(plain.clone(), 2), (sticky.clone(), 2)],
            "every Gateway with a route table, none without"
        );
        let keys = session_keys_of(&cache, &sticky);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1], first[0], "the previous key still verifies");
        assert_eq!(session_keys_of(&cache, &plain).len(), 2);
        let clusters = |v| {
            Arc::clone(
                &cache
                    .version(&sticky, v)
                    .unwrap()
                    .of_type(ResourceType::Cluster)
                    .unwrap()["a"],
            )
        };
        assert!(
            Arc::ptr_eq(&clusters(1), &clusters(2)),
            "the rest is shared"
        );
    }

    #[test]
    fn equal_content_gives_equal_resource_versions() {
        let empty = Snapshot::empty(ObjectRef::new("n", "g"));
        let a = Snapshot::build(ObjectRef::new("n", "g"), 1, set("a"), &empty);
        let b = Snapshot::build(ObjectRef::new("n", "g"), 7, set("a"), &empty);
        assert!(a.same_content(&b));
        let c = Snapshot::build(ObjectRef::new("n", "g"), 8, set("a"), &a);
        let shared =
            |s: &Snapshot| Arc::clone(&s.of_type(ResourceType::Listener).unwrap()["http-80"]);
        assert!(
            Arc::ptr_eq(&shared(&a), &shared(&c)),
            "unchanged resources are shared with the previous version"
        );
        assert!(!Arc::ptr_eq(&shared(&a), &shared(&b)));
        let va = &a.of_type(ResourceType::Cluster).unwrap()["a"].version;
        let vb = &b.of_type(ResourceType::Cluster).unwrap()["a"].version;
        assert_eq!(va, vb);
    }
}
