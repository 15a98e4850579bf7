//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the replay of their corpora
//! in the test suite (`tests/tests/fuzz_corpus.rs`). Each takes arbitrary bytes and drives one
//! part of the proxy that reads outside input: none may panic, hang, or hold more than its
//! input warrants. The HTTP ones run the real serving code over in-memory connections, in
//! front of a backend on 127.0.0.1 in the same process.

mod credentials;

pub use credentials::credentials;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prost::Message;
use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{
    Cluster, ClusterEndpoints, DeltaDiscoveryResponse, Endpoint, ForwardAction, HeaderModifier,
    HeaderValue, Listener, PathMatch, Resource, RouteMatch, RouteRule, RouteTable, VirtualHost,
    WeightedCluster,
};
use rauta_common::types::ResourceType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use crate::codec::h1::framing::{ChunkScanner, Framing};
use crate::codec::h2::hpack::Decoder;
use crate::limits::Limits;
use crate::model::RoutingState;
use crate::model::store::ResourceStore;
use crate::observe::metrics::ProxyMetrics;
use crate::serve::activity::Activity;
use crate::serve::context::{Connection, ListenerCtx};
use crate::serve::h1::request::{self, RequestCtx};
use crate::serve::h1::response;
use crate::shared::Shared;
use crate::upstream::UpstreamPools;

/// How long one input may take to be served before it counts as a hang.
const SERVE_LIMIT: Duration = Duration::from_secs(5);
/// How long nothing must move before a settling client closes its side.
const QUIET: Duration = Duration::from_millis(25);

fn seen_count(seen: &Mutex<Vec<SeenRequest>>) -> usize {
    seen.lock().map_or(0, |s| s.len())
}

/// A request as the backend saw it, in a form both request paths can be compared by: field
/// names in lower case, sorted by name (the general path's header map groups them), without
/// the fields each path adds itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    pub fields: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The proxy's state for the HTTP targets: one HTTP listener whose routes forward `/` to the
/// backend (plain, and with a header modifier under `/mod`).
struct World {
    runtime: Runtime,
    shared: Arc<Shared>,
    listener: Arc<ListenerCtx>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    /// Holds the upstream pools the state's clusters use.
    _pools: UpstreamPools,
}

thread_local! {
    static WORLD: World = World::new();
}

fn resource(name: &str, payload: Payload) -> Resource {
    Resource {
        name: name.into(),
        version: "1".into(),
        payload: Some(payload),
    }
}

fn response(ty: ResourceType, resources: Vec<Resource>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ty.type_url().into(),
        system_version_info: "1".into(),
        resources,
        ..Default::default()
    }
}

fn forward_rule(name: &str, prefix: &str, request_headers: Option<HeaderModifier>) -> RouteRule {
    RouteRule {
        name: name.into(),
        matches: vec![RouteMatch {
            path: Some(PathMatch {
                kind: 2,
                value: prefix.into(),
            }),
            ..Default::default()
        }],
        action: Some(Action::Forward(ForwardAction {
            clusters: vec![WeightedCluster {
                cluster: "backend".into(),
                weight: 1,
                ..Default::default()
            }],
            invalid_weight: 0,
        })),
        request_headers: request_headers.map(Box::new),
        ..Default::default()
    }
}

