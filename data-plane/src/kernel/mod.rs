//! The XDP fast path's user-space side (issue 17; the program is `data-plane/xdp/`): loads and
//! attaches the program, keeps its maps in step with the routing state (told by the applier
//! before each state is published, so an answer the new state drops is gone before it takes
//! effect), re-renders the answers' Date every second, turns the program's counters into
//! metrics and lists its entries for /config_dump.

pub mod answers;
pub mod maps;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use aya::programs::{ProgramError, Xdp};
use aya::{Ebpf, EbpfLoader};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use serde_json::{Value, json};
use tracing::warn;

use crate::config::applier::KernelSync;
use crate::model::{ListenerSpec, RoutingState};
use crate::observe::metrics::ProxyMetrics;
use answers::{Answer, CachedAnswer};
use maps::{AnswerKey, AnswerValue, COUNTERS};

/// The compiled program, committed next to its source (`data-plane/xdp/build.sh`).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../xdp/rauta_xdp.o");

/// How the program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (veth and most physical NICs support it).
    Native,
    /// In the kernel's generic receive path: any interface, slower.
    Generic,
}

/// Why the fast path could not start (the proxy then serves everything in user space).
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {0}: {1}")]
    Map(&'static str, #[source] MapError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The attached program and its maps. Dropping it detaches the program.
pub struct KernelPath {
    interface: String,
    mode: XdpMode,
    port_offset: u16,
    inner: Mutex<Inner>,
    metrics: Option<KernelMetrics>,
}

struct Inner {
    /// Holds the program (and its attachment) for as long as the path lives.
    _ebpf: Ebpf,
    answers: BpfHashMap<MapData, AnswerKey, AnswerValue>,
    ports: BpfHashMap<MapData, u16, u8>,
    counters: PerCpuArray<MapData, u64>,
    /// The answers of the routing state last synced.
    configured: BTreeMap<AnswerKey, Answer>,
    /// The response cache's answers ([`KernelPath::set_cached`]).
    cached: Vec<CachedAnswer>,
    /// The state and listeners last synced: the cache's answers are read from them (never
    /// from the published state, which a refresh could read just before a sync's swap).
    state: Option<Arc<RoutingState>>,
    listeners: Vec<ListenerSpec>,
    /// What the answers map holds.
    installed: BTreeMap<AnswerKey, Answer>,
    installed_ports: BTreeSet<u16>,
    /// Counter values already added to the metrics.
    counted: [u64; COUNTERS.len()],
}

struct KernelMetrics {
    answered: IntCounter,
    passed: IntCounterVec,
    owned: IntCounter,
    handshake_acks: IntCounter,
    errors: IntCounter,
    entries: IntGauge,
}

impl KernelMetrics {
    fn register(metrics: &ProxyMetrics) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            metrics.registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let passed = IntCounterVec::new(
            Opts::new(
                "xdp_passed_total",
                "First request segments the XDP path left to user space, by reason",
            ),
            &["reason"],
        )?;
        metrics.registry.register(Box::new(passed.clone()))?;
        let entries = IntGauge::new("xdp_entries", "Answers the XDP path holds")?;
        metrics.registry.register(Box::new(entries.clone()))?;
        Ok(KernelMetrics {
            answered: counter("xdp_answered_total", "Requests answered by the XDP path")?,
            passed,
            owned: counter(
                "xdp_owned_flow_packets_total",
                "Packets of connections the XDP path answered (ACKs, FINs, RSTs)",
            )?,
            handshake_acks: counter(
                "xdp_handshake_acks_dropped_total",
                "Bare handshake ACKs with a valid SYN cookie dropped by the XDP path",
            )?,
            errors: counter(
                "xdp_errors_total",
                "XDP path failures: helpers in the program, map updates in the proxy",
            )?,
            entries,
        })
    }
}

fn map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let m = ebpf.take_map(name).ok_or(KernelError::Missing(name))?;
    T::try_from(m).map_err(|e| KernelError::Map(name, e))
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the program's `bpf_ktime_get_coarse_ns`.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// An answer's deadline on the program's clock: 0 for none, `None` when already past.
fn deadline_ns(expires: Option<Instant>, now: Instant) -> Option<u64> {
    match expires {
        None => Some(0),
        Some(at) if at <= now => None,
        Some(at) => Some(
            coarse_now_ns()
                .saturating_add((at - now).as_nanos() as u64)
                .max(1),
        ),
    }
}

