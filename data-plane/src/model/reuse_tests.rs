//! A new routing state reuses the virtual hosts of the previous one that nothing they are
//! built from changed, and builds the others: a one-route edit costs that route's virtual
//! hosts, and no reused virtual host points at a cluster the new state replaced.

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{
    Cluster, ClusterEndpoints, DeltaDiscoveryResponse, Endpoint, ForwardAction, Listener,
    PathMatch, PathMatchKind, RankedRule, Resource, RouteMatch, RouteRule, RouteRules, RouteTable,
    WeightedCluster,
};
use rauta_common::types::ResourceType;

use super::rule::ActionRt;
use super::*;
use crate::model::store::ResourceStore;

fn respond(
    store: &ResourceStore,
    ty: ResourceType,
    items: Vec<(&str, &str, Payload)>,
) -> ResourceStore {
    let response = DeltaDiscoveryResponse {
        type_url: ty.type_url().into(),
        resources: items
            .into_iter()
            .map(|(name, version, payload)| Resource {
                name: name.into(),
                version: version.into(),
                payload: Some(payload),
            })
            .collect(),
        ..Default::default()
    };
    store.with_response(ty, &response).unwrap()
}

/// The rules of route `route` on domain `domain`: one rule, `rule`, forwarding to `cluster`.
fn route(route: &str, domain: &str, rule: &str, cluster: &str) -> Payload {
    let rule = RouteRule {
        name: rule.into(),
        matches: vec![RouteMatch {
            path: Some(PathMatch {
                kind: PathMatchKind::Prefix as i32,
                value: "/".into(),
            }),
            ..Default::default()
        }],
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
    Payload::RouteRules(RouteRules {
        name: route.into(),
        route_table: "t".into(),
        domains: vec![domain.into()],
        rules: vec![RankedRule {
            precedence: vec![0],
            rule: Some(Box::new(rule)),
        }],
    })
}

/// Cluster `name` with default settings.
fn cluster(name: &str) -> Payload {
    Payload::Cluster(Box::new(Cluster {
        name: name.into(),
        ..Default::default()
    }))
}

fn endpoints(cluster: &str, port: u32) -> Payload {
    Payload::Endpoints(ClusterEndpoints {
        cluster: cluster.into(),
        endpoints: vec![Endpoint {
            address: "127.0.0.1".into(),
            port,
            ready: true,
            weight: 1,
        }],
    })
}

/// Listener "http-80" on table "t"; routes a (a.org, to cluster ca) and b (b.org, to cb).
fn store() -> ResourceStore {
    let store = ResourceStore::default();
    let listener = Listener {
        name: "http-80".into(),
        port: 80,
        protocol: 1,
        route_table: "t".into(),
        ..Default::default()
    };
    let store = respond(
        &store,
        ResourceType::Listener,
        vec![("http-80", "1", Payload::Listener(Box::new(listener)))],
    );
    let table = RouteTable {
        name: "t".into(),
        ..Default::default()
    };
    let store = respond(
        &store,
        ResourceType::RouteTable,
        vec![("t", "1", Payload::RouteTable(table))],
    );
    let store = respond(
        &store,
        ResourceType::Cluster,
        vec![("ca", "1", cluster("ca")), ("cb", "1", cluster("cb"))],
    );
    let store = respond(
        &store,
        ResourceType::Endpoints,
        vec![
            ("ca", "1", endpoints("ca", 9)),
            ("cb", "1", endpoints("cb", 9)),
        ],
    );
    respond(
        &store,
        ResourceType::RouteRules,
        vec![
            ("r/a", "1", route("r/a", "a.org", "a-1", "ca")),
            ("r/b", "1", route("r/b", "b.org", "b-1", "cb")),
        ],
    )
}

struct Builder {
    metrics: ProxyMetrics,
    pools: UpstreamPools,
}

impl Builder {
    fn build(&mut self, store: &ResourceStore, previous: &RoutingState) -> RoutingState {
        RoutingState::build(store, previous, &mut self.pools, &self.metrics)
            .unwrap()
            .0
    }
}

fn vhost<'a>(state: &'a RoutingState, host: &str) -> &'a route_table::VirtualHostRt {
    state
        .route_table("http-80")
        .and_then(|t| t.virtual_host(host))
        .expect("virtual host")
}

