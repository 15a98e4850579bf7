//! Request-serving workers: one thread per worker, each running its own single-threaded
//! runtime, each accepting on its own SO_REUSEPORT socket (as nginx and Envoy workers do).
//! A connection, its requests and the upstream connections they use stay on one thread:
//! no work-stealing queues, no cross-thread wake-ups on the request path. On one CPU this
//! costs about a third less CPU per request than tokio's multi-threaded scheduler.

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

/// How many workers were started (1 before any): per-worker shards are sized by it.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The number of workers (1 when none were started, as in unit tests).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

thread_local! {
    static WORKER_INDEX: Cell<usize> = const { Cell::new(0) };
}

thread_local! {
    /// Client connections open on this worker.
    static OPEN_CONNECTIONS: Arc<AtomicUsize> = Arc::new(AtomicUsize::new(0));
}

/// One of a worker's client connections, counted until dropped.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A slot for a new connection on the calling worker; None when it already serves `max`
/// (0: no limit).
pub fn connection_slot(max: usize) -> Option<ConnectionSlot> {
    OPEN_CONNECTIONS.with(|open| {
        if max > 0 && open.load(Ordering::Relaxed) >= max {
            return None;
        }
        open.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionSlot(Arc::clone(open)))
    })
}

/// The index of the worker running the caller (0 outside workers).
#[inline]
pub fn current() -> usize {
    WORKER_INDEX.with(Cell::get)
}

/// Handles to the workers' runtimes; the threads run for the life of the process.
#[derive(Debug, Clone)]
pub struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut handles = Vec::with_capacity(count.max(1));
        COUNT.store(count.max(1), Ordering::Relaxed);
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("rauta-worker-{index}"))
                .spawn(move || {
                    WORKER_INDEX.with(|w| w.set(index));
                    // A current-thread runtime runs its spawned tasks only inside block_on.
                    runtime.block_on(std::future::pending::<()>());
                })?;
        }
        Ok(Workers { handles })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}
