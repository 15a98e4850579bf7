//! The Redis server global rate limits are counted in (`rauta-proxy --rate-limit-redis`): one
//! multiplexed connection per proxy (redis-rs's `ConnectionManager`, which reconnects by itself
//! after a dropped connection), made in the background so that a proxy starts, and serves,
//! while Redis is away. Requests to Redis have the caller's deadline. After a failure Redis is
//! not asked again for a second (requests fail at once meanwhile, open or closed), so a Redis
//! that stops answering costs one request a deadline per second, not every request; after a
//! timeout the connection is made anew (a connection to a host that vanished may never report
//! an error, and the connection manager reconnects only on errors).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::{info, warn};

/// Longest wait for Redis's answer within one request; past it the limit fails open or closed.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(100);
/// Pause between connection attempts, and after a failure before Redis is asked again.
const RETRY: Duration = Duration::from_secs(1);

/// Why quota could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum RedisCountError {
    #[error("not connected to Redis")]
    NotConnected,
    #[error("Redis failed less than {RETRY:?} ago")]
    Resting,
    #[error("Redis did not answer in time")]
    Timeout,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

pub struct RedisCounter {
    /// Where, without credentials: for logs.
    shown: String,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    /// A connection is being made.
    connecting: AtomicBool,
    /// Until when (ms since `epoch`) Redis is not asked, after a failure.
    resting_until: AtomicU64,
    epoch: Instant,
    /// Redis is failing: logged once when it starts, once when it ends.
    down: AtomicBool,
    errors: IntCounter,
}

impl std::fmt::Debug for RedisCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisCounter({})", self.shown)
    }
}

impl RedisCounter {
    /// Parses `url` (`redis://[user:password@]host:port[/db]`) and starts connecting in the
    /// background, on the current runtime.
    pub fn start(url: &str, errors: IntCounter) -> Result<Arc<RedisCounter>, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let counter = Arc::new(RedisCounter {
            shown: client.get_connection_info().addr().to_string(),
            client,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            resting_until: AtomicU64::new(0),
            epoch: Instant::now(),
            down: AtomicBool::new(false),
            errors,
        });
        counter.connect();
        Ok(counter)
    }

    /// Makes a new connection in the background, unless one is being made.
    fn connect(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let counter = Arc::clone(self);
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            loop {
                match ConnectionManager::new_with_config(counter.client.clone(), config.clone())
                    .await
                {
                    Ok(conn) => {
                        counter.conn.store(Some(Arc::new(conn)));
                        counter.connecting.store(false, Ordering::Release);
                        counter.down.store(true, Ordering::Relaxed);
                        counter.recovered();
                        return;
                    }
                    Err(e) => {
                        counter.failed(&RedisCountError::Redis(e));
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        });
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Adds `amount` to the counter `key` (which expires after `ttl`) and returns the total;
    /// gives up at `deadline`.
    pub async fn add(
        self: &Arc<Self>,
        key: &str,
        amount: u32,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<u64, RedisCountError> {
        if self.now_ms() < self.resting_until.load(Ordering::Relaxed) {
            return Err(RedisCountError::Resting);
        }
        let result = self.try_add(key, amount, ttl, deadline).await;
        match &result {
            Ok(_) => self.recovered(),
            Err(e) => {
                self.failed(e);
                let until = self.now_ms().saturating_add(RETRY.as_millis() as u64);
                self.resting_until.store(until, Ordering::Relaxed);
                if matches!(e, RedisCountError::Timeout) {
                    self.conn.store(None);
                    self.connect();
                }
            }
        }
        result
    }

    async fn try_add(
        &self,
        key: &str,
        amount: u32,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<u64, RedisCountError> {
        let mut conn = self
            .conn
            .load_full()
            .map(|c| (*c).clone())
            .ok_or(RedisCountError::NotConnected)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("INCRBY")
            .arg(key)
            .arg(amount)
            .cmd("PEXPIRE")
            .arg(key)
            .arg(ttl_ms)
            .ignore();
        let deadline = tokio::time::Instant::from_std(deadline);
        let (total,): (u64,) = tokio::time::timeout_at(deadline, pipe.query_async(&mut conn))
            .await
            .map_err(|_| RedisCountError::Timeout)?
            .map_err(|e| match e.is_timeout() {
                true => RedisCountError::Timeout,
                false => RedisCountError::Redis(e),
            })?;
        Ok(total)
    }

    fn failed(&self, e: &RedisCountError) {
        self.errors.inc();
        if !self.down.swap(true, Ordering::Relaxed) {
            warn!(redis = %self.shown, error = %e, "global rate limits cannot reach Redis: they fail open or closed, as their policies say, until it is back");
        }
    }

    fn recovered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            info!(redis = %self.shown, "Redis reachable: global rate limits count in it");
        }
    }
}