impl KernelPath {
    /// Loads the program and attaches it to `interface`; the maps start empty, so nothing is
    /// answered until the first [`KernelSync::sync`]. `port_offset` is the proxy's
    /// --listener-port-offset: the program sees the bound ports.
    pub fn attach(interface: &str, mode: XdpMode, port_offset: u16) -> Result<Self, KernelError> {
        // Growing a frame at the front loses it on a veth in native mode (rauta_xdp.c).
        let grow_front: u32 = u32::from(mode == XdpMode::Generic);
        let mut ebpf = EbpfLoader::new()
            .override_global("grow_front", &grow_front, true)
            .load(OBJECT)?;
        let program: &mut Xdp = ebpf
            .program_mut("rauta_xdp")
            .ok_or(KernelError::Missing("program rauta_xdp"))?
            .try_into()?;
        program.load()?;
        program.attach(
            interface,
            match mode {
                XdpMode::Native => aya::programs::XdpMode::Driver,
                XdpMode::Generic => aya::programs::XdpMode::Skb,
            },
        )?;
        let inner = Inner {
            answers: map(&mut ebpf, "answers")?,
            ports: map(&mut ebpf, "ports")?,
            counters: map(&mut ebpf, "counters")?,
            _ebpf: ebpf,
            configured: BTreeMap::new(),
            cached: Vec::new(),
            state: None,
            listeners: Vec::new(),
            installed: BTreeMap::new(),
            installed_ports: BTreeSet::new(),
            counted: [0; COUNTERS.len()],
        };
        Ok(KernelPath {
            interface: interface.to_owned(),
            mode,
            port_offset,
            inner: Mutex::new(inner),
            metrics: None,
        })
    }

