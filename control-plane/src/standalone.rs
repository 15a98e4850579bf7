//! Standalone mode: watch a directory, and on every change load, translate and publish.

use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::publish::Publisher;
use crate::source::DirectorySource;

/// Quiet period after a file event before reloading: editors write files in several steps.
const DEBOUNCE: Duration = Duration::from_millis(50);

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
