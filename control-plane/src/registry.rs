//! Connected proxies and what each has ACKed, for the admin service and metrics; and the
//! proxies other controller replicas report (`replicas/`), so that status and the admin
//! service see the whole fleet whichever replica a proxy is connected to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rauta_common::api::v1::{ProxyVersion, VersionEvent, version_event};
use rauta_common::types::ResourceType;
use tokio::sync::{broadcast, watch};

use crate::objects::ObjectRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackRecord {
    pub version: String,
    pub message: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeRecord {
    pub acked_version: String,
    pub acked_resources: u32,
    pub pending_version: String,
    pub last_nack: Option<NackRecord>,
    /// The proxy rejected the latest version it was sent and has not accepted one since.
    pub rejecting: bool,
    pub resources_sent: u64,
    pub resumed_resources: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRecord {
    pub id: String,
    pub gateway: ObjectRef,
    pub peer: Option<SocketAddr>,
    pub connected_since: SystemTime,
    pub build_version: String,
    /// Who the stream authenticated as.
    pub identity: String,
    /// Addresses the proxy serves the Gateway on (Node.addresses).
    pub addresses: Vec<String>,
    pub types: BTreeMap<ResourceType, TypeRecord>,
}

/// A proxy connected to another controller replica, as that replica reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProxy {
    /// The replica's identity (its name in the leader Lease).
    pub replica: String,
    pub record: ProxyRecord,
    /// Per type, whether the proxy holds its replica's current snapshot: snapshot versions
    /// count per process, so only that replica can tell.
    pub in_sync: BTreeMap<ResourceType, bool>,
}

/// A proxy's ACK (`nack` None) or NACK of a version, as WatchVersions shows it.
pub struct Answer<'a> {
    pub gateway: &'a ObjectRef,
    pub proxy: &'a str,
    /// The replica the proxy is connected to.
    pub controller: &'a str,
    pub ty: ResourceType,
    pub version: &'a str,
    pub nack: Option<&'a str>,
}

impl Answer<'_> {
    pub fn event(&self, at: SystemTime) -> VersionEvent {
        VersionEvent {
            gateway: self.gateway.to_string(),
            at: Some(prost_types::Timestamp::from(at)),
            event: Some(version_event::Event::Proxy(ProxyVersion {
                proxy: self.proxy.to_owned(),
                type_url: self.ty.type_url().to_owned(),
                version: self.version.to_owned(),
                accepted: self.nack.is_none(),
                message: self.nack.unwrap_or_default().to_owned(),
                controller: self.controller.to_owned(),
            })),
        }
    }
}

#[derive(Debug)]
pub struct ProxyRegistry {
    next_stream: AtomicU64,
    streams: Mutex<BTreeMap<u64, ProxyRecord>>,
    /// Proxies of the other replicas, from their fresh reports.
    peers: Mutex<Vec<PeerProxy>>,
    /// This replica's identity, shown with its own proxies; empty outside Kubernetes.
    replica: Mutex<String>,
    /// Bumped whenever a proxy connects or disconnects, starts or stops rejecting, here or
    /// on another replica (Gateway status may change).
    membership: watch::Sender<u64>,
    /// Bumped on every change to this replica's proxies (ACKs too), for its report.
    local: watch::Sender<u64>,
    /// Proxy ACKs and NACKs, for WatchVersions.
    events: broadcast::Sender<VersionEvent>,
}

impl Default for ProxyRegistry {
    fn default() -> Self {
        ProxyRegistry {
            next_stream: AtomicU64::new(0),
            streams: Mutex::default(),
            peers: Mutex::default(),
            replica: Mutex::default(),
            membership: watch::Sender::new(0),
            local: watch::Sender::new(0),
            events: broadcast::Sender::new(8192),
        }
    }
}

/// Removes its stream from the registry when dropped (the stream ended).
#[derive(Debug)]
pub struct Registration {
    registry: Arc<ProxyRegistry>,
    stream: u64,
}

