//! Global rate limits on the request path: spend quota reserved in this proxy, or reserve
//! more in Redis (`upstream::redis`), at most one Redis round trip per limit and request, and
//! only when this proxy's batch for the key is spent.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::model::filters::GlobalRateLimitRt;
use crate::model::global_limit::{GlobalLimiter, Local};
use crate::model::request::RequestHeaders;
use crate::upstream::redis::{RESPONSE_TIMEOUT, RedisCounter};

/// How long Redis keeps a window's counter after the window ends: a proxy whose clock is
/// behind by less than this still counts in it (and not in a fresh one). A tenth of the
/// window, 5 s to a minute.
fn key_grace(period: Duration) -> Duration {
    (period / 10).clamp(Duration::from_secs(5), Duration::from_secs(60))
}

/// What the global limits say about a request.
pub enum Verdict<'a> {
    Allowed,
    /// Over a limit: refused until `retry_after`.
    Limited(&'a GlobalLimiter, Duration),
    /// Redis could not be asked and the limit fails closed.
    Unavailable,
}

/// Set once the "no --rate-limit-redis" warning was logged.
static NO_REDIS_LOGGED: AtomicBool = AtomicBool::new(false);

/// Counts the request against every global limit of the rule.
/// Redis is asked at most once per limit, all within one deadline for the request.
pub async fn check<'a>(
    rt: &'a GlobalRateLimitRt,
    redis: Option<&Arc<RedisCounter>>,
    peer: IpAddr,
    headers: RequestHeaders<'_>,
) -> Verdict<'a> {
    let deadline = Instant::now() + RESPONSE_TIMEOUT;
    for limiter in rt.limiters.iter() {
        let Some(key) = limiter.local_key(peer, headers) else {
            continue;
        };
        let (window, until_end) = limiter.window();
        let counters = &limiter.counters;
        let batch = match limiter.take(key, window, until_end) {
            Local::Allowed => {
                counters.allowed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Local::Exhausted(wait) => {
                counters.limited.fetch_add(1, Ordering::Relaxed);
                return Verdict::Limited(limiter, wait);
            }
            Local::Reserve(batch) => batch,
        };
        let total = match redis {
            Some(redis) => {
                counters.reservations.fetch_add(1, Ordering::Relaxed);
                let redis_key = limiter.redis_key(peer, headers, window);
                let ttl = until_end + key_grace(limiter.config.limit.period);
                redis.add(&redis_key, batch, ttl, deadline).await.ok()
            }
            None => {
                if !NO_REDIS_LOGGED.swap(true, Ordering::Relaxed) {
                    warn!(limit = %limiter.name, "a global rate limit applies but this proxy has no --rate-limit-redis: it fails open or closed, as its policy says");
                }
                None
            }
        };
        let Some(total) = total else {
            if limiter.config.fail_closed {
                counters.failed_closed.fetch_add(1, Ordering::Relaxed);
                return Verdict::Unavailable;
            }
            counters.failed_open.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // What the fleet had used before this reservation, and so what is left of it.
        let used_before = total.saturating_sub(u64::from(batch));
        let left = u64::from(limiter.config.limit.requests).saturating_sub(used_before);
        let granted = left.min(u64::from(batch));
        limiter.granted(key, window, granted);
        if granted == 0 {
            counters.limited.fetch_add(1, Ordering::Relaxed);
            return Verdict::Limited(limiter, until_end);
        }
        counters.allowed.fetch_add(1, Ordering::Relaxed);
    }
    Verdict::Allowed
}
