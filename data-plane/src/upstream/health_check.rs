//! Active health checks: each proxy probes each endpoint on its own, at an interval, and marks
//! it unhealthy after consecutive failed probes (healthy again after consecutive passed ones).
//! One prober per endpoint pool and check, however many clusters, routes or rules reach the
//! endpoint: peers that probe per route send a probe per route per interval.
//!
//! Probes are independent of traffic and run on the proxy's main runtime. A passed probe
//! also ends a passive ejection early (Envoy's `successful_active_health_check_uneject_host`):
//! the endpoint is answering again.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response};
use tracing::{debug, info};

use super::pool::EndpointPool;
use super::{Protocol, UpstreamError};

/// Largest answer body a probe reads (a gRPC health answer is a few bytes).
const MAX_PROBE_BODY: usize = 16 * 1024;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Probe {
    Http {
        path: PathAndQuery,
        host: Option<HeaderValue>,
        expected: Vec<RangeInclusive<u16>>,
    },
    Tcp,
    Grpc {
        service: String,
        authority: Option<HeaderValue>,
    },
}

/// A validated health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckSpec {
    pub interval: Duration,
    pub timeout: Duration,
    pub jitter: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub probe: Probe,
}

/// How the last probe of an endpoint went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// No probe has finished yet.
    Pending,
    Passed,
    ConnectFailed,
    TimedOut,
    /// The HTTP answer's status is not an expected one.
    Status(u16),
    /// The gRPC service answered, but not SERVING (the status it gave).
    NotServing(i32),
    /// The answer could not be read (HTTP or gRPC framing, grpc-status not 0).
    BadAnswer,
}

impl ProbeOutcome {
    /// The metric label of the outcome.
    pub fn label(self) -> &'static str {
        match self {
            ProbeOutcome::Pending => "pending",
            ProbeOutcome::Passed => "passed",
            ProbeOutcome::ConnectFailed => "connect_failed",
            ProbeOutcome::TimedOut => "timeout",
            ProbeOutcome::Status(_) => "unexpected_status",
            ProbeOutcome::NotServing(_) => "not_serving",
            ProbeOutcome::BadAnswer => "bad_answer",
        }
    }

    /// Words for the admin page.
    pub fn describe(self) -> String {
        match self {
            ProbeOutcome::Status(s) => format!("unexpected status {s}"),
            ProbeOutcome::NotServing(s) => format!("gRPC health status {s}, not SERVING"),
            other => other.label().replace('_', " "),
        }
    }

    fn encode(self) -> u64 {
        match self {
            ProbeOutcome::Pending => 0,
            ProbeOutcome::Passed => 1,
            ProbeOutcome::ConnectFailed => 2,
            ProbeOutcome::TimedOut => 3,
            ProbeOutcome::Status(s) => 4 | (u64::from(s) << 8),
            ProbeOutcome::NotServing(s) => 5 | (u64::from(s as u32) << 8),
            ProbeOutcome::BadAnswer => 6,
        }
    }

    fn decode(v: u64) -> ProbeOutcome {
        let detail = (v >> 8) as u32;
        match v & 0xff {
            1 => ProbeOutcome::Passed,
            2 => ProbeOutcome::ConnectFailed,
            3 => ProbeOutcome::TimedOut,
            4 => ProbeOutcome::Status(detail as u16),
            5 => ProbeOutcome::NotServing(detail as i32),
            6 => ProbeOutcome::BadAnswer,
            _ => ProbeOutcome::Pending,
        }
    }
}

/// An endpoint's state as its probes found it; read by the picker on every request.
#[derive(Debug, Default)]
pub struct ActiveHealth {
    unhealthy: AtomicBool,
    /// Consecutive outcomes against the current state (failures while healthy, passes while
    /// unhealthy).
    streak: AtomicU32,
    last: AtomicU64,
    passed: AtomicU64,
    failed: AtomicU64,
    transitions: AtomicU64,
}

impl ActiveHealth {
    /// Whether the probes currently find the endpoint healthy. An endpoint starts healthy
    /// (it is ready by its EndpointSlice) and its first probe starts at once.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }

    pub fn last_outcome(&self) -> ProbeOutcome {
        ProbeOutcome::decode(self.last.load(Ordering::Relaxed))
    }

