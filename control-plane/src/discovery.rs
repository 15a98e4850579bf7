//! The discovery server: one task per proxy stream, following the proxy's Gateway snapshot
//! and sending per-type deltas with make-before-break ordering and one response in flight
//! per type (so a slow proxy only coalesces versions, it never makes the server buffer).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use rauta_common::api::v1::DeltaDiscoveryRequest;
use rauta_common::types::{ResourceType, WILDCARD};
use rauta_common::wire::EncodedDeltaResponse;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::{Authenticator, Identity};
use crate::cache::SnapshotCache;
use crate::held::Held;
use crate::metrics::ControllerMetrics;
use crate::objects::ObjectRef;
use crate::proxy_report::{MAX_ADDRESSES, MAX_NACK_MESSAGE, check_node, clean_text, shown};
use crate::registry::{NackRecord, ProxyRecord, ProxyRegistry, Registration};
use crate::snapshot::Snapshot;

#[derive(Clone)]
pub struct DiscoveryService {
    cache: Arc<SnapshotCache>,
    registry: Arc<ProxyRegistry>,
    metrics: Arc<ControllerMetrics>,
    auth: Arc<Authenticator>,
}

impl std::fmt::Debug for DiscoveryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiscoveryService")
    }
}

impl DiscoveryService {
    pub fn new(
        cache: Arc<SnapshotCache>,
        registry: Arc<ProxyRegistry>,
        metrics: Arc<ControllerMetrics>,
        auth: Arc<Authenticator>,
    ) -> Self {
        DiscoveryService {
            cache,
            registry,
            metrics,
            auth,
        }
    }
}

impl DiscoveryService {
    /// Opens one proxy's stream: reads its first request, registers it and starts the task that
    /// follows its Gateway's snapshots. The receiver yields the responses to send.
    pub async fn open(
        &self,
        peer: Option<SocketAddr>,
        identity: Identity,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<mpsc::Receiver<Result<EncodedDeltaResponse, Status>>, Status> {
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
        let node = check_node(&first.node.clone().unwrap_or_default())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let gateway = ObjectRef::new(&node.gateway_namespace, &node.gateway_name);
        if let Err(status) = self.auth.may_subscribe(&identity, &gateway) {
            warn!(proxy = %node.id, %gateway, %identity, ?peer, reason = %status.message(), "subscription refused");
            return Err(status);
        }
        if node.dropped_addresses > 0 {
            warn!(proxy = %node.id, %gateway, ?peer, dropped = node.dropped_addresses, kept = ?node.addresses, "proxy reported addresses that are not IP addresses or hostnames, repeated ones, or more than {MAX_ADDRESSES}; left out of the Gateway's status");
        }
        let (tx, rx) = mpsc::channel(ResourceType::ALL.len());
        let snapshots = self.cache.subscribe(&gateway);
        let registration = self.registry.register(ProxyRecord {
            id: node.id.clone(),
            gateway: gateway.clone(),
            peer,
            connected_since: SystemTime::now(),
            build_version: node.build_version,
            identity: identity.to_string(),
            addresses: node.addresses,
            types: BTreeMap::new(),
        });
        info!(proxy = %node.id, %gateway, %identity, ?peer, "proxy connected");
        let stream = ProxyStream {
            node_id: node.id,
            gateway,
            registration,
            metrics: Arc::clone(&self.metrics),
            types: BTreeMap::new(),
            next_nonce: 0,
            // Not sooner than a little while from now: with the clocks of the controller and
            // the API server apart, a token the API server still takes may look expired here.
            expires: identity
                .expires()
                .map(|at| at.max(SystemTime::now() + MIN_STREAM_LIFETIME)),
            tx,
        };
        let cache = Arc::clone(&self.cache);
        tokio::spawn(async move {
            // A controller that just started has nothing to say yet: an empty snapshot would
            // make a resuming proxy drop every route it serves.
            cache.synced().await;
            stream.run(first, inbound, snapshots).await;
        });
        Ok(rx)
    }
}

/// Shortest life of a stream whose credentials expire.
const MIN_STREAM_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Most resource names one stream may subscribe to by name, per type: names accumulate over
/// the stream's requests, and each is kept until unsubscribed.
const MAX_SUBSCRIBED_NAMES: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    Wildcard,
    Names(BTreeSet<String>),
}

impl Subscription {
    fn contains(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(names) => names.contains(name),
        }
    }
}

