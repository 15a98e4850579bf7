//! The answers a rule's cache keeps, by (scheme, host, request target). A lock-free map
//! (papaya): the request path reads it without locks, and a miss's insert does not stop
//! readers. Bounded by the rule's `max_entries`: over it, expired answers go first, then the
//! least recently used eighth (so eviction's sort is paid once per many inserts).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use rauta_common::api::v1::ResponseCache;

/// Why a ResponseCache is invalid.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache: max_ttl must be more than 0")]
    MaxTtl,
    #[error("cache: max_body_bytes must be more than 0")]
    MaxBody,
    #[error("cache: max_entries must be more than 0")]
    MaxEntries,
    #[error("cache: invalid status {0}")]
    Status(u32),
}

/// What a rule may cache, as the snapshot says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub max_ttl: Duration,
    pub max_body_bytes: u64,
    pub statuses: Box<[StatusCode]>,
    pub max_entries: usize,
}

impl TryFrom<&ResponseCache> for CacheConfig {
    type Error = CacheError;

    fn try_from(c: &ResponseCache) -> Result<CacheConfig, CacheError> {
        let max_ttl = c
            .max_ttl
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .ok_or(CacheError::MaxTtl)?;
        if c.max_body_bytes == 0 {
            return Err(CacheError::MaxBody);
        }
        if c.max_entries == 0 {
            return Err(CacheError::MaxEntries);
        }
        let statuses = match c.statuses.is_empty() {
            true => vec![StatusCode::OK],
            false => c
                .statuses
                .iter()
                .map(|s| {
                    u16::try_from(*s)
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        // A 206 or 304 answers one request's Range or condition; kept,
                        // it would be sent to plain GETs.
                        .filter(|s| {
                            (200..=599).contains(&s.as_u16()) && ![206, 304].contains(&s.as_u16())
                        })
                        .ok_or(CacheError::Status(*s))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(CacheConfig {
            max_ttl,
            max_body_bytes: u64::from(c.max_body_bytes),
            statuses: statuses.into_boxed_slice(),
            max_entries: usize::try_from(c.max_entries).unwrap_or(usize::MAX),
        })
    }
}

/// Where an answer was asked for: the key RFC 9111 uses (the target URI), less the port (a
/// rule's answers do not depend on which of its listeners took the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub https: bool,
    /// Lower case, without port.
    pub host: Box<str>,
    /// Path and query, as routed (normalized).
    pub target: Box<str>,
}

/// A key borrowed from a request, to look up without allocating.
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'a> {
    pub https: bool,
    pub host: &'a str,
    pub target: &'a str,
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.https.hash(state);
        self.host.hash(state);
        self.target.hash(state);
    }
}

impl CacheKey {
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            https: self.https,
            host: &self.host,
            target: &self.target,
        }
    }
}

impl equivalent::Equivalent<CacheKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self.https == key.https && self.host == &*key.host && self.target == &*key.target
    }
}

/// One kept answer.
#[derive(Debug)]
pub struct CachedResponse {
    pub status: StatusCode,
    /// The backend's fields, less Age (recomputed when served).
    pub headers: HeaderMap,
    pub body: Bytes,
    stored: Instant,
    /// The Age it had when it was stored.
    age_at_store: Duration,
    pub expires: Instant,
    /// When it was last served, in nanoseconds since the store was made (for LRU).
    last_used: AtomicU64,
}

impl CachedResponse {
    /// Its Age now (RFC 9111 4.2.3: the age it came with plus the time it has been kept).
    pub fn age(&self, now: Instant) -> Duration {
        self.age_at_store + now.saturating_duration_since(self.stored)
    }

    pub fn fresh(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// A new answer to keep.
pub struct Fresh {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub ttl: Duration,
    pub age: Duration,
}

/// What the cache did with requests, counted (exported as `rauta_proxy_cache_requests_total`).
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Answered from the cache.
    pub hit: AtomicU64,
    /// Forwarded, and the answer kept.
    pub stored: AtomicU64,
    /// Forwarded, and the answer not kept (not cacheable).
    pub miss: AtomicU64,
    /// Forwarded without looking: credentials, `no-cache`, another method.
    pub bypass: AtomicU64,
}

impl CacheCounters {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (result label, count), for the exporter.
    pub fn by_result(&self) -> [(&'static str, u64); 4] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("hit", get(&self.hit)),
            ("stored", get(&self.stored)),
            ("miss", get(&self.miss)),
            ("bypass", get(&self.bypass)),
        ]
    }
}

#[derive(Debug)]
pub struct ResponseStore {
    pub config: CacheConfig,
    pub counters: CacheCounters,
    map: papaya::HashMap<CacheKey, Arc<CachedResponse>>,
    made: Instant,
    /// Moves on every insert and removal, so that a reader of every entry (the kernel path's
    /// sync) knows when to look again.
    generation: AtomicU64,
}

impl ResponseStore {
    pub fn new(config: CacheConfig) -> ResponseStore {
        ResponseStore {
            config,
            counters: CacheCounters::default(),
            map: papaya::HashMap::new(),
            made: Instant::now(),
            generation: AtomicU64::new(0),
        }
    }

