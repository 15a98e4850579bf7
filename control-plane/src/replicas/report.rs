//! What one controller replica tells the others about its proxies: a JSON document kept in a
//! ConfigMap of the controller's namespace. It is bounded so the ConfigMap stays well under
//! the API server's 1 MiB limit, and read back as outside input (anyone allowed to write
//! ConfigMaps there can write one), so every field is checked and bounded again.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use rauta_common::types::ResourceType;
use serde::{Deserialize, Serialize};

use crate::objects::ObjectRef;
use crate::proxy_report::{
    MAX_BUILD_VERSION, MAX_NACK_MESSAGE, MAX_NODE_ID, check_addresses, clean_text,
};
use crate::registry::{NackRecord, PeerProxy, ProxyRecord, TypeRecord};

/// Most bytes of a report's JSON: a ConfigMap holds at most 1 MiB, and the object around the
/// document needs some of it.
pub const MAX_REPORT_BYTES: usize = 768 * 1024;
/// Longest replica identity or Gateway reference kept from a report.
const MAX_NAME: usize = 512;
/// Longest version string kept (versions are decimal counters).
const MAX_VERSION: usize = 32;

/// One replica's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The replica's identity (its name in the leader Lease).
    pub replica: String,
    /// When the replica wrote this report (RFC 3339), by its clock.
    pub renewed_at: String,
    pub proxies: Vec<ProxyEntry>,
    /// Proxies connected to the replica but left out to keep the report bounded.
    #[serde(default)]
    pub unlisted: u64,
}

/// One proxy in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyEntry {
    pub id: String,
    /// "namespace/name".
    pub gateway: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    pub connected_since: String,
    /// The stream's remote address, as the replica sees it.
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub identity: String,
    #[serde(default)]
    pub build_version: String,
    #[serde(default)]
    pub types: Vec<TypeEntry>,
}

/// A proxy's state for one resource type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeEntry {
    /// The type's short name (`listener`, `route_table`...).
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub acked_version: String,
    #[serde(default)]
    pub acked_resources: u32,
    #[serde(default)]
    pub pending_version: String,
    /// On the replica's current snapshot.
    #[serde(default)]
    pub in_sync: bool,
    /// Rejected the latest version it was sent, and accepted none since.
    #[serde(default)]
    pub rejecting: bool,
    #[serde(default)]
    pub last_nack: Option<NackEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NackEntry {
    pub version: String,
    pub message: String,
    pub at: String,
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the report is {0} bytes, more than {MAX_REPORT_BYTES}")]
    TooLarge(usize),
    #[error("the report is not valid JSON of a proxy report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the report names no replica")]
    NoReplica,
}

fn time_text(t: SystemTime) -> String {
    Timestamp::try_from(t).map_or_else(|_| String::new(), |t| t.to_string())
}

fn parse_time(s: &str) -> Option<SystemTime> {
    s.parse::<Timestamp>().ok().map(SystemTime::from)
}

impl ProxyEntry {
    /// A proxy of this replica; `current` is the snapshot version of its Gateway here.
    pub fn from_record(r: &ProxyRecord, current: &str) -> ProxyEntry {
        ProxyEntry {
            id: r.id.clone(),
            gateway: r.gateway.to_string(),
            addresses: r.addresses.clone(),
            connected_since: time_text(r.connected_since),
            peer: r.peer.map(|p| p.to_string()).unwrap_or_default(),
            identity: r.identity.clone(),
            build_version: r.build_version.clone(),
            types: r
                .types
                .iter()
                .map(|(ty, t)| TypeEntry {
                    type_: ty.short_name().to_owned(),
                    acked_version: t.acked_version.clone(),
                    acked_resources: t.acked_resources,
                    pending_version: t.pending_version.clone(),
                    in_sync: t.pending_version.is_empty() && t.acked_version == current,
                    rejecting: t.rejecting,
                    last_nack: t.last_nack.as_ref().map(|n| NackEntry {
                        version: n.version.clone(),
                        message: n.message.clone(),
                        at: time_text(n.at),
                    }),
                })
                .collect(),
        }
    }

