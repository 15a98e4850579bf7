//! The last configuration the proxy applied, kept in `--state-dir` so that a proxy restarting
//! while no controller answers serves it at once instead of nothing.
//!
//! The file is the resource store as the discovery stream left it: every resource of every
//! type, with its name and version, and each type's `system_version_info`. It is written only
//! after a response was applied (so it holds nothing the proxy refused), by a thread of its
//! own (a slow disk never delays an ACK or a request), atomically (temporary file, fsync,
//! rename, fsync of the directory). Reading it back checks a checksum before decoding, and the
//! applier then builds it exactly as it builds a discovery response.
//!
//! Layout: `MAGIC` (8 bytes, the last one the format version), the FNV-1a 64 of the body
//! (8 bytes, little-endian), the body: a [`PersistedState`] message.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use prost::Message;
use rauta_common::api::v1::{DeltaDiscoveryResponse, Resource};
use rauta_common::hash::fnv1a64;
use rauta_common::types::ResourceType;
use tracing::{debug, warn};

use crate::model::store::{ResourceStore, StoreError};

/// The state file's name in `--state-dir`.
pub const STATE_FILE: &str = "state.pb";
/// Where a refused state file is moved, beside it, for a person to look at.
pub const REJECTED_FILE: &str = "state.pb.rejected";
const TEMP_FILE: &str = "state.pb.tmp";
/// "RAUTA persisted state", format 1.
const MAGIC: [u8; 8] = *b"RAUTAPS\x01";
const HEADER_LEN: usize = MAGIC.len() + 8;
/// Largest state written or read. Far above any real Gateway's configuration (10000 routes
/// take a few MB), and it keeps a damaged or hostile file from making the proxy allocate
/// without bound; the Deployment's emptyDir sizeLimit leaves room for three such files (the
/// state, the temporary one being written, a refused one).
pub const MAX_STATE_BYTES: u64 = 32 << 20;

/// The file's body. Defined here rather than in `proto/`: it is the proxy's own file, never
/// on the wire, and it holds `rauta.v1.Resource`s as they are, whatever types there are.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PersistedState {
    /// The Gateway ("namespace/name") the configuration is for: another Gateway's proxy
    /// sharing a directory must not serve it.
    #[prost(string, tag = "1")]
    pub gateway: String,
    /// When it was written, in milliseconds since the epoch (for /readyz and the logs).
    #[prost(uint64, tag = "2")]
    pub saved_unix_ms: u64,
    #[prost(message, repeated, tag = "3")]
    pub types: Vec<PersistedType>,
}

/// Every resource of one type, as a discovery response holding all of them would carry them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PersistedType {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(string, tag = "2")]
    pub system_version_info: String,
    #[prost(message, repeated, tag = "3")]
    pub resources: Vec<Resource>,
}

