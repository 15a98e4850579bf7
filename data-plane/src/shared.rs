//! State shared between the configuration task and the request path.

use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use std::sync::Arc;

use crate::limits::Limits;
use crate::model::RoutingState;
use crate::model::store::ResourceStore;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::ProxyMetrics;
use crate::observe::otlp::Tracer;
use crate::upstream::redis::RedisCounter;

#[derive(Debug)]
pub struct Shared {
    /// The current routing state; requests load it once and keep it until they finish.
    pub state: ArcSwap<RoutingState>,
    /// The resources the routing state was built from, for the admin dump.
    pub config: ArcSwap<ResourceStore>,
    pub metrics: ProxyMetrics,
    pub limits: Limits,
    /// Set when access logging is on.
    pub access_log: Option<Arc<AccessLog>>,
    /// Whether HTTP/1.1 connections start on the fast path (`h1`).
    pub http1_fast_path: bool,
    /// Whether HTTP/2 connections are served by the proxy's own server (`http2`), not hyper's.
    pub own_http2: bool,
    /// Where global rate limits are counted (`--rate-limit-redis`).
    pub redis: Option<Arc<RedisCounter>>,
    /// Where request spans go (`--otlp-endpoint`).
    pub tracer: Option<Arc<Tracer>>,
    ready: AtomicBool,
    /// Set while the proxy serves a configuration read back from `--state-dir` that no
    /// controller has confirmed yet: what /readyz and the stale gauge say about it.
    stale: ArcSwapOption<String>,
    /// Why the configuration in `--state-dir` was refused at start, for /readyz while the
    /// proxy has nothing to serve.
    restore_refused: ArcSwapOption<String>,
    /// Bumped after each new routing state is published: relayed connections and UDP flows
    /// wait on it to close when their route leaves the configuration.
    published: watch::Sender<u64>,
    /// True once draining (SIGTERM). Every listener and open downstream connection holds a
    /// receiver, so the receiver count is what is still open.
    drain: watch::Sender<bool>,
}

impl Shared {
    pub fn new(metrics: ProxyMetrics, limits: Limits, access_log: Option<Arc<AccessLog>>) -> Self {
        Shared {
            state: ArcSwap::from_pointee(RoutingState::default()),
            config: ArcSwap::from_pointee(ResourceStore::default()),
            metrics,
            limits,
            access_log,
            http1_fast_path: true,
            own_http2: true,
            redis: None,
            tracer: None,
            ready: AtomicBool::new(false),
            stale: ArcSwapOption::empty(),
            restore_refused: ArcSwapOption::empty(),
            published: watch::Sender::new(0),
            drain: watch::Sender::new(false),
        }
    }

    /// Makes `state` the current routing state and tells the relays.
    pub fn publish(&self, state: RoutingState) {
        self.publish_shared(Arc::new(state));
    }

    /// As [`Shared::publish`], for a state others hold too (the kernel path).
    pub fn publish_shared(&self, state: Arc<RoutingState>) {
        self.state.store(state);
        self.published.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes once per routing state published after this call.
    pub fn publications(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Ready once every resource type has been applied at least once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// What the proxy serves that no controller has confirmed, if anything.
    pub fn stale(&self) -> Option<Arc<String>> {
        self.stale.load_full()
    }

    /// Marks the configuration as read back from disk (`Some`, with what to tell), or as
    /// confirmed by a controller (`None`).
    pub fn set_stale(&self, detail: Option<String>) {
        self.stale.store(detail.map(Arc::new));
    }

    /// Why the persisted configuration was refused at start, if it was.
    pub fn restore_refused(&self) -> Option<Arc<String>> {
        self.restore_refused.load_full()
    }

    pub fn set_restore_refused(&self, reason: String) {
        self.restore_refused.store(Some(Arc::new(reason)));
    }

    /// Starts draining: listeners stop accepting, open connections finish what they are doing
    /// and close, /readyz answers 503.
    pub fn start_drain(&self) {
        self.drain.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Held by a listener or connection for as long as it is open; tells it when to drain.
    pub fn drain_watch(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Resolves once no listener or connection is open any more.
    pub async fn drained(&self) {
        self.drain.closed().await;
    }

    /// Listeners and connections still open.
    pub fn open_connections(&self) -> usize {
        self.drain.receiver_count()
    }
}

/// Resolves once draining has started (at once if it already has).
pub async fn drain_started(drain: &mut watch::Receiver<bool>) {
    while !*drain.borrow_and_update() {
        if drain.changed().await.is_err() {
            // The process is going away without a drain.
            std::future::pending::<()>().await;
        }
    }
}
