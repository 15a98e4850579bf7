//! Global rate limits (RateLimitPolicy `global`): counts shared by every proxy of the fleet,
//! kept in Redis, in fixed windows of the limit's unit.
//!
//! A proxy does not ask Redis for each request: it reserves quota in batches (`INCRBY` of the
//! window's counter by `batch`, which grants what is left of the limit, up to a batch) and
//! spends it locally, one atomic operation per request. Redis's counter never goes past what
//! was granted, so the fleet never admits more than the limit in a window; quota a proxy
//! reserved and did not spend before the window ended is lost, so the fleet admits at least
//! the limit less `batch` per proxy that reserved some (`batch` is a tenth of the limit, 1 to
//! 100). A key found used up stays refused locally until its window ends, without asking
//! Redis again.
//!
//! This module keeps the local side; `upstream::redis` talks to Redis.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::rate_limit::{KeyPart, LimitConfig};
use super::request::RequestHeaders;

/// What a global limit is configured with: the limit, and what to do without Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalConfig {
    pub limit: LimitConfig,
    pub fail_closed: bool,
}

/// What the local side says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Spent a token reserved earlier.
    Allowed,
    /// The key used up the window's quota: refused until the window ends.
    Exhausted(Duration),
    /// No quota left here: reserve some for this window.
    Reserve(u32),
}

/// What a request was counted as (exported as `rauta_proxy_global_rate_limit_requests_total`).
#[derive(Debug, Default)]
pub struct GlobalCounters {
    pub allowed: AtomicU64,
    pub limited: AtomicU64,
    /// Let through or refused because Redis could not be asked.
    pub failed_open: AtomicU64,
    pub failed_closed: AtomicU64,
    /// Requests to Redis (one per batch).
    pub reservations: AtomicU64,
}

/// The local state of one global limit.
#[derive(Debug)]
pub struct GlobalLimiter {
    /// The limit's name (RateLimit-Policy, metrics, the Redis key).
    pub name: Box<str>,
    /// The route it counts, for a limit counted per route.
    pub route: Box<str>,
    kept: Box<str>,
    pub config: GlobalConfig,
    pub counters: GlobalCounters,
    /// Quota reserved per Redis request.
    pub batch: u32,
    period_ms: u64,
    /// Per key hash: the window (high 32 bits) and the tokens left in it (low 31 bits), with
    /// bit 31 set once the window's quota is used up.
    keys: papaya::HashMap<u64, AtomicU64, foldhash::fast::RandomState>,
    seed: foldhash::fast::RandomState,
    evicting: AtomicBool,
}

const EXHAUSTED: u64 = 1 << 31;
const TOKENS: u64 = EXHAUSTED - 1;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl GlobalLimiter {
    /// `name`: the limit's, with the route's after "@" when counted per route.
    pub fn new(name: &str, config: GlobalConfig) -> GlobalLimiter {
        let (shown, route) = name.split_once('@').unwrap_or((name, ""));
        let period_ms = u64::try_from(config.limit.period.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        GlobalLimiter {
            name: shown.into(),
            route: route.into(),
            kept: name.into(),
            batch: (config.limit.requests / 10).clamp(1, 100),
            period_ms,
            config,
            counters: GlobalCounters::default(),
            keys: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
            seed: foldhash::fast::RandomState::default(),
            evicting: AtomicBool::new(false),
        }
    }

    pub fn kept_name(&self) -> &str {
        &self.kept
    }

    /// The current window, and how long until it ends.
    pub fn window(&self) -> (u64, Duration) {
        let now = now_ms();
        let window = now / self.period_ms;
        let ends = (window + 1).saturating_mul(self.period_ms);
        (window, Duration::from_millis(ends.saturating_sub(now)))
    }

    /// The request's key in this proxy (per-process seed), `None` when it lacks a header the
    /// key is made of: then the limit does not count it.
    pub fn local_key(&self, peer: IpAddr, headers: RequestHeaders<'_>) -> Option<u64> {
        let mut h = self.seed.build_hasher();
        key_parts(&self.config.limit.key, peer, headers, &mut |part| {
            h.write(part)
        })?;
        Some(h.finish())
    }

    /// The key's name in Redis, the same in every proxy: the limit's name, a SHA-256 of the
    /// key's parts (a value a client chooses cannot be made to share another's count), the
    /// window.
    pub fn redis_key(&self, peer: IpAddr, headers: RequestHeaders<'_>, window: u64) -> String {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let _ = key_parts(&self.config.limit.key, peer, headers, &mut |p| {
            digest.update(&(p.len() as u64).to_be_bytes());
            digest.update(p);
        });
        let sum = digest.finish();
        let mut hex = String::with_capacity(24);
        for b in &sum.as_ref()[..12] {
            hex.push_str(&format!("{b:02x}"));
        }
        format!("rauta:rl:{}:{hex}:{window}", self.kept)
    }

    /// Spends a token reserved for the key in this window, if there is one.
    pub fn take(&self, key: u64, window: u64, until_end: Duration) -> Local {
        let guard = self.keys.guard();
        let state = match self.keys.get(&key, &guard) {
            Some(s) => s,
            None => {
                self.make_room(window);
                self.keys.get_or_insert(key, AtomicU64::new(0), &guard)
            }
        };
        let mut current = state.load(Ordering::Relaxed);
        loop {
            if current >> 32 != window & 0xffff_ffff {
                return Local::Reserve(self.batch);
            }
            if current & EXHAUSTED != 0 {
                return Local::Exhausted(until_end);
            }
            if current & TOKENS == 0 {
                return Local::Reserve(self.batch);
            }
            match state.compare_exchange_weak(
                current,
                current - 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Local::Allowed,
                Err(seen) => current = seen,
            }
        }
    }

    /// Records what Redis granted for the key in `window`: `granted` tokens of which the
    /// request that asked spends one (0: the quota is used up, for every proxy).
    pub fn granted(&self, key: u64, window: u64, granted: u64) {
        let guard = self.keys.guard();
        let state = self.keys.get_or_insert(key, AtomicU64::new(0), &guard);
        let mut current = state.load(Ordering::Relaxed);
        loop {
            let same_window = current >> 32 == window & 0xffff_ffff;
            let left = if same_window { current & TOKENS } else { 0 };
            let tokens = match granted {
                0 => EXHAUSTED,
                g => (left + g - 1).min(TOKENS),
            };
            let next = ((window & 0xffff_ffff) << 32) | tokens;
            match state.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// As the local limiter's: keys of past windows carry nothing and go first, then an
    /// eighth of the rest.
    fn make_room(&self, window: u64) {
        let max = self.config.limit.max_keys;
        if self.keys.len() < max || self.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        let keys = self.keys.pin();
        keys.retain(|_, s| s.load(Ordering::Relaxed) >> 32 == window & 0xffff_ffff);
        let target = max - max / 8;
        if keys.len() >= target.max(1) {
            let excess = keys.len() - target.min(keys.len());
            let doomed: Vec<u64> = keys.keys().take(excess).copied().collect();
            for k in doomed {
                keys.remove(&k);
            }
        }
        self.evicting.store(false, Ordering::Release);
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `RateLimit-Policy` item.
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.name,
            self.config.limit.requests,
            self.config.limit.period.as_secs().max(1)
        )
    }
}

