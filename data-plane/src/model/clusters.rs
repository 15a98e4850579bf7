//! The clusters of a routing state by name, and the plan that validates a snapshot's clusters
//! before any is made: unchanged clusters are reused whole.

use foldhash::{HashMap, HashSet, HashSetExt};
use std::sync::Arc;

use rauta_common::api::v1::Resource;
use rauta_common::api::v1::resource::Payload;
use rauta_common::types::ResourceType;

use super::cluster::ClusterRt;
use super::cluster_spec::{ClusterError, ClusterSpec};
use super::store::{ResourceStore, TypeSet};
use crate::observe::metrics::ProxyMetrics;
use crate::upstream::UpstreamPools;

/// The clusters of a routing state by name, each with the cluster and endpoints versions it
/// was built from, so that the next snapshot reuses those that did not change.
#[derive(Debug, Default)]
pub struct Clusters {
    by_name: Arc<ByName>,
    /// The store's clusters and endpoints these were built from: a snapshot with the very same
    /// ones (a route change) keeps them all without looking at each.
    built_from: (TypeSet, TypeSet),
}

/// Each cluster with the Cluster and Endpoints resources it was built from.
type ByName = HashMap<Arc<str>, (Arc<Resource>, Option<Arc<Resource>>, Arc<ClusterRt>)>;

/// Whether a cluster built from resource `then` is what `now` would build: the store keeps an
/// unchanged resource as the same allocation; one sent again (a reconnection) has its version.
fn same_resource(then: &Arc<Resource>, now: &Arc<Resource>) -> bool {
    Arc::ptr_eq(then, now) || then.version == now.version
}

/// A cluster of a validated snapshot: the previous one, unchanged, or a new one to make.
#[derive(Debug)]
enum Planned {
    Reused(Arc<ClusterRt>),
    New(Box<ClusterSpec>),
}

/// Every cluster of a snapshot, validated; [`ClusterPlan::instantiate`] makes them.
#[derive(Debug)]
pub struct ClusterPlan {
    change: PlannedChange,
    built_from: (TypeSet, TypeSet),
}

#[derive(Debug)]
enum PlannedChange {
    /// The snapshot has the previous state's very clusters and endpoints.
    None(Arc<ByName>),
    Some {
        /// Each cluster with the Cluster and Endpoints resources it is built from.
        planned: Vec<(Arc<Resource>, Option<Arc<Resource>>, Planned)>,
        /// The clusters reused from the previous state (their addresses).
        reused: HashSet<usize>,
    },
}

impl Clusters {
    /// Validates every cluster of `store`; those whose resources did not change since
    /// `previous` are reused as they are.
    pub fn validate(
        store: &ResourceStore,
        previous: &Clusters,
        pools: &UpstreamPools,
    ) -> Result<ClusterPlan, ClusterError> {
        let built_from = (
            store.type_set(ResourceType::Cluster),
            store.type_set(ResourceType::Endpoints),
        );
        if built_from.0.is(&previous.built_from.0) && built_from.1.is(&previous.built_from.1) {
            return Ok(ClusterPlan {
                change: PlannedChange::None(Arc::clone(&previous.by_name)),
                built_from,
            });
        }
        let mut plan = Vec::with_capacity(previous.by_name.len());
        let mut reused = HashSet::with_capacity(previous.by_name.len());
        // Endpoints are named by their cluster: both in name order, walked side by side.
        let mut all_endpoints = store.resources(ResourceType::Endpoints).peekable();
        for resource in store.resources(ResourceType::Cluster) {
            let Some(Payload::Cluster(cluster)) = &resource.payload else {
                continue;
            };
            let mut endpoints = all_endpoints.next_if(|e| e.name == cluster.name);
            if endpoints.is_none() {
                while all_endpoints
                    .next_if(|e| e.name.as_str() < cluster.name.as_str())
                    .is_some()
                {}
                endpoints = all_endpoints.next_if(|e| e.name == cluster.name);
            }
            let unchanged = previous
                .by_name
                .get(cluster.name.as_str())
                .filter(|(c, e, _)| {
                    same_resource(c, resource)
                        && match (e, endpoints) {
                            (Some(then), Some(now)) => same_resource(then, now),
                            (then, now) => then.is_none() && now.is_none(),
                        }
                });
            let planned = match unchanged {
                Some((_, _, rt)) => Planned::Reused(Arc::clone(rt)),
                None => {
                    let endpoints = endpoints.and_then(|e| match &e.payload {
                        Some(Payload::Endpoints(e)) => Some(e),
                        _ => None,
                    });
                    Planned::New(Box::new(ClusterSpec::validate(cluster, endpoints, pools)?))
                }
            };
            if let Planned::Reused(rt) = &planned {
                reused.insert(Arc::as_ptr(rt).addr());
            }
            plan.push((Arc::clone(resource), endpoints.cloned(), planned));
        }
        Ok(ClusterPlan {
            change: PlannedChange::Some {
                planned: plan,
                reused,
            },
            built_from,
        })
    }

