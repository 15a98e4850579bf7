//! The discovery protocol over a real gRPC stream on 127.0.0.1: a raw client plays the proxy
//! and checks ordering, ACK/NACK, resume and subscription semantics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rauta_common::api::v1::discovery_client::DiscoveryClient;
use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{
    Cluster, ClusterEndpoints, DeltaDiscoveryRequest, DeltaDiscoveryResponse, ErrorDetail,
    ForwardAction, Listener, Node, RouteRule, RouteTable, VirtualHost, WeightedCluster,
};
use rauta_common::types::ResourceType;
use rauta_controller::cache::SnapshotCache;
use rauta_controller::objects::ObjectRef;
use rauta_controller::server::{ServerOptions, serve_grpc};
use rauta_controller::state::ControllerState;
use rauta_controller::translator::ResourceSet;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

fn gateway() -> ObjectRef {
    ObjectRef::new("infra", "gw")
}

/// A gateway whose only route points at `cluster`.
fn resources(cluster: &str) -> ResourceSet {
    let mut set = ResourceSet::new();
    set.entry(ResourceType::Cluster).or_default().insert(
        cluster.into(),
        Payload::Cluster(Box::new(Cluster {
            name: cluster.into(),
            ..Default::default()
        }))
        .into(),
    );
    set.entry(ResourceType::Endpoints).or_default().insert(
        cluster.into(),
        Payload::Endpoints(ClusterEndpoints {
            cluster: cluster.into(),
            endpoints: vec![],
        })
        .into(),
    );
    set.entry(ResourceType::Listener).or_default().insert(
        "http-80".into(),
        Payload::Listener(Box::new(Listener {
            name: "http-80".into(),
            port: 80,
            protocol: 1,
            hostnames: vec![],
            route_table: "http-80".into(),
            ..Default::default()
        }))
        .into(),
    );
    let rule = RouteRule {
        name: "r".into(),
        matches: vec![],
        action: Some(Action::Forward(ForwardAction {
            clusters: vec![WeightedCluster {
                cluster: cluster.into(),
                weight: 1,
                ..Default::default()
            }],
            invalid_weight: 0,
        })),
        ..Default::default()
    };
    set.entry(ResourceType::RouteTable).or_default().insert(
        "http-80".into(),
        Payload::RouteTable(RouteTable {
            name: "http-80".into(),
            virtual_hosts: vec![VirtualHost {
                name: "*".into(),
                domains: vec!["*".into()],
                rules: vec![rule],
            }],
            ..Default::default()
        })
        .into(),
    );
    set
}

struct TestServer {
    cache: Arc<SnapshotCache>,
    url: String,
}

async fn start_server() -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = ControllerState::new().unwrap();
    let cache = Arc::clone(&state.cache);
    tokio::spawn(serve_grpc(listener, state, ServerOptions::plaintext()));
    TestServer { cache, url }
}

struct FakeProxy {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl FakeProxy {
    /// Opens a stream and subscribes to every type, resuming from `known` (type -> name -> version).
    async fn connect(
        url: &str,
        known: &HashMap<ResourceType, HashMap<String, String>>,
        names: Option<(ResourceType, Vec<String>)>,
    ) -> FakeProxy {
        let mut client = DiscoveryClient::connect(url.to_owned()).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        for (i, ty) in ResourceType::ALL.into_iter().enumerate() {
            let subscribe = match &names {
                Some((t, n)) if *t == ty => n.clone(),
                _ => vec!["*".into()],
            };
            tx.send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| Node {
                    id: "fake".into(),
                    gateway_namespace: "infra".into(),
                    gateway_name: "gw".into(),
                    build_version: "t".into(),
                    addresses: vec!["127.0.0.9".into()],
                }),
                type_url: ty.type_url().into(),
                resource_names_subscribe: subscribe,
                initial_resource_versions: known.get(&ty).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let rx = client
            .delta_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        FakeProxy { tx, rx }
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("response in time")
            .unwrap()
            .unwrap()
    }

    async fn nothing_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.rx.message()).await.is_err()
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.reply(r, None).await;
    }

    async fn nack(&self, r: &DeltaDiscoveryResponse, message: &str) {
        self.reply(
            r,
            Some(ErrorDetail {
                code: 3,
                message: message.into(),
            }),
        )
        .await;
    }

    async fn reply(&self, r: &DeltaDiscoveryResponse, error_detail: Option<ErrorDetail>) {
        let req = DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        self.tx.send(req).await.unwrap();
    }

    /// Receives and ACKs responses until every type has answered once; returns them in order.
    async fn sync_all(&mut self) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        for _ in 0..ResourceType::ALL.len() {
            let r = self.next().await;
            self.ack(&r).await;
            out.push(r);
        }
        out
    }
}