/// Feeds each part of a request's key to `f`; `None` when a header part is missing.
fn key_parts(
    parts: &[KeyPart],
    peer: IpAddr,
    headers: RequestHeaders<'_>,
    f: &mut impl FnMut(&[u8]),
) -> Option<()> {
    for part in parts {
        match part {
            KeyPart::ClientAddress => match peer {
                IpAddr::V4(a) => f(&a.octets()),
                IpAddr::V6(a) => f(&a.octets()),
            },
            KeyPart::Header(name) => f(headers.get(name)?),
            KeyPart::Route => {}
        }
        f(&[0xff]);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn limiter(requests: u32) -> GlobalLimiter {
        GlobalLimiter::new(
            "apps/p/global/0",
            GlobalConfig {
                limit: LimitConfig {
                    requests,
                    period: Duration::from_secs(60),
                    burst: requests,
                    key: Box::new([KeyPart::ClientAddress]),
                    max_keys: 4,
                },
                fail_closed: false,
            },
        )
    }

    #[test]
    fn quota_is_reserved_in_batches_and_spent_locally() {
        let l = limiter(50);
        assert_eq!(l.batch, 5);
        let (w, end) = (7, Duration::from_secs(1));
        assert_eq!(l.take(1, w, end), Local::Reserve(5), "nothing reserved yet");
        l.granted(1, w, 5);
        for _ in 0..4 {
            assert_eq!(l.take(1, w, end), Local::Allowed);
        }
        assert_eq!(l.take(1, w, end), Local::Reserve(5), "the batch is spent");
        l.granted(1, w, 0);
        assert_eq!(
            l.take(1, w, end),
            Local::Exhausted(end),
            "used up: no more Redis calls"
        );
        assert_eq!(l.take(1, w + 1, end), Local::Reserve(5), "a new window");
        assert_eq!(l.take(2, w, end), Local::Reserve(5), "another key");
    }

    #[test]
    fn redis_keys_are_the_same_in_every_proxy_and_differ_by_key() {
        let (a, b) = (limiter(10), limiter(10));
        let h = HeaderMap::new();
        let peer = IpAddr::from([10, 0, 0, 1]);
        let key = |l: &GlobalLimiter, p| l.redis_key(p, RequestHeaders::Map(&h), 3);
        assert_eq!(key(&a, peer), key(&b, peer));
        assert_ne!(key(&a, peer), key(&a, IpAddr::from([10, 0, 0, 2])));
        assert!(key(&a, peer).starts_with("rauta:rl:apps/p/global/0:"));
        assert!(key(&a, peer).ends_with(":3"));
    }

    #[test]
    fn the_key_map_stays_bounded() {
        let l = limiter(10);
        for k in 0..100 {
            let _ = l.take(k, 1, Duration::ZERO);
        }
        assert!(l.len() <= 5, "{}", l.len());
    }
}
