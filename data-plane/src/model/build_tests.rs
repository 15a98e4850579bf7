//! Building the routing state from a store: what is valid routes, what is not is refused with
//! a reason.

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{
    DeltaDiscoveryResponse, DirectResponse, HeaderMatch, Listener, PathMatch, PathMatchKind,
    Resource, RouteMatch, RouteRule, RouteTable, VirtualHost,
};
use rauta_common::types::ResourceType;

use super::*;
use crate::model::store::ResourceStore;

pub(super) fn store_with(table: RouteTable, listeners: &[(&str, u32)]) -> ResourceStore {
    let mut store = ResourceStore::default();
    let resource = |name: &str, payload| Resource {
        name: name.into(),
        version: "v".into(),
        payload: Some(payload),
    };
    let tables = DeltaDiscoveryResponse {
        type_url: ResourceType::RouteTable.type_url().into(),
        resources: vec![resource(&table.name.clone(), Payload::RouteTable(table))],
        ..Default::default()
    };
    store = store
        .with_response(ResourceType::RouteTable, &tables)
        .unwrap();
    let listeners = DeltaDiscoveryResponse {
        type_url: ResourceType::Listener.type_url().into(),
        resources: listeners
            .iter()
            .map(|(n, p)| {
                let l = Listener {
                    name: (*n).into(),
                    port: *p,
                    protocol: 1,
                    hostnames: vec![],
                    route_table: "t".into(),
                    certificates: vec![],
                    client_validation: None,
                    l4_route_table: String::new(),
                };
                resource(n, Payload::Listener(Box::new(l)))
            })
            .collect(),
        ..Default::default()
    };
    store
        .with_response(ResourceType::Listener, &listeners)
        .unwrap()
}