fn ty(r: &DeltaDiscoveryResponse) -> &'static str {
    ResourceType::parse(&r.type_url).unwrap().short_name()
}

fn summary(r: &DeltaDiscoveryResponse) -> (&'static str, Vec<String>, Vec<String>) {
    (
        ty(r),
        r.resources.iter().map(|x| x.name.clone()).collect(),
        r.removed_resources.clone(),
    )
}

#[tokio::test]
async fn updates_are_ordered_make_before_break() {
    let server = start_server().await;
    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("a"))]));
    let mut proxy = FakeProxy::connect(&server.url, &HashMap::new(), None).await;
    let initial: Vec<_> = proxy.sync_all().await.iter().map(ty).collect();
    assert_eq!(
        initial,
        [
            "cluster",
            "endpoints",
            "listener",
            "route_table",
            "route_rules",
            "l4_route_table"
        ]
    );

    // Switch the route from cluster a to b: b arrives first, then the route, then a goes.
    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("b"))]));
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = proxy.next().await;
        seen.push(summary(&r));
        assert_eq!(r.system_version_info, "2");
        proxy.ack(&r).await;
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        seen,
        [
            ("cluster", s(&["b"]), s(&[])),
            ("endpoints", s(&["b"]), s(&[])),
            ("route_table", s(&["http-80"]), s(&[])),
            ("cluster", s(&[]), s(&["a"])),
            ("endpoints", s(&[]), s(&["a"])),
        ]
    );
    // Nothing changed: nothing is sent.
    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("b"))]));
    assert!(proxy.nothing_within(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn a_nack_holds_the_version_back_and_the_next_content_is_sent() {
    let server = start_server().await;
    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("a"))]));
    let mut proxy = FakeProxy::connect(&server.url, &HashMap::new(), None).await;
    proxy.sync_all().await;

    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("b"))]));
    let cluster = proxy.next().await;
    assert_eq!(summary(&cluster).0, "cluster");
    proxy.nack(&cluster, "cluster b: nope").await;
    // Nothing of version 2 follows: later types wait behind the rejected clusters, so the proxy
    // never runs half a version, and the rejected content is not resent.
    assert!(
        proxy.nothing_within(Duration::from_millis(300)).await,
        "nothing may follow a NACK of the same content"
    );
    // An unrelated change elsewhere (here: none for clusters) does not resend the rejected content.
    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("b"))]));
    assert!(proxy.nothing_within(Duration::from_millis(300)).await);

    // A new version is offered again, including what was rejected before.
    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("c"))]));
    let cluster = proxy.next().await;
    assert_eq!(summary(&cluster).1, ["c"]);
    assert_eq!(cluster.system_version_info, "3");
    proxy.ack(&cluster).await;
    let next: Vec<_> = [proxy.next().await].iter().map(summary).collect();
    assert_eq!(
        next[0].0, "endpoints",
        "the rest of the version follows once clusters are accepted"
    );
}

#[tokio::test]
async fn resuming_sends_only_what_differs() {
    let server = start_server().await;
    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("a"))]));
    let mut first = FakeProxy::connect(&server.url, &HashMap::new(), None).await;
    let responses = first.sync_all().await;
    let mut known: HashMap<ResourceType, HashMap<String, String>> = HashMap::new();
    for r in &responses {
        let entry = known
            .entry(ResourceType::parse(&r.type_url).unwrap())
            .or_default();
        for res in &r.resources {
            entry.insert(res.name.clone(), res.version.clone());
        }
    }
    drop(first);

    // Same content: every type answers once, with nothing in it.
    let mut again = FakeProxy::connect(&server.url, &known, None).await;
    for r in again.sync_all().await {
        assert!(
            r.resources.is_empty() && r.removed_resources.is_empty(),
            "{r:?}"
        );
    }
    drop(again);

    // A stale route table and a cluster the server no longer has.
    known
        .get_mut(&ResourceType::RouteTable)
        .unwrap()
        .insert("http-80".into(), "stale".into());
    known
        .get_mut(&ResourceType::Cluster)
        .unwrap()
        .insert("gone".into(), "v".into());
    let mut resumed = FakeProxy::connect(&server.url, &known, None).await;
    let got: Vec<_> = resumed.sync_all().await.iter().map(summary).collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        [
            ("cluster", s(&[]), s(&[])),
            ("endpoints", s(&[]), s(&[])),
            ("listener", s(&[]), s(&[])),
            ("route_table", s(&["http-80"]), s(&[])),
            // The stale cluster goes only once the routes are current (make-before-break on
            // resume too); the route rules and L4 route tables, which the proxy holds none
            // of, are current.
            ("cluster", s(&[]), s(&["gone"])),
            ("route_rules", s(&[]), s(&[])),
        ]
    );
    let last = resumed.next().await;
    assert_eq!(summary(&last), ("l4_route_table", s(&[]), s(&[])));
}

