//! State shared between the configuration task and the request path.

use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::metrics::ProxyMetrics;
use crate::routing::RoutingState;

#[derive(Debug)]
pub struct Shared {
    /// The current routing state; requests load it once and keep it until they finish.
    pub state: ArcSwap<RoutingState>,
    pub metrics: ProxyMetrics,
    ready: AtomicBool,
}

impl Shared {
    pub fn new(metrics: ProxyMetrics) -> Self {
        Shared {
            state: ArcSwap::from_pointee(RoutingState::default()),
            metrics,
            ready: AtomicBool::new(false),
        }
    }

    /// Ready once every resource type has been applied at least once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}