pub(super) fn rule(path: &str, header: Option<(&str, &str)>) -> RouteRule {
    RouteRule {
        name: "ns/r/rule/0".into(),
        matches: vec![RouteMatch {
            path: Some(PathMatch {
                kind: PathMatchKind::Prefix as i32,
                value: path.into(),
            }),
            headers: header
                .map(|(n, v)| HeaderMatch {
                    name: n.into(),
                    value: v.into(),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }],
        action: Some(Action::DirectResponse(DirectResponse {
            status: 204,
            body: String::new(),
            headers: Vec::new(),
        })),
        ..Default::default()
    }
}

fn table(domains: &[&str], rules: Vec<RouteRule>) -> RouteTable {
    RouteTable {
        name: "t".into(),
        virtual_hosts: vec![VirtualHost {
            name: "vh".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            rules,
        }],
        ..Default::default()
    }
}

/// The state a store builds (from nothing before it), or the NACK's text.
pub(super) fn build(store: &ResourceStore) -> Result<(RoutingState, Vec<ListenerSpec>), String> {
    let metrics = ProxyMetrics::new().unwrap();
    RoutingState::build(
        store,
        &RoutingState::default(),
        &mut UpstreamPools::default(),
        &metrics,
    )
    .map_err(|e| e.to_string())
}

#[test]
fn a_valid_store_builds_and_routes() {
    let store = store_with(
        table(&["*.example.com", "a.org"], vec![rule("/", None)]),
        &[("http-80", 80)],
    );
    let (state, listeners) = build(&store).unwrap();
    assert_eq!(
        listeners,
        [ListenerSpec {
            name: "http-80".into(),
            port: 80,
            tls: false,
            relay: None,
        }]
    );
    let table = state.route_table("http-80").unwrap();
    assert!(table.virtual_host("x.example.com").is_some());
    assert!(table.virtual_host("example.com").is_none());
    assert!(table.virtual_host("a.org").is_some());
}

#[test]
fn invalid_resources_are_rejected_with_a_reason() {
    let cases = [
        (
            store_with(table(&["*"], vec![rule("no-slash", None)]), &[]),
            "does not start with '/'",
        ),
        (
            store_with(
                table(&["*"], vec![rule("/", Some(("bad header", "v")))]),
                &[],
            ),
            "invalid header name",
        ),
        (
            store_with(table(&["*."], vec![rule("/", None)]), &[]),
            "invalid wildcard domain",
        ),
        (
            store_with(
                table(
                    &["*"],
                    vec![RouteRule {
                        matches: vec![RouteMatch {
                            path: Some(PathMatch {
                                kind: PathMatchKind::Regex as i32,
                                value: "/a((".into(),
                            }),
                            ..Default::default()
                        }],
                        ..rule("/", None)
                    }],
                ),
                &[],
            ),
            "invalid regular expression",
        ),
        (
            store_with(
                table(
                    &["*"],
                    vec![RouteRule {
                        action: None,
                        ..rule("/", None)
                    }],
                ),
                &[],
            ),
            "no action",
        ),
        (
            store_with(table(&["*"], vec![]), &[("a", 80), ("b", 80)]),
            "both use port 80",
        ),
        (
            store_with(table(&["*"], vec![]), &[("a", 70000)]),
            "invalid port",
        ),
    ];
    for (store, reason) in cases {
        let err = build(&store)
            .err()
            .unwrap_or_else(|| panic!("expected an error containing {reason:?}"));
        assert!(err.contains(reason), "{err:?} should contain {reason:?}");
    }
}

#[test]
fn malformed_responses_are_rejected_by_the_store() {
    let wrong_type = DeltaDiscoveryResponse {
        type_url: ResourceType::Cluster.type_url().into(),
        resources: vec![Resource {
            name: "t".into(),
            version: "v".into(),
            payload: Some(Payload::RouteTable(RouteTable {
                name: "t".into(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let err = ResourceStore::default()
        .with_response(ResourceType::Cluster, &wrong_type)
        .unwrap_err()
        .to_string();
    assert!(err.contains("payload of another type"), "{err}");
    let misnamed = DeltaDiscoveryResponse {
        resources: vec![Resource {
            name: "x".into(),
            version: "v".into(),
            payload: Some(Payload::RouteTable(RouteTable {
                name: "t".into(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let err = ResourceStore::default()
        .with_response(ResourceType::RouteTable, &misnamed)
        .unwrap_err()
        .to_string();
    assert!(err.contains("payload is named"), "{err}");
}

/// The store with a cluster of one ready endpoint added.
fn with_cluster(store: ResourceStore) -> ResourceStore {
    use rauta_common::api::v1::{Cluster, ClusterEndpoints, Endpoint};
    let response = |ty: ResourceType, payload| DeltaDiscoveryResponse {
        type_url: ty.type_url().into(),
        resources: vec![Resource {
            name: "c".into(),
            version: "v".into(),
            payload: Some(payload),
        }],
        ..Default::default()
    };
    let cluster = Payload::Cluster(Box::new(Cluster {
        name: "c".into(),
        ..Default::default()
    }));
    let endpoints = Payload::Endpoints(ClusterEndpoints {
        cluster: "c".into(),
        endpoints: vec![Endpoint {
            address: "127.0.0.1".into(),
            port: 9,
            ready: true,
            weight: 1,
        }],
    });
    store
        .with_response(
            ResourceType::Cluster,
            &response(ResourceType::Cluster, cluster),
        )
        .unwrap()
        .with_response(
            ResourceType::Endpoints,
            &response(ResourceType::Endpoints, endpoints),
        )
        .unwrap()
}

#[test]
fn a_snapshot_that_fails_validation_opens_no_pool() {
    let metrics = ProxyMetrics::new().unwrap();
    let mut pools = UpstreamPools::default();
    let invalid = with_cluster(store_with(table(&["*"], vec![rule("no-slash", None)]), &[]));
    let err =
        RoutingState::build(&invalid, &RoutingState::default(), &mut pools, &metrics).unwrap_err();
    assert!(err.to_string().contains("does not start with '/'"), "{err}");
    assert!(pools.is_empty(), "the valid cluster's endpoint got a pool");
    let valid = with_cluster(store_with(table(&["*"], vec![rule("/", None)]), &[]));
    RoutingState::build(&valid, &RoutingState::default(), &mut pools, &metrics).unwrap();
    assert_eq!(pools.len(), 1);
}

/// A store with one TCP listener naming the L4 table `table` (if any) and that table.
fn l4_store(table: Option<rauta_common::api::v1::L4RouteTable>) -> ResourceStore {
    let resource = |name: &str, payload| Resource {
        name: name.into(),
        version: "v".into(),
        payload: Some(payload),
    };
    let listener = Listener {
        name: "tcp-9000".into(),
        port: 9000,
        protocol: ListenerProtocol::Tcp as i32,
        l4_route_table: table.as_ref().map_or(String::new(), |t| t.name.clone()),
        ..Default::default()
    };
    let mut store = ResourceStore::default()
        .with_response(
            ResourceType::Listener,
            &DeltaDiscoveryResponse {
                type_url: ResourceType::Listener.type_url().into(),
                resources: vec![resource("tcp-9000", Payload::Listener(Box::new(listener)))],
                ..Default::default()
            },
        )
        .unwrap();
    if let Some(t) = table {
        let response = DeltaDiscoveryResponse {
            type_url: ResourceType::L4RouteTable.type_url().into(),
            resources: vec![resource(&t.name.clone(), Payload::L4RouteTable(t))],
            ..Default::default()
        };
        store = store
            .with_response(ResourceType::L4RouteTable, &response)
            .unwrap();
    }
    store
}

#[test]
fn l4_listeners_build_with_their_tables_and_are_refused_without() {
    use rauta_common::api::v1::{ForwardAction, L4Route, L4RouteTable};
    let table = L4RouteTable {
        name: "tcp-9000".into(),
        routes: vec![L4Route {
            name: "ns/db/rule/0".into(),
            server_names: vec![],
            forward: Some(ForwardAction {
                clusters: vec![],
                invalid_weight: 1,
            }),
            passthrough: false,
        }],
    };
    let (state, specs) = build(&l4_store(Some(table.clone()))).unwrap();
    assert_eq!(specs[0].relay, Some(Relay::Tcp));
    let routed = state.l4_table("tcp-9000").and_then(|t| t.route(None));
    assert_eq!(routed.map(|r| &*r.name), Some("ns/db/rule/0"));
    // A TCP listener without an L4 table is refused; so is an invalid table.
    assert_eq!(
        build(&l4_store(None)).unwrap_err(),
        "listener tcp-9000: TCP, UDP and TLS listeners (only) name an L4 route table"
    );
    let mut bad = table;
    bad.routes[0].server_names = vec!["a*.example.com".into()];
    assert_eq!(
        build(&l4_store(Some(bad))).unwrap_err(),
        "L4 route table tcp-9000: route ns/db/rule/0: invalid server name \"a*.example.com\""
    );
}

#[test]
fn a_tcp_and_a_udp_listener_share_a_port_number_and_two_tcp_ones_do_not() {
    let listener = |name: &str, protocol: ListenerProtocol| Listener {
        name: name.into(),
        port: 53,
        protocol: protocol as i32,
        l4_route_table: name.into(),
        ..Default::default()
    };
    let tcp = listener_spec(&listener("tcp-53", ListenerProtocol::Tcp), &[]).unwrap();
    let udp = listener_spec(
        &listener("udp-53", ListenerProtocol::Udp),
        std::slice::from_ref(&tcp),
    )
    .unwrap();
    assert_eq!(udp.relay, Some(Relay::Udp));
    let second = listener("tls-53", ListenerProtocol::TlsTerminate);
    let err = listener_spec(&second, &[tcp, udp]).unwrap_err().to_string();
    assert_eq!(err, "listeners tcp-53 and tls-53 both use port 53");
}