impl Registration {
    pub fn update(&self, f: impl FnOnce(&mut ProxyRecord)) {
        let mut streams = self
            .registry
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(record) = streams.get_mut(&self.stream) {
            f(record);
        }
        drop(streams);
        self.registry.local.send_modify(|n| *n += 1);
    }

    /// Publishes a proxy's ACK (`nack` None) or NACK of a version, for WatchVersions.
    pub fn answered(&self, ty: ResourceType, version: &str, nack: Option<&str>) {
        if self.registry.events.receiver_count() == 0 {
            return; // Nobody watching: every ACK of the fleet would build an event for nothing.
        }
        let (proxy, gateway) = {
            let streams = self
                .registry
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match streams.get(&self.stream) {
                Some(r) => (r.id.clone(), r.gateway.clone()),
                None => return,
            }
        };
        let answer = Answer {
            gateway: &gateway,
            proxy: &proxy,
            controller: &self.registry.replica(),
            ty,
            version,
            nack,
        };
        // Nobody watching is fine.
        let _ = self.registry.events.send(answer.event(SystemTime::now()));
    }

    pub fn update_type(&self, ty: ResourceType, f: impl FnOnce(&mut TypeRecord)) {
        let mut flipped = false;
        self.update(|r| {
            let record = r.types.entry(ty).or_default();
            let before = record.rejecting;
            f(record);
            flipped = before != record.rejecting;
        });
        // Whether a proxy rejects its config shows in Gateway status: tell the status writers.
        if flipped {
            self.registry.membership.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut streams = self
            .registry
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        streams.remove(&self.stream);
        drop(streams);
        self.registry.membership.send_modify(|n| *n += 1);
        self.registry.local.send_modify(|n| *n += 1);
    }
}

impl ProxyRegistry {
    pub fn register(self: &Arc<Self>, record: ProxyRecord) -> Registration {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.insert(stream, record);
        drop(streams);
        self.membership.send_modify(|n| *n += 1);
        self.local.send_modify(|n| *n += 1);
        Registration {
            registry: Arc::clone(self),
            stream,
        }
    }

    /// What the Gateway's connected proxies currently reject: one line per proxy and type, with
    /// the proxy's reason.
    /// Proxies of other replicas count too.
    pub fn rejections(&self, gateway: &ObjectRef) -> Vec<String> {
        let peers = self.peers();
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let all = streams.values().chain(peers.iter().map(|p| &p.record));
        let mut out = Vec::new();
        for p in all.filter(|p| p.gateway == *gateway) {
            for (ty, t) in p.types.iter().filter(|(_, t)| t.rejecting) {
                if let Some(nack) = &t.last_nack {
                    out.push(format!(
                        "proxy {} rejected {} version {}: {}",
                        p.id,
                        ty.short_name(),
                        nack.version,
                        nack.message
                    ));
                }
            }
        }
        out.sort();
        out
    }

    /// Proxy ACKs and NACKs from now on.
    pub fn events(&self) -> broadcast::Receiver<VersionEvent> {
        self.events.subscribe()
    }

    /// Every proxy connected to this replica, ordered by gateway then id.
    pub fn list(&self) -> Vec<ProxyRecord> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = streams.values().cloned().collect();
        out.sort_by(|a, b| {
            (&a.gateway, &a.id, a.connected_since).cmp(&(&b.gateway, &b.id, b.connected_since))
        });
        out
    }