    /// Probes that passed and failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.passed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Times the endpoint changed between healthy and unhealthy.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Records a probe's outcome; returns the new state when it changed (true: healthy).
    pub fn record(&self, outcome: ProbeOutcome, spec: &HealthCheckSpec) -> Option<bool> {
        self.last.store(outcome.encode(), Ordering::Relaxed);
        let passed = outcome == ProbeOutcome::Passed;
        let counter = if passed { &self.passed } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        if passed == self.is_healthy() {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = if passed {
            spec.healthy_threshold
        } else {
            spec.unhealthy_threshold
        };
        if streak < threshold.max(1) {
            return None;
        }
        self.streak.store(0, Ordering::Relaxed);
        self.unhealthy.store(!passed, Ordering::Relaxed);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        Some(passed)
    }
}

/// A running prober; dropping it stops the probes.
#[derive(Debug)]
pub struct Prober {
    pub health: Arc<ActiveHealth>,
    pub spec: Arc<HealthCheckSpec>,
    task: Option<AbortHandle>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Prober {
    /// Starts probing the endpoint of `pool`. Outside a Tokio runtime (unit tests building
    /// states) nothing probes and the endpoint stays healthy.
    pub fn start(pool: &Arc<EndpointPool>, spec: Arc<HealthCheckSpec>) -> Prober {
        let health = Arc::new(ActiveHealth::default());
        let task = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let run = probe_loop(Arc::downgrade(pool), Arc::clone(&spec), Arc::clone(&health));
            runtime.spawn(run).abort_handle()
        });
        Prober { health, spec, task }
    }
}

fn jittered(base: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return base;
    }
    base.saturating_add(jitter.mul_f64(rand::random::<f64>()))
}

/// Probes until the pool is gone (or the prober is dropped and aborts this).
async fn probe_loop(
    pool: Weak<EndpointPool>,
    spec: Arc<HealthCheckSpec>,
    health: Arc<ActiveHealth>,
) {
    tokio::time::sleep(jittered(Duration::ZERO, spec.jitter)).await;
    loop {
        let Some(pool) = pool.upgrade() else { return };
        let outcome = tokio::time::timeout(spec.timeout, probe(&pool, &spec.probe))
            .await
            .unwrap_or(ProbeOutcome::TimedOut);
        if let Some(healthy) = health.record(outcome, &spec) {
            info!(endpoint = %pool.addr(), healthy, outcome = %outcome.describe(), "active health check changed the endpoint's state");
        } else if outcome != ProbeOutcome::Passed {
            debug!(endpoint = %pool.addr(), outcome = %outcome.describe(), "health check failed");
        }
        if outcome == ProbeOutcome::Passed {
            pool.health().readmit();
        }
        drop(pool);
        tokio::time::sleep(jittered(spec.interval, spec.jitter)).await;
    }
}

/// One probe of the pool's endpoint, over a connection of its own.
async fn probe(pool: &EndpointPool, probe: &Probe) -> ProbeOutcome {
    let io = match pool.connect_uncounted().await {
        Ok(io) => io,
        Err(UpstreamError::ConnectTimeout { .. }) => return ProbeOutcome::TimedOut,
        Err(_) => return ProbeOutcome::ConnectFailed,
    };
    let addr = pool.addr();
    match probe {
        Probe::Tcp => ProbeOutcome::Passed,
        Probe::Http {
            path,
            host,
            expected,
        } => {
            let authority = host.clone().unwrap_or_else(|| authority_of(addr));
            let status = match io {
                http_body_util::Either::Left(tcp) => {
                    http_get(tcp, pool.protocol(), path, authority).await
                }
                http_body_util::Either::Right(tls) => {
                    http_get(tls, pool.protocol(), path, authority).await
                }
            };
            match status {
                Some(s) if expected_status(expected, s) => ProbeOutcome::Passed,
                Some(s) => ProbeOutcome::Status(s),
                None => ProbeOutcome::BadAnswer,
            }
        }
        Probe::Grpc { service, authority } => {
            let authority = authority.clone().unwrap_or_else(|| authority_of(addr));
            match io {
                http_body_util::Either::Left(tcp) => grpc_check(tcp, service, authority).await,
                http_body_util::Either::Right(tls) => grpc_check(tls, service, authority).await,
            }
        }
    }
}

fn authority_of(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// Whether `status` passes: one of the ranges, or 2xx when there are none.
pub fn expected_status(expected: &[RangeInclusive<u16>], status: u16) -> bool {
    if expected.is_empty() {
        return (200..300).contains(&status);
    }
    expected.iter().any(|r| r.contains(&status))
}

/// A GET over a new connection; the answer's status, or None when there is no answer.
async fn http_get<I>(
    io: I,
    protocol: Protocol,
    path: &PathAndQuery,
    host: HeaderValue,
) -> Option<u16>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut req = Request::builder()
        .method(Method::GET)
        .header(http::header::USER_AGENT, "rauta-health-check");
    let response = match protocol {
        Protocol::Http1 => {
            req = req
                .uri(path.as_str())
                .header(http::header::HOST, host)
                .header(http::header::CONNECTION, "close");
            let (mut sender, conn) = http1::handshake(TokioIo::new(io)).await.ok()?;
            tokio::spawn(conn);
            let req = req.body(Full::new(Bytes::new())).ok()?;
            sender.send_request(req).await.ok()?
        }
        Protocol::H2c => {
            let uri = http::Uri::builder()
                .scheme("http")
                .authority(host.to_str().ok()?)
                .path_and_query(path.clone())
                .build()
                .ok()?;
            let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .ok()?;
            tokio::spawn(conn);
            let req = req.uri(uri).body(Full::new(Bytes::new())).ok()?;
            sender.send_request(req).await.ok()?
        }
    };
    Some(response.status().as_u16())
}