/// Why a state file cannot be written or served.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{bytes} bytes, more than the {max} a state file may have", max = MAX_STATE_BYTES)]
    TooLarge { bytes: u64 },
    #[error("not a RAUTA state file of this format (wrong magic bytes)")]
    Magic,
    #[error("checksum mismatch: the file is damaged or truncated")]
    Checksum,
    #[error("undecodable: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("written for Gateway {found:?}, this proxy serves {ours:?}")]
    Gateway { found: String, ours: String },
    #[error("unknown resource type {0:?}")]
    UnknownType(String),
    #[error("resource type {0} appears twice")]
    DuplicateType(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PersistError {
    let path = path.to_owned();
    move |source| PersistError::Io { op, path, source }
}

impl PersistedState {
    /// Everything `store` holds, for Gateway `gateway`.
    pub fn of_store(store: &ResourceStore, gateway: &str, saved: SystemTime) -> Self {
        let types = ResourceType::ALL
            .into_iter()
            .filter_map(|ty| {
                let version = store.version(ty)?;
                Some(PersistedType {
                    type_url: ty.type_url().to_owned(),
                    system_version_info: version.to_owned(),
                    resources: store.resources(ty).map(|r| Resource::clone(r)).collect(),
                })
            })
            .collect();
        let saved_unix_ms = saved
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        PersistedState {
            gateway: gateway.to_owned(),
            saved_unix_ms,
            types,
        }
    }

    /// The file's bytes: header, then body.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let body = self.encode_to_vec();
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&fnv1a64(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a file's bytes; a damaged file (checksum) is refused before it is decoded.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, PersistError> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len > MAX_STATE_BYTES {
            return Err(PersistError::TooLarge { bytes: len });
        }
        let (magic, rest) = bytes
            .split_at_checked(MAGIC.len())
            .ok_or(PersistError::Magic)?;
        if magic != MAGIC {
            return Err(PersistError::Magic);
        }
        let (sum, body) = rest.split_at_checked(8).ok_or(PersistError::Checksum)?;
        if sum != fnv1a64(body).to_le_bytes() {
            return Err(PersistError::Checksum);
        }
        Ok(PersistedState::decode(body)?)
    }

    /// The resource store this state describes, checked as the discovery stream checks each
    /// response (`ResourceStore::with_response`), types in make-before-break order; or why it
    /// cannot be served by the proxy of Gateway `gateway`.
    pub fn into_store(self, gateway: &str) -> Result<ResourceStore, PersistError> {
        if self.gateway != gateway {
            return Err(PersistError::Gateway {
                found: self.gateway,
                ours: gateway.to_owned(),
            });
        }
        let mut by_type = std::collections::BTreeMap::new();
        for t in self.types {
            let ty = ResourceType::parse(&t.type_url)
                .ok_or_else(|| PersistError::UnknownType(t.type_url.clone()))?;
            if by_type.insert(ty, t).is_some() {
                return Err(PersistError::DuplicateType(ty.short_name()));
            }
        }
        let mut store = ResourceStore::default();
        for (ty, t) in by_type {
            let response = DeltaDiscoveryResponse {
                system_version_info: t.system_version_info,
                type_url: t.type_url,
                resources: t.resources,
                ..Default::default()
            };
            store = store.with_response(ty, &response)?;
        }
        Ok(store)
    }

    /// The types this state holds (each type name already checked by `into_store`).
    pub fn types(&self) -> impl Iterator<Item = (ResourceType, &str)> {
        self.types.iter().filter_map(|t| {
            ResourceType::parse(&t.type_url).map(|ty| (ty, t.system_version_info.as_str()))
        })
    }

    /// When it was written, as RFC 3339.
    pub fn saved_at(&self) -> String {
        i64::try_from(self.saved_unix_ms)
            .ok()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map_or_else(|| "an unknown time".to_owned(), |t| t.to_string())
    }
}

/// The state file's counters, registered with the proxy's other metrics.
#[derive(Debug, Clone)]
pub struct PersistMetrics {
    writes: IntCounterVec,
    restores: IntCounterVec,
    file_bytes: IntGauge,
}

impl PersistMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let writes = IntCounterVec::new(
            Opts::new(
                "state_writes_total",
                "Writes of the configuration to --state-dir, by result (ok, failed, too_large)",
            ),
            &["result"],
        )?;
        let restores = IntCounterVec::new(
            Opts::new(
                "state_restores_total",
                "Configurations read from --state-dir at start, by result (restored, refused)",
            ),
            &["result"],
        )?;
        let file_bytes = IntGauge::new(
            "state_file_bytes",
            "Size of the configuration last written to --state-dir",
        )?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(restores.clone()))?;
        registry.register(Box::new(file_bytes.clone()))?;
        Ok(PersistMetrics {
            writes,
            restores,
            file_bytes,
        })
    }

    pub fn restored(&self, ok: bool) {
        let result = if ok { "restored" } else { "refused" };
        self.restores.with_label_values(&[result]).inc();
    }
}

/// `--state-dir`: where the state file lives, for which Gateway.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    gateway: String,
    metrics: PersistMetrics,
}

