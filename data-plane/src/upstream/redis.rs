//! The Redis server global rate limits are counted in (`rauta-proxy --rate-limit-redis`): one
//! multiplexed connection per proxy (redis-rs's `ConnectionManager`, which reconnects by itself
//! once it has connected), made in the background so that a proxy starts, and serves, while
//! Redis is away. Every request to Redis has a short deadline: a request waiting for quota is
//! never held longer than that, whatever Redis does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::{info, warn};

/// Longest wait for Redis's answer; past it the limit fails open or closed.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(100);
/// Pause between attempts at the first connection.
const CONNECT_RETRY: Duration = Duration::from_secs(1);

/// Why quota could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum RedisCountError {
    #[error("not connected to Redis")]
    NotConnected,
    #[error("Redis did not answer within {RESPONSE_TIMEOUT:?}")]
    Timeout,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

pub struct RedisCounter {
    /// Where, without credentials: for logs.
    shown: String,
    conn: ArcSwapOption<ConnectionManager>,
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
        let info = client.get_connection_info();
        let counter = Arc::new(RedisCounter {
            shown: info.addr().to_string(),
            conn: ArcSwapOption::empty(),
            down: AtomicBool::new(false),
            errors,
        });
        let connecting = Arc::clone(&counter);
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            loop {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(conn) => {
                        connecting.conn.store(Some(Arc::new(conn)));
                        connecting.down.store(true, Ordering::Relaxed);
                        connecting.recovered();
                        return;
                    }
                    Err(e) => {
                        connecting.failed(&RedisCountError::Redis(e));
                        tokio::time::sleep(CONNECT_RETRY).await;
                    }
                }
            }
        });
        Ok(counter)
    }

    /// Adds `amount` to the counter `key` (which expires after `ttl`) and returns the total.
    pub async fn add(&self, key: &str, amount: u32, ttl: Duration) -> Result<u64, RedisCountError> {
        let result = self.try_add(key, amount, ttl).await;
        match &result {
            Ok(_) => self.recovered(),
            Err(e) => self.failed(e),
        }
        result
    }

    async fn try_add(&self, key: &str, amount: u32, ttl: Duration) -> Result<u64, RedisCountError> {
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
        let (total,): (u64,) = tokio::time::timeout(RESPONSE_TIMEOUT, pipe.query_async(&mut conn))
            .await
            .map_err(|_| RedisCountError::Timeout)??;
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
