//! Several controller replicas, one truth: each replica in Kubernetes mode publishes what its
//! proxies ACKed and NACKed in a ConfigMap of the controller's namespace
//! (`rauta-proxies-<identity>`, labelled [`REPORT_LABEL`]), and follows the other replicas'
//! ConfigMaps into the proxy registry. The leader's status then reflects every proxy, and the
//! admin service of any replica lists them all.
//!
//! The API server is the only channel between replicas: they need no address of each other,
//! and a report outlives nothing but its replica (deleted on a clean stop, ignored once it
//! stops being renewed).

pub mod merge;
pub mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cache::SnapshotCache;
use crate::registry::ProxyRegistry;
use merge::Reports;
use report::{ProxyEntry, Report};

/// Label of every replica's report ConfigMap.
pub const REPORT_LABEL: &str = "rauta.dev/proxy-report";
/// The ConfigMap key holding the report's JSON.
pub const REPORT_KEY: &str = "report.json";
/// Reports are renewed this often even when nothing changed: a report not renewed for
/// [`merge::STALE_AFTER`] is ignored.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Changes are written at most this often: a fleet ACKing a new version is one write.
const COALESCE: Duration = Duration::from_millis(500);
/// After a failed write.
const RETRY: Duration = Duration::from_secs(2);
/// How often stale reports are looked for when no report changes.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

/// Where this replica's report goes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The controller's namespace.
    pub namespace: String,
    /// This replica's identity (its name in the leader Lease).
    pub identity: String,
}

impl Settings {
    /// `rauta-proxies-<identity>`, the identity made a valid object name.
    pub fn config_map(&self) -> String {
        let mut name: String = self
            .identity
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
                _ => '-',
            })
            .collect();
        name.truncate(253 - "rauta-proxies-".len());
        let name = name.trim_matches(['-', '.']);
        format!(
            "rauta-proxies-{}",
            if name.is_empty() { "replica" } else { name }
        )
    }
}

/// Whether an object is a replica's report (not configuration to translate).
pub fn is_report(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.get(REPORT_LABEL).is_some_and(|v| v == "true"))
}

