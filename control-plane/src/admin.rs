//! The admin gRPC service: connected proxies and snapshots, for grpcurl.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use rauta_common::api::v1::admin_server::Admin;
use rauta_common::api::v1::{
    DiffSnapshotsRequest, GetSnapshotRequest, ListProxiesRequest, ListProxiesResponse,
    ListSnapshotsRequest, ListSnapshotsResponse, ListStatusesRequest, ListStatusesResponse, Nack,
    ProxyStatus, Snapshot as SnapshotMessage, SnapshotDiff, SnapshotSummary, TypeStatus,
    WatchVersionsRequest,
};
use rauta_common::types::ResourceType;
use tonic::{Request, Response, Status};

use crate::cache::SnapshotCache;
use crate::objects::ObjectRef;
use crate::registry::{ProxyRecord, ProxyRegistry};
use crate::status_store::StatusStore;

#[derive(Debug, Clone)]
pub struct AdminService {
    cache: Arc<SnapshotCache>,
    registry: Arc<ProxyRegistry>,
    statuses: Arc<StatusStore>,
}

impl AdminService {
    pub fn new(
        cache: Arc<SnapshotCache>,
        registry: Arc<ProxyRegistry>,
        statuses: Arc<StatusStore>,
    ) -> Self {
        AdminService {
            cache,
            registry,
            statuses,
        }
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn parse_gateway(s: &str) -> Result<ObjectRef, Status> {
    ObjectRef::parse(s).ok_or_else(|| {
        Status::invalid_argument(format!("gateway must be \"namespace/name\", got {s:?}"))
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_proxies(
        &self,
        request: Request<ListProxiesRequest>,
    ) -> Result<Response<ListProxiesResponse>, Status> {
        let filter = request.into_inner().gateway;
        let filter = if filter.is_empty() {
            None
        } else {
            Some(parse_gateway(&filter)?)
        };
        let here = self.registry.replica();
        let local = self.registry.list().into_iter().map(|p| {
            let current = self
                .cache
                .get(&p.gateway)
                .map(|s| s.version.to_string())
                .unwrap_or_default();
            let in_sync: BTreeMap<ResourceType, bool> = p
                .types
                .iter()
                .map(|(ty, t)| {
                    (
                        *ty,
                        t.pending_version.is_empty() && t.acked_version == current,
                    )
                })
                .collect();
            (here.clone(), p, in_sync)
        });
        let peers = self
            .registry
            .peers()
            .into_iter()
            .map(|p| (p.replica, p.record, p.in_sync));
        let mut proxies: Vec<ProxyStatus> = local
            .chain(peers)
            .filter(|(_, p, _)| filter.as_ref().is_none_or(|g| *g == p.gateway))
            .map(|(controller, p, in_sync)| proxy_status(controller, p, &in_sync))
            .collect();
        proxies.sort_by(|a, b| (&a.gateway, &a.id).cmp(&(&b.gateway, &b.id)));
        Ok(Response::new(ListProxiesResponse { proxies }))
    }

    async fn list_snapshots(
        &self,
        _: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let snapshots = self
            .cache
            .all()
            .into_iter()
            .map(|s| SnapshotSummary {
                gateway: s.gateway.to_string(),
                version: s.version.to_string(),
                created_at: Some(timestamp(s.created_at)),
                resource_counts: ResourceType::ALL
                    .into_iter()
                    .map(|ty| {
                        (
                            ty.type_url().to_owned(),
                            u32::try_from(s.count(ty)).unwrap_or(u32::MAX),
                        )
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListSnapshotsResponse { snapshots }))
    }

    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> Result<Response<SnapshotMessage>, Status> {
        let req = request.into_inner();
        let gateway = parse_gateway(&req.gateway)?;
        let ty = match req.type_url.as_str() {
            "" => None,
            t => Some(
                ResourceType::parse(t)
                    .ok_or_else(|| Status::invalid_argument(format!("unknown type {t:?}")))?,
            ),
        };
        let snapshot = self
            .cache
            .get(&gateway)
            .ok_or_else(|| Status::not_found(format!("no snapshot for Gateway {gateway}")))?;
        let resources: Vec<_> = snapshot
            .resources
            .iter()
            .filter(|(t, _)| ty.is_none_or(|want| want == **t))
            .flat_map(|(_, by_name)| by_name.values())
            .filter(|r| req.name.is_empty() || r.name == req.name)
            .map(|r| redacted(&r.resource()))
            .collect();
        if !req.name.is_empty() && resources.is_empty() {
            return Err(Status::not_found(format!(
                "no resource named {:?} in Gateway {gateway}",
                req.name
            )));
        }
        Ok(Response::new(SnapshotMessage {
            gateway: gateway.to_string(),
            version: snapshot.version.to_string(),
            created_at: Some(timestamp(snapshot.created_at)),
            resources,
        }))
    }

    async fn diff_snapshots(
        &self,
        request: Request<DiffSnapshotsRequest>,
    ) -> Result<Response<SnapshotDiff>, Status> {
        crate::inspect::diff(&self.cache, request.get_ref()).map(Response::new)
    }

    type WatchVersionsStream = crate::inspect::VersionStream;

    async fn watch_versions(
        &self,
        request: Request<WatchVersionsRequest>,
    ) -> Result<Response<Self::WatchVersionsStream>, Status> {
        crate::inspect::watch(&self.cache, &self.registry, request.get_ref()).map(Response::new)
    }

    async fn list_statuses(
        &self,
        request: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        let req = request.into_inner();
        let objects = self
            .statuses
            .render(&self.registry)
            .into_iter()
            .filter(|o| req.kind.is_empty() || o.kind == req.kind)
            .filter(|o| req.namespace.is_empty() || o.namespace == req.namespace)
            .filter(|o| req.name.is_empty() || o.name == req.name)
            .collect();
        Ok(Response::new(ListStatusesResponse { objects }))
    }
}

/// A proxy as ListProxies shows it; `in_sync` says, per type, whether it holds its
/// replica's current snapshot.
fn proxy_status(
    controller: String,
    p: ProxyRecord,
    in_sync: &BTreeMap<ResourceType, bool>,
) -> ProxyStatus {
    ProxyStatus {
        id: p.id,
        gateway: p.gateway.to_string(),
        peer_address: p.peer.map(|a| a.to_string()).unwrap_or_default(),
        connected_since: Some(timestamp(p.connected_since)),
        build_version: p.build_version,
        identity: p.identity,
        controller,
        types: p
            .types
            .into_iter()
            .map(|(ty, t)| TypeStatus {
                type_url: ty.type_url().to_owned(),
                in_sync: in_sync.get(&ty).copied().unwrap_or(false),
                rejecting: t.rejecting,
                acked_version: t.acked_version,
                acked_resources: t.acked_resources,
                pending_version: t.pending_version,
                last_nack: t.last_nack.map(|n| Nack {
                    version: n.version,
                    message: n.message,
                    at: Some(timestamp(n.at)),
                }),
                resources_sent: t.resources_sent,
                resumed_resources: t.resumed_resources,
            })
            .collect(),
    }
}

pub use rauta_common::redact::{REDACTED, redacted};
