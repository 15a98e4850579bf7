//! What one proxy stream holds of one resource type, as the discovery server tracks it. Most
//! of the time a proxy holds exactly some snapshot's content: then the stream keeps that
//! snapshot (shared by the whole fleet) instead of its own copy of every name and version,
//! which at a thousand proxies and ten thousand route rules would be ten million map entries.

use std::collections::BTreeMap;
use std::sync::Arc;

use rauta_common::types::ResourceType;

use crate::snapshot::Snapshot;

#[derive(Debug)]
pub enum Held {
    /// Exactly this snapshot's resources of the type.
    Snapshot(Arc<Snapshot>),
    /// Name → version: what a resuming proxy presented, a name subscription's share, or an
    /// update that left removals for later.
    Map(BTreeMap<String, String>),
}

impl Held {
    /// The version held of `name`.
    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&str> {
        match self {
            Held::Snapshot(s) => s
                .of_type(ty)
                .and_then(|m| m.get(name))
                .map(|r| r.version.as_str()),
            Held::Map(m) => m.get(name).map(String::as_str),
        }
    }

    pub fn contains(&self, ty: ResourceType, name: &str) -> bool {
        self.get(ty, name).is_some()
    }

    /// Every name held, in order.
    pub fn names(&self, ty: ResourceType) -> Box<dyn Iterator<Item = &String> + '_> {
        match self {
            Held::Snapshot(s) => Box::new(s.of_type(ty).into_iter().flat_map(|m| m.keys())),
            Held::Map(m) => Box::new(m.keys()),
        }
    }

    pub fn len(&self, ty: ResourceType) -> usize {
        match self {
            Held::Snapshot(s) => s.count(ty),
            Held::Map(m) => m.len(),
        }
    }

    /// The snapshot version held in full, if any.
    pub fn snapshot_version(&self) -> Option<u64> {
        match self {
            Held::Snapshot(s) => Some(s.version),
            Held::Map(_) => None,
        }
    }

    /// The names and versions as a map of the stream's own, to change it.
    pub fn map_mut(&mut self, ty: ResourceType) -> &mut BTreeMap<String, String> {
        if let Held::Snapshot(s) = self {
            let map = s
                .of_type(ty)
                .into_iter()
                .flatten()
                .map(|(name, r)| (name.clone(), r.version.clone()))
                .collect();
            *self = Held::Map(map);
        }
        match self {
            Held::Map(m) => m,
            Held::Snapshot(_) => unreachable!("replaced by a map above"),
        }
    }
}
