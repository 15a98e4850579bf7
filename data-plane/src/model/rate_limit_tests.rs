//! Rate limits in the routing state: a rule takes its listener's limits where it sets none, a
//! limit's counts outlive a snapshot that leaves it as it was, and an invalid limit is refused.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use rauta_common::api::v1::{
    ListenerPolicies, LocalRateLimits, RateLimit, RequestPolicies, RouteRule, RouteTable,
    VirtualHost,
};

use super::build_tests::{build, rule, store_with};
use super::rate_limit::Limiter;
use super::request::RequestHeaders;
use super::*;
use crate::observe::metrics::ProxyMetrics;
use crate::upstream::UpstreamPools;

fn limits(name: &str, requests: u32) -> RequestPolicies {
    RequestPolicies {
        local_rate_limits: Some(LocalRateLimits {
            limits: vec![RateLimit {
                name: name.into(),
                requests,
                period: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            }],
        }),
        ..Default::default()
    }
}

fn vhost(domain: &str, rule: RouteRule) -> VirtualHost {
    VirtualHost {
        name: domain.into(),
        domains: vec![domain.into()],
        rules: vec![rule],
    }
}

fn named(name: &str, policies: Option<RequestPolicies>) -> RouteRule {
    RouteRule {
        name: name.into(),
        policies: policies.map(Box::new),
        ..rule("/", None)
    }
}

fn table(listener_policies: Vec<ListenerPolicies>) -> RouteTable {
    RouteTable {
        name: "t".into(),
        virtual_hosts: vec![
            vhost("*", named("any", None)),
            vhost("admin.example.com", named("admin", None)),
            vhost("api.example.com", named("own", Some(limits("own", 3)))),
            vhost("x.wild.example.com", named("wild", None)),
            vhost("*.wild.example.com", named("wildcard", None)),
        ],
        listener_policies,
        ..Default::default()
    }
}

/// The limit (name) each virtual host's rule counts against.
fn limiter_of(state: &RoutingState, host: &str) -> Option<Arc<Limiter>> {
    let vhost = state.route_table("http-80")?.virtual_host(host)?;
    let rule = vhost.rules().first()?;
    Some(Arc::clone(rule.filters.rate_limit()?.limiters.first()?))
}

#[test]
fn rules_take_their_listeners_limits_where_they_set_none() {
    let store = store_with(
        table(vec![
            ListenerPolicies {
                hostname: String::new(),
                policies: Some(limits("gateway", 1)),
            },
            ListenerPolicies {
                hostname: "admin.example.com".into(),
                policies: Some(limits("admin", 2)),
            },
            ListenerPolicies {
                hostname: "*.wild.example.com".into(),
                policies: Some(limits("wild", 4)),
            },
        ]),
        &[("http-80", 80)],
    );
    let (state, _) = build(&store).unwrap();
    let name = |host| limiter_of(&state, host).map(|l| l.name.to_string());
    assert_eq!(
        name("other.org").as_deref(),
        Some("gateway"),
        "no hostname: the catch-all listener"
    );
    assert_eq!(name("admin.example.com").as_deref(), Some("admin"));
    assert_eq!(
        name("api.example.com").as_deref(),
        Some("own"),
        "the rule's own limit wins"
    );
    assert_eq!(name("y.wild.example.com").as_deref(), Some("wild"));
    // A listener of its own inside the wildcard's hostnames, without policies: none, not the
    // wildcard listener's.
    assert_eq!(name("x.wild.example.com"), None);
    // The fast paths count requests themselves; the kernel cannot: ineligible by construction.
    let rule = &state
        .route_table("http-80")
        .unwrap()
        .virtual_host("a.org")
        .unwrap()
        .rules()[0];
    assert!(rule.filters.fast_path() && !rule.filters.kernel());
}

#[test]
fn counts_outlive_a_snapshot_that_keeps_the_limit() {
    let metrics = ProxyMetrics::new().unwrap();
    let with = |requests| {
        let gateway = ListenerPolicies {
            hostname: String::new(),
            policies: Some(limits("gateway", requests)),
        };
        store_with(table(vec![gateway]), &[("http-80", 80)])
    };
    let mut pools = UpstreamPools::default();
    let (first, _) =
        RoutingState::build(&with(1), &RoutingState::default(), &mut pools, &metrics).unwrap();
    let limiter = limiter_of(&first, "a.org").unwrap();
    let peer = IpAddr::from([10, 0, 0, 1]);
    assert!(
        limiter
            .check(peer, RequestHeaders::Map(&HeaderMap::new()))
            .is_ok()
    );
    // Every rule under the listener shares the one count.
    assert!(Arc::ptr_eq(&limiter, &limiter_of(&first, "b.org").unwrap()));
    let (second, _) = RoutingState::build(&with(1), &first, &mut pools, &metrics).unwrap();
    let kept = limiter_of(&second, "a.org").unwrap();
    assert!(
        Arc::ptr_eq(&limiter, &kept),
        "the same limit: the same counts"
    );
    assert!(
        kept.check(peer, RequestHeaders::Map(&HeaderMap::new()))
            .is_err(),
        "still spent"
    );
    let (third, _) = RoutingState::build(&with(5), &second, &mut pools, &metrics).unwrap();
    assert!(
        !Arc::ptr_eq(&limiter, &limiter_of(&third, "a.org").unwrap()),
        "a new limit"
    );
}

#[test]
fn invalid_limits_are_refused_with_a_reason() {
    let cases = [
        (limits("zero", 0), "requests must be more than 0"),
        (limits("bad\"name", 1), "printable ASCII"),
        (
            RequestPolicies {
                local_rate_limits: Some(LocalRateLimits { limits: vec![] }),
                ..Default::default()
            },
            "1 to 8 limits",
        ),
    ];
    for (policies, reason) in cases {
        let store = store_with(
            RouteTable {
                name: "t".into(),
                virtual_hosts: vec![vhost("*", named("r", Some(policies)))],
                ..Default::default()
            },
            &[("http-80", 80)],
        );
        let err = build(&store)
            .err()
            .unwrap_or_else(|| panic!("{reason}: accepted"));
        assert!(err.contains(reason), "{err:?} should contain {reason:?}");
    }
}
