//! The proxy's copy of the controller's resources, by type and name, as last ACKed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::{DeltaDiscoveryResponse, Resource};
use rauta_common::types::ResourceType;

#[derive(Debug, Clone, Default)]
pub struct ResourceStore {
    types: BTreeMap<ResourceType, BTreeMap<String, Arc<Resource>>>,
    /// system_version_info of the last response applied, per type.
    versions: BTreeMap<ResourceType, String>,
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
        let by_name = next.types.entry(ty).or_default();
        for name in &response.removed_resources {
            by_name.remove(name);
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
            by_name.insert(resource.name.clone(), Arc::new(resource.clone()));
        }
        next.versions
            .insert(ty, response.system_version_info.clone());
        Ok(next)
    }

    pub fn resources(&self, ty: ResourceType) -> impl Iterator<Item = &Arc<Resource>> {
        self.types.get(&ty).into_iter().flat_map(BTreeMap::values)
    }

    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Arc<Resource>> {
        self.types.get(&ty).and_then(|m| m.get(name))
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
