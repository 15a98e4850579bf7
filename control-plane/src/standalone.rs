//! Standalone mode: watch a directory, and on every change load, translate and publish.

use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::source::DirectorySource;
use crate::state::ControllerState;
use std::collections::BTreeMap;

use crate::objects::{ObjectRef, ObjectSet};
use crate::translator::status::StatusReport;
use crate::translator::{ResourceSet, backends, translate};

/// Quiet period after a file event before reloading: editors write files in several steps.
const DEBOUNCE: Duration = Duration::from_millis(50);

pub struct Standalone {
    source: DirectorySource,
    controller_name: String,
    state: ControllerState,
    last_problems: Vec<String>,
    /// The objects and resources of the last publication, for the endpoint fast path.
    last: Option<(ObjectSet, BTreeMap<ObjectRef, ResourceSet>)>,
}

impl Standalone {
    pub fn new(source: DirectorySource, controller_name: String, state: ControllerState) -> Self {
        Standalone {
            source,
            controller_name,
            state,
            last_problems: Vec::new(),
            last: None,
        }
    }

    /// Loads, translates and publishes once.
    pub fn sync(&mut self) {
        let report = self.source.load();
        let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        if problems != self.last_problems {
            for p in &problems {
                warn!(problem = %p, "configuration problem");
            }
            if problems.is_empty() && !self.last_problems.is_empty() {
                info!("configuration problems resolved");
            }
        }
        self.state
            .metrics
            .config_problems
            .set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
        self.last_problems = problems;

        if let Some((objects, _)) = &self.last
            && objects.same_as(&report.objects)
        {
            // A file was touched but no object changed (or a change was undone): nothing to do.
            return;
        }
        let gateways = match self.last.take() {
            // Only EndpointSlices changed: new endpoints for the clusters already translated;
            // routes, listeners and status stay as they are.
            Some((objects, mut gateways)) if objects.same_except_endpoints(&report.objects) => {
                for set in gateways.values_mut() {
                    backends::refresh_endpoints(&report.objects, set);
                }
                self.state.metrics.endpoint_refreshes.inc();
                info!("only EndpointSlices changed: endpoints refreshed, routes not re-translated");
                gateways
            }
            _ => {
                let translation = translate(&report.objects, &self.controller_name);
                self.state.metrics.translations.inc();
                log_status_changes(&self.state.statuses.report(), &translation.status);
                self.state.statuses.publish(translation.status);
                translation.gateways
            }
        };
        self.last = Some((report.objects, gateways.clone()));
        let summary = self.state.cache.update(gateways);
        for (gateway, problem) in &summary.inconsistent {
            error!(%gateway, %problem, "translation produced an inconsistent snapshot; not published, proxies keep the previous version");
        }
        for (gateway, version) in summary.changed {
            info!(%gateway, version, "new snapshot");
            self.state
                .metrics
                .snapshot_version
                .with_label_values(&[&gateway.to_string()])
                .set(i64::try_from(version).unwrap_or(i64::MAX));
        }
    }

    /// Syncs now, then after every change in the directory, forever.
    pub async fn run(mut self) -> Result<(), notify::Error> {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let dir = self.source.dir().to_path_buf();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Only manifests directly in the directory count: status files written into a
                // subdirectory (or an editor's swap files) must not trigger reloads.
                let relevant = event.is_ok_and(|e| {
                    e.paths.is_empty()
                        || e.need_rescan()
                        || e.paths.iter().any(|p| {
                            p.parent() == Some(dir.as_path()) && crate::source::is_manifest_name(p)
                        })
                });
                if relevant {
                    // A full channel already holds a pending reload.
                    let _ = tx.try_send(());
                }
            })?;
        watcher.watch(self.source.dir(), RecursiveMode::NonRecursive)?;
        info!(dir = %self.source.dir().display(), "watching configuration directory");
        self.sync();
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            self.sync();
        }
        Ok(())
    }
}

/// Logs conditions that are not True, when they change, so a person sees why a route is not served.
fn log_status_changes(old: &StatusReport, new: &StatusReport) {
    for (key, status) in &new.http_routes {
        if old.http_routes.get(key) == Some(status) {
            continue;
        }
        for parent in &status.parents {
            for c in parent.conditions.iter().filter(|c| c.is_problem()) {
                warn!(route = %key, parent = %format!("{}/{}", parent.parent_ref.namespace, parent.parent_ref.name), condition = %c.type_, reason = %c.reason, message = %c.message, "HTTPRoute condition");
            }
        }
    }
    for (service, problems) in &new.service_annotations {
        if old.service_annotations.get(service) == Some(problems) {
            continue;
        }
        for problem in problems {
            warn!(%service, "{problem}");
        }
    }
    for (key, status) in &new.gateways {
        if old.gateways.get(key) == Some(status) {
            continue;
        }
        for l in &status.listeners {
            for c in l.conditions.iter().filter(|c| c.is_problem()) {
                warn!(gateway = %key, listener = %l.name, condition = %c.type_, reason = %c.reason, message = %c.message, "Gateway listener condition");
            }
        }
        info!(gateway = %key, listeners = status.listeners.len(), attached_routes = status.listeners.iter().map(|l| l.attached_routes).sum::<i32>(), "Gateway status");
    }
}
