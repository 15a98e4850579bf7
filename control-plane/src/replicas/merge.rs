//! The other replicas' reports as they arrive, merged into one list of their proxies: our
//! own report left out, reports not renewed for a while (a replica that died without
//! deleting its report) ignored, and a proxy listed by two replicas (it moved, and the one
//! it left has not said so yet) taken from the one it connected to last.
//!
//! Staleness is judged by our own clock, as the leader Lease is: a report is stale when its
//! content has not changed for [`STALE_AFTER`] since we first saw it, so clocks that
//! disagree between nodes do not matter. The time a report says it was written only rules
//! out reports older than [`SURELY_DEAD`] at start, before we could have watched them age.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::report::Report;
use crate::registry::PeerProxy;

/// A report unchanged for this long is ignored: its replica renews it every
/// [`super::RENEW_EVERY`].
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// A report written this long ago by its own clock is from a replica that is gone, however
/// far the clocks are apart.
const SURELY_DEAD: Duration = Duration::from_secs(300);

struct Seen {
    /// The ConfigMap's resource version: it changes with every renewal.
    version: String,
    since: Instant,
    report: Report,
}

/// The reports of every replica, by ConfigMap name.
pub struct Reports {
    own: String,
    seen: BTreeMap<String, Seen>,
}

impl Reports {
    /// `own` is this replica's identity: its own report is not merged.
    pub fn new(own: &str) -> Reports {
        Reports {
            own: own.to_owned(),
            seen: BTreeMap::new(),
        }
    }

    /// A report was written (or listed) under `name` at resource version `version`.
    pub fn upsert(&mut self, name: &str, version: &str, report: Report, now: Instant) {
        if self.seen.get(name).is_some_and(|s| s.version == version) {
            return;
        }
        self.seen.insert(
            name.to_owned(),
            Seen {
                version: version.to_owned(),
                since: now,
                report,
            },
        );
    }

    pub fn remove(&mut self, name: &str) {
        self.seen.remove(name);
    }

    /// Reports unchanged since `before` saw them keep the age they had there: a re-list
    /// of the same content is no renewal.
    pub fn keep_ages_from(&mut self, before: &Reports) {
        for (name, seen) in &mut self.seen {
            if let Some(old) = before.seen.get(name)
                && old.version == seen.version
            {
                seen.since = old.since;
            }
        }
    }

    /// The fresh reports' proxies, each proxy once, ordered by Gateway then id.
    pub fn merged(&self, now: Instant, wall: SystemTime) -> Vec<PeerProxy> {
        let mut newest: BTreeMap<(String, String), PeerProxy> = BTreeMap::new();
        for seen in self.seen.values() {
            if seen.report.replica == self.own || now.duration_since(seen.since) >= STALE_AFTER {
                continue;
            }
            let written = seen
                .report
                .renewed_at
                .parse::<Timestamp>()
                .ok()
                .map(SystemTime::from);
            if written.is_some_and(|at| wall.duration_since(at).unwrap_or_default() > SURELY_DEAD) {
                continue;
            }
            for p in seen.report.peers() {
                let key = (p.record.gateway.to_string(), p.record.id.clone());
                match newest.get(&key) {
                    Some(kept) if kept.record.connected_since >= p.record.connected_since => {}
                    _ => {
                        newest.insert(key, p);
                    }
                }
            }
        }
        newest.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectRef;
    use crate::registry::ProxyRecord;
    use crate::replicas::report::ProxyEntry;

    fn report(replica: &str, proxies: &[(&str, u64)], written: SystemTime) -> Report {
        let entries = proxies
            .iter()
            .map(|(id, since)| {
                ProxyEntry::from_record(
                    &ProxyRecord {
                        id: (*id).into(),
                        gateway: ObjectRef::new("infra", "gw"),
                        peer: None,
                        connected_since: SystemTime::UNIX_EPOCH + Duration::from_secs(*since),
                        build_version: String::new(),
                        identity: String::new(),
                        addresses: vec![],
                        types: BTreeMap::new(),
                    },
                    "1",
                )
            })
            .collect();
        Report::decode(&Report::encode(replica, written, entries).0).unwrap()
    }

    fn ids(peers: &[PeerProxy]) -> Vec<(String, String)> {
        peers
            .iter()
            .map(|p| (p.replica.clone(), p.record.id.clone()))
            .collect()
    }

    #[test]
    fn own_and_stale_reports_are_left_out() {
        let wall = SystemTime::now();
        let start = Instant::now();
        let mut reports = Reports::new("me");
        reports.upsert(
            "rauta-proxies-me",
            "1",
            report("me", &[("mine", 1)], wall),
            start,
        );
        reports.upsert(
            "rauta-proxies-b",
            "2",
            report("b", &[("pb", 1)], wall),
            start,
        );
        let later = start + Duration::from_secs(20);
        reports.upsert(
            "rauta-proxies-c",
            "3",
            report("c", &[("pc", 1)], wall),
            later,
        );
        assert_eq!(
            ids(&reports.merged(later, wall)),
            [("b".into(), "pb".into()), ("c".into(), "pc".into())]
        );
        // b stops renewing: after STALE_AFTER its proxies are gone; c renewed in time.
        let much_later = start + STALE_AFTER + Duration::from_secs(1);
        reports.upsert(
            "rauta-proxies-c",
            "4",
            report("c", &[("pc", 1)], wall),
            much_later,
        );
        assert_eq!(
            ids(&reports.merged(much_later, wall)),
            [("c".into(), "pc".into())]
        );
        // The same version again is not a renewal.
        reports.upsert(
            "rauta-proxies-c",
            "4",
            report("c", &[("pc", 1)], wall),
            much_later + STALE_AFTER,
        );
        assert!(reports.merged(much_later + STALE_AFTER, wall).is_empty());
        // A report written long ago by its own clock is ignored from the start.
        let old = wall - SURELY_DEAD - Duration::from_secs(1);
        reports.upsert(
            "rauta-proxies-d",
            "5",
            report("d", &[("pd", 1)], old),
            much_later,
        );
        assert!(
            ids(&reports.merged(much_later, wall))
                .iter()
                .all(|(r, _)| r != "d")
        );
        reports.remove("rauta-proxies-c");
        reports.upsert(
            "rauta-proxies-c",
            "6",
            report("c", &[("pc", 1)], wall),
            much_later,
        );
        assert_eq!(ids(&reports.merged(much_later, wall)).len(), 1);
    }

    #[test]
    fn a_proxy_listed_twice_is_taken_from_its_newest_stream() {
        let wall = SystemTime::now();
        let now = Instant::now();
        let mut reports = Reports::new("me");
        reports.upsert("a", "1", report("a", &[("p", 100), ("q", 5)], wall), now);
        reports.upsert("b", "2", report("b", &[("p", 200)], wall), now);
        assert_eq!(
            ids(&reports.merged(now, wall)),
            [("b".into(), "p".into()), ("a".into(), "q".into())]
        );
    }
}
