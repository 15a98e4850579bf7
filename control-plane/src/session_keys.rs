//! The secret that signs session persistence tokens. The controller holds a master key (from
//! `--session-key-file`, the controller's Secret in Kubernetes mode, or drawn at start) and
//! gives each Gateway's route tables a key derived from it for that Gateway, so a proxy (or
//! whoever reads its configuration) can sign tokens for its own Gateway and no other. After a
//! rotation the previous master key keeps verifying for [`PREVIOUS_KEY_GRACE`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rauta_common::api::v1::resource::Payload;
use rauta_common::types::ResourceType;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tracing::{info, warn};

use crate::cache::SnapshotCache;
use crate::objects::ObjectRef;
use crate::translator::ResourceSet;

/// How long tokens signed with the previous key keep working after a rotation.
pub const PREVIOUS_KEY_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Shortest master key accepted, in bytes.
pub const MIN_MASTER_KEY: usize = 32;
/// How often `--session-key-file` is checked for a new key.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SessionKeyError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("a session key must have at least {MIN_MASTER_KEY} bytes")]
    TooShort,
    #[error("no random numbers from the system")]
    Random,
}

/// Master keys, the current one first; at most one earlier key.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct MasterKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKeys({} keys)", self.0.len())
    }
}

impl MasterKeys {
    pub fn new(current: Vec<u8>) -> Result<Self, SessionKeyError> {
        if current.len() < MIN_MASTER_KEY {
            return Err(SessionKeyError::TooShort);
        }
        Ok(MasterKeys(vec![current]))
    }

    /// A key drawn from the system's random numbers.
    pub fn random() -> Result<Self, SessionKeyError> {
        Ok(MasterKeys(vec![random_key()?]))
    }

    /// `next` becomes the current key; the current one is kept as the previous.
    pub fn rotated(&self, next: Vec<u8>) -> Self {
        let mut keys = vec![next];
        keys.extend(self.0.first().cloned());
        MasterKeys(keys)
    }

    /// Only the current key (the grace period of the previous one is over).
    pub fn without_previous(&self) -> Self {
        MasterKeys(self.0.iter().take(1).cloned().collect())
    }

    pub fn current(&self) -> Option<&[u8]> {
        self.0.first().map(Vec::as_slice)
    }

