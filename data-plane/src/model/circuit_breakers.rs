//! Circuit-breaker limits of a cluster (Envoy's circuit breakers): requests and retries in
//! flight, counted per proxy with one atomic each. A request over a limit is refused at once
//! with 503 instead of queueing onto a backend that is already slow: the load it would add is
//! what keeps the backend slow. The counters outlive a rebuilt cluster, as the retry budget
//! does, so a snapshot does not reset what is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::upstream::Overflow;

/// The configured limits (0 in the snapshot: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerLimits {
    pub max_requests: Option<u32>,
    pub max_requests_per_endpoint: Option<u32>,
    pub max_retries: Option<u32>,
    pub max_connections_per_endpoint: Option<u32>,
}

impl BreakerLimits {
    pub fn from_proto(b: Option<&rauta_common::api::v1::CircuitBreakers>) -> BreakerLimits {
        let some = |n: u32| (n > 0).then_some(n);
        b.map_or_else(BreakerLimits::default, |b| BreakerLimits {
            max_requests: some(b.max_requests),
            max_requests_per_endpoint: some(b.max_requests_per_endpoint),
            max_retries: some(b.max_retries),
            max_connections_per_endpoint: some(b.max_connections_per_endpoint),
        })
    }
}

/// What a cluster has in flight, and how often each limit refused.
#[derive(Debug, Default)]
pub struct BreakerCounts {
    requests: AtomicU32,
    retries: AtomicU32,
    /// Refusals by [`Overflow`], in its declaration order.
    overflows: [AtomicU64; 4],
}

impl BreakerCounts {
    /// Refusals so far, by limit.
    pub fn overflows(&self) -> [(Overflow, u64); 4] {
        [
            Overflow::ConnectionsPerEndpoint,
            Overflow::Requests,
            Overflow::RequestsPerEndpoint,
            Overflow::Retries,
        ]
        .map(|o| (o, self.overflows[o as usize].load(Ordering::Relaxed)))
    }

    pub fn overflowed(&self, limit: Overflow) {
        self.overflows[limit as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One request (or retry) counted in flight until dropped.
#[derive(Debug)]
pub struct InFlightSlot(Option<(Arc<BreakerCounts>, bool)>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        if let Some((counts, retry)) = &self.0 {
            let counter = if *retry {
                &counts.retries
            } else {
                &counts.requests
            };
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Takes one unit of `counter` when it stays within `limit`.
fn take(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// A cluster's limits with its counters.
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakers {
    pub limits: BreakerLimits,
    pub counts: Arc<BreakerCounts>,
}

impl CircuitBreakers {
    /// A request starts: refused when the cluster has `max_requests` in flight.
    #[inline]
    pub fn request(&self) -> Result<InFlightSlot, Overflow> {
        self.slot(self.limits.max_requests, false, Overflow::Requests)
    }

    /// A retry starts: refused when the cluster has `max_retries` in flight.
    pub fn retry(&self) -> Result<InFlightSlot, Overflow> {
        self.slot(self.limits.max_retries, true, Overflow::Retries)
    }

    fn slot(
        &self,
        limit: Option<u32>,
        retry: bool,
        overflow: Overflow,
    ) -> Result<InFlightSlot, Overflow> {
        let Some(limit) = limit else {
            return Ok(InFlightSlot(None));
        };
        let counter = if retry {
            &self.counts.retries
        } else {
            &self.counts.requests
        };
        if take(counter, limit) {
            Ok(InFlightSlot(Some((Arc::clone(&self.counts), retry))))
        } else {
            self.counts.overflowed(overflow);
            Err(overflow)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_over_the_count_and_free_slots_on_drop() {
        let b = CircuitBreakers {
            limits: BreakerLimits {
                max_requests: Some(2),
                max_retries: Some(1),
                ..BreakerLimits::default()
            },
            counts: Arc::default(),
        };
        let one = b.request().unwrap();
        let _two = b.request().unwrap();
        assert_eq!(b.request().unwrap_err(), Overflow::Requests);
        drop(one);
        let _three = b.request().unwrap();
        let retry = b.retry().unwrap();
        assert_eq!(b.retry().unwrap_err(), Overflow::Retries);
        drop(retry);
        assert!(b.retry().is_ok());
        let counts = b.counts.overflows();
        assert_eq!(counts[1], (Overflow::Requests, 1));
        assert_eq!(counts[3], (Overflow::Retries, 1));
        let none = CircuitBreakers::default();
        let held: Vec<_> = (0..100).map(|_| none.request().unwrap()).collect();
        assert_eq!(held.len(), 100, "no limit");
    }
}
