//! The proxy's copy of the controller's resources, by type and name, as last ACKed.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::{DeltaDiscoveryResponse, Resource};
use rauta_common::types::ResourceType;

#[derive(Debug, Clone, Default)]
pub struct ResourceStore {
    /// Each type's resources, shared with the stores before and after that left the type as
    /// it was: a response copies only its own type's set, and whoever builds from a store can
    /// tell that a type did not change ([`ResourceStore::type_set`]).
    types: BTreeMap<ResourceType, Arc<BTreeSet<Named>>>,
    /// system_version_info of the last response applied, per type.
    versions: BTreeMap<ResourceType, String>,
}

/// A stored resource, ordered and found by its name: a map keyed by name would hold a second
/// copy of every name, in the store and in each copy a response makes of it.
#[derive(Debug, Clone)]
struct Named(Arc<Resource>);

impl Borrow<str> for Named {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl PartialEq for Named {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Named {}

impl PartialOrd for Named {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Named {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.name.cmp(&other.0.name)
    }
}

/// One type's resources in a store ([`ResourceStore::type_set`]).
#[derive(Debug, Clone, Default)]
pub struct TypeSet(Option<Arc<BTreeSet<Named>>>);

impl TypeSet {
    /// Whether both are the very same resources: no response for the type came in between.
    /// (`false` can also mean the same content that came again.)
    pub fn is(&self, other: &TypeSet) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// Whether there is a resource called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.0.as_ref().is_some_and(|set| set.contains(name))
    }

    /// The resources, in name order (as [`ResourceStore::resources`] lists them).
    pub fn resources(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.0.iter().flat_map(|named| named.iter().map(|n| &n.0))
    }
}

/// Why a discovery response is malformed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{ty} {name:?}: no payload")]
    NoPayload { ty: &'static str, name: String },
    #[error("{ty} {name:?}: payload of another type in a {ty} response")]
    OtherType { ty: &'static str, name: String },
    #[error("{ty} {name:?}: payload is named {inner:?}")]
    Misnamed {
        ty: &'static str,
        name: String,
        inner: String,
    },
}

impl ResourceStore {
    /// The store as it would be after `response`, or why the response is malformed.
    pub fn with_response(
        &self,
        ty: ResourceType,
        response: &DeltaDiscoveryResponse,
    ) -> Result<ResourceStore, StoreError> {
        let mut next = self.clone();
        if response.resources.is_empty() && response.removed_resources.is_empty() {
            next.versions
                .insert(ty, response.system_version_info.clone());
            return Ok(next);
        }
        let by_name = Arc::make_mut(next.types.entry(ty).or_default());
        for name in &response.removed_resources {
            by_name.remove(name.as_str());
        }
        for resource in &response.resources {
            let Some(payload) = &resource.payload else {
                return Err(StoreError::NoPayload {
                    ty: ty.short_name(),
                    name: resource.name.clone(),
                });
            };
            if ResourceType::of_payload(payload) != ty {
                return Err(StoreError::OtherType {
                    ty: ty.short_name(),
                    name: resource.name.clone(),
                });
            }
            let inner_name = match payload {
                Payload::Listener(l) => &l.name,
                Payload::RouteTable(r) => &r.name,
                Payload::Cluster(c) => &c.name,
                Payload::Endpoints(e) => &e.cluster,
                Payload::L4RouteTable(t) => &t.name,
                Payload::RouteRules(r) => &r.name,
            };
            if *inner_name != resource.name {
                return Err(StoreError::Misnamed {
                    ty: ty.short_name(),
                    name: resource.name.clone(),
                    inner: inner_name.clone(),
                });
            }
            by_name.replace(Named(Arc::new(resource.clone())));
        }
        next.versions
            .insert(ty, response.system_version_info.clone());
        Ok(next)
    }

    pub fn resources(&self, ty: ResourceType) -> impl Iterator<Item = &Arc<Resource>> {
        self.types
            .get(&ty)
            .into_iter()
            .flat_map(|named| named.iter().map(|n| &n.0))
    }

    /// The resources of `ty` as a whole, to tell later whether another store has the very same
    /// ones (no response for `ty` in between).
    pub fn type_set(&self, ty: ResourceType) -> TypeSet {
        TypeSet(self.types.get(&ty).cloned())
    }

    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Arc<Resource>> {
        self.types.get(&ty).and_then(|m| m.get(name)).map(|n| &n.0)
    }

    /// name -> version of every resource of a type, for resuming a stream.
    pub fn known_versions(&self, ty: ResourceType) -> HashMap<String, String> {
        self.resources(ty)
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect()
    }

    pub fn version(&self, ty: ResourceType) -> Option<&str> {
        self.versions.get(&ty).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rauta_common::api::v1::ClusterEndpoints;

    fn endpoints(name: &str, version: &str) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            payload: Some(Payload::Endpoints(ClusterEndpoints {
                cluster: name.into(),
                endpoints: vec![],
            })),
        }
    }

    fn response(resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: "1".into(),
            resources,
            removed_resources: removed.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    fn listed(store: &ResourceStore) -> Vec<(String, String)> {
        store
            .resources(ResourceType::Endpoints)
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect()
    }

    #[test]
    fn a_response_adds_replaces_and_removes_by_name() {
        let ty = ResourceType::Endpoints;
        let first = ResourceStore::default()
            .with_response(
                ty,
                &response(vec![endpoints("b", "1"), endpoints("a", "1")], &[]),
            )
            .unwrap();
        assert_eq!(
            listed(&first),
            [("a".into(), "1".into()), ("b".into(), "1".into())]
        );
        let next = first
            .with_response(
                ty,
                &response(
                    vec![
                        endpoints("c", "1"),
                        endpoints("a", "2"),
                        endpoints("a", "3"),
                    ],
                    &["b"],
                ),
            )
            .unwrap();
        assert_eq!(
            listed(&next),
            [("a".into(), "3".into()), ("c".into(), "1".into())],
            "the last copy of a name wins"
        );
        assert_eq!(next.get(ty, "a").map(|r| r.version.as_str()), Some("3"));
        assert!(next.get(ty, "b").is_none());
        let kept = next.with_response(ty, &response(vec![], &[])).unwrap();
        assert!(
            Arc::ptr_eq(next.get(ty, "c").unwrap(), kept.get(ty, "c").unwrap()),
            "an untouched resource is shared with the store before"
        );
        assert_eq!(
            listed(&first).len(),
            2,
            "the store a response starts from is unchanged"
        );
        assert!(
            kept.type_set(ty).is(&next.type_set(ty)),
            "an empty response changes nothing"
        );
        assert!(!first.type_set(ty).is(&next.type_set(ty)));
        let clusters = ResourceType::Cluster;
        assert!(first.type_set(clusters).is(&next.type_set(clusters)));
    }
}
