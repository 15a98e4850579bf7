//! Versioned, immutable snapshots of one Gateway's resources.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message;
use rauta_common::api::v1::Resource;
use rauta_common::api::v1::resource::Payload;
use rauta_common::hash::fnv1a64;
use rauta_common::types::ResourceType;

use crate::objects::ObjectRef;
use crate::translator::ResourceSet;

/// One resource of a snapshot, with its encoding: every proxy stream sends the same bytes, so
/// a fleet costs one encoding per changed resource rather than one copy per proxy. The
/// payload is the translator's own allocation: a resource the translator reused (a route
/// whose inputs did not change) is recognised here by pointer, not compared.
#[derive(Debug)]
pub struct SharedResource {
    pub name: String,
    /// The content version: a hash of the encoding.
    pub version: String,
    pub payload: Arc<Payload>,
    /// The resource encoded as a `rauta.v1.Resource` message.
    pub wire: Bytes,
}

impl SharedResource {
    /// The resource with its content version (a hash of its encoding without the version)
    /// and its encoding, or `previous` if that has the same version. One copy of the payload
    /// is made, for encoding.
    fn new(name: String, payload: Arc<Payload>, previous: Option<&Arc<Self>>) -> Arc<Self> {
        let mut message = Resource {
            name,
            version: String::new(),
            payload: Some((*payload).clone()),
        };
        let version = format!("{:016x}", fnv1a64(&message.encode_to_vec()));
        if let Some(same) = previous.filter(|p| p.version == version) {
            return Arc::clone(same);
        }
        message.version = version;
        let wire = Bytes::from(message.encode_to_vec());
        Arc::new(SharedResource {
            name: message.name,
            version: message.version,
            payload,
            wire,
        })
    }

    /// The resource as a message of its own (inspection; streams send `wire`).
    pub fn resource(&self) -> Resource {
        Self::message(&self.name, &self.version, &self.payload)
    }

    fn message(name: &str, version: &str, payload: &Payload) -> Resource {
        Resource {
            name: name.to_owned(),
            version: version.to_owned(),
            payload: Some(payload.clone()),
        }
    }
}

/// Everything one Gateway's proxies should have, at one version.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub gateway: ObjectRef,
    /// Increases by one each time the content changes; 0 is the empty initial snapshot.
    pub version: u64,
    pub created_at: SystemTime,
    /// Resources by type then name; each carries its content hash as version.
    pub resources: BTreeMap<ResourceType, BTreeMap<String, Arc<SharedResource>>>,
    /// What changed since the version before, computed once here so that a proxy stream
    /// holding that version finds its update in the size of the change, not of the snapshot.
    pub delta: Option<Arc<Delta>>,
}

/// Changes of one type: (name, Some(version)) upserted, (name, None) removed; upserts first,
/// each part in name order.
pub type Changes = Vec<(String, Option<String>)>;

/// The difference between a snapshot and the version it was built after.
#[derive(Debug, Default)]
pub struct Delta {
    /// The version this is the difference from.
    pub from: u64,
    pub changes: BTreeMap<ResourceType, Changes>,
}

/// Resources of one type with their versions; those `before` has with the same content are
/// shared with it.
fn build_type(
    by_name: BTreeMap<String, Arc<Payload>>,
    before: Option<&BTreeMap<String, Arc<SharedResource>>>,
) -> BTreeMap<String, Arc<SharedResource>> {
    // Both in name order: walked side by side rather than searched.
    let mut before = before.into_iter().flatten().peekable();
    by_name
        .into_iter()
        .map(|(name, payload)| {
            while before.next_if(|(k, _)| **k < name).is_some() {}
            let previous = before.next_if(|(k, _)| **k == name).map(|(_, r)| r);
            // The translator's reused allocation, or equal content found by comparing: either
            // costs less than encoding and hashing ten thousand unchanged route rules.
            if let Some(same) =
                previous.filter(|p| Arc::ptr_eq(&p.payload, &payload) || p.payload == payload)
            {
                return (name, Arc::clone(same));
            }
            let resource = SharedResource::new(name.clone(), payload, previous);
            (name, resource)
        })
        .collect()
}

impl Delta {
    /// Upserts then removals from `old` to `new`.
    fn of_type(
        old: &BTreeMap<String, Arc<SharedResource>>,
        new: &BTreeMap<String, Arc<SharedResource>>,
    ) -> Changes {
        // Both in name order: walked side by side rather than searched.
        let mut list = Changes::new();
        let mut removed = Vec::new();
        let mut old = old.iter().peekable();
        for (name, r) in new {
            while let Some((gone, _)) = old.next_if(|(k, _)| *k < name) {
                removed.push((gone.clone(), None));
            }
            let same = old
                .next_if(|(k, _)| *k == name)
                .is_some_and(|(_, o)| Arc::ptr_eq(o, r) || o.version == r.version);
            if !same {
                list.push((name.clone(), Some(r.version.clone())));
            }
        }
        removed.extend(old.map(|(gone, _)| (gone.clone(), None)));
        list.extend(removed);
        list
    }