    /// Follows proxy connects and disconnects.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.membership.subscribe()
    }

    /// Distinct addresses of the proxies serving `gateway` (on any replica), sorted.
    pub fn addresses(&self, gateway: &ObjectRef) -> Vec<String> {
        let peers = self.peers();
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<String> = streams
            .values()
            .chain(peers.iter().map(|p| &p.record))
            .filter(|p| p.gateway == *gateway)
            .flat_map(|p| p.addresses.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Follows every change to this replica's proxies, ACKs included.
    pub fn subscribe_local(&self) -> watch::Receiver<u64> {
        self.local.subscribe()
    }

    /// Names this replica (its Lease identity), shown with its own proxies.
    pub fn set_replica(&self, name: &str) {
        *self.replica.lock().unwrap_or_else(PoisonError::into_inner) = name.to_owned();
    }

    pub fn replica(&self) -> String {
        self.replica
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces what is known of the other replicas' proxies; status writers are told only
    /// when something changed, and WatchVersions of every ACK and NACK the reports show
    /// anew.
    pub fn set_peers(&self, peers: Vec<PeerProxy>) {
        let mut current = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if *current == peers {
            return;
        }
        // Nobody watching: no events to build.
        let events = if self.events.receiver_count() > 0 {
            peer_answers(&current, &peers)
        } else {
            Vec::new()
        };
        *current = peers;
        drop(current);
        self.membership.send_modify(|n| *n += 1);
        for event in events {
            // Nobody watching is fine.
            let _ = self.events.send(event);
        }
    }

    /// The other replicas' proxies, less those that have since connected here (a proxy that
    /// moved: its old replica may not have said so yet, or be gone).
    pub fn peers(&self) -> Vec<PeerProxy> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut newest_here: BTreeMap<(&ObjectRef, &str), SystemTime> = BTreeMap::new();
        for r in streams.values() {
            let at = newest_here
                .entry((&r.gateway, r.id.as_str()))
                .or_insert(r.connected_since);
            *at = (*at).max(r.connected_since);
        }
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers
            .iter()
            .filter(|p| {
                newest_here
                    .get(&(&p.record.gateway, p.record.id.as_str()))
                    .is_none_or(|here| *here < p.record.connected_since)
            })
            .cloned()
            .collect()
    }
}

/// The ACKs and NACKs the other replicas' reports show anew, going from `before` to
/// `after`: each answer once, however often its report is renewed.
fn peer_answers(before: &[PeerProxy], after: &[PeerProxy]) -> Vec<VersionEvent> {
    let then_by_key: BTreeMap<(&str, &ObjectRef, &str), &PeerProxy> = before
        .iter()
        .map(|p| {
            (
                (p.replica.as_str(), &p.record.gateway, p.record.id.as_str()),
                p,
            )
        })
        .collect();
    let now = SystemTime::now();
    let mut events = Vec::new();
    for p in after {
        let key = (p.replica.as_str(), &p.record.gateway, p.record.id.as_str());
        let then = then_by_key.get(&key).map(|old| &old.record.types);
        for (ty, t) in &p.record.types {
            let old = then.and_then(|types| types.get(ty));
            let event = |version: &str, nack: Option<&str>, at: SystemTime| {
                let answer = Answer {
                    gateway: &p.record.gateway,
                    proxy: &p.record.id,
                    controller: &p.replica,
                    ty: *ty,
                    version,
                    nack,
                };
                answer.event(at)
            };
            if !t.acked_version.is_empty() && old.is_none_or(|o| o.acked_version != t.acked_version)
            {
                events.push(event(&t.acked_version, None, now));
            }
            if let Some(nack) = &t.last_nack
                && old.is_none_or(|o| o.last_nack.as_ref() != Some(nack))
            {
                events.push(event(&nack.version, Some(&nack.message), nack.at));
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(id: &str, since: u64, rejecting: bool) -> ProxyRecord {
        let mut types = BTreeMap::new();
        types.insert(
            ResourceType::Listener,
            TypeRecord {
                rejecting,
                last_nack: rejecting.then(|| NackRecord {
                    version: "2".into(),
                    message: "cannot bind".into(),
                    at: SystemTime::UNIX_EPOCH,
                }),
                ..TypeRecord::default()
            },
        );
        ProxyRecord {
            id: id.into(),
            gateway: ObjectRef::new("infra", "gw"),
            peer: None,
            connected_since: SystemTime::UNIX_EPOCH + Duration::from_secs(since),
            build_version: String::new(),
            identity: String::new(),
            addresses: vec![format!("10.0.0.{since}")],
            types,
        }
    }

    fn peer(replica: &str, record: ProxyRecord) -> PeerProxy {
        PeerProxy {
            replica: replica.into(),
            record,
            in_sync: BTreeMap::new(),
        }
    }

    #[test]
    fn other_replicas_proxies_count_for_status_until_they_connect_here() {
        let registry = Arc::new(ProxyRegistry::default());
        let gw = ObjectRef::new("infra", "gw");
        let mut members = registry.subscribe();
        let _here = registry.register(record("a", 1, false));
        registry.set_peers(vec![peer("r2", record("b", 2, true))]);
        assert!(members.has_changed().unwrap());
        members.borrow_and_update();
        assert_eq!(
            registry.rejections(&gw),
            ["proxy b rejected listener version 2: cannot bind"]
        );
        assert_eq!(registry.addresses(&gw), ["10.0.0.1", "10.0.0.2"]);
        registry.set_peers(vec![peer("r2", record("b", 2, true))]);
        assert!(!members.has_changed().unwrap(), "nothing changed");
        // b moved here: its newer stream here is what counts.
        let _moved = registry.register(record("b", 3, false));
        assert!(registry.peers().is_empty());
        assert!(registry.rejections(&gw).is_empty());
        assert_eq!(registry.list().len(), 2);
    }

    /// What WatchVersions receives: (proxy, controller, version, accepted, message).
    fn answers(
        events: &mut broadcast::Receiver<VersionEvent>,
    ) -> Vec<(String, String, String, bool, String)> {
        let mut out = Vec::new();
        while let Ok(e) = events.try_recv() {
            if let Some(version_event::Event::Proxy(p)) = e.event {
                out.push((p.proxy, p.controller, p.version, p.accepted, p.message));
            }
        }
        out
    }

    #[test]
    fn other_replicas_proxies_answers_reach_watchers_once_each() {
        let registry = Arc::new(ProxyRegistry::default());
        let mut events = registry.events();
        let acked = |id: &str, version: &str| {
            let mut r = record(id, 1, false);
            if let Some(t) = r.types.get_mut(&ResourceType::Listener) {
                t.acked_version = version.into();
            }
            r
        };
        registry.set_peers(vec![peer("r2", acked("b", "1"))]);
        let ack = |version: &str| ("b".into(), "r2".into(), version.into(), true, String::new());
        assert_eq!(answers(&mut events), [ack("1")]);
        // A renewed report that says the same: nothing new.
        let mut renewed = peer("r2", acked("b", "1"));
        renewed.in_sync.insert(ResourceType::Listener, true);
        registry.set_peers(vec![renewed]);
        assert_eq!(answers(&mut events), []);
        registry.set_peers(vec![peer("r2", acked("b", "2"))]);
        assert_eq!(answers(&mut events), [ack("2")]);
        // It rejects version 3 and keeps 2: the NACK, once.
        let mut rejecting = record("b", 1, true);
        if let Some(t) = rejecting.types.get_mut(&ResourceType::Listener) {
            t.acked_version = "2".into();
        }
        registry.set_peers(vec![peer("r2", rejecting.clone())]);
        let nack = (
            "b".into(),
            "r2".into(),
            "2".into(),
            false,
            "cannot bind".into(),
        );
        assert_eq!(answers(&mut events), [nack]);
        registry.set_peers(vec![peer("r2", rejecting)]);
        assert_eq!(answers(&mut events), []);
        // The same proxy id on another replica (it moved): its answers are news there.
        registry.set_peers(vec![peer("r3", acked("b", "2"))]);
        let moved = ("b".into(), "r3".into(), "2".into(), true, String::new());
        assert_eq!(answers(&mut events), [moved]);
    }
}
