//! Route tables assembled from `RouteRules`: each virtual host's own rules first, then the
//! ranked rules of every route naming one of its domains, by precedence key.

use rauta_common::api::v1::resource::Payload;
use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{
    DeltaDiscoveryResponse, DirectResponse, Listener, PathMatch, PathMatchKind, RankedRule,
    Resource, RouteMatch, RouteRule, RouteRules, RouteTable, VirtualHost,
};
use rauta_common::types::ResourceType;

use super::*;
use crate::model::store::ResourceStore;

fn rule(name: &str) -> RouteRule {
    RouteRule {
        name: name.into(),
        matches: vec![RouteMatch {
            path: Some(PathMatch {
                kind: PathMatchKind::Prefix as i32,
                value: "/".into(),
            }),
            ..Default::default()
        }],
        action: Some(Action::DirectResponse(DirectResponse {
            status: 204,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn ranked(precedence: &[u8], name: &str) -> RankedRule {
    RankedRule {
        precedence: precedence.to_vec(),
        rule: Some(Box::new(rule(name))),
    }
}

fn route_rules(name: &str, table: &str, domains: &[&str], rules: Vec<RankedRule>) -> RouteRules {
    RouteRules {
        name: name.into(),
        route_table: table.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        rules,
    }
}

fn response(ty: ResourceType, resources: Vec<(String, Payload)>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ty.type_url().into(),
        resources: resources
            .into_iter()
            .map(|(name, payload)| Resource {
                name,
                version: "v".into(),
                payload: Some(payload),
            })
            .collect(),
        ..Default::default()
    }
}

/// A store with listener "http-80" on table "t" (virtual host "a.org" with one rule of its
/// own) and the given route rules.
fn store(rules: Vec<RouteRules>) -> ResourceStore {
    let table = RouteTable {
        name: "t".into(),
        virtual_hosts: vec![VirtualHost {
            name: "a.org".into(),
            domains: vec!["a.org".into()],
            rules: vec![rule("inline")],
        }],
        ..Default::default()
    };
    let listener = Listener {
        name: "http-80".into(),
        port: 80,
        protocol: 1,
        route_table: "t".into(),
        ..Default::default()
    };
    let rules = rules
        .into_iter()
        .map(|r| (r.name.clone(), Payload::RouteRules(r)))
        .collect();
    ResourceStore::default()
        .with_response(
            ResourceType::RouteTable,
            &response(
                ResourceType::RouteTable,
                vec![("t".into(), Payload::RouteTable(table))],
            ),
        )
        .and_then(|s| {
            s.with_response(
                ResourceType::Listener,
                &response(
                    ResourceType::Listener,
                    vec![("http-80".into(), Payload::Listener(Box::new(listener)))],
                ),
            )
        })
        .and_then(|s| {
            s.with_response(
                ResourceType::RouteRules,
                &response(ResourceType::RouteRules, rules),
            )
        })
        .unwrap()
}

fn build(store: &ResourceStore) -> Result<RoutingState, String> {
    super::build_tests::build(store).map(|(state, _)| state)
}

fn rule_names(state: &RoutingState, host: &str) -> Vec<String> {
    let table = state.route_table("http-80").expect("table");
    let vhost = table.virtual_host(host).expect("virtual host");
    vhost.rules().iter().map(|r| r.name.to_string()).collect()
}

#[test]
fn rules_of_several_routes_are_merged_by_precedence_after_the_tables_own() {
    let state = build(&store(vec![
        route_rules(
            "t/HTTPRoute/ns/a",
            "t",
            &["A.org"],
            vec![ranked(&[2], "a-late"), ranked(&[0], "a-early")],
        ),
        route_rules(
            "t/HTTPRoute/ns/b",
            "t",
            &["a.org", "*.b.org"],
            vec![ranked(&[1], "b")],
        ),
    ]))
    .unwrap();
    assert_eq!(
        rule_names(&state, "a.org"),
        ["inline", "a-early", "b", "a-late"]
    );
    // A domain only route rules name gets a virtual host of its own.
    assert_eq!(rule_names(&state, "x.b.org"), ["b"]);
    assert!(
        state
            .route_table("http-80")
            .unwrap()
            .virtual_host("c.org")
            .is_none()
    );
}

#[test]
fn equal_keys_are_ordered_by_route_rules_name_then_position() {
    let state = build(&store(vec![
        route_rules("t/z", "t", &["a.org"], vec![ranked(&[1], "z")]),
        route_rules(
            "t/m",
            "t",
            &["a.org"],
            vec![ranked(&[1], "m0"), ranked(&[1], "m1")],
        ),
    ]))
    .unwrap();
    assert_eq!(rule_names(&state, "a.org"), ["inline", "m0", "m1", "z"]);
}

#[test]
fn route_rules_of_a_table_the_proxy_lacks_serve_nothing_and_are_no_error() {
    let state = build(&store(vec![route_rules(
        "gone/x",
        "gone",
        &["a.org"],
        vec![ranked(&[0], "orphan")],
    )]))
    .unwrap();
    assert_eq!(rule_names(&state, "a.org"), ["inline"]);
}

#[test]
fn malformed_route_rules_are_refused_with_their_name() {
    let mut hollow = route_rules("t/hollow", "t", &["a.org"], vec![ranked(&[0], "x")]);
    hollow.rules[0].rule = None;
    let err = build(&store(vec![hollow])).unwrap_err();
    assert!(
        err.contains("t/hollow") && err.contains("without its rule"),
        "{err}"
    );

    let bad_domain = route_rules("t/bad", "t", &["*x.org"], vec![ranked(&[0], "x")]);
    let err = build(&store(vec![bad_domain])).unwrap_err();
    assert!(err.contains("t/bad: invalid domain"), "{err}");

    let mut bad_rule = route_rules("t/badrule", "t", &["c.org"], vec![ranked(&[0], "x")]);
    bad_rule.rules[0].rule.as_mut().unwrap().action = None;
    let err = build(&store(vec![bad_rule])).unwrap_err();
    assert!(err.contains("c.org") && err.contains("x"), "{err}");
}

#[test]
fn route_rules_are_checked_even_without_their_table() {
    let mut hollow = route_rules("gone/hollow", "gone", &["a.org"], vec![ranked(&[0], "x")]);
    hollow.rules[0].rule = None;
    let err = build(&store(vec![hollow])).unwrap_err();
    assert!(
        err.contains("gone/hollow") && err.contains("without its rule"),
        "{err}"
    );
    let bad = route_rules("gone/bad", "gone", &["a.org/x"], vec![ranked(&[0], "x")]);
    let err = build(&store(vec![bad])).unwrap_err();
    assert!(err.contains("invalid domain"), "{err}");
}

#[test]
fn a_domain_listed_twice_joins_its_virtual_host_once() {
    let state = build(&store(vec![route_rules(
        "t/twice",
        "t",
        &["c.org", "C.org"],
        vec![ranked(&[0], "once")],
    )]))
    .unwrap();
    assert_eq!(rule_names(&state, "c.org"), ["once"]);
    // Past a few domains, duplicates are found by hashing: the same answer.
    let mut many: Vec<String> = (0..20).map(|i| format!("h{i}.org")).collect();
    many.extend(["D.org".into(), "d.ORG".into()]);
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let state = build(&store(vec![route_rules(
        "t/many",
        "t",
        &many,
        vec![ranked(&[0], "once")],
    )]))
    .unwrap();
    assert_eq!(rule_names(&state, "d.org"), ["once"]);
    assert_eq!(rule_names(&state, "h19.org"), ["once"]);
}

#[test]
fn the_rules_a_response_asks_to_place_are_bounded() {
    use super::route_table::MAX_PLACEMENTS;
    let rules_per = 1024;
    let domains = |n: usize, tag: &str| -> Vec<String> {
        (0..n).map(|i| format!("h{i}.{tag}.org")).collect()
    };
    let make = |name: &str, domains: Vec<String>| RouteRules {
        name: name.into(),
        route_table: "t".into(),
        domains,
        rules: (0..rules_per)
            .map(|i| ranked(&[1], &format!("r{i}")))
            .collect(),
    };
    // One resource past the bound is refused before anything is built.
    let over = MAX_PLACEMENTS / rules_per + 1;
    let err = build(&store(vec![make("t/huge", domains(over, "x"))])).unwrap_err();
    assert!(err.contains("more than"), "{err}");
    // Two each within it, together past it.
    let half = MAX_PLACEMENTS / rules_per / 2 + 1;
    let err = build(&store(vec![
        make("t/a", domains(half, "a")),
        make("t/b", domains(half, "b")),
    ]))
    .unwrap_err();
    assert!(err.contains("more than"), "{err}");
}
