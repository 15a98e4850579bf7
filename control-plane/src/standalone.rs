//! Standalone mode: watch a directory, and on every change load, translate and publish. A
//! change is loaded as soon as it is complete (a file written and closed, renamed into place
//! or removed), with no fixed delay; changes that arrive while one is being translated are
//! taken together by the next.

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::publish::Publisher;
use crate::source::DirectorySource;

/// Whether an event completes a change: a file written and closed, renamed (an editor's or a
/// tool's atomic replace) or removed. A file still being written (created, data modified) is
/// read once its writer closes it, so a half-written file is never loaded.
fn completes_a_change(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
            | EventKind::Any
            | EventKind::Other
    )
}

pub struct Standalone {
    source: DirectorySource,
    publisher: Publisher,
    last_problems: Vec<String>,
}

impl Standalone {
    pub fn new(source: DirectorySource, publisher: Publisher) -> Self {
        Standalone {
            source,
            publisher,
            last_problems: Vec::new(),
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
        self.publisher
            .state()
            .metrics
            .config_problems
            .set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
        self.last_problems = problems;

        self.publisher.publish(report.objects);
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
                    e.need_rescan()
                        || (completes_a_change(&e.kind)
                            && (e.paths.is_empty()
                                || e.paths.iter().any(|p| {
                                    p.parent() == Some(dir.as_path())
                                        && crate::source::is_manifest_name(p)
                                })))
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
            // At most one more reload is pending: what arrives during this one.
            self.sync();
        }
        Ok(())
    }
}