    fn between(
        from: u64,
        before: &BTreeMap<ResourceType, BTreeMap<String, Arc<SharedResource>>>,
        after: &BTreeMap<ResourceType, BTreeMap<String, Arc<SharedResource>>>,
    ) -> Delta {
        let empty = BTreeMap::new();
        let mut changes = BTreeMap::new();
        for ty in ResourceType::ALL {
            let (old, new) = (
                before.get(&ty).unwrap_or(&empty),
                after.get(&ty).unwrap_or(&empty),
            );
            let list = Delta::of_type(old, new);
            if !list.is_empty() {
                changes.insert(ty, list);
            }
        }
        Delta { from, changes }
    }
}

impl Snapshot {
    pub fn empty(gateway: ObjectRef) -> Self {
        Snapshot {
            gateway,
            version: 0,
            created_at: SystemTime::now(),
            resources: BTreeMap::new(),
            delta: None,
        }
    }

    /// The next version with the resources of one type replaced and every other type shared
    /// with this one (nothing else is rebuilt or compared): the endpoint fast path.
    pub fn with_type(&self, ty: ResourceType, by_name: BTreeMap<String, Arc<Payload>>) -> Snapshot {
        let mut resources = self.resources.clone();
        let by_name = build_type(by_name, self.of_type(ty));
        let mut changes = BTreeMap::new();
        let empty = BTreeMap::new();
        let list = Delta::of_type(self.of_type(ty).unwrap_or(&empty), &by_name);
        if !list.is_empty() {
            changes.insert(ty, list);
        }
        if by_name.is_empty() {
            resources.remove(&ty);
        } else {
            resources.insert(ty, by_name);
        }
        Snapshot {
            gateway: self.gateway.clone(),
            version: self.version + 1,
            created_at: SystemTime::now(),
            resources,
            delta: Some(Arc::new(Delta {
                from: self.version,
                changes,
            })),
        }
    }

    /// Builds a snapshot from translated resources, computing each resource's version.
    /// Resources whose content `previous` already has are shared with it, so the history kept
    /// for diffs costs only what changed between versions.
    pub fn build(gateway: ObjectRef, version: u64, set: ResourceSet, previous: &Snapshot) -> Self {
        let resources = set
            .into_iter()
            .map(|(ty, by_name)| (ty, build_type(by_name, previous.of_type(ty))))
            .filter(|(_, by_name): &(_, BTreeMap<_, _>)| !by_name.is_empty())
            .collect();
        let delta = Delta::between(previous.version, &previous.resources, &resources);
        Snapshot {
            gateway,
            version,
            created_at: SystemTime::now(),
            resources,
            delta: Some(Arc::new(delta)),
        }
    }