/// The snapshot of the HTTP targets' world, in the order the controller sends it.
fn world_snapshot(backend: SocketAddr) -> Vec<DeltaDiscoveryResponse> {
    let cluster = Cluster {
        name: "backend".into(),
        protocol: 1,
        ..Default::default()
    };
    let endpoints = ClusterEndpoints {
        cluster: "backend".into(),
        endpoints: vec![Endpoint {
            address: backend.ip().to_string(),
            port: u32::from(backend.port()),
            weight: 1,
            ready: true,
        }],
    };
    let listener = Listener {
        name: "http".into(),
        port: 80,
        protocol: 1,
        route_table: "routes".into(),
        ..Default::default()
    };
    let modifier = HeaderModifier {
        set: vec![HeaderValue {
            name: "x-set".into(),
            value: "1".into(),
        }],
        add: vec![],
        remove: vec!["x-remove".into()],
    };
    let table = RouteTable {
        name: "routes".into(),
        virtual_hosts: vec![VirtualHost {
            name: "any".into(),
            domains: vec!["*".into()],
            rules: vec![
                forward_rule("fuzz/mod", "/mod", Some(modifier)),
                forward_rule("fuzz/all", "/", None),
            ],
        }],
        ..Default::default()
    };
    vec![
        response(
            ResourceType::Cluster,
            vec![resource("backend", Payload::Cluster(Box::new(cluster)))],
        ),
        response(
            ResourceType::Endpoints,
            vec![resource("backend", Payload::Endpoints(endpoints))],
        ),
        response(
            ResourceType::Listener,
            vec![resource("http", Payload::Listener(Box::new(listener)))],
        ),
        response(
            ResourceType::RouteTable,
            vec![resource("routes", Payload::RouteTable(table))],
        ),
    ]
}

/// The backend: answers every request "ok", and records it.
async fn backend(listener: tokio::net::TcpListener, seen: Arc<Mutex<Vec<SeenRequest>>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let seen = Arc::clone(&seen);
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let seen = Arc::clone(&seen);
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_else(|_| b"<broken body>".to_vec());
                let mut fields: Vec<(String, Vec<u8>)> = parts
                    .headers
                    .iter()
                    .filter(|(n, _)| {
                        !matches!(
                            n.as_str(),
                            "x-forwarded-for" | "x-forwarded-proto" | "traceparent"
                        )
                    })
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                if let Ok(mut seen) = seen.lock() {
                    seen.push(SeenRequest {
                        method: parts.method.to_string(),
                        target: parts.uri.to_string(),
                        fields,
                        body,
                    });
                }
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

impl World {
    fn new() -> World {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .expect("a port on 127.0.0.1 for the backend");
        let addr = listener.local_addr().expect("the backend's address");
        runtime.spawn(backend(listener, Arc::clone(&seen)));
        let metrics = ProxyMetrics::new().expect("metrics");
        let mut store = ResourceStore::default();
        for r in world_snapshot(addr) {
            let ty = ResourceType::parse(&r.type_url).expect("a known type");
            store = store
                .with_response(ty, &r)
                .expect("the world's snapshot is valid");
        }
        let mut pools = UpstreamPools::default();
        let (state, _) =
            RoutingState::build(&store, &RoutingState::default(), &mut pools, &metrics)
                .expect("the world's snapshot builds");
        let limits = Limits {
            idle_timeout: Duration::from_secs(2),
            header_timeout: Duration::from_secs(2),
            client_body_timeout: Duration::from_secs(2),
            send_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        let shared = Shared::new(metrics, limits, None);
        shared.state.store(Arc::new(state));
        World {
            runtime,
            shared: Arc::new(shared),
            listener: Arc::new(ListenerCtx {
                name: "http".into(),
                port: 80,
                tls: false,
                relay: None,
            }),
            seen,
            _pools: pools,
        }
    }

    fn connection(&self) -> Arc<Connection> {
        Arc::new(Connection {
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
            activity: Arc::new(Activity::default()),
            sni: None,
        })
    }

    /// Serves `data` as one client connection's bytes (the client then closes its side), on
    /// the HTTP/1.1 fast path or not; returns what the client received and what reached the
    /// backend.
    ///
    /// `settle`: the client closes its side only once nothing has moved for a while (the
    /// general path abandons a request whose client half-closes before it is answered, which
    /// the fast path does not; a comparison of the two must not see that).
    fn serve(
        &self,
        data: &[u8],
        fast: bool,
        h2_prefix: bool,
        settle: bool,
    ) -> (Vec<u8>, Vec<SeenRequest>) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.clear();
        }
        let (client, server) = tokio::io::duplex(64 * 1024);
        let shared = Arc::clone(&self.shared);
        let listener = Arc::clone(&self.listener);
        let conn = self.connection();
        let seen = Arc::clone(&self.seen);
        let answer = self.runtime.block_on(async move {
            let open = shared.drain_watch();
            let served = tokio::spawn(async move {
                if h2_prefix {
                    let _ = crate::serve::http2::serve(
                        server,
                        Bytes::from_static(crate::serve::http2::PREFACE),
                        shared,
                        listener,
                        conn,
                        open,
                    )
                    .await;
                } else {
                    let _ = crate::serve::accept::serve_http(
                        server,
                        fast,
                        conn,
                        Arc::clone(&shared),
                        listener,
                        crate::serve::accept::http_builder(&shared.limits),
                        open,
                    )
                    .await;
                }
            });
            let (mut read, mut write) = tokio::io::split(client);
            let received = AtomicUsize::new(0);
            let writer = async {
                let _ = write.write_all(data).await;
                if settle {
                    let moved = || (received.load(Ordering::Relaxed), seen_count(&seen));
                    let mut last = moved();
                    loop {
                        tokio::time::sleep(QUIET).await;
                        let now = moved();
                        if now == last {
                            break;
                        }
                        last = now;
                    }
                }
                let _ = write.shutdown().await;
                // Kept open for writing until the answer is read: a duplex half dropped
                // would end the connection before the proxy could answer.
                write
            };
            let reader = async {
                let mut answer = Vec::new();
                while let Ok(n) = read.read_buf(&mut answer).await {
                    if n == 0 {
                        break;
                    }
                    received.fetch_add(n, Ordering::Relaxed);
                }
                answer
            };
            let answer = tokio::time::timeout(SERVE_LIMIT, async {
                let (_, answer) = tokio::join!(writer, reader);
                answer
            })
            .await
            .unwrap_or_default();
            served.abort();
            answer
        });
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        (answer, seen)
    }
}