/// grpc.health.v1.Health/Check over a new HTTP/2 connection.
async fn grpc_check<I>(io: I, service: &str, authority: HeaderValue) -> ProbeOutcome
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    grpc_exchange(io, service, authority)
        .await
        .unwrap_or(ProbeOutcome::BadAnswer)
}

async fn grpc_exchange<I>(io: I, service: &str, authority: HeaderValue) -> Option<ProbeOutcome>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let message = HealthCheckRequest {
        service: service.to_owned(),
    }
    .encode_to_vec();
    let mut body = BytesMut::with_capacity(5 + message.len());
    body.put_u8(0);
    body.put_u32(u32::try_from(message.len()).ok()?);
    body.put_slice(&message);
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority.to_str().ok()?)
        .path_and_query("/grpc.health.v1.Health/Check")
        .build()
        .ok()?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "rauta-health-check")
        .body(Full::new(body.freeze()))
        .ok()?;
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .ok()?;
    tokio::spawn(conn);
    let response = sender.send_request(req).await.ok()?;
    if !response.status().is_success() {
        return Some(ProbeOutcome::Status(response.status().as_u16()));
    }
    // A trailers-only answer carries grpc-status in its headers.
    let head_status = response.headers().get("grpc-status").cloned();
    let collected = Limited::new(response.into_body(), MAX_PROBE_BODY)
        .collect()
        .await
        .ok()?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status)?;
    if grpc_status != "0" {
        return Some(ProbeOutcome::BadAnswer);
    }
    let mut bytes = collected.to_bytes();
    if bytes.len() < 5 || bytes[0] != 0 {
        return Some(ProbeOutcome::BadAnswer);
    }
    bytes.advance(1);
    let len = usize::try_from(bytes.get_u32()).ok()?;
    let answer = HealthCheckResponse::decode(bytes.get(..len)?).ok()?;
    Some(
        if answer.status == health_check_response::ServingStatus::Serving as i32 {
            ProbeOutcome::Passed
        } else {
            ProbeOutcome::NotServing(answer.status)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> HealthCheckSpec {
        HealthCheckSpec {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            jitter: Duration::ZERO,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            probe: Probe::Tcp,
        }
    }

    #[test]
    fn thresholds_decide_transitions() {
        let (h, s) = (ActiveHealth::default(), spec());
        assert!(h.is_healthy());
        assert_eq!(h.record(ProbeOutcome::ConnectFailed, &s), None);
        assert_eq!(h.record(ProbeOutcome::TimedOut, &s), None);
        assert_eq!(h.record(ProbeOutcome::Passed, &s), None, "a pass resets");
        assert_eq!(h.record(ProbeOutcome::Status(503), &s), None);
        assert_eq!(h.record(ProbeOutcome::Status(503), &s), None);
        assert_eq!(h.record(ProbeOutcome::Status(503), &s), Some(false));
        assert!(!h.is_healthy());
        assert_eq!(h.last_outcome(), ProbeOutcome::Status(503));
        assert_eq!(h.record(ProbeOutcome::Passed, &s), None);
        assert_eq!(h.record(ProbeOutcome::Passed, &s), Some(true));
        assert_eq!(h.counts(), (3, 5));
        assert_eq!(h.transitions(), 2);
    }

    #[test]
    fn outcomes_round_trip_and_statuses_match() {
        for o in [
            ProbeOutcome::Pending,
            ProbeOutcome::Passed,
            ProbeOutcome::ConnectFailed,
            ProbeOutcome::TimedOut,
            ProbeOutcome::Status(599),
            ProbeOutcome::NotServing(2),
            ProbeOutcome::BadAnswer,
        ] {
            assert_eq!(ProbeOutcome::decode(o.encode()), o);
        }
        assert!(expected_status(&[], 204));
        assert!(!expected_status(&[], 301));
        assert!(expected_status(&[200..=200, 301..=302], 302));
        assert!(!expected_status(&[200..=200], 201));
    }
}