    /// This entry as another replica's proxy, checked; None if it names no proxy or Gateway.
    fn to_peer(&self, replica: &str) -> Option<PeerProxy> {
        let id = self.id.trim();
        if id.is_empty() || id.len() > MAX_NODE_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let gateway = ObjectRef::parse(&clean_text(&self.gateway, MAX_NAME))?;
        let mut types = BTreeMap::new();
        let mut in_sync = BTreeMap::new();
        for t in &self.types {
            let Some(ty) = ResourceType::parse(&t.type_) else {
                continue;
            };
            in_sync.insert(ty, t.in_sync);
            types.insert(
                ty,
                TypeRecord {
                    acked_version: clean_text(&t.acked_version, MAX_VERSION),
                    acked_resources: t.acked_resources,
                    pending_version: clean_text(&t.pending_version, MAX_VERSION),
                    last_nack: t.last_nack.as_ref().map(|n| NackRecord {
                        version: clean_text(&n.version, MAX_VERSION),
                        message: clean_text(&n.message, MAX_NACK_MESSAGE),
                        at: parse_time(&n.at).unwrap_or(SystemTime::UNIX_EPOCH),
                    }),
                    rejecting: t.rejecting,
                    resources_sent: 0,
                    resumed_resources: 0,
                },
            );
        }
        Some(PeerProxy {
            replica: replica.to_owned(),
            record: ProxyRecord {
                id: id.to_owned(),
                gateway,
                peer: self.peer.parse().ok(),
                connected_since: parse_time(&self.connected_since)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                build_version: clean_text(&self.build_version, MAX_BUILD_VERSION),
                identity: clean_text(&self.identity, MAX_NAME),
                addresses: check_addresses(&self.addresses).0,
                types,
            },
            in_sync,
        })
    }
}

impl Report {
    /// The JSON of a report of these proxies, within [`MAX_REPORT_BYTES`]: proxies that
    /// reject their configuration first (they decide a Gateway's status), then the others,
    /// as many as fit; the rest are counted in `unlisted`.
    pub fn encode(replica: &str, at: SystemTime, mut proxies: Vec<ProxyEntry>) -> (String, u64) {
        let rejecting = |p: &ProxyEntry| p.types.iter().any(|t| t.rejecting);
        // Stable: within each group the registry's order (gateway, id) stays.
        proxies.sort_by_key(|p| !rejecting(p));
        let mut report = Report {
            replica: replica.to_owned(),
            renewed_at: time_text(at),
            proxies: Vec::new(),
            unlisted: 0,
        };
        // The envelope with room for the largest count of unlisted proxies.
        let mut size = serde_json::to_string(&report).map_or(0, |s| s.len()) + 20;
        let total = proxies.len();
        for p in proxies {
            let entry = serde_json::to_string(&p).map_or(usize::MAX, |s| s.len() + 1);
            if size.saturating_add(entry) > MAX_REPORT_BYTES {
                break;
            }
            size += entry;
            report.proxies.push(p);
        }
        report.unlisted = (total - report.proxies.len()) as u64;
        let unlisted = report.unlisted;
        (serde_json::to_string(&report).unwrap_or_default(), unlisted)
    }

