//! Connected proxies and what each has ACKed, for the admin service and metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rauta_common::api::v1::{ProxyVersion, VersionEvent, version_event};
use rauta_common::types::ResourceType;
use tokio::sync::{broadcast, watch};

use crate::objects::ObjectRef;

#[derive(Debug, Clone)]
pub struct NackRecord {
    pub version: String,
    pub message: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Default)]
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

#[derive(Debug, Clone)]
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

#[derive(Debug)]
pub struct ProxyRegistry {
    next_stream: AtomicU64,
    streams: Mutex<BTreeMap<u64, ProxyRecord>>,
    /// Bumped whenever a proxy connects or disconnects (Gateway addresses may change).
    membership: watch::Sender<u64>,
    /// Proxy ACKs and NACKs, for WatchVersions.
    events: broadcast::Sender<VersionEvent>,
}

impl Default for ProxyRegistry {
    fn default() -> Self {
        ProxyRegistry {
            next_stream: AtomicU64::new(0),
            streams: Mutex::default(),
            membership: watch::Sender::new(0),
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
    }

    /// Publishes a proxy's ACK (`nack` None) or NACK of a version, for WatchVersions.
    pub fn answered(&self, ty: ResourceType, version: &str, nack: Option<&str>) {
        let (proxy, gateway) = {
            let streams = self
                .registry
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match streams.get(&self.stream) {
                Some(r) => (r.id.clone(), r.gateway.to_string()),
                None => return,
            }
        };
        // Nobody watching is fine.
        let _ = self.registry.events.send(VersionEvent {
            gateway,
            at: Some(prost_types::Timestamp::from(SystemTime::now())),
            event: Some(version_event::Event::Proxy(ProxyVersion {
                proxy,
                type_url: ty.type_url().to_owned(),
                version: version.to_owned(),
                accepted: nack.is_none(),
                message: nack.unwrap_or_default().to_owned(),
            })),
        });
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
    }
}

impl ProxyRegistry {
    pub fn register(self: &Arc<Self>, record: ProxyRecord) -> Registration {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.insert(stream, record);
        drop(streams);
        self.membership.send_modify(|n| *n += 1);
        Registration {
            registry: Arc::clone(self),
            stream,
        }
    }

    /// What the Gateway's connected proxies currently reject: one line per proxy and type, with
    /// the proxy's reason.
    pub fn rejections(&self, gateway: &ObjectRef) -> Vec<String> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for p in streams.values().filter(|p| p.gateway == *gateway) {
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

    /// Every connected proxy, ordered by gateway then id.
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

    /// Distinct addresses of the proxies serving `gateway`, sorted.
    pub fn addresses(&self, gateway: &ObjectRef) -> Vec<String> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<String> = streams
            .values()
            .filter(|p| p.gateway == *gateway)
            .flat_map(|p| p.addresses.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