impl StateDir {
    /// Creates the directory if it is missing and removes a temporary file a killed process
    /// left. Neither failing is fatal: writes then fail, are logged and counted.
    pub fn open(dir: PathBuf, gateway: String, metrics: PersistMetrics) -> Self {
        if let Err(e) = fs::create_dir_all(&dir) {
            warn!(dir = %dir.display(), error = %e, "cannot create --state-dir; the configuration will not be persisted");
        }
        let _ = fs::remove_file(dir.join(TEMP_FILE));
        StateDir {
            dir,
            gateway,
            metrics,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub fn metrics(&self) -> &PersistMetrics {
        &self.metrics
    }

    /// The persisted state, `None` when there is none, or why the file cannot be read.
    pub fn load(&self) -> Result<Option<PersistedState>, PersistError> {
        let path = self.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("opening", &path)(e)),
        };
        let len = file.metadata().map_err(io_error("reading", &path))?.len();
        if len > MAX_STATE_BYTES {
            return Err(PersistError::TooLarge { bytes: len });
        }
        let mut bytes = Vec::new();
        // Bounded again while reading: the file may grow between the two.
        file.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error("reading", &path))?;
        PersistedState::from_file_bytes(&bytes).map(Some)
    }

    /// Moves a refused state file aside (replacing an older refused one), so that it is kept
    /// for a person to read and never read again at start; the next configuration applied
    /// is written in its place.
    pub fn set_aside(&self) -> Option<PathBuf> {
        let to = self.dir.join(REJECTED_FILE);
        match fs::rename(self.path(), &to) {
            Ok(()) => Some(to),
            Err(e) => {
                warn!(path = %self.path().display(), error = %e, "cannot move the refused state file aside");
                None
            }
        }
    }

    /// Writes `state` atomically: a crash leaves the previous file or the new one, never a
    /// mix. Counted by result.
    pub fn save(&self, state: &PersistedState) -> Result<(), PersistError> {
        let bytes = state.to_file_bytes();
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let result = if len > MAX_STATE_BYTES {
            Err(PersistError::TooLarge { bytes: len })
        } else {
            write_atomic(&self.dir, &bytes)
        };
        let label = match &result {
            Ok(()) => {
                self.metrics
                    .file_bytes
                    .set(i64::try_from(len).unwrap_or(i64::MAX));
                "ok"
            }
            Err(PersistError::TooLarge { .. }) => "too_large",
            Err(_) => "failed",
        };
        self.metrics.writes.with_label_values(&[label]).inc();
        result
    }
}

fn write_atomic(dir: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let temp = dir.join(TEMP_FILE);
    let written = (|| {
        let _ = fs::remove_file(&temp);
        // Owner only: listener resources carry private keys.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io_error("creating", &temp))?;
        file.write_all(bytes).map_err(io_error("writing", &temp))?;
        file.sync_all().map_err(io_error("syncing", &temp))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    let path = dir.join(STATE_FILE);
    fs::rename(&temp, &path).map_err(io_error("renaming into", &path))?;
    // The rename is durable once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing", dir))
}

/// Hands stores to a thread that writes them, the latest first: stores submitted while one is
/// being written replace each other, so a burst of updates costs one write after the current.
pub struct StateWriter {
    slot: Arc<Slot>,
}

#[derive(Default)]
struct Slot {
    next: Mutex<Next>,
    wake: Condvar,
}

#[derive(Default)]
struct Next {
    store: Option<Arc<ResourceStore>>,
    closed: bool,
}

impl StateWriter {
    /// Starts the writer thread for `dir`.
    pub fn start(dir: Arc<StateDir>) -> io::Result<Self> {
        let slot = Arc::new(Slot::default());
        let theirs = Arc::clone(&slot);
        std::thread::Builder::new()
            .name("rauta-state".into())
            .spawn(move || write_loop(&theirs, &dir))?;
        Ok(StateWriter { slot })
    }

    /// Asks for `store` to be written (replacing a store still waiting).
    pub fn submit(&self, store: Arc<ResourceStore>) {
        let mut next = self
            .slot
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        next.store = Some(store);
        self.slot.wake.notify_one();
    }
}

impl Drop for StateWriter {
    /// The thread writes what is waiting, then ends.
    fn drop(&mut self) {
        let mut next = self
            .slot
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        next.closed = true;
        self.slot.wake.notify_one();
    }
}

fn write_loop(slot: &Slot, dir: &StateDir) {
    loop {
        let store = {
            let mut next = slot.next.lock().unwrap_or_else(PoisonError::into_inner);
            while next.store.is_none() && !next.closed {
                next = slot.wake.wait(next).unwrap_or_else(PoisonError::into_inner);
            }
            match next.store.take() {
                Some(store) => store,
                None => return,
            }
        };
        let state = PersistedState::of_store(&store, dir.gateway(), SystemTime::now());
        drop(store);
        match dir.save(&state) {
            Ok(()) => debug!(path = %dir.path().display(), "configuration persisted"),
            Err(e) => {
                warn!(path = %dir.path().display(), error = %e, "cannot persist the configuration; the previous file stays")
            }
        }
    }
}

#[cfg(test)]
#[path = "persisted_tests.rs"]
mod tests;
