//! Standalone mode: watch a directory, and on every change load, translate and publish. A
//! change is loaded as soon as it is complete (a file written and closed, renamed into place
//! or removed, and no other file still being written), with no fixed delay; changes that
//! arrive while one is being translated are taken together by the next.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::publish::Publisher;
use crate::source::DirectorySource;

/// Longest wait for a file being written to be closed before the directory is read anyway (a
/// writer that keeps a file open, a platform without close events). Long enough for a writer
/// that pauses between writes; a change that is complete is read at once, not after it.
const WRITE_GRACE: Duration = Duration::from_secs(2);

/// What an event says about a manifest.
enum Change {
    /// Being written (created, data modified): read once closed, or after [`WRITE_GRACE`].
    Started,
    /// Complete: written and closed, renamed (an editor's or a tool's atomic replace) or removed.
    Completed,
    /// Nothing that changes what the directory holds (reads, metadata).
    Neither,
}

fn change(kind: &EventKind) -> Change {
    match kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => Change::Started,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(_) | ModifyKind::Any)
        | EventKind::Remove(_)
        | EventKind::Any
        | EventKind::Other => Change::Completed,
        _ => Change::Neither,
    }
}

/// Whether a path is one the directory source reads: a manifest directly in `dir`, or the
/// `..data` link a Kubernetes ConfigMap volume swaps to publish new contents.
fn watched(dir: &Path, path: &Path) -> bool {
    path.parent() == Some(dir)
        && (crate::source::is_manifest_name(path)
            || path.file_name().is_some_and(|n| n == "..data"))
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
        // Manifests open for writing: the directory is read once they are closed, so a
        // half-written file (this one or another being rewritten at the same time) is never
        // loaded.
        let writing: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let in_progress = Arc::clone(&writing);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(e) = event else { return };
                // Only manifests directly in the directory count: status files written into a
                // subdirectory (or an editor's swap files) must not trigger reloads.
                let paths: Vec<&PathBuf> = e.paths.iter().filter(|p| watched(&dir, p)).collect();
                let relevant = match change(&e.kind) {
                    _ if e.need_rescan() => true,
                    Change::Neither => false,
                    Change::Started => {
                        // A symbolic link is complete when it is made; it is never closed.
                        let mut writing = lock(&in_progress);
                        let open = paths.iter().filter(|p| !p.is_symlink());
                        writing.extend(open.map(|p| (*p).clone()));
                        !paths.is_empty()
                    }
                    Change::Completed => {
                        let mut writing = lock(&in_progress);
                        paths.iter().for_each(|p| {
                            writing.remove(*p);
                        });
                        !paths.is_empty() || e.paths.is_empty()
                    }
                };
                if relevant {
                    // A full channel already holds a pending reload.
                    let _ = tx.try_send(());
                }
            })?;
        watcher.watch(self.source.dir(), RecursiveMode::NonRecursive)?;
        info!(dir = %self.source.dir().display(), "watching configuration directory");
        self.sync();
        while rx.recv().await.is_some() {
            let deadline = Instant::now() + WRITE_GRACE;
            while !lock(&writing).is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Past the grace, files never closed count as written.
            lock(&writing).clear();
            // What arrived during the wait (the close that ended it) is read by this reload;
            // what arrives during it makes one more.
            while rx.try_recv().is_ok() {}
            self.sync();
        }
        Ok(())
    }
}

fn lock(set: &Mutex<HashSet<PathBuf>>) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
