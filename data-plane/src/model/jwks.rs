//! The public keys JWT providers verify tokens with: a JWK Set given in the snapshot, or one
//! each proxy fetches from a URL ([`RemoteJwks`]) and fetches again while it is used.
//!
//! A remote set is fetched by the first request that needs it (which waits for it, at most
//! [`FIRST_FETCH_WAIT`]) and again by the first request after `refresh` has passed (which does
//! not wait: it goes on with the keys there are). A failed fetch keeps the last good keys and
//! is tried again after [`RETRY_AFTER_FAILURE`]; a token naming a key not in the set asks for
//! a fetch too, at most every [`UNKNOWN_KEY_REFETCH`], so a provider's new key is picked up
//! without waiting for `refresh`. Requests read the keys through one atomic load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
pub use rauta_common::jwks::{JwksError, KeySet, PublicKey};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::upstream::jwks_fetch::{self, FetchError};

/// Longest a request waits for a remote set's first fetch.
pub const FIRST_FETCH_WAIT: Duration = Duration::from_secs(5);
/// Pause after a failed fetch before the next.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Shortest pause between fetches asked for by tokens naming unknown keys.
pub const UNKNOWN_KEY_REFETCH: Duration = Duration::from_secs(10);

/// A JWK Set at a URL, fetched by this proxy (see the module's comment).
pub struct RemoteJwks {
    pub uri: http::Uri,
    refresh: Duration,
    keys: ArcSwapOption<KeySet>,
    /// A fetch is under way.
    fetching: AtomicBool,
    /// When (ms since `epoch`) the next fetch is due.
    due_ms: AtomicU64,
    /// From when (ms since `epoch`) a token naming an unknown key may ask for a fetch.
    unknown_key_due_ms: AtomicU64,
    /// Sets fetched so far.
    generations: AtomicU64,
    /// The first 8 bytes of the SHA-256 of the document the keys came from.
    document: AtomicU64,
    epoch: Instant,
    fetched: Notify,
    /// The last fetch failed: logged once when failing starts, once when it ends.
    failing: AtomicBool,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteJwks({})", self.uri)
    }
}

impl RemoteJwks {
    pub fn new(uri: http::Uri, refresh: Duration) -> RemoteJwks {
        RemoteJwks {
            uri,
            refresh,
            keys: ArcSwapOption::empty(),
            fetching: AtomicBool::new(false),
            due_ms: AtomicU64::new(0),
            unknown_key_due_ms: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            document: AtomicU64::new(0),
            epoch: Instant::now(),
            fetched: Notify::new(),
            failing: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The keys, fetching them when due; waits only for the first fetch, and only while one
    /// is under way.
    pub async fn keys(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if self.now_ms() >= self.due_ms.load(Ordering::Relaxed) {
            self.start_fetch();
        }
        if let Some(keys) = self.keys.load_full() {
            return Some(keys);
        }
        let fetched = self.fetched.notified();
        tokio::pin!(fetched);
        // Registered before the second look, so that a fetch ending in between is not missed.
        fetched.as_mut().enable();
        if let Some(keys) = self.keys.load_full() {
            return Some(keys);
        }
        // A failed first fetch is retried when due: nobody waits for one that is not running.
        if !self.fetching.load(Ordering::Acquire) {
            return None;
        }
        let _ = tokio::time::timeout(FIRST_FETCH_WAIT, fetched).await;
        self.keys.load_full()
    }

    /// A token named a key the set does not have: fetch again, unless one did lately.
    pub fn unknown_key(self: &Arc<Self>) {
        let now = self.now_ms();
        let due = self.unknown_key_due_ms.load(Ordering::Relaxed);
        let pause = u64::try_from(UNKNOWN_KEY_REFETCH.as_millis()).unwrap_or(u64::MAX);
        if now >= due
            && self
                .unknown_key_due_ms
                .compare_exchange(
                    due,
                    now.saturating_add(pause),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.start_fetch();
        }
    }

    /// Starts a fetch in the background unless one is under way.
    fn start_fetch(self: &Arc<Self>) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.fetching.store(false, Ordering::Release);
            return;
        };
        let this = Arc::clone(self);
        runtime.spawn(async move {
            let result = jwks_fetch::fetch(&this.uri).await;
            this.fetch_done(result);
        });
    }

    fn fetch_done(&self, result: Result<bytes::Bytes, FetchError>) {
        let parsed = result.map_err(|e| e.to_string()).and_then(|body| {
            // The same document keeps its set and generation: a refetch (say, one a token with
            // a made-up kid asked for) then forgets no verified token.
            let digest = ring::digest::digest(&ring::digest::SHA256, &body);
            let digest = u64::from_le_bytes(digest.as_ref()[..8].try_into().unwrap_or([0; 8]));
            if digest == self.document.load(Ordering::Relaxed) && self.keys.load().is_some() {
                return Ok(None);
            }
            let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
            let set = KeySet::parse(&body, generation).map_err(|e| e.to_string())?;
            self.document.store(digest, Ordering::Relaxed);
            Ok(Some(set))
        });
        let next = match parsed {
            Ok(set) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!(uri = %self.uri, "JWK Set fetched again");
                }
                if let Some(set) = set {
                    self.keys.store(Some(Arc::new(set)));
                }
                self.refresh
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!(uri = %self.uri, error = %e, "JWK Set fetch failed; keeping the last good keys");
                }
                RETRY_AFTER_FAILURE.min(self.refresh)
            }
        };
        let next = u64::try_from(next.as_millis()).unwrap_or(u64::MAX);
        self.due_ms
            .store(self.now_ms().saturating_add(next), Ordering::Relaxed);
        self.fetching.store(false, Ordering::Release);
        self.fetched.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nobody_waits_for_a_fetch_that_is_not_running() {
        // Nothing listens on port 1: each fetch fails at once.
        let remote = Arc::new(RemoteJwks::new(
            "http://127.0.0.1:1/jwks".parse().unwrap(),
            Duration::from_secs(60),
        ));
        assert!(remote.keys().await.is_none(), "the first fetch failed");
        // The next fetch is due in RETRY_AFTER_FAILURE: this request must not wait for it.
        let started = Instant::now();
        assert!(remote.keys().await.is_none());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
