//! Local rate limits (RateLimitPolicy `local`): GCRA counts per key, shared by every worker.
//!
//! A key's count is one number, the time its next request is due ("theoretical arrival
//! time"): a request is allowed if that time is at most `tolerance` ahead of now, and then
//! moves it one interval (period / requests) on. One atomic compare-and-swap per request and
//! limit, no lock, no timer: the count of a key nobody used for a while is in the past, the
//! same as a fresh one, so forgetting it loses nothing. Workers share the counts (a client on
//! one connection stays on one worker, so per-worker buckets would give it 1/N of its limit).
//!
//! Keys are hashed to 64 bits with a per-process random seed and counted by hash: two keys
//! share a count only on a hash collision, about one chance in 10^10 among 100,000 keys.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderName;
use rauta_common::api::v1::{RateLimit, rate_limit_key};

use super::request::RequestHeaders;

/// Why a rate limit is invalid (one boxed message: it travels inside every build error).
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate limit {0}")]
    Invalid(Box<str>),
    #[error("rate limits: 1 to 8 limits")]
    Count,
}

fn invalid(name: &str, problem: impl std::fmt::Display) -> RateLimitError {
    RateLimitError::Invalid(format!("{name}: {problem}").into())
}

/// Most limits one rule may count, of each kind.
const MAX_LIMITS: usize = 8;

/// Each limit of a rule's list (local or global) with its configuration and its name among
/// the kept stores: the limit's, and for a limit counted per route, `@` and the route's.
pub fn configured(
    limits: &[RateLimit],
    route: &str,
) -> Result<Vec<(LimitConfig, String)>, RateLimitError> {
    if limits.is_empty() || limits.len() > MAX_LIMITS {
        return Err(RateLimitError::Count);
    }
    limits
        .iter()
        .map(|l| {
            let config = LimitConfig::try_from(l)?;
            let name = match config.key.contains(&KeyPart::Route) {
                true => format!("{}@{route}", l.name),
                false => l.name.clone(),
            };
            Ok((config, name))
        })
        .collect()
}

/// What a request's key is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientAddress,
    Header(HeaderName),
    /// Each route on its own: part of the limiter's name, not of the per-request key.
    Route,
}

/// One limit, as the snapshot sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    pub requests: u32,
    pub period: Duration,
    pub burst: u32,
    pub key: Box<[KeyPart]>,
    pub max_keys: usize,
}

impl TryFrom<&RateLimit> for LimitConfig {
    type Error = RateLimitError;

    fn try_from(l: &RateLimit) -> Result<LimitConfig, RateLimitError> {
        let name = l.name.as_str();
        let sf_string_ok = l
            .name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if l.name.is_empty() || !sf_string_ok {
            return Err(invalid(
                name,
                "the name must be printable ASCII without quotes or backslashes",
            ));
        }
        if l.requests == 0 {
            return Err(invalid(name, "requests must be more than 0"));
        }
        let period = l
            .period
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero() && *d <= Duration::from_secs(86_400))
            .ok_or_else(|| invalid(name, "period must be more than 0 and at most a day"))?;
        let key = l
            .key
            .iter()
            .map(|k| match &k.part {
                Some(rate_limit_key::Part::ClientAddress(_)) => Ok(KeyPart::ClientAddress),
                Some(rate_limit_key::Part::Route(_)) => Ok(KeyPart::Route),
                Some(rate_limit_key::Part::Header(h)) => HeaderName::from_bytes(h.as_bytes())
                    .map(KeyPart::Header)
                    .map_err(|_| invalid(name, format_args!("invalid header name {h:?}"))),
                None => Err(invalid(name, "a key part is missing")),
            })
            .collect::<Result<Box<[KeyPart]>, _>>()?;
        if l.max_keys == 0 && key.iter().any(|k| *k != KeyPart::Route) {
            return Err(invalid(name, "max_keys must be more than 0"));
        }
        Ok(LimitConfig {
            requests: l.requests,
            period,
            burst: if l.burst == 0 { l.requests } else { l.burst },
            key,
            max_keys: usize::try_from(l.max_keys).unwrap_or(usize::MAX),
        })
    }
}

/// What a limiter did with requests (exported as `rauta_proxy_rate_limit_requests_total`).
#[derive(Debug, Default)]
pub struct LimitCounters {
    pub allowed: AtomicU64,
    pub limited: AtomicU64,
}

