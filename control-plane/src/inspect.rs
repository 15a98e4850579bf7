//! Admin views over time: what changed between two snapshot versions, and a live feed of
//! version changes (new snapshots, proxy ACKs and NACKs).

use std::sync::Arc;
use std::time::SystemTime;

use rauta_common::api::v1::{
    DiffSnapshotsRequest, ResourceChange, SnapshotDiff, VersionEvent, WatchVersionsRequest,
    version_event,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::admin::redacted;
use crate::cache::{HISTORY, SnapshotCache};
use crate::objects::ObjectRef;
use crate::registry::{Answer, ProxyRegistry};

fn parse_gateway(s: &str) -> Result<ObjectRef, Status> {
    ObjectRef::parse(s).ok_or_else(|| {
        Status::invalid_argument(format!("gateway must be \"namespace/name\", got {s:?}"))
    })
}

/// The resources that differ between two kept versions of a Gateway's snapshot.
pub fn diff(cache: &SnapshotCache, req: &DiffSnapshotsRequest) -> Result<SnapshotDiff, Status> {
    let gateway = parse_gateway(&req.gateway)?;
    let current = cache
        .get(&gateway)
        .ok_or_else(|| Status::not_found(format!("no snapshot for Gateway {gateway}")))?;
    let to_version = if req.to_version == 0 {
        current.version
    } else {
        req.to_version
    };
    if req.from_version > to_version {
        return Err(Status::invalid_argument(format!(
            "from_version {} is newer than to_version {to_version}",
            req.from_version
        )));
    }
    let kept = |v: u64| {
        cache.version(&gateway, v).ok_or_else(|| {
            Status::not_found(format!(
                "version {v} of Gateway {gateway} is not kept (the last {HISTORY} are; current is {})",
                current.version
            ))
        })
    };
    let (before, after) = (kept(req.from_version)?, kept(to_version)?);
    let mut changes = Vec::new();
    let types = before.resources.keys().chain(after.resources.keys());
    let types: std::collections::BTreeSet<_> = types.collect();
    for ty in types {
        let empty = Default::default();
        let old = before.resources.get(ty).unwrap_or(&empty);
        let new = after.resources.get(ty).unwrap_or(&empty);
        let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for name in names {
            let (b, a) = (old.get(name), new.get(name));
            let change = match (b, a) {
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                (Some(b), Some(a)) if b.version != a.version => "changed",
                _ => continue,
            };
            changes.push(ResourceChange {
                type_url: ty.type_url().to_owned(),
                name: name.clone(),
                change: change.to_owned(),
                before: b.map(|r| redacted(&r.resource())),
                after: a.map(|r| redacted(&r.resource())),
            });
        }
    }
    Ok(SnapshotDiff {
        gateway: gateway.to_string(),
        from_version: req.from_version,
        to_version,
        changes,
    })
}

pub type VersionStream = ReceiverStream<Result<VersionEvent, Status>>;

/// The current versions, then every change as it happens, for one Gateway or all.
pub fn watch(
    cache: &Arc<SnapshotCache>,
    registry: &Arc<ProxyRegistry>,
    req: &WatchVersionsRequest,
) -> Result<VersionStream, Status> {
    let filter = match req.gateway.as_str() {
        "" => None,
        g => Some(parse_gateway(g)?.to_string()),
    };
    // Subscribe before reading the current state, so nothing falls in between.
    let mut snapshots = cache.events();
    let mut answers = registry.events();
    let at = SystemTime::now();
    let now = Some(prost_types::Timestamp::from(at));
    let mut initial: Vec<VersionEvent> = cache
        .all()
        .iter()
        .map(|s| VersionEvent {
            gateway: s.gateway.to_string(),
            at: now,
            event: Some(version_event::Event::SnapshotVersion(s.version)),
        })
        .collect();
    // Every proxy's ACKed versions, this replica's and the other replicas' (from their
    // reports), each with the replica it is on.
    let replica = registry.replica();
    let own = registry.list().into_iter().map(|p| (replica.clone(), p));
    let peers = registry.peers().into_iter().map(|p| (p.replica, p.record));
    for (controller, p) in own.chain(peers) {
        for (ty, t) in p.types.iter().filter(|(_, t)| !t.acked_version.is_empty()) {
            let answer = Answer {
                gateway: &p.gateway,
                proxy: &p.id,
                controller: &controller,
                ty: *ty,
                version: &t.acked_version,
                nack: None,
            };
            initial.push(answer.event(at));
        }
    }
    let wanted = move |e: &VersionEvent| filter.as_ref().is_none_or(|g| *g == e.gateway);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        for event in initial.into_iter().filter(&wanted) {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                e = snapshots.recv() => e,
                e = answers.recv() => e,
                () = tx.closed() => return,
            };
            match next {
                Ok(event) if wanted(&event) => {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // A watcher too slow for the feed skips what it missed, and is told so.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let lagged = Status::data_loss(format!("{n} events were dropped: reconnect"));
                    let _ = tx.send(Err(lagged)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