    /// Whether both are the very same clusters, kept whole (no cluster or endpoints change).
    #[cfg(test)]
    pub(super) fn kept_whole(&self, before: &Clusters) -> bool {
        Arc::ptr_eq(&self.by_name, &before.by_name)
    }

    /// The cluster called `name`, if the snapshot has it.
    pub fn get(&self, name: &str) -> Option<Arc<ClusterRt>> {
        self.by_name.get(name).map(|(_, _, rt)| Arc::clone(rt))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ClusterRt)> {
        self.by_name
            .iter()
            .map(|(name, (_, _, rt))| (&**name, rt.as_ref()))
    }
}

impl ClusterPlan {
    /// Whether a rule linked to `linked` for cluster `name` would be linked the same in this
    /// snapshot: the cluster is reused as it was, or it was missing and still is.
    pub fn keeps(&self, name: &str, linked: Option<&Arc<ClusterRt>>) -> bool {
        match (&self.change, linked) {
            // Every rule of the previous state is linked to that state's own cluster of its
            // name, or to none when it had none (reused rules because this method said so,
            // the others by `link`): with the very same clusters, each stays right. "The very
            // same" is pointer identity of the store's sets, which the previous `Clusters`
            // holds, so no other set can have taken their address.
            (PlannedChange::None(by_name), linked) => {
                debug_assert_eq!(
                    by_name.get(name).map(|(_, _, kept)| Arc::as_ptr(kept)),
                    linked.map(Arc::as_ptr)
                );
                true
            }
            (PlannedChange::Some { reused, .. }, Some(rt)) => {
                reused.contains(&Arc::as_ptr(rt).addr())
            }
            (PlannedChange::Some { .. }, None) => !self.built_from.0.contains(name),
        }
    }

    /// Makes the new clusters (pools for their endpoints) and keeps the reused ones.
    pub fn instantiate(
        self,
        previous: &Clusters,
        pools: &mut UpstreamPools,
        metrics: &ProxyMetrics,
    ) -> Clusters {
        let planned = match self.change {
            PlannedChange::None(by_name) => {
                return Clusters {
                    by_name,
                    built_from: self.built_from,
                };
            }
            PlannedChange::Some { planned, .. } => planned,
        };
        let by_name = planned
            .into_iter()
            .map(|(cluster, endpoints, planned)| {
                let rt = match planned {
                    Planned::Reused(rt) => rt,
                    Planned::New(spec) => {
                        let before = previous
                            .by_name
                            .get(spec.name.as_str())
                            .map(|(_, _, rt)| &**rt);
                        Arc::new(spec.instantiate(pools, metrics, before))
                    }
                };
                (Arc::clone(&rt.name), (cluster, endpoints, rt))
            })
            .collect();
        Clusters {
            by_name: Arc::new(by_name),
            built_from: self.built_from,
        }
    }
}