/// A refused request: which limit, and when the key may send again.
#[derive(Debug)]
pub struct Limited<'a> {
    pub limiter: &'a Limiter,
    pub retry_after: Duration,
}

/// The counts of one limit.
#[derive(Debug)]
pub struct Limiter {
    /// The limit's name, as RateLimit-Policy and the metrics show it.
    pub name: Box<str>,
    /// The route it counts, for a limit counted per route; else empty.
    pub route: Box<str>,
    /// Its name among the kept stores: `name`, or `name@route`.
    kept: Box<str>,
    pub config: LimitConfig,
    pub counters: LimitCounters,
    /// Nanoseconds between allowed requests, in the long run.
    interval: u64,
    /// How far ahead of now a key's due time may be for a request to pass.
    tolerance: u64,
    /// Whether a request's key has a part that is read per request.
    keyed: bool,
    epoch: Instant,
    /// The count of a limit without per-request key.
    single: AtomicU64,
    keys: papaya::HashMap<u64, AtomicU64, foldhash::fast::RandomState>,
    seed: foldhash::fast::RandomState,
    evicting: AtomicBool,
}

impl Limiter {
    /// `name`: the limit's, with the route's after "@" when counted per route.
    pub fn new(name: &str, config: LimitConfig) -> Limiter {
        let period = u64::try_from(config.period.as_nanos()).unwrap_or(u64::MAX);
        let interval = (period / u64::from(config.requests)).max(1);
        let (shown, route) = name.split_once('@').unwrap_or((name, ""));
        Limiter {
            name: shown.into(),
            route: route.into(),
            kept: name.into(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst.saturating_sub(1))),
            keyed: config.key.iter().any(|k| *k != KeyPart::Route),
            config,
            counters: LimitCounters::default(),
            epoch: Instant::now(),
            single: AtomicU64::new(0),
            keys: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
            seed: foldhash::fast::RandomState::default(),
            evicting: AtomicBool::new(false),
        }
    }

    /// Its name among the kept stores.
    pub fn kept_name(&self) -> &str {
        &self.kept
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts a request from `peer` with `headers`; `Err` when it is over the limit. A request
    /// lacking a header the key is made of is not counted.
    pub fn check(&self, peer: IpAddr, headers: RequestHeaders<'_>) -> Result<(), Duration> {
        let now = self.now();
        let verdict = if self.keyed {
            let Some(hash) = self.key_hash(peer, headers) else {
                return Ok(());
            };
            let guard = self.keys.guard();
            match self.keys.get(&hash, &guard) {
                Some(due) => self.take(due, now),
                None => {
                    self.make_room(now);
                    let due = self.keys.get_or_insert(hash, AtomicU64::new(0), &guard);
                    self.take(due, now)
                }
            }
        } else {
            self.take(&self.single, now)
        };
        let counter = match verdict {
            Ok(()) => &self.counters.allowed,
            Err(_) => &self.counters.limited,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        verdict
    }

    /// GCRA on one count.
    fn take(&self, due: &AtomicU64, now: u64) -> Result<(), Duration> {
        let mut current = due.load(Ordering::Relaxed);
        loop {
            let base = current.max(now);
            if base - now > self.tolerance {
                return Err(Duration::from_nanos(base - now - self.tolerance));
            }
            let next = base.saturating_add(self.interval);
            match due.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }

    fn key_hash(&self, peer: IpAddr, headers: RequestHeaders<'_>) -> Option<u64> {
        let mut h = self.seed.build_hasher();
        for part in &self.config.key {
            match part {
                KeyPart::ClientAddress => match peer {
                    IpAddr::V4(a) => h.write(&a.octets()),
                    IpAddr::V6(a) => h.write(&a.octets()),
                },
                KeyPart::Header(name) => {
                    let value = headers.get(name)?;
                    h.write_usize(value.len());
                    h.write(value);
                }
                KeyPart::Route => {}
            }
            h.write_u8(0xff);
        }
        Some(h.finish())
    }

    /// Before a new key is counted: when the map is full, forgets the keys whose counts are
    /// in the past (they carry nothing), and if that is not enough, the eighth whose due times
    /// are the earliest (those closest to a fresh count). One worker does it at a time; the
    /// others go on meanwhile, so the map may briefly hold a few keys more than its bound.
    fn make_room(&self, now: u64) {
        if self.keys.len() < self.config.max_keys || self.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        let keys = self.keys.pin();
        keys.retain(|_, due| due.load(Ordering::Relaxed) > now);
        let target = self.config.max_keys - self.config.max_keys / 8;
        if keys.len() >= target.max(1) {
            let mut dues: Vec<u64> = keys.values().map(|d| d.load(Ordering::Relaxed)).collect();
            let cut = dues.len() - target.min(dues.len());
            if cut > 0 {
                let (_, threshold, _) = dues.select_nth_unstable(cut - 1);
                let threshold = *threshold;
                keys.retain(|_, due| due.load(Ordering::Relaxed) > threshold);
            }
        }
        self.evicting.store(false, Ordering::Release);
    }

    /// Keys counted now.
    pub fn len(&self) -> usize {
        if self.keyed { self.keys.len() } else { 1 }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `RateLimit-Policy` item: quota and window (draft-ietf-httpapi-ratelimit-headers).
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.name,
            self.config.requests,
            self.config.period.as_secs().max(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use rauta_common::api::v1::{ClientAddressKey, RateLimitKey};

    fn limiter(requests: u32, period_s: i64, burst: u32, by_client: bool) -> Limiter {
        let key = match by_client {
            true => vec![RateLimitKey {
                part: Some(rate_limit_key::Part::ClientAddress(ClientAddressKey {})),
            }],
            false => Vec::new(),
        };
        let config = LimitConfig::try_from(&RateLimit {
            name: "apps/limit/0".into(),
            requests,
            period: Some(prost_types::Duration {
                seconds: period_s,
                nanos: 0,
            }),
            burst,
            key,
            max_keys: 8,
        })
        .unwrap();
        Limiter::new("apps/limit/0", config)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_burst_passes_then_the_limit_holds() {
        let l = limiter(5, 60, 0, false);
        let h = HeaderMap::new();
        for i in 0..5 {
            assert!(
                l.check(ip(1), RequestHeaders::Map(&h)).is_ok(),
                "request {i}"
            );
        }
        let wait = l.check(ip(1), RequestHeaders::Map(&h)).unwrap_err();
        // One request every 12 s: the sixth waits about that long.
        assert!(
            wait > Duration::from_secs(11) && wait <= Duration::from_secs(12),
            "{wait:?}"
        );
        assert_eq!(l.counters.allowed.load(Ordering::Relaxed), 5);
        assert_eq!(l.counters.limited.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn each_client_has_its_own_count() {
        let l = limiter(2, 60, 0, true);
        let h = HeaderMap::new();
        for client in 1..=3 {
            assert!(l.check(ip(client), RequestHeaders::Map(&h)).is_ok());
            assert!(l.check(ip(client), RequestHeaders::Map(&h)).is_ok());
            assert!(
                l.check(ip(client), RequestHeaders::Map(&h)).is_err(),
                "client {client}"
            );
        }
    }

    #[test]
    fn a_full_key_map_forgets_keys_and_stays_bounded() {
        let l = limiter(1, 3600, 0, true);
        let h = HeaderMap::new();
        for client in 0..100u8 {
            assert!(
                l.check(ip(client), RequestHeaders::Map(&h)).is_ok(),
                "a new client passes"
            );
        }
        assert!(l.len() <= 9, "{} keys for max_keys 8", l.len());
        // The latest client is still counted.
        assert!(l.check(ip(99), RequestHeaders::Map(&h)).is_err());
    }

    #[test]
    fn invalid_limits_are_refused() {
        let mut bad = RateLimit {
            name: "a".into(),
            requests: 0,
            period: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        };
        let error = |l: &RateLimit| LimitConfig::try_from(l).unwrap_err().to_string();
        assert!(
            error(&bad).contains("requests must be more than 0"),
            "{}",
            error(&bad)
        );
        bad.requests = 1;
        bad.period = None;
        assert!(error(&bad).contains("period must be"), "{}", error(&bad));
        bad.period = Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        });
        bad.name = "a\"b".into();
        assert!(error(&bad).contains("printable ASCII"), "{}", error(&bad));
        bad.name = "a".into();
        bad.key = vec![RateLimitKey {
            part: Some(rate_limit_key::Part::Header("bad header".into())),
        }];
        bad.max_keys = 1;
        assert!(
            error(&bad).contains("invalid header name"),
            "{}",
            error(&bad)
        );
    }
}