#[derive(Debug)]
struct Pending {
    nonce: String,
    version: u64,
    /// name -> Some(version) for an upsert, None for a removal.
    changes: Vec<(String, Option<String>)>,
    /// Once ACKed, the proxy holds exactly this snapshot's content of the type (a wildcard
    /// subscription sent every change, removals included); `None` otherwise.
    complete: Option<Arc<Snapshot>>,
}

#[derive(Debug)]
struct TypeState {
    subscription: Subscription,
    /// What the proxy holds, as of its last ACK (or its initial_resource_versions).
    known: Held,
    pending: Option<Pending>,
    /// The changes of the last NACKed response. While the same content is still due, it is
    /// not sent again (the proxy would refuse it again) and later types wait behind it.
    rejected: Option<Vec<(String, Option<String>)>>,
    /// Subscribed names to report as absent even if the proxy never had them.
    announce_absent: BTreeSet<String>,
    sent_any: bool,
    /// Snapshot version whose content for this type the proxy holds (ACKed or unchanged).
    current_version: Option<u64>,
}

impl TypeState {
    fn new(subscription: Subscription, known: BTreeMap<String, String>) -> Self {
        TypeState {
            subscription,
            known: Held::Map(known),
            pending: None,
            rejected: None,
            announce_absent: BTreeSet::new(),
            sent_any: false,
            current_version: None,
        }
    }

    /// Whether `known` can be exactly some snapshot's content: everything, by wildcard.
    fn wildcard(&self) -> bool {
        self.subscription == Subscription::Wildcard && self.announce_absent.is_empty()
    }

    /// Upserts and removals that would bring the proxy to `snapshot` for type `ty`.
    fn diff(
        &self,
        snapshot: &Snapshot,
        ty: ResourceType,
        allow_removals: bool,
    ) -> Vec<(String, Option<String>)> {
        // Holding a snapshot's content exactly (wildcard only), the next version's difference
        // is that snapshot's `Delta`, found without going through every resource.
        if self.wildcard()
            && let Some(held) = self.known.snapshot_version()
        {
            if held == snapshot.version {
                return Vec::new();
            }
            if let Some(delta) = snapshot.delta.as_ref().filter(|d| d.from == held) {
                let changes = delta.changes.get(&ty).map_or(&[][..], Vec::as_slice);
                let changes: Vec<_> = changes
                    .iter()
                    .filter(|(_, change)| allow_removals || change.is_some())
                    .cloned()
                    .collect();
                // Tests (debug builds) check the shortcut against the full comparison.
                debug_assert_eq!(changes, self.full_diff(snapshot, ty, allow_removals));
                return changes;
            }
        }
        self.full_diff(snapshot, ty, allow_removals)
    }

    /// `diff` by going through every resource of the type.
    fn full_diff(
        &self,
        snapshot: &Snapshot,
        ty: ResourceType,
        allow_removals: bool,
    ) -> Vec<(String, Option<String>)> {
        let current = snapshot.of_type(ty);
        let mut changes = Vec::new();
        for (name, resource) in current.into_iter().flatten() {
            if self.subscription.contains(name)
                && self.known.get(ty, name) != Some(resource.version.as_str())
            {
                changes.push((name.clone(), Some(resource.version.clone())));
            }
        }
        if allow_removals {
            for name in self.known.names(ty) {
                let exists = current.is_some_and(|c| c.contains_key(name));
                if !exists || !self.subscription.contains(name) {
                    changes.push((name.clone(), None));
                }
            }
        }
        // Names the proxy asked for but never had: "does not exist" is news, not a removal, so
        // it never waits for routes to settle.
        for name in &self.announce_absent {
            let exists = current.is_some_and(|c| c.contains_key(name));
            if !exists && !self.known.contains(ty, name) {
                changes.push((name.clone(), None));
            }
        }
        changes
    }
}

struct ProxyStream {
    node_id: String,
    gateway: ObjectRef,
    registration: Registration,
    metrics: Arc<ControllerMetrics>,
    types: BTreeMap<ResourceType, TypeState>,
    next_nonce: u64,
    /// When the credentials the stream was opened with expire: the stream ends then, and the
    /// proxy comes back with its current ones (a revoked ServiceAccount stops getting updates).
    expires: Option<SystemTime>,
    tx: mpsc::Sender<Result<EncodedDeltaResponse, Status>>,
}

