//! Passive health of one endpoint (Envoy's consecutive-5xx outlier detection): consecutive
//! failures eject it for a period that grows with each ejection; a success resets the count.
//! All atomics: the request path reads and updates it without locks.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::observe::upstream_stats::EndpointStats;

/// Longest ejection, unless the base period is longer (as Envoy's max_ejection_time).
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Milliseconds since the process's first look at the clock; 0 is never a deadline.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// When and how endpoints of a cluster are ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl OutlierPolicy {
    /// How long the n-th ejection (n >= 1) lasts.
    pub fn ejection_period(&self, n: u32) -> Duration {
        let grown = self.base_ejection.saturating_mul(n.max(1));
        grown.min(MAX_EJECTION.max(self.base_ejection))
    }

    /// Whether one more endpoint may be ejected when `ejected` of `total` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        if ejected + 1 >= total {
            // The last endpoint stays: with nothing to fail over to, ejecting only refuses.
            return false;
        }
        let allowed = total * self.max_ejection_percent as usize / 100;
        // One endpoint may always go, as in Envoy, unless it is the last.
        ejected < allowed.max(1)
    }
}

/// Health of one endpoint, shared by every cluster and worker that uses it.
#[derive(Debug)]
pub struct EndpointHealth {
    consecutive_failures: AtomicU32,
    /// When the current ejection ends (`now_ms` scale); 0: not ejected.
    ejected_until: AtomicU64,
    /// Ejections so far; reset once the endpoint has stayed healthy for a base period.
    ejections: AtomicU32,
    /// Requests sent and still waiting for response headers (least-request balancing).
    in_flight: AtomicUsize,
    /// The endpoint's series: ejections are counted there.
    stats: Arc<EndpointStats>,
}

impl EndpointHealth {
    pub fn new(stats: Arc<EndpointStats>) -> Self {
        EndpointHealth {
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            stats,
        }
    }

    /// Whether the endpoint is out of the rotation now.
    #[inline]
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped; none when `limit` requests are
    /// in flight already (a circuit breaker's max_requests_per_endpoint).
    pub fn start_request(&self, limit: Option<u32>) -> Option<InFlight<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self);
        match limit {
            Some(limit) if before >= limit as usize => None,
            _ => Some(guard),
        }
    }

    /// A request to the endpoint succeeded.
    #[inline]
    pub fn succeeded(&self, policy: &OutlierPolicy) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 {
            let healthy_since = until + millis(policy.base_ejection);
            if now_ms() >= healthy_since {
                // Back and healthy for a base period: the next ejection starts short again.
                self.ejections.store(0, Ordering::Relaxed);
                self.ejected_until.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A request to the endpoint failed. Returns true when the failure reached the threshold
    /// and the caller should try to eject it (see [`EndpointHealth::eject`]).
    pub fn failed(&self, policy: &OutlierPolicy) -> bool {
        if policy.consecutive_failures == 0 {
            return false;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        failures >= policy.consecutive_failures && !self.is_ejected()
    }

    /// When the current ejection ends (`now_ms` scale), if the endpoint is ejected.
    pub fn ejection_ends(&self) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until != 0 && now_ms() < until).then_some(until)
    }

    /// Ends the current ejection early (the endpoints left in rotation are failing, and this
    /// one may have recovered). Its ejection count stays: ejected again, it stays out longer.
    pub fn readmit(&self) {
        if self.is_ejected() {
            self.ejected_until.store(now_ms(), Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Ejects the endpoint; returns how long for.
    pub fn eject(&self, policy: &OutlierPolicy) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let period = policy.ejection_period(n);
        self.ejected_until
            .store(now_ms() + millis(period), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.stats.ejected();
        period
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight<'a>(&'a EndpointHealth);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn ejection_periods_grow_up_to_a_cap() {
        let p = policy();
        assert_eq!(p.ejection_period(1), Duration::from_secs(30));
        assert_eq!(p.ejection_period(3), Duration::from_secs(90));
        assert_eq!(p.ejection_period(50), Duration::from_secs(300));
        let long = OutlierPolicy {
            base_ejection: Duration::from_secs(600),
            ..p
        };
        assert_eq!(long.ejection_period(2), Duration::from_secs(600));
    }

    #[test]
    fn the_share_of_ejected_endpoints_is_capped() {
        let p = policy();
        assert!(!p.may_eject(0, 1), "never the last endpoint");
        assert!(p.may_eject(0, 2));
        assert!(!p.may_eject(1, 2));
        assert!(p.may_eject(4, 10));
        assert!(!p.may_eject(5, 10));
        let small = OutlierPolicy {
            max_ejection_percent: 10,
            ..p
        };
        assert!(small.may_eject(0, 3), "one endpoint may always go");
        assert!(!small.may_eject(1, 3));
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let p = policy();
        let h = EndpointHealth::new(Arc::default());
        assert!(!h.failed(&p));
        assert!(!h.failed(&p));
        h.succeeded(&p);
        assert!(!h.failed(&p));
        assert!(!h.failed(&p));
        assert!(h.failed(&p), "third consecutive failure");
        assert_eq!(h.eject(&p), Duration::from_secs(30));
        assert!(h.is_ejected());
        assert_eq!(h.stats.ejections(), 1);
        assert_eq!(
            h.eject(&p),
            Duration::from_secs(60),
            "the second lasts longer"
        );
        let disabled = OutlierPolicy {
            consecutive_failures: 0,
            ..p
        };
        assert!(!h.failed(&disabled));
    }
}