#[tokio::test]
async fn named_subscriptions_get_only_their_names_and_absence_is_announced() {
    let server = start_server().await;
    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("a"))]));
    let names = (
        ResourceType::Endpoints,
        vec!["a".to_owned(), "missing".to_owned()],
    );
    let mut proxy = FakeProxy::connect(&server.url, &HashMap::new(), Some(names)).await;
    let got: Vec<_> = proxy.sync_all().await.iter().map(summary).collect();
    assert_eq!(
        got[1],
        (
            "endpoints",
            vec!["a".to_owned()],
            vec!["missing".to_owned()]
        )
    );
}

#[tokio::test]
async fn a_stream_without_node_identity_is_refused() {
    let server = start_server().await;
    let mut client = DiscoveryClient::connect(server.url.clone()).await.unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(DeltaDiscoveryRequest {
        type_url: ResourceType::Cluster.type_url().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = client
        .delta_resources(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node.id"), "{err}");
}

#[tokio::test]
async fn nothing_is_sent_before_the_first_load_is_published() {
    let server = start_server().await;
    // A proxy resuming after a controller restart: it holds cluster "a".
    let known = HashMap::from([(
        ResourceType::Cluster,
        HashMap::from([("a".to_owned(), "v-old".to_owned())]),
    )]);
    let mut proxy = FakeProxy::connect(&server.url, &known, None).await;
    assert!(
        proxy.nothing_within(Duration::from_millis(300)).await,
        "an empty snapshot before the first load would remove what the proxy serves"
    );
    server
        .cache
        .update(BTreeMap::from([(gateway(), resources("a"))]));
    let responses = proxy.sync_all().await;
    assert!(
        responses.iter().all(|r| r.removed_resources.is_empty()),
        "{:?}",
        responses.iter().map(summary).collect::<Vec<_>>()
    );
    assert!(responses.iter().all(|r| r.system_version_info == "1"));
}

/// The endpoints a version of `resources` would carry for `cluster`, to tell versions apart.
fn with_endpoint(cluster: &str, port: u32) -> ResourceSet {
    let mut set = resources(cluster);
    set.entry(ResourceType::Endpoints).or_default().insert(
        cluster.into(),
        Payload::Endpoints(ClusterEndpoints {
            cluster: cluster.into(),
            endpoints: vec![rauta_common::api::v1::Endpoint {
                address: "10.0.0.1".into(),
                port,
                weight: 1,
                ready: true,
            }],
        })
        .into(),
    );
    set
}

#[tokio::test]
async fn a_slow_proxy_holds_back_nobody_and_gets_the_latest_version_only() {
    let server = start_server().await;
    server
        .cache
        .update(BTreeMap::from([(gateway(), with_endpoint("a", 1))]));
    let mut slow = FakeProxy::connect(&server.url, &HashMap::new(), None).await;
    slow.sync_all().await;
    let mut fast = FakeProxy::connect(&server.url, &HashMap::new(), None).await;
    fast.sync_all().await;

    // Version 2: the slow proxy receives it and does not answer.
    server
        .cache
        .update(BTreeMap::from([(gateway(), with_endpoint("a", 2))]));
    let unanswered = slow.next().await;
    assert_eq!(unanswered.system_version_info, "2");
    let r = fast.next().await;
    fast.ack(&r).await;

    // Versions 3..=20 while it is silent: the fast proxy gets each one; nothing more is queued
    // for the slow one (one response in flight per type).
    for port in 3..=20 {
        server
            .cache
            .update(BTreeMap::from([(gateway(), with_endpoint("a", port))]));
        let r = fast.next().await;
        assert_eq!(r.system_version_info, port.to_string());
        fast.ack(&r).await;
    }
    assert!(slow.nothing_within(Duration::from_millis(200)).await);

    // Its ACK arrives at last: it gets one response, straight at the latest content.
    slow.ack(&unanswered).await;
    let caught_up = slow.next().await;
    assert_eq!(caught_up.system_version_info, "20");
    let Some(Payload::Endpoints(e)) = &caught_up.resources[0].payload else {
        panic!("{caught_up:?}");
    };
    assert_eq!(e.endpoints[0].port, 20);
    slow.ack(&caught_up).await;
    assert!(slow.nothing_within(Duration::from_millis(200)).await);
}