/// The HTTP/1.1 fast path's request planner: parse, route, write the upstream request.
pub fn http1_request_head(data: &[u8]) {
    WORLD.with(|w| {
        let state = w.shared.state.load_full();
        let conn = w.connection();
        let cx = RequestCtx {
            listener: &w.listener,
            conn: &conn,
            limits: &w.shared.limits,
            logged: false,
            tracer: None,
        };
        let mut out = Vec::new();
        let _ = request::plan(data, &state, cx, &mut out);
    });
}

/// The chunked-body scanner, fed in pieces whose sizes the input's first byte chooses.
pub fn http1_chunked(data: &[u8]) {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut framing = Framing::Chunked(ChunkScanner::default());
    let mut at = 0;
    while at < body.len() {
        let piece = &body[at..(at + step).min(body.len())];
        match framing.consume(piece) {
            Ok((used, ended)) => {
                assert!(
                    used <= piece.len(),
                    "the scanner took more than it was given"
                );
                if ended {
                    return;
                }
                at += piece.len();
            }
            Err(_) => return,
        }
    }
}

/// An upstream's response head and the framing of its body, for a GET and a HEAD.
pub fn http1_response(data: &[u8]) {
    for head_request in [false, true] {
        let mut out = Vec::new();
        if let Ok(response::Parsed::Final(head)) =
            response::parse(data, head_request, false, &[], &mut out)
        {
            let mut framing = head.framing;
            let _ = framing.consume(&data[head.len.min(data.len())..]);
        }
    }
}