/// Whether `host`'s virtual host is the very same (its rules shared) in both states.
fn shared(a: &RoutingState, b: &RoutingState, host: &str) -> bool {
    std::ptr::eq(
        vhost(a, host).rules().as_ptr(),
        vhost(b, host).rules().as_ptr(),
    )
}

/// The cluster `host`'s only rule forwards to, and the state's own cluster of that name.
fn linked_cluster<'a>(
    state: &'a RoutingState,
    host: &str,
) -> (&'a cluster::ClusterRt, &'a cluster::ClusterRt) {
    let rule = &vhost(state, host).rules()[0];
    let ActionRt::Forward { backends, .. } = &rule.action else {
        panic!("not a forward");
    };
    let linked = backends[0].cluster.as_deref().expect("linked");
    let own = state
        .clusters()
        .find(|(name, _)| **name == *backends[0].cluster_name)
        .map(|(_, c)| c)
        .expect("cluster in the state");
    (linked, own)
}

#[test]
fn a_route_edit_rebuilds_its_virtual_host_and_reuses_the_others() {
    let mut builder = Builder {
        metrics: ProxyMetrics::new().unwrap(),
        pools: UpstreamPools::default(),
    };
    let first = store();
    let one = builder.build(&first, &RoutingState::default());

    let edited = respond(
        &first,
        ResourceType::RouteRules,
        vec![("r/a", "2", route("r/a", "a.org", "a-2", "ca"))],
    );
    let two = builder.build(&edited, &one);
    assert!(
        two.clusters.kept_whole(&one.clusters),
        "a route edit keeps the clusters without looking at each"
    );
    assert!(shared(&one, &two, "b.org"), "b did not change: reused");
    assert!(!shared(&one, &two, "a.org"), "a changed: built again");
    assert_eq!(&*vhost(&two, "a.org").rules()[0].name, "a-2");
    for host in ["a.org", "b.org"] {
        let (linked, own) = linked_cluster(&two, host);
        assert!(
            std::ptr::eq(linked, own),
            "{host} points at the state's cluster"
        );
    }

    // New endpoints for b's cluster: the cluster is made again, and b's virtual host with
    // it, so it never points at the cluster the state replaced; a's stays.
    let moved = respond(
        &edited,
        ResourceType::Endpoints,
        vec![("cb", "2", endpoints("cb", 10))],
    );
    let three = builder.build(&moved, &two);
    assert!(!three.clusters.kept_whole(&two.clusters));
    assert!(shared(&two, &three, "a.org"));
    assert!(!shared(&two, &three, "b.org"));
    let (linked, own) = linked_cluster(&three, "b.org");
    assert!(std::ptr::eq(linked, own));
    assert_eq!(linked.endpoints()[0].addr.port(), 10);

    // The same store again: everything is reused.
    let four = builder.build(&moved, &three);
    assert!(four.clusters.kept_whole(&three.clusters));
    assert!(shared(&three, &four, "a.org") && shared(&three, &four, "b.org"));
}

fn builder() -> Builder {
    Builder {
        metrics: ProxyMetrics::new().unwrap(),
        pools: UpstreamPools::default(),
    }
}

