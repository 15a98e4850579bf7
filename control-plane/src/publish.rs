//! The step every source shares: a full set of objects in, snapshots and status out.
//! Sources call [`Publisher::publish`] with everything they know after each change, or hand
//! it to a [`PublishThread`] and keep taking changes in while it works.

use std::collections::BTreeMap;

use tracing::{error, info, warn};

use rauta_common::types::ResourceType;

use crate::objects::{ObjectRef, ObjectSet};
use crate::state::ControllerState;
use crate::status_store::StatusChanges;
use crate::translator::status::StatusReport;
use crate::translator::{ResourceSet, Translator};

pub struct Publisher {
    translator: Translator,
    state: ControllerState,
    /// The objects of the last publication and each Gateway's clusters and endpoints then,
    /// for the endpoint fast path.
    last: Option<(ObjectSet, BTreeMap<ObjectRef, ResourceSet>)>,
}

impl Publisher {
    pub fn new(controller_name: String, state: ControllerState) -> Self {
        Publisher {
            translator: Translator::new(controller_name),
            state,
            last: None,
        }
    }

    pub fn state(&self) -> &ControllerState {
        &self.state
    }

    fn observe(&self, path: &str, started: std::time::Instant) {
        let metric = self
            .state
            .metrics
            .publish_seconds
            .with_label_values(&[path]);
        metric.observe(started.elapsed().as_secs_f64());
    }

    /// Translates `objects` (unless nothing changed since the last call) and publishes the
    /// snapshots and status.
    pub fn publish(&mut self, objects: ObjectSet) {
        if let Some((last, _)) = &self.last
            && last.same_as(&objects)
        {
            // A file was touched but no object changed (or a change was undone): nothing to do.
            return;
        }
        let started = std::time::Instant::now();
        let summary = match self.last.take() {
            // Only EndpointSlices changed: new endpoints for the clusters already translated;
            // routes, listeners and status stay as they are, and so do their snapshot parts.
            Some((last, mut gateways)) if last.same_except_endpoints(&objects) => {
                let mut endpoints = BTreeMap::new();
                self.translator.refresh_endpoints(&objects, &mut gateways);
                for (gateway, set) in &gateways {
                    let by_name = set.get(&ResourceType::Endpoints).cloned();
                    endpoints.insert(gateway.clone(), by_name.unwrap_or_default());
                }
                self.state.metrics.endpoint_refreshes.inc();
                info!("only EndpointSlices changed: endpoints refreshed, routes not re-translated");
                self.last = Some((objects, gateways));
                let summary = self.state.cache.update_endpoints(endpoints);
                self.observe("endpoints", started);
                summary
            }
            _ => {
                let translation = self.translator.translate(&objects);
                self.state.metrics.translations.inc();
                // Only what the fast path reads: copying every route rule would cost as much
                // as a large part of the translation.
                let gateways = translation
                    .gateways
                    .iter()
                    .map(|(key, set)| {
                        let kept = [ResourceType::Cluster, ResourceType::Endpoints]
                            .into_iter()
                            .filter_map(|ty| Some((ty, set.get(&ty)?.clone())))
                            .collect();
                        (key.clone(), kept)
                    })
                    .collect();
                // Proxies first: status follows, and says what they were sent.
                let summary = self.state.cache.update(translation.gateways);
                let before = self.state.statuses.report();
                if let Some(changes) = self.state.statuses.publish(translation.status) {
                    log_status_changes(&before, &changes);
                }
                // The endpoint fast path builds on what the cache serves: after a translation
                // it refused (a dangling reference), the next change translates in full again.
                if summary.inconsistent.is_empty() {
                    self.last = Some((objects, gateways));
                }
                self.observe("translate", started);
                summary
            }
        };
        self.state.metrics.ready.set(1);
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
}

/// The publishing thread stopped: it panicked, and nothing more will be published.
#[derive(Debug, thiserror::Error)]
#[error("the publishing thread stopped (it panicked); nothing more can be published")]
pub struct PublisherStopped;

/// A [`Publisher`] on a thread of its own. A translation of thousands of routes keeps a core
/// busy for a while; meanwhile the source goes on taking changes in (its watches are not left
/// to back up) and the async runtime goes on serving proxies. One object set is in work at a
/// time: the source hands over its latest set when the thread is idle, so changes that arrive
/// during a translation are taken together by the next one, and an idle thread starts at once.
pub struct PublishThread {
    jobs: std::sync::mpsc::Sender<ObjectSet>,
    /// How many sets the thread has published.
    done: tokio::sync::watch::Receiver<u64>,
    /// How many sets were handed over.
    submitted: u64,
}

impl PublishThread {
    pub fn spawn(mut publisher: Publisher) -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<ObjectSet>();
        let (finished, done) = tokio::sync::watch::channel(0u64);
        std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || {
                for objects in queue {
                    publisher.publish(objects);
                    finished.send_modify(|n| *n += 1);
                }
            })?;
        Ok(PublishThread {
            jobs,
            done,
            submitted: 0,
        })
    }

    /// No object set is in work.
    pub fn idle(&self) -> bool {
        *self.done.borrow() == self.submitted
    }

    /// Returns once the set in work (if any) is published. Cancel-safe.
    pub async fn finished(&mut self) -> Result<(), PublisherStopped> {
        while *self.done.borrow_and_update() != self.submitted {
            self.done.changed().await.map_err(|_| PublisherStopped)?;
        }
        Ok(())
    }

    /// Hands `objects` over to be translated and published.
    pub fn submit(&mut self, objects: ObjectSet) -> Result<(), PublisherStopped> {
        self.jobs.send(objects).map_err(|_| PublisherStopped)?;
        self.submitted += 1;
        Ok(())
    }
}