/// HPACK header blocks, through one decoder (its dynamic table carried from block to block);
/// the input's first byte splits the rest into blocks.
pub fn hpack(data: &[u8]) {
    let Some((&split, blocks)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(4096);
    let size = usize::from(split).max(1) * 4;
    for block in blocks.chunks(size) {
        let mut fields = 0usize;
        if decoder
            .decode(block, |name, value| {
                fields += name.len() + value.len();
            })
            .is_err()
        {
            // The context is out of step after an error: a new connection starts afresh.
            decoder = Decoder::new(4096);
        }
    }
}

/// A whole HTTP/2 connection: the preface, then the input as the client's frames.
pub fn http2_connection(data: &[u8]) {
    WORLD.with(|w| {
        let _ = w.serve(data, true, true, false);
    });
}

/// The HTTP/1.1 server (fast path, then hyper) fed the input as a client connection.
pub fn http1_connection(data: &[u8]) {
    WORLD.with(|w| {
        let _ = w.serve(data, true, false, false);
    });
}

/// Status codes of the responses in an HTTP/1.1 byte stream, in order.
fn statuses(answer: &[u8]) -> Vec<u16> {
    let mut found = Vec::new();
    let mut rest = answer;
    while let Some(at) = rest.windows(9).position(|w| w == b"HTTP/1.1 ") {
        let code = rest
            .get(at + 9..at + 12)
            .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok());
        if let Some(code) = code {
            found.push(code);
        }
        rest = &rest[at + 9..];
    }
    found
}

/// The same HTTP/1.1 bytes through the fast path and through hyper alone: the backend must
/// see the same requests, and the client get the same answers (or a 4xx from each).
pub fn http1_differential(data: &[u8]) {
    // Only what a client could send as a request head; bytes that embed "HTTP/1.1 " would
    // confuse the comparison of answers, and are no request either.
    if data.windows(9).any(|w| w == b"HTTP/1.1 ") && !data.starts_with(b"HTTP/1.1 ") {
        return;
    }
    WORLD.with(|w| {
        let (fast_answer, fast_seen) = w.serve(data, true, false, true);
        let (general_answer, general_seen) = w.serve(data, false, false, true);
        assert_eq!(
            fast_seen,
            general_seen,
            "the backend saw different requests for {:?}",
            String::from_utf8_lossy(data)
        );
        let (fast, general) = (statuses(&fast_answer), statuses(&general_answer));
        let agree = |a: &u16, b: &u16| a == b || ((400..500).contains(a) && (400..500).contains(b));
        // hyper's server leaves some malformed heads unanswered (its parse error on bytes
        // already read waits for a wake-up that never comes) where the fast path answers 400:
        // the general path may stop short of the fast path's trailing 4xx, not differ before.
        let same = general.len() <= fast.len()
            && fast.iter().zip(&general).all(|(a, b)| agree(a, b))
            && fast[general.len()..].iter().all(|s| (400..500).contains(s));
        assert!(
            same,
            "answers differ for {:?}: fast path {fast:?}, general path {general:?}",
            String::from_utf8_lossy(data)
        );
    });
}

/// A sequence of discovery responses (each a 2-octet length and its protobuf bytes), applied
/// as the proxy applies them: rejected whole or taken whole, never a panic.
pub fn snapshot(data: &[u8]) {
    let metrics = ProxyMetrics::new().expect("metrics");
    let mut store = ResourceStore::default();
    let mut state = RoutingState::default();
    let mut pools = UpstreamPools::default();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let Ok(response) = DeltaDiscoveryResponse::decode(body) else {
            continue;
        };
        let Some(ty) = ResourceType::parse(&response.type_url) else {
            continue;
        };
        let Ok(candidate) = store.with_response(ty, &response) else {
            continue;
        };
        if let Ok((built, _)) = RoutingState::build(&candidate, &state, &mut pools, &metrics) {
            store = candidate;
            state = built;
        }
    }
}

/// Seeds for the snapshot target: the HTTP world's own snapshot, length-prefixed.
pub fn snapshot_seed() -> Vec<u8> {
    let mut out = Vec::new();
    for r in world_snapshot(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))) {
        let bytes = r.encode_to_vec();
        out.extend_from_slice(&(bytes.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}
