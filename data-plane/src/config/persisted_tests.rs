//! The state file: what is written reads back as the same store; anything damaged, foreign or
//! malformed is refused with a reason; writes are atomic and leave nothing half-written.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::{Cluster, Listener};

use super::*;

const GATEWAY: &str = "infra/gw";

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rauta-persisted-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn state_dir(dir: &Path) -> StateDir {
    let metrics = PersistMetrics::register(&Registry::new()).unwrap();
    StateDir::open(dir.to_owned(), GATEWAY.into(), metrics)
}

fn response(ty: ResourceType, version: &str, resources: Vec<Resource>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ty.type_url().into(),
        system_version_info: version.into(),
        resources,
        ..Default::default()
    }
}

fn cluster(name: &str, version: &str) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        payload: Some(Payload::Cluster(Box::new(Cluster {
            name: name.into(),
            ..Default::default()
        }))),
    }
}

fn listener(name: &str, port: u32) -> Resource {
    Resource {
        name: name.into(),
        version: format!("l{port}"),
        payload: Some(Payload::Listener(Box::new(Listener {
            name: name.into(),
            port,
            ..Default::default()
        }))),
    }
}

fn sample_store() -> ResourceStore {
    let clusters = response(
        ResourceType::Cluster,
        "7",
        vec![cluster("apps/a", "va"), cluster("apps/b", "vb")],
    );
    let listeners = response(ResourceType::Listener, "8", vec![listener("http-80", 80)]);
    ResourceStore::default()
        .with_response(ResourceType::Cluster, &clusters)
        .unwrap()
        .with_response(ResourceType::Listener, &listeners)
        .unwrap()
}

fn sample_bytes() -> Vec<u8> {
    PersistedState::of_store(&sample_store(), GATEWAY, SystemTime::now()).to_file_bytes()
}

#[test]
fn a_store_reads_back_with_every_name_and_version() {
    let store = sample_store();
    let state = PersistedState::from_file_bytes(&sample_bytes()).unwrap();
    assert_eq!(state.gateway, GATEWAY);
    let restored = state.into_store(GATEWAY).unwrap();
    for ty in ResourceType::ALL {
        assert_eq!(
            restored.known_versions(ty),
            store.known_versions(ty),
            "{ty:?}"
        );
        assert_eq!(restored.version(ty), store.version(ty), "{ty:?}");
        let a: Vec<_> = restored.resources(ty).collect();
        let b: Vec<_> = store.resources(ty).collect();
        assert_eq!(a, b, "{ty:?}");
    }
    assert_eq!(restored.version(ResourceType::Cluster), Some("7"));
    // A type never received is not made up.
    assert_eq!(restored.version(ResourceType::RouteTable), None);
}

#[test]
fn damaged_files_are_refused_before_decoding() {
    let good = sample_bytes();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    assert!(matches!(
        PersistedState::from_file_bytes(&flipped),
        Err(PersistError::Checksum)
    ));
    // Cut at any point: never a shorter, "valid" state.
    for cut in [HEADER_LEN, HEADER_LEN + 1, good.len() / 2, good.len() - 1] {
        let err = PersistedState::from_file_bytes(&good[..cut]).unwrap_err();
        assert!(matches!(err, PersistError::Checksum), "cut at {cut}: {err}");
    }
    for bad in [
        &b""[..],
        b"RAUTA",
        b"RAUTAPS\x02\0\0\0\0\0\0\0\0",
        b"{\"json\": true}",
    ] {
        assert!(
            matches!(
                PersistedState::from_file_bytes(bad),
                Err(PersistError::Magic)
            ),
            "{bad:?}"
        );
    }
    let mut body_garbage = MAGIC.to_vec();
    let garbage = [0xffu8; 12];
    body_garbage.extend_from_slice(&fnv1a64(&garbage).to_le_bytes());
    body_garbage.extend_from_slice(&garbage);
    assert!(matches!(
        PersistedState::from_file_bytes(&body_garbage),
        Err(PersistError::Decode(_))
    ));
}