    /// The keys of one Gateway's route tables: HMAC-SHA256 of the Gateway's name under each
    /// master key, in hex.
    pub fn for_gateway(&self, gateway: &ObjectRef) -> Vec<String> {
        self.0
            .iter()
            .map(|master| {
                let key = hmac::Key::new(hmac::HMAC_SHA256, master);
                let label = format!(
                    "rauta session key v1\0{}\0{}",
                    gateway.namespace, gateway.name
                );
                hmac::sign(&key, label.as_bytes())
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect()
    }

    /// Gives every route table of `set` the Gateway's keys. Not only those with a sticky rule:
    /// sticky rules travel as `RouteRules`, pushed after the tables, so a table that lost its
    /// keys together with its last sticky route would reach the proxy first and be refused
    /// there (a sticky rule without keys) while the proxy still held that route.
    pub fn apply(&self, gateway: &ObjectRef, set: &mut ResourceSet) {
        let Some(tables) = set.get_mut(&ResourceType::RouteTable) else {
            return;
        };
        let mut keys = None;
        for payload in tables.values_mut() {
            if let Payload::RouteTable(table) = Arc::make_mut(payload) {
                table.session_keys = keys
                    .get_or_insert_with(|| self.for_gateway(gateway))
                    .clone();
            }
        }
    }
}

/// 32 random bytes.
pub fn random_key() -> Result<Vec<u8>, SessionKeyError> {
    let mut key = vec![0; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SessionKeyError::Random)?;
    Ok(key)
}

fn read_key(path: &Path) -> Result<Vec<u8>, SessionKeyError> {
    let text = std::fs::read(path).map_err(|e| SessionKeyError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let key = text.trim_ascii().to_vec();
    if key.len() < MIN_MASTER_KEY {
        return Err(SessionKeyError::File {
            path: path.to_owned(),
            message: SessionKeyError::TooShort.to_string(),
        });
    }
    Ok(key)
}

/// Follows a key source: hands the cache every new key, keeps the previous one for
/// [`PREVIOUS_KEY_GRACE`], then drops it. `next` answers the source's key now (None: no
/// answer this time, keep what there is).
pub async fn follow<F, Fut>(
    cache: Arc<SnapshotCache>,
    mut keys: MasterKeys,
    interval: Duration,
    what: &'static str,
    mut next: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Vec<u8>>>,
{
    let mut previous_until: Option<SystemTime> = None;
    loop {
        tokio::time::sleep(interval).await;
        if let Some(key) = next().await
            && Some(key.as_slice()) != keys.current()
        {
            keys = keys.rotated(key);
            previous_until = Some(SystemTime::now() + PREVIOUS_KEY_GRACE);
            info!(
                source = what,
                grace = ?PREVIOUS_KEY_GRACE,
                "new session key; tokens signed with the previous one keep working for the grace period"
            );
            cache.set_session_keys(keys.clone());
        }
        if previous_until.is_some_and(|t| SystemTime::now() >= t) {
            previous_until = None;
            keys = keys.without_previous();
            info!(source = what, "previous session key dropped");
            cache.set_session_keys(keys.clone());
        }
    }
}

/// The key in `path` now, and a task that follows the file (checked every 2 s).
pub fn from_file(
    path: &Path,
    cache: Arc<SnapshotCache>,
) -> Result<(MasterKeys, impl Future<Output = ()> + use<>), SessionKeyError> {
    let keys = MasterKeys::new(read_key(path)?)?;
    let path = path.to_owned();
    let task = follow(
        cache,
        keys.clone(),
        FILE_CHECK_INTERVAL,
        "--session-key-file",
        move || {
            let read = read_key(&path);
            async move {
                read.inspect_err(
                    |e| warn!(error = %e, "cannot read the session key; keeping the current one"),
                )
                .ok()
            }
        },
    );
    Ok((keys, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rauta_common::api::v1::{RouteRule, RouteTable, VirtualHost};

    fn table(name: &str, sticky: bool) -> Arc<Payload> {
        Arc::new(Payload::RouteTable(RouteTable {
            name: name.into(),
            virtual_hosts: vec![VirtualHost {
                rules: vec![RouteRule {
                    session_persistence: sticky.then(Box::default),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            session_keys: vec!["stale".into()],
            ..Default::default()
        }))
    }

    fn keys_of(set: &ResourceSet, name: &str) -> Vec<String> {
        match &*set[&ResourceType::RouteTable][name] {
            Payload::RouteTable(t) => t.session_keys.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_table_gets_keys_of_its_own_gateway() {
        let keys = MasterKeys::new(vec![7; 32]).unwrap();
        let mut set = ResourceSet::new();
        let tables = set.entry(ResourceType::RouteTable).or_default();
        tables.insert("sticky".into(), table("sticky", true));
        tables.insert("plain".into(), table("plain", false));
        let gw = ObjectRef::new("a", "gw");
        keys.apply(&gw, &mut set);
        let given = keys_of(&set, "sticky");
        assert_eq!(given.len(), 1);
        assert_eq!(given[0].len(), 64);
        // A table without a sticky rule too: its routes' rules may gain or lose session
        // persistence in a RouteRules update that reaches the proxy after the table.
        assert_eq!(keys_of(&set, "plain"), given);
        // Another Gateway, another key; the same Gateway, the same key (every replica).
        assert_ne!(keys.for_gateway(&ObjectRef::new("b", "gw")), given);
        assert_ne!(keys.for_gateway(&ObjectRef::new("a", "gw2")), given);
        assert_eq!(
            MasterKeys::new(vec![7; 32]).unwrap().for_gateway(&gw),
            given
        );
        // Rotated: the new key first, the old one after it, until it is dropped.
        let rotated = keys.rotated(vec![8; 32]);
        let both = rotated.for_gateway(&gw);
        assert_eq!(both.len(), 2);
        assert_eq!(both[1], given[0]);
        assert_eq!(rotated.without_previous().for_gateway(&gw), both[..1]);
    }

    #[test]
    fn keys_must_be_long_and_random_ones_differ() {
        assert!(matches!(
            MasterKeys::new(vec![1; 31]),
            Err(SessionKeyError::TooShort)
        ));
        assert_ne!(MasterKeys::random().unwrap(), MasterKeys::random().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "too short\n").unwrap();
        assert!(read_key(&path).is_err());
        std::fs::write(&path, format!("{}\n", "k".repeat(40))).unwrap();
        assert_eq!(read_key(&path).unwrap(), vec![b'k'; 40]);
    }
}