    fn ticks(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.made).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The fresh answer for a key, if any.
    pub fn get(&self, key: KeyRef<'_>, now: Instant) -> Option<Arc<CachedResponse>> {
        let map = self.map.pin();
        let found = map.get(&key).filter(|r| r.fresh(now))?;
        found.last_used.store(self.ticks(now), Ordering::Relaxed);
        Some(Arc::clone(found))
    }

    /// Keeps an answer, replacing the key's earlier one; evicts when over `max_entries`.
    pub fn insert(&self, key: CacheKey, fresh: Fresh, now: Instant) {
        let response = CachedResponse {
            status: fresh.status,
            headers: fresh.headers,
            body: fresh.body,
            stored: now,
            age_at_store: fresh.age,
            expires: now + fresh.ttl,
            last_used: AtomicU64::new(self.ticks(now)),
        };
        let map = self.map.pin();
        map.insert(key, Arc::new(response));
        self.generation.fetch_add(1, Ordering::Release);
        if map.len() > self.config.max_entries {
            self.evict(now);
        }
    }

    /// Drops expired answers, then the least recently used until an eighth is free.
    fn evict(&self, now: Instant) {
        let map = self.map.pin();
        let mut live: Vec<(u64, CacheKey)> = Vec::with_capacity(map.len());
        for (key, response) in map.iter() {
            match response.fresh(now) {
                true => live.push((response.last_used.load(Ordering::Relaxed), key.clone())),
                false => {
                    map.remove(key);
                }
            }
        }
        let keep = self.config.max_entries - self.config.max_entries / 8;
        if live.len() > keep {
            live.sort_unstable_by_key(|(used, _)| *used);
            for (_, key) in &live[..live.len() - keep] {
                map.remove(key);
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Every kept answer, fresh or not (for the kernel path and the admin dump).
    pub fn entries(&self) -> Vec<(CacheKey, Arc<CachedResponse>)> {
        let map = self.map.pin();
        map.iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Changes with every insert and eviction.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_entries: usize) -> ResponseStore {
        ResponseStore::new(CacheConfig {
            max_ttl: Duration::from_secs(60),
            max_body_bytes: 100,
            statuses: Box::new([StatusCode::OK]),
            max_entries,
        })
    }

    fn key(target: &str) -> CacheKey {
        CacheKey {
            https: false,
            host: "example.com".into(),
            target: target.into(),
        }
    }

    fn fresh(body: &'static str, ttl: u64) -> Fresh {
        Fresh {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            ttl: Duration::from_secs(ttl),
            age: Duration::from_secs(2),
        }
    }

    #[test]
    fn answers_are_served_while_fresh_and_by_exact_key() {
        let s = store(10);
        let now = Instant::now();
        s.insert(key("/a"), fresh("A", 5), now);
        let a = s
            .get(key("/a").as_ref(), now + Duration::from_secs(4))
            .unwrap();
        assert_eq!(a.body, "A");
        assert_eq!(a.age(now + Duration::from_secs(4)), Duration::from_secs(6));
        assert!(
            s.get(key("/a").as_ref(), now + Duration::from_secs(5))
                .is_none()
        );
        let plain = key("/a");
        let https = KeyRef {
            https: true,
            ..plain.as_ref()
        };
        assert!(s.get(https, now).is_none());
        assert!(s.get(key("/a?x").as_ref(), now).is_none());
    }

    #[test]
    fn over_max_entries_the_expired_then_the_least_recently_used_go() {
        let s = store(8);
        let now = Instant::now();
        s.insert(key("/expiring"), fresh("E", 1), now);
        for i in 0..7 {
            s.insert(key(&format!("/{i}")), fresh("x", 60), now);
        }
        // All but /1 are used again, so /1 is the least recently used.
        let later = now + Duration::from_secs(2);
        for i in [0, 2, 3, 4, 5, 6] {
            s.get(key(&format!("/{i}")).as_ref(), later).unwrap();
        }
        let before = s.generation();
        s.insert(key("/7"), fresh("x", 60), later);
        assert!(s.generation() > before);
        assert_eq!(
            s.len(),
            7,
            "8 live after dropping the expired one; an eighth freed"
        );
        assert!(s.get(key("/0").as_ref(), later).is_some());
        assert!(s.get(key("/1").as_ref(), later).is_none());
        assert!(s.get(key("/7").as_ref(), later).is_some());
    }
}