#[test]
fn content_the_stream_would_refuse_is_refused() {
    let state = PersistedState::from_file_bytes(&sample_bytes()).unwrap();
    let err = state.clone().into_store("other/gw").unwrap_err();
    assert!(matches!(err, PersistError::Gateway { .. }), "{err}");

    let mut unknown = state.clone();
    unknown.types[0].type_url = "type.googleapis.com/rauta.v1.Nope".into();
    // Written with a right checksum, as a buggy or hostile writer could.
    let err = PersistedState::from_file_bytes(&unknown.to_file_bytes())
        .unwrap()
        .into_store(GATEWAY)
        .unwrap_err();
    assert!(matches!(err, PersistError::UnknownType(_)), "{err}");

    let mut twice = state.clone();
    twice.types.push(twice.types[0].clone());
    let err = twice.into_store(GATEWAY).unwrap_err();
    assert!(
        matches!(err, PersistError::DuplicateType("cluster")),
        "{err}"
    );

    // A listener filed under clusters: the store's own check refuses it.
    let mut misfiled = state;
    misfiled.types[0].resources.push(listener("http-81", 81));
    let err = misfiled.into_store(GATEWAY).unwrap_err();
    assert!(matches!(err, PersistError::Store(_)), "{err}");
}

#[test]
fn saves_atomically_and_loads_back() {
    let tmp = TempDir::new();
    let dir = state_dir(&tmp.0);
    assert!(dir.load().unwrap().is_none(), "nothing saved yet");
    let first = PersistedState::of_store(&sample_store(), GATEWAY, SystemTime::now());
    dir.save(&first).unwrap();
    assert_eq!(dir.load().unwrap().as_ref(), Some(&first));
    let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "private keys: owner only");

    let more = ResourceStore::default()
        .with_response(
            ResourceType::Cluster,
            &response(ResourceType::Cluster, "9", vec![cluster("apps/c", "vc")]),
        )
        .unwrap();
    let second = PersistedState::of_store(&more, GATEWAY, SystemTime::now());
    dir.save(&second).unwrap();
    assert_eq!(dir.load().unwrap().as_ref(), Some(&second));
    let names: Vec<_> = fs::read_dir(&tmp.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [STATE_FILE], "no temporary file left");
    let ok = dir.metrics.writes.with_label_values(&["ok"]).get();
    assert_eq!(ok, 2);
}

#[test]
fn a_failed_write_keeps_the_previous_file_and_is_counted() {
    let tmp = TempDir::new();
    let dir = state_dir(&tmp.0);
    let first = PersistedState::of_store(&sample_store(), GATEWAY, SystemTime::now());
    dir.save(&first).unwrap();
    // A directory where the temporary file goes: creating it fails.
    fs::create_dir(tmp.0.join(TEMP_FILE)).unwrap();
    fs::write(tmp.0.join(TEMP_FILE).join("x"), b"x").unwrap();
    let err = dir.save(&PersistedState::default()).unwrap_err();
    assert!(matches!(err, PersistError::Io { .. }), "{err}");
    assert_eq!(dir.load().unwrap().as_ref(), Some(&first));
    assert_eq!(dir.metrics.writes.with_label_values(&["failed"]).get(), 1);
}

#[test]
fn oversized_files_are_refused_unread() {
    let tmp = TempDir::new();
    let dir = state_dir(&tmp.0);
    let file = File::create(dir.path()).unwrap();
    file.set_len(MAX_STATE_BYTES + 1).unwrap();
    let err = dir.load().unwrap_err();
    assert!(matches!(err, PersistError::TooLarge { .. }), "{err}");
}

#[test]
fn a_refused_file_is_set_aside_and_a_stale_temporary_removed() {
    let tmp = TempDir::new();
    fs::write(tmp.0.join(TEMP_FILE), b"half written").unwrap();
    fs::write(tmp.0.join(STATE_FILE), b"garbage").unwrap();
    let dir = state_dir(&tmp.0);
    assert!(!tmp.0.join(TEMP_FILE).exists());
    assert!(matches!(dir.load(), Err(PersistError::Magic)));
    assert_eq!(dir.set_aside(), Some(tmp.0.join(REJECTED_FILE)));
    assert!(dir.load().unwrap().is_none());
    assert_eq!(fs::read(tmp.0.join(REJECTED_FILE)).unwrap(), b"garbage");
}

#[test]
fn the_writer_thread_writes_the_latest_store() {
    let tmp = TempDir::new();
    let dir = Arc::new(state_dir(&tmp.0));
    let writer = StateWriter::start(Arc::clone(&dir)).unwrap();
    let store = Arc::new(sample_store());
    writer.submit(Arc::clone(&store));
    let deadline = Instant::now() + Duration::from_secs(10);
    let loaded = loop {
        if let Ok(Some(state)) = dir.load() {
            break state;
        }
        assert!(Instant::now() < deadline, "nothing written");
        std::thread::sleep(Duration::from_millis(10));
    };
    let restored = loaded.into_store(GATEWAY).unwrap();
    assert_eq!(
        restored.known_versions(ResourceType::Cluster),
        store.known_versions(ResourceType::Cluster)
    );
    drop(writer);
}