fn report_map(settings: &Settings, json: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(settings.config_map()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(BTreeMap::from([
                (REPORT_LABEL.to_owned(), "true".to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "rauta-controller".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(REPORT_KEY.to_owned(), json)])),
        ..ConfigMap::default()
    }
}

/// Writes this replica's report: replaced whole (it is ours alone), created if absent.
async fn write(
    api: &Api<ConfigMap>,
    settings: &Settings,
    registry: &ProxyRegistry,
    cache: &SnapshotCache,
) -> Result<u64, kube::Error> {
    let entries = registry
        .list()
        .iter()
        .map(|p| {
            let current = cache
                .get(&p.gateway)
                .map(|s| s.version.to_string())
                .unwrap_or_default();
            ProxyEntry::from_record(p, &current)
        })
        .collect();
    let (json, unlisted) = Report::encode(&settings.identity, SystemTime::now(), entries);
    let map = report_map(settings, json);
    let name = settings.config_map();
    match api.replace(&name, &PostParams::default(), &map).await {
        Err(kube::Error::Api(s)) if s.code == 404 => {
            api.create(&PostParams::default(), &map).await?;
        }
        other => {
            other?;
        }
    }
    Ok(unlisted)
}

/// Keeps this replica's report current, forever: written when its proxies change (at most
/// every [`COALESCE`]) and renewed every [`RENEW_EVERY`].
pub async fn publish(
    client: kube::Client,
    settings: Settings,
    registry: Arc<ProxyRegistry>,
    cache: Arc<SnapshotCache>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &settings.namespace);
    let mut changes = registry.subscribe_local();
    let mut failing = false;
    let mut cut = false;
    loop {
        changes.borrow_and_update();
        let wait = match write(&api, &settings, &registry, &cache).await {
            Ok(unlisted) => {
                if failing {
                    info!(config_map = %settings.config_map(), "proxy report written again");
                }
                failing = false;
                if (unlisted > 0) != cut {
                    cut = unlisted > 0;
                    if cut {
                        warn!(
                            unlisted,
                            "too many proxies for one report: those left out (none rejecting, while room remains) are not seen by the other replicas"
                        );
                    }
                }
                RENEW_EVERY
            }
            Err(err) => {
                if !failing {
                    warn!(%err, config_map = %format!("{}/{}", settings.namespace, settings.config_map()), "cannot write this replica's proxy report: other replicas (and the leader's status) do not see its proxies; retrying (check RBAC)");
                }
                failing = true;
                RETRY
            }
        };
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// Deletes this replica's report, on a clean stop: its proxies are about to reconnect to
/// the others.
pub async fn withdraw(client: kube::Client, settings: &Settings) {
    let api: Api<ConfigMap> = Api::namespaced(client, &settings.namespace);
    match api
        .delete(&settings.config_map(), &DeleteParams::default())
        .await
    {
        Ok(_) => info!("proxy report withdrawn"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(err) => {
            warn!(%err, "cannot delete this replica's proxy report; the others ignore it once it is stale")
        }
    }
}

/// A report ConfigMap's name, resource version and report, if it is one we can read.
fn read(map: &ConfigMap) -> Option<(String, String, Report)> {
    if !is_report(&map.metadata) {
        return None;
    }
    let name = map.metadata.name.clone()?;
    let text = map.data.as_ref()?.get(REPORT_KEY)?;
    match Report::decode(text) {
        Ok(report) => Some((
            name,
            map.metadata.resource_version.clone().unwrap_or_default(),
            report,
        )),
        Err(err) => {
            warn!(config_map = %name, %err, "unreadable proxy report ignored");
            None
        }
    }
}

/// Folds one watch event into the reports (a re-list into `relisting` until it is done).
fn apply(
    reports: &mut Reports,
    relisting: &mut Option<Reports>,
    own: &str,
    event: watcher::Event<ConfigMap>,
) {
    let now = Instant::now();
    match event {
        watcher::Event::Init => *relisting = Some(Reports::new(own)),
        watcher::Event::InitApply(map) => {
            if let (Some(fresh), Some((name, version, report))) = (relisting.as_mut(), read(&map)) {
                fresh.upsert(&name, &version, report, now);
            }
        }
        watcher::Event::InitDone => {
            if let Some(mut fresh) = relisting.take() {
                // What was already seen keeps its age: a re-list is no renewal.
                fresh.keep_ages_from(reports);
                *reports = fresh;
            }
        }
        watcher::Event::Apply(map) => match read(&map) {
            Some((name, version, report)) => reports.upsert(&name, &version, report, now),
            None => {
                if let Some(name) = &map.metadata.name {
                    reports.remove(name);
                }
            }
        },
        watcher::Event::Delete(map) => {
            if let Some(name) = &map.metadata.name {
                reports.remove(name);
            }
        }
    }
}

/// Follows the other replicas' reports into `registry`, forever.
pub async fn follow(client: kube::Client, settings: Settings, registry: Arc<ProxyRegistry>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &settings.namespace);
    let config = watcher::Config::default().labels(&format!("{REPORT_LABEL}=true"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut reports = Reports::new(&settings.identity);
    let mut relisting = None;
    let mut failing = false;
    let mut expire = tokio::time::interval(EXPIRE_EVERY);
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Ok(event)) => {
                    failing = false;
                    apply(&mut reports, &mut relisting, &settings.identity, event);
                }
                Some(Err(err)) => {
                    if !failing {
                        warn!(%err, "cannot watch the other replicas' proxy reports; retrying");
                    }
                    failing = true;
                    continue;
                }
            },
            _ = expire.tick() => {}
        }
        let peers = reports.merged(Instant::now(), SystemTime::now());
        debug!(proxies = peers.len(), "other replicas' proxies");
        registry.set_peers(peers);
    }
}