/// Resolves at `at`, or never.
async fn expiry(at: Option<SystemTime>) {
    match at {
        Some(at) => {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}

impl ProxyStream {
    async fn run(
        mut self,
        first: DeltaDiscoveryRequest,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
    ) {
        self.metrics.connected_proxies.inc();
        let expired = expiry(self.expires);
        tokio::pin!(expired);
        let mut request = Some(first);
        loop {
            if let Some(req) = request.take()
                && let Err(status) = self.handle_request(req)
            {
                let _ = self.tx.send(Err(status)).await;
                break;
            }
            let snapshot = snapshots.borrow_and_update().clone();
            if self.push(&snapshot).await.is_err() {
                break; // The proxy went away.
            }
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => request = Some(req),
                    Ok(None) => break,
                    Err(status) => {
                        debug!(proxy = %self.node_id, %status, "stream error");
                        break;
                    }
                },
                changed = snapshots.changed() => if changed.is_err() { break },
                () = &mut expired => {
                    info!(proxy = %self.node_id, gateway = %self.gateway, "credentials of the stream expired; the proxy reconnects with its current ones");
                    let _ = self.tx.send(Err(Status::unauthenticated(
                        "the bearer token this stream was opened with expired; reconnect with the current one",
                    ))).await;
                    break;
                }
            }
        }
        self.metrics.connected_proxies.dec();
        info!(proxy = %self.node_id, gateway = %self.gateway, "proxy disconnected");
    }

    fn handle_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        let Some(ty) = ResourceType::parse(&req.type_url) else {
            return Err(Status::invalid_argument(format!(
                "unknown type_url {}",
                shown(&req.type_url)
            )));
        };
        let state = match self.types.get_mut(&ty) {
            Some(state) => state,
            None => {
                // First request of this type on this stream: it opens the subscription.
                let names: BTreeSet<String> =
                    req.resource_names_subscribe.iter().cloned().collect();
                let subscription = if names.is_empty() || names.contains(WILDCARD) {
                    Subscription::Wildcard
                } else {
                    Subscription::Names(BTreeSet::new())
                };
                let resumed = req.initial_resource_versions.len();
                self.registration.update_type(ty, |r| {
                    r.resumed_resources = u32::try_from(resumed).unwrap_or(u32::MAX)
                });
                let known = req.initial_resource_versions.clone().into_iter().collect();
                self.types
                    .entry(ty)
                    .or_insert(TypeState::new(subscription, known))
            }
        };
        if !req.response_nonce.is_empty() {
            match &state.pending {
                Some(p) if p.nonce == req.response_nonce => {
                    let pending = state.pending.take().expect("checked above");
                    let version = pending.version.to_string();
                    if let Some(error) = &req.error_detail {
                        // The proxy's words go to logs, the admin service and Gateway status.
                        let message = clean_text(&error.message, MAX_NACK_MESSAGE);
                        warn!(proxy = %self.node_id, gateway = %self.gateway, ty = ty.short_name(), %version, %message, "proxy rejected update (NACK)");
                        state.rejected = Some(pending.changes.clone());
                        self.metrics
                            .nacks
                            .with_label_values(&[ty.short_name()])
                            .inc();
                        let nack = NackRecord {
                            version,
                            message,
                            at: SystemTime::now(),
                        };
                        self.registration
                            .answered(ty, &nack.version, Some(&nack.message));
                        self.registration.update_type(ty, |r| {
                            r.last_nack = Some(nack);
                            r.rejecting = true;
                            r.pending_version.clear();
                        });
                    } else {
                        if let Some(snapshot) = pending.complete {
                            state.known = Held::Snapshot(snapshot);
                        } else {
                            let known = state.known.map_mut(ty);
                            for (name, change) in pending.changes {
                                match change {
                                    Some(v) => known.insert(name, v),
                                    None => known.remove(&name),
                                };
                            }
                        }
                        state.current_version = Some(pending.version);
                        let count = u32::try_from(state.known.len(ty)).unwrap_or(u32::MAX);
                        debug!(proxy = %self.node_id, ty = ty.short_name(), %version, "ACK");
                        self.registration.answered(ty, &version, None);
                        self.registration.update_type(ty, |r| {
                            r.acked_version = version;
                            r.acked_resources = count;
                            r.rejecting = false;
                            r.pending_version.clear();
                        });
                    }
                }
                // A nonce from an older response: the proxy is catching up, nothing to do.
                _ => {
                    debug!(proxy = %self.node_id, nonce = %shown(&req.response_nonce), "stale nonce ignored")
                }
            }
        }
        // Subscription changes after the first request (explicit names only).
        if let Subscription::Names(names) = &mut state.subscription {
            if names.len() + req.resource_names_subscribe.len() > MAX_SUBSCRIBED_NAMES {
                return Err(Status::resource_exhausted(format!(
                    "at most {MAX_SUBSCRIBED_NAMES} names may be subscribed per type"
                )));
            }
            for name in &req.resource_names_subscribe {
                if name == WILDCARD {
                    state.subscription = Subscription::Wildcard;
                    break;
                }
                if names.insert(name.clone()) {
                    state.announce_absent.insert(name.clone());
                    state.rejected = None;
                }
            }
        }
        if let Subscription::Names(names) = &mut state.subscription {
            for name in &req.resource_names_unsubscribe {
                names.remove(name);
                state.known.map_mut(ty).remove(name);
                state.announce_absent.remove(name);
            }
        }
        Ok(())
    }

    /// Sends what each type lacks, in make-before-break order: clusters, endpoints, listeners,
    /// route tables; cluster and endpoint removals wait until routes no longer need them.
    async fn push(&mut self, snapshot: &Arc<Snapshot>) -> Result<(), ()> {
        // Routes are settled when every route type is subscribed, nothing is in flight, and the
        // proxy holds this version's content (a rejected route table is not settled).
        let routes_settled = [
            ResourceType::Listener,
            ResourceType::RouteTable,
            ResourceType::RouteRules,
            ResourceType::L4RouteTable,
        ]
        .iter()
        .all(|ty| {
            self.types
                .get(ty)
                .is_some_and(|s| s.pending.is_none() && s.diff(snapshot, *ty, true).is_empty())
        });
        for ty in ResourceType::ALL {
            let Some(state) = self.types.get_mut(&ty) else {
                continue;
            };
            let allow_removals =
                routes_settled || !matches!(ty, ResourceType::Cluster | ResourceType::Endpoints);
            let changes = state.diff(snapshot, ty, allow_removals);
            if state.pending.is_some() {
                if changes.is_empty() {
                    continue;
                }
                break; // Later types wait for this one, to keep the order.
            }
            if let Some(rejected) = &state.rejected
                && !changes.is_empty()
                && rejected.iter().all(|r| changes.contains(r))
            {
                // What the proxy refused is still due unchanged: sending it again would only be
                // refused again, and later types must not run ahead of it.
                break;
            }
            if changes.is_empty() && state.sent_any {
                // The proxy holds this version's content: whatever it refused is no longer
                // due (the configuration went back to what it has), so it rejects nothing.
                if state.rejected.take().is_some() {
                    self.registration.update_type(ty, |r| r.rejecting = false);
                }
                if allow_removals
                    && state.wildcard()
                    && state.known.snapshot_version() != Some(snapshot.version)
                {
                    state.known = Held::Snapshot(Arc::clone(snapshot));
                }
                if state.current_version != Some(snapshot.version) {
                    // Nothing of this type changed: what the proxy holds is this version's content.
                    state.current_version = Some(snapshot.version);
                    let version = snapshot.version.to_string();
                    self.registration
                        .update_type(ty, |r| r.acked_version = version);
                }
                continue;
            }
            let current = snapshot.of_type(ty);
            let mut resources = Vec::new();
            let mut removed = Vec::new();
            for (name, change) in &changes {
                match change {
                    Some(_) => {
                        if let Some(r) = current.and_then(|c| c.get(name)) {
                            resources.push(r.wire.clone());
                        }
                    }
                    None => removed.push(name.clone()),
                }
            }
            self.next_nonce += 1;
            let nonce = self.next_nonce.to_string();
            let sent = resources.len() as u64;
            let response = EncodedDeltaResponse {
                system_version_info: snapshot.version.to_string(),
                type_url: ty.type_url().to_owned(),
                resources,
                removed_resources: removed,
                nonce: nonce.clone(),
            };
            state.announce_absent.clear();
            state.sent_any = true;
            state.pending = Some(Pending {
                nonce,
                version: snapshot.version,
                changes,
                complete: (allow_removals && state.wildcard()).then(|| Arc::clone(snapshot)),
            });
            let version = snapshot.version.to_string();
            self.registration.update_type(ty, |r| {
                r.resources_sent += sent;
                r.pending_version = version;
            });
            self.metrics
                .resources_sent
                .with_label_values(&[ty.short_name()])
                .inc_by(sent);
            self.tx.send(Ok(response)).await.map_err(|_| ())?;
        }
        Ok(())
    }
}