/// Logs the conditions that are not True of the statuses that changed, so a person sees why
/// a route is not served.
fn log_status_changes(before: &StatusReport, changes: &StatusChanges) {
    let new = &changes.report;
    for (kind, key) in &changes.objects {
        match *kind {
            "HTTPRoute" => {
                let Some(status) = new.http_routes.get(key) else {
                    continue;
                };
                for parent in &status.parents {
                    for c in parent.conditions.iter().filter(|c| c.is_problem()) {
                        warn!(route = %key, parent = %format!("{}/{}", parent.parent_ref.namespace, parent.parent_ref.name), condition = %c.type_, reason = %c.reason, message = %c.message, "HTTPRoute condition");
                    }
                }
            }
            "Gateway" => {
                let Some(status) = new.gateways.get(key) else {
                    continue;
                };
                for l in &status.listeners {
                    for c in l.conditions.iter().filter(|c| c.is_problem()) {
                        warn!(gateway = %key, listener = %l.name, condition = %c.type_, reason = %c.reason, message = %c.message, "Gateway listener condition");
                    }
                }
                info!(gateway = %key, listeners = status.listeners.len(), attached_routes = status.listeners.iter().map(|l| l.attached_routes).sum::<i32>(), "Gateway status");
            }
            _ => {}
        }
    }
    for (service, problems) in &new.service_annotations {
        if before.service_annotations.get(service) == Some(problems) {
            continue;
        }
        for problem in problems {
            warn!(%service, "{problem}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_manifests;
    use crate::translator::DEFAULT_CONTROLLER_NAME;

    const GATEWAY: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: rauta}
spec: {controllerName: rauta.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: rauta
  listeners: [{name: http, port: 8080, protocol: HTTP}]
";

    #[tokio::test]
    async fn the_thread_publishes_what_it_is_handed_and_says_when_it_is_done() {
        let state = ControllerState::new().unwrap();
        let publisher = Publisher::new(DEFAULT_CONTROLLER_NAME.into(), state.clone());
        let mut thread = PublishThread::spawn(publisher).unwrap();
        assert!(thread.idle());
        thread.finished().await.unwrap();

        let (objects, problems) = parse_manifests(GATEWAY);
        assert!(problems.is_empty(), "{problems:?}");
        thread.submit(objects).unwrap();
        thread.finished().await.unwrap();
        assert!(thread.idle());
        let gateway = ObjectRef::new("infra", "gw");
        assert!(state.statuses.report().gateways.contains_key(&gateway));

        // Taken away: the next set publishes its absence.
        thread.submit(ObjectSet::default()).unwrap();
        thread.finished().await.unwrap();
        assert!(state.statuses.report().gateways.is_empty());
    }
}