    /// Whether two snapshots hold the same resources at the same content versions.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.resources.len() == other.resources.len()
            && self
                .resources
                .iter()
                .zip(&other.resources)
                .all(|((ta, a), (tb, b))| {
                    ta == tb
                        && a.len() == b.len()
                        && a.iter().zip(b).all(|((na, ra), (nb, rb))| {
                            na == nb && (Arc::ptr_eq(ra, rb) || ra.version == rb.version)
                        })
                })
    }

    /// Checks that every reference resolves inside the snapshot: each listener's route table,
    /// each cluster a rule forwards or mirrors to. The translator builds them so; this keeps a
    /// bug there from reaching a fleet as a config every proxy would reject.
    pub fn check_references(&self) -> Result<(), DanglingReference> {
        self.check_references_in(None)
    }

    /// `check_references`, looking only at the resources that changed since `previous`
    /// where that is enough: `previous` resolved (the cache installs no snapshot that does
    /// not, but for the endpoint fast path's, which changes only Endpoints, and those refer
    /// to nothing), so while no route table or cluster went away, a reference can dangle only
    /// in a resource that changed. A one-route edit then checks that route's rules, not
    /// every route's.
    pub fn check_references_since(&self, previous: &Snapshot) -> Result<(), DanglingReference> {
        let Some(delta) = self.delta.as_ref().filter(|d| d.from == previous.version) else {
            return self.check_references();
        };
        let targets = [
            ResourceType::Cluster,
            ResourceType::RouteTable,
            ResourceType::L4RouteTable,
        ];
        let target_gone = targets
            .iter()
            .any(|ty| (delta.changes.get(ty)).is_some_and(|c| c.iter().any(|(_, v)| v.is_none())));
        if target_gone {
            return self.check_references();
        }
        self.check_references_in(Some(&delta.changes))
    }

    /// The resources of one type to check: every one, or those `only` upserts.
    fn to_check(
        &self,
        ty: ResourceType,
        only: Option<&BTreeMap<ResourceType, Changes>>,
    ) -> Vec<&Arc<SharedResource>> {
        let Some(by_name) = self.of_type(ty) else {
            return Vec::new();
        };
        match only {
            None => by_name.values().collect(),
            Some(changes) => (changes.get(&ty).into_iter().flatten())
                .filter(|(_, version)| version.is_some())
                .filter_map(|(name, _)| by_name.get(name))
                .collect(),
        }
    }

    fn check_references_in(
        &self,
        only: Option<&BTreeMap<ResourceType, Changes>>,
    ) -> Result<(), DanglingReference> {
        use rauta_common::api::v1::RouteRule;
        use rauta_common::api::v1::route_rule::Action;
        let has =
            |ty: ResourceType, name: &str| self.of_type(ty).is_some_and(|m| m.contains_key(name));
        for r in self.to_check(ResourceType::Listener, only) {
            let Payload::Listener(l) = &*r.payload else {
                continue;
            };
            let (ty, table) = match l.l4_route_table.is_empty() {
                true => (ResourceType::RouteTable, &l.route_table),
                false => (ResourceType::L4RouteTable, &l.l4_route_table),
            };
            if !has(ty, table) {
                return Err(DanglingReference::RouteTable {
                    listener: l.name.clone(),
                    route_table: table.clone(),
                });
            }
        }
        for r in self.to_check(ResourceType::L4RouteTable, only) {
            let Payload::L4RouteTable(t) = &*r.payload else {
                continue;
            };
            for route in &t.routes {
                let clusters = route.forward.iter().flat_map(|f| &f.clusters);
                if let Some(c) = clusters
                    .map(|c| &c.cluster)
                    .find(|c| !has(ResourceType::Cluster, c))
                {
                    return Err(DanglingReference::Cluster {
                        route_table: t.name.clone(),
                        rule: route.name.clone(),
                        cluster: c.clone(),
                    });
                }
            }
        }
        let tables = self
            .to_check(ResourceType::RouteTable, only)
            .into_iter()
            .filter_map(|r| match &*r.payload {
                Payload::RouteTable(t) => {
                    let rules: Vec<&RouteRule> =
                        t.virtual_hosts.iter().flat_map(|v| &v.rules).collect();
                    Some((&t.name, rules))
                }
                _ => None,
            });
        let route_rules = self
            .to_check(ResourceType::RouteRules, only)
            .into_iter()
            .filter_map(|r| match &*r.payload {
                Payload::RouteRules(r) => Some(r),
                _ => None,
            });
        let mut rules_by_table = Vec::new();
        for r in route_rules {
            if !has(ResourceType::RouteTable, &r.route_table) {
                return Err(DanglingReference::RulesTable {
                    rules: r.name.clone(),
                    route_table: r.route_table.clone(),
                });
            }
            let rules = r.rules.iter().filter_map(|ranked| ranked.rule.as_deref());
            rules_by_table.push((&r.route_table, rules.collect()));
        }
        for (table, rules) in tables.chain(rules_by_table) {
            for rule in rules {
                let forwards = match &rule.action {
                    Some(Action::Forward(f)) => f.clusters.iter().map(|c| &c.cluster).collect(),
                    _ => Vec::new(),
                };
                let mirrors = rule.mirrors.iter().map(|m| &m.cluster);
                for cluster in forwards.into_iter().chain(mirrors) {
                    if !has(ResourceType::Cluster, cluster) {
                        return Err(DanglingReference::Cluster {
                            route_table: table.clone(),
                            rule: rule.name.clone(),
                            cluster: cluster.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    pub fn of_type(&self, ty: ResourceType) -> Option<&BTreeMap<String, Arc<SharedResource>>> {
        self.resources.get(&ty)
    }

    pub fn count(&self, ty: ResourceType) -> usize {
        self.of_type(ty).map_or(0, BTreeMap::len)
    }
}

/// A reference a snapshot cannot resolve inside itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DanglingReference {
    #[error("listener {listener} names route table {route_table}, which is missing")]
    RouteTable {
        listener: String,
        route_table: String,
    },
    #[error("route rules {rules} join route table {route_table}, which is missing")]
    RulesTable { rules: String, route_table: String },
    #[error("route table {route_table} rule {rule} names cluster {cluster}, which is missing")]
    Cluster {
        route_table: String,
        rule: String,
        cluster: String,
    },
}