#[test]
fn an_edit_keeps_the_domain_index_and_a_new_domain_makes_it_anew() {
    let mut builder = builder();
    let first = store();
    let one = builder.build(&first, &RoutingState::default());
    let index = |state: &RoutingState| {
        state
            .route_table("http-80")
            .map(|t| t.index_address())
            .expect("table")
    };

    let edited = respond(
        &first,
        ResourceType::RouteRules,
        vec![("r/a", "2", route("r/a", "a.org", "a-2", "ca"))],
    );
    let two = builder.build(&edited, &one);
    assert_eq!(index(&one), index(&two), "same domains in the same places");
    assert_eq!(&*vhost(&two, "a.org").rules()[0].name, "a-2");
    let moved = respond(
        &edited,
        ResourceType::Endpoints,
        vec![("ca", "2", endpoints("ca", 10))],
    );
    let relinked = builder.build(&moved, &two);
    assert_eq!(index(&two), index(&relinked), "only endpoints changed");
    assert!(shared(&two, &relinked, "b.org") && !shared(&two, &relinked, "a.org"));

    // A route on a new domain, between the others by name: every virtual host after it
    // moves, each is still found (and reused), and each domain reaches its own.
    let added = respond(
        &edited,
        ResourceType::RouteRules,
        vec![("r/aa", "1", route("r/aa", "aa.org", "aa-1", "ca"))],
    );
    let three = builder.build(&added, &two);
    assert_ne!(index(&two), index(&three));
    assert!(shared(&two, &three, "a.org") && shared(&two, &three, "b.org"));
    for (host, rule) in [("a.org", "a-2"), ("aa.org", "aa-1"), ("b.org", "b-1")] {
        assert_eq!(&*vhost(&three, host).rules()[0].name, rule, "{host}");
    }

    // And gone again: the domain no longer reaches anything.
    let removed = first_without(&added, "r/aa");
    let four = builder.build(&removed, &three);
    assert!(
        four.route_table("http-80")
            .and_then(|t| t.virtual_host("aa.org"))
            .is_none()
    );
    assert_eq!(&*vhost(&four, "b.org").rules()[0].name, "b-1");
}

/// `store` after a response removing the `RouteRules` called `name`.
fn first_without(store: &ResourceStore, name: &str) -> ResourceStore {
    let response = DeltaDiscoveryResponse {
        type_url: ResourceType::RouteRules.type_url().into(),
        removed_resources: vec![name.into()],
        ..Default::default()
    };
    store
        .with_response(ResourceType::RouteRules, &response)
        .unwrap()
}

#[test]
fn a_new_bad_route_rules_between_unchanged_ones_is_refused() {
    let mut builder = builder();
    let first = store();
    let one = builder.build(&first, &RoutingState::default());
    let Payload::RouteRules(mut bad) = route("r/ab", "a b.org", "ab-1", "ca") else {
        unreachable!()
    };
    // On a table the store does not have: only the check of each `RouteRules` on its own
    // sees it.
    bad.route_table = "elsewhere".into();
    let with_bad = respond(
        &first,
        ResourceType::RouteRules,
        vec![("r/ab", "1", Payload::RouteRules(bad))],
    );
    let refused = RoutingState::build(&with_bad, &one, &mut builder.pools, &builder.metrics);
    let Err(error) = refused else {
        panic!("a RouteRules with a malformed domain was accepted");
    };
    assert!(error.to_string().contains("a b.org"), "{error}");
}

#[test]
fn each_cluster_gets_its_own_endpoints_whichever_others_have_none() {
    let mut builder = builder();
    let store = respond(
        &ResourceStore::default(),
        ResourceType::Cluster,
        vec![
            ("a", "1", cluster("a")),
            ("b", "1", cluster("b")),
            ("c", "1", cluster("c")),
        ],
    );
    // Endpoints for a cluster that does not exist, and none for b.
    let store = respond(
        &store,
        ResourceType::Endpoints,
        vec![
            ("a", "1", endpoints("a", 1)),
            ("aa", "1", endpoints("aa", 2)),
            ("c", "1", endpoints("c", 3)),
        ],
    );
    let state = builder.build(&store, &RoutingState::default());
    let port = |name: &str| {
        let (_, cluster) = state.clusters().find(|(n, _)| **n == *name).expect(name);
        cluster.endpoints().first().map(|e| e.addr.port())
    };
    assert_eq!([port("a"), port("b"), port("c")], [Some(1), None, Some(3)]);
}