    /// Exports the program's counters as `rauta_proxy_xdp_*` metrics (updated every second).
    pub fn with_metrics(mut self, metrics: &ProxyMetrics) -> Result<Self, KernelError> {
        self.metrics = Some(KernelMetrics::register(metrics)?);
        Ok(self)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves maps that are still consistent entries.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The response cache's answers, replacing those given before; the routing state's
    /// answers win where both have a key. Each is served until its `expires` (the program
    /// checks it too, so a late refresh never serves a stale one).
    pub fn set_cached(&self, cached: Vec<CachedAnswer>) {
        let mut inner = self.lock();
        inner.cached = cached;
        self.apply(&mut inner, false);
    }

    /// Brings the answers map to what the configuration and the cache want: entries gone are
    /// removed first, then changed ones inserted (all of them when `rerender`, for the Date).
    fn apply(&self, inner: &mut Inner, rerender: bool) {
        let now = Instant::now();
        let mut desired = inner.configured.clone();
        answers::add_cached(&mut desired, &inner.cached, self.port_offset);
        desired.retain(|_, a| a.expires.is_none_or(|at| at > now));
        let mut failures = 0;
        let gone: Vec<AnswerKey> = inner
            .installed
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            match inner.answers.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => {
                    failures += 1;
                    warn!(?key, error = %e, "xdp: cannot remove an answer");
                }
            }
        }
        let date = answers::http_date();
        let mut installed = BTreeMap::new();
        for (key, answer) in desired {
            if !rerender && inner.installed.get(&key) == Some(&answer) {
                installed.insert(key, answer);
                continue;
            }
            let (bytes, head_len) = answers::render(&answer.template, &date, now);
            let value = deadline_ns(answer.expires, now)
                .and_then(|at| AnswerValue::new(&bytes, head_len, answer.methods, at));
            let Some(value) = value else {
                // Too large for one segment (or expired meanwhile): user space answers.
                let _ = inner.answers.remove(&key);
                continue;
            };
            match inner.answers.insert(key, value, 0) {
                Ok(()) => {
                    installed.insert(key, answer);
                }
                Err(e) => {
                    failures += 1;
                    warn!(?key, error = %e, "xdp: cannot insert an answer");
                }
            }
        }
        inner.installed = installed;
        if let Some(m) = &self.metrics {
            m.entries.set(inner.installed.len() as i64);
            m.errors.inc_by(failures);
        }
    }

    fn sync_ports(&self, inner: &mut Inner, listeners: &[ListenerSpec]) {
        let wanted: BTreeSet<u16> = listeners
            .iter()
            .filter(|s| !s.tls && s.relay.is_none())
            .filter_map(|s| s.port.checked_add(self.port_offset))
            .collect();
        let gone: Vec<u16> = inner.installed_ports.difference(&wanted).copied().collect();
        for port in gone {
            let _ = inner.ports.remove(&port);
        }
        for port in &wanted {
            if let Err(e) = inner.ports.insert(port, 1, 0) {
                warn!(port, error = %e, "xdp: cannot add a listener port");
            }
        }
        inner.installed_ports = wanted;
    }

    /// Every second: the cache's answers read again from `state` (new ones in, expired ones
    /// out), every answer re-rendered with the new Date (and Age), the counters read into the
    /// metrics.
    pub fn refresh(&self) {
        let mut inner = self.lock();
        if let Some(state) = inner.state.clone() {
            inner.cached = answers::cached(&state, &inner.listeners, Instant::now());
        }
        self.apply(&mut inner, true);
        let mut totals = [0u64; COUNTERS.len()];
        for (index, total) in totals.iter_mut().enumerate() {
            if let Ok(per_cpu) = inner.counters.get(&(index as u32), 0) {
                *total = per_cpu.iter().sum();
            }
        }
        if let Some(m) = &self.metrics {
            for (index, name) in COUNTERS.iter().enumerate() {
                let delta = totals[index].saturating_sub(inner.counted[index]);
                match *name {
                    "answered" => m.answered.inc_by(delta),
                    "owned_flow" => m.owned.inc_by(delta),
                    "handshake_ack_dropped" => m.handshake_acks.inc_by(delta),
                    "errors" => m.errors.inc_by(delta),
                    reason => m.passed.with_label_values(&[reason]).inc_by(delta),
                }
            }
        }
        inner.counted = totals;
    }

    /// Runs [`KernelPath::refresh`] every second, for as long as the process runs.
    pub async fn refresh_every_second(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh();
        }
    }

    /// The entries as /config_dump shows them.
    pub fn dump(&self) -> Value {
        let inner = self.lock();
        let now = Instant::now();
        let date = answers::http_date();
        let entries: Vec<Value> = inner
            .installed
            .iter()
            .map(|(key, a)| {
                let (bytes, head_len) = answers::render(&a.template, &date, now);
                let methods: Vec<&str> = [
                    (a.methods & maps::METHOD_GET != 0).then_some("GET"),
                    (a.methods & maps::METHOD_HEAD != 0).then_some("HEAD"),
                ]
                .into_iter()
                .flatten()
                .collect();
                json!({
                    "port": key.port,
                    "host": key.host(),
                    "target": key.target(),
                    "methods": methods,
                    "status": a.template.status.as_u16(),
                    "length": bytes.len(),
                    "headLength": head_len,
                    "expiresInMs": a.expires.map(|at| at.saturating_duration_since(now).as_millis() as u64),
                    "source": &*a.source,
                })
            })
            .collect();
        json!({
            "interface": self.interface,
            "mode": match self.mode { XdpMode::Native => "native", XdpMode::Generic => "generic" },
            "ports": inner.installed_ports.iter().collect::<Vec<_>>(),
            "entries": entries,
        })
    }
}

impl KernelSync for KernelPath {
    fn sync(&self, state: &Arc<RoutingState>, listeners: &[ListenerSpec]) {
        let mut inner = self.lock();
        inner.configured = answers::desired(state, listeners, self.port_offset);
        // The new state's caches: a rule that goes takes its cached answers with it.
        inner.cached = answers::cached(state, listeners, Instant::now());
        inner.state = Some(Arc::clone(state));
        inner.listeners = listeners.to_vec();
        self.sync_ports(&mut inner, listeners);
        self.apply(&mut inner, false);
    }
}
