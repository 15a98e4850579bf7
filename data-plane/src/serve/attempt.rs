//! One attempt at an endpoint, with the bookkeeping every request path (the general path and
//! both fast paths) owes it: counted in flight for least-request balancing while it runs, held
//! to its timeout, observed in the cluster's latency histogram, and reported to outlier
//! detection when it ends.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::model::circuit_breakers::InFlightSlot;
use crate::model::cluster::{ClusterRt, EndpointRt};
use crate::upstream::Overflow;
use crate::upstream::outlier::InFlight;

/// The attempt did not finish within its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// An attempt under way; [`Attempt::finish`] ends it (dropped unfinished, it reports nothing:
/// the client went away).
#[must_use = "an attempt reports its outcome when finished"]
pub struct Attempt<'a> {
    cluster: &'a ClusterRt,
    endpoint: &'a EndpointRt,
    started: Instant,
    in_flight: Option<InFlight<'a>>,
    /// The cluster's count of requests in flight (circuit breaker).
    _slot: InFlightSlot,
}

impl<'a> Attempt<'a> {
    /// Starts an attempt at `endpoint` of `cluster`, unless a circuit-breaker limit refuses
    /// it: every request path must then answer 503 with the limit's reason.
    #[inline]
    pub fn start(
        cluster: &'a ClusterRt,
        endpoint: &'a EndpointRt,
    ) -> Result<Attempt<'a>, Overflow> {
        let slot = cluster.breakers.request()?;
        let in_flight = if cluster.counts_endpoint_load() {
            let limit = cluster.breakers.limits.max_requests_per_endpoint;
            let Some(guard) = endpoint.pool.health().start_request(limit) else {
                cluster
                    .breakers
                    .counts
                    .overflowed(Overflow::RequestsPerEndpoint);
                return Err(Overflow::RequestsPerEndpoint);
            };
            Some(guard)
        } else {
            None
        };
        Ok(Attempt {
            cluster,
            endpoint,
            started: Instant::now(),
            in_flight,
            _slot: slot,
        })
    }

    /// Runs the exchange within `limit` (none: no limit).
    #[inline]
    pub async fn within<T>(
        &self,
        limit: Option<Duration>,
        exchange: impl Future<Output = T>,
    ) -> Result<T, TimedOut> {
        match limit {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| TimedOut),
            None => Ok(exchange.await),
        }
    }

    /// Ends an attempt a connection limit refused before anything was sent: no longer in
    /// flight, and neither timed nor reported to outlier detection (the endpoint did nothing,
    /// well or badly).
    #[inline]
    pub fn abandon(self) {}

    /// Ends the attempt: no longer in flight, its time observed, and the endpoint's health
    /// told whether it failed (a 5xx, no answer, or no answer in time).
    #[inline]
    pub fn finish(self, endpoint_failed: bool) {
        drop(self.in_flight);
        self.cluster.stats.latency.observe(self.started.elapsed());
        self.cluster.report(self.endpoint, endpoint_failed);
    }
}