    /// Reads a report another replica wrote.
    pub fn decode(text: &str) -> Result<Report, ReportError> {
        if text.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge(text.len()));
        }
        let report: Report = serde_json::from_str(text)?;
        if report.replica.trim().is_empty() {
            return Err(ReportError::NoReplica);
        }
        Ok(report)
    }

    /// The report's proxies, checked, as the registry keeps other replicas' proxies.
    pub fn peers(&self) -> Vec<PeerProxy> {
        let replica = clean_text(&self.replica, MAX_NAME);
        self.proxies
            .iter()
            .filter_map(|p| p.to_peer(&replica))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(id: &str, rejecting: bool, message_len: usize) -> ProxyRecord {
        let mut types = BTreeMap::new();
        types.insert(
            ResourceType::Listener,
            TypeRecord {
                // A rejecting proxy is still on the version before.
                acked_version: if rejecting { "2" } else { "3" }.into(),
                acked_resources: 2,
                rejecting,
                last_nack: rejecting.then(|| NackRecord {
                    version: "4".into(),
                    message: "m".repeat(message_len),
                    at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                }),
                ..TypeRecord::default()
            },
        );
        ProxyRecord {
            id: id.into(),
            gateway: ObjectRef::new("infra", "gw"),
            peer: "127.0.0.1:4000".parse().ok(),
            connected_since: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            build_version: "1.0".into(),
            identity: "anonymous".into(),
            addresses: vec!["10.0.0.1".into()],
            types,
        }
    }

    #[test]
    fn a_report_reads_back_as_the_proxies_it_lists() {
        let records = [record("a", false, 0), record("b", true, 100)];
        let entries: Vec<_> = records
            .iter()
            .map(|r| ProxyEntry::from_record(r, "3"))
            .collect();
        let (json, unlisted) = Report::encode("replica-1", SystemTime::now(), entries);
        assert_eq!(unlisted, 0);
        let report = Report::decode(&json).unwrap();
        assert_eq!(report.replica, "replica-1");
        // Rejecting proxies come first.
        assert_eq!(report.proxies[0].id, "b");
        let peers = report.peers();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].replica, "replica-1");
        assert_eq!(peers[0].record, records[1], "every field survives the trip");
        assert_eq!(peers[1].record, records[0]);
        assert!(peers[1].in_sync[&ResourceType::Listener]);
        assert!(!peers[0].in_sync[&ResourceType::Listener]);
    }

    #[test]
    fn a_large_fleet_is_cut_to_the_limit_and_counted_keeping_the_rejecting() {
        let mut entries: Vec<_> = (0..5000)
            .map(|i| ProxyEntry::from_record(&record(&format!("p{i:04}"), false, 0), "3"))
            .collect();
        entries.push(ProxyEntry::from_record(
            &record("z-rejects", true, 1024),
            "3",
        ));
        let (json, unlisted) = Report::encode("r", SystemTime::now(), entries);
        assert!(json.len() <= MAX_REPORT_BYTES, "{}", json.len());
        assert!(unlisted > 0);
        let report = Report::decode(&json).unwrap();
        assert_eq!(report.unlisted, unlisted);
        assert_eq!(report.proxies.len() as u64 + unlisted, 5001);
        assert_eq!(report.proxies[0].id, "z-rejects");
    }

    #[test]
    fn what_another_replica_wrote_is_checked() {
        assert!(matches!(
            Report::decode(&" ".repeat(MAX_REPORT_BYTES + 1)),
            Err(ReportError::TooLarge(_))
        ));
        assert!(Report::decode("{\"proxies\": 3}").is_err());
        assert!(matches!(
            Report::decode(r#"{"replica": "", "renewedAt": "", "proxies": []}"#),
            Err(ReportError::NoReplica)
        ));
        let hostile = serde_json::json!({
            "replica": "r", "renewedAt": "yesterday",
            "proxies": [
                {"id": "", "gateway": "infra/gw", "connectedSince": ""},
                {"id": "ok", "gateway": "not a reference", "connectedSince": ""},
                {"id": "x", "gateway": "infra/gw", "connectedSince": "never",
                 "addresses": ["10.0.0.1", "not an address!", "10.0.0.1"],
                 "types": [{"type": "nonsense"},
                           {"type": "listener", "rejecting": true, "lastNack": {
                               "version": "7", "message": format!("bad\n{}", "y".repeat(5000)), "at": "?"}}]},
            ],
        });
        let peers = Report::decode(&hostile.to_string()).unwrap().peers();
        assert_eq!(
            peers.len(),
            1,
            "entries without a proxy id or Gateway are dropped"
        );
        let p = &peers[0].record;
        assert_eq!(p.addresses, ["10.0.0.1"]);
        assert_eq!(p.types.len(), 1);
        let nack = p.types[&ResourceType::Listener].last_nack.as_ref().unwrap();
        assert!(nack.message.len() <= MAX_NACK_MESSAGE && !nack.message.contains('\n'));
    }
}
