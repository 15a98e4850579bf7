//! Policy attachment (GEP-713): which RateLimitPolicy applies where, merged by concern, and
//! each policy's status.

use rauta_common::api::v1::RequestPolicies;

use super::status::Condition;
use super::tests::{condition, route, route_table, translate_yaml};
use super::*;

fn rate_limit_policy(name: &str, created: &str, targets: &str, requests: u32) -> String {
    format!(
        "apiVersion: gateway.rauta.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\", generation: 2}}\nspec:\n  targetRefs: {targets}\n  local:\n    limits: [{{requests: {requests}, unit: Minute}}]\n---\n",
        ns = if targets.contains("Gateway") {
            "infra"
        } else {
            "apps"
        },
    )
}

const ROUTE: &str = "  rules:\n  - name: api\n    matches: [{path: {type: PathPrefix, value: /api}}]\n    backendRefs: [{name: web, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: web, port: 8080}]";

/// (name, requests per period of the first local limit), in order.
type Named = Vec<(String, Option<u32>)>;

/// The requests per period of the local limits that apply to each rule of table `table` (by
/// rule name), and to the table's listeners (by hostname).
fn limits(t: &Translation, table: &str) -> (Named, Named) {
    let requests = |p: Option<&RequestPolicies>| {
        p.and_then(|p| p.local_rate_limits.as_ref())
            .map(|l| l.limits[0].requests)
    };
    let table = route_table(t, table);
    let rules = (table.virtual_hosts.iter())
        .flat_map(|v| &v.rules)
        .map(|r| (r.name.clone(), requests(r.policies.as_deref())))
        .collect();
    let listeners = (table.listener_policies.iter())
        .map(|l| (l.hostname.clone(), requests(l.policies.as_ref())))
        .collect();
    (rules, listeners)
}

fn policy_conditions(t: &Translation, name: &str) -> Vec<(String, Condition)> {
    let key = t
        .status
        .rate_limit_policies
        .keys()
        .find(|k| *k.name == *name)
        .unwrap_or_else(|| panic!("no status for {name}: {:?}", t.status.rate_limit_policies));
    t.status.rate_limit_policies[key]
        .ancestors
        .iter()
        .map(|a| (a.parent_ref.name.clone(), a.conditions[0].clone()))
        .collect()
}

#[test]
fn the_most_specific_attachment_applies_to_each_rule() {
    let t = translate_yaml(&format!(
        "{}{}{}{}",
        route("web", "", ROUTE),
        rate_limit_policy(
            "route-wide",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}]",
            10
        ),
        rate_limit_policy(
            "api-rule",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web, sectionName: api}]",
            20
        ),
        rate_limit_policy(
            "gateway-wide",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]",
            30
        ),
    ));
    let (rules, listeners) = limits(&t, "http-80");
    assert_eq!(
        rules,
        [
            ("apps/web/api".to_owned(), Some(20)),
            ("apps/web/rule/1".to_owned(), Some(10))
        ]
    );
    // The Gateway's policy travels with the listener; the proxy puts it under rules that
    // set no limit of their own.
    assert_eq!(listeners, [(String::new(), Some(30))]);
    for name in ["route-wide", "api-rule", "gateway-wide"] {
        let conditions = policy_conditions(&t, name);
        assert_eq!(conditions.len(), 1, "{name}: {conditions:?}");
        assert_eq!(conditions[0].0, "gw", "the ancestor is the Gateway");
        assert_eq!(
            condition(&[conditions[0].1.clone()], "Accepted"),
            ("True".into(), "Accepted".into())
        );
        assert_eq!(conditions[0].1.observed_generation, 2);
    }
}

#[test]
fn a_listener_policy_overrides_the_gateway_policy_on_that_listener_only() {
    let t = translate_yaml(&format!(
        "{}{}",
        rate_limit_policy(
            "gateway-wide",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]",
            30
        ),
        rate_limit_policy(
            "foo-listener",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw, sectionName: foo}]",
            40
        ),
    ));
    assert_eq!(limits(&t, "http-80").1, [(String::new(), Some(30))]);
    assert_eq!(
        limits(&t, "http-8081").1,
        [("*.foo.com".to_owned(), Some(40))]
    );
}

#[test]
fn an_extension_ref_overrides_attached_policies() {
    let rule = "  rules:\n  - filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: RateLimitPolicy, name: named}}]\n    backendRefs: [{name: web, port: 8080}]";
    let t = translate_yaml(&format!(
        "{}{}{}",
        route("web", "", rule),
        rate_limit_policy("named", "2026-01-01T00:00:00Z", "[]", 5),
        rate_limit_policy(
            "route-wide",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}]",
            10
        ),
    ));
    assert_eq!(
        limits(&t, "http-80").0,
        [("apps/web/rule/0".to_owned(), Some(5))]
    );
    // Named only by a filter: no targets, no status.
    assert!(
        !t.status
            .rate_limit_policies
            .keys()
            .any(|k| *k.name == *"named")
    );
}

#[test]
fn conflicts_missing_targets_and_invalid_policies_are_reported() {
    let invalid = "apiVersion: gateway.rauta.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: bad-key, namespace: apps}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}]\n  local:\n    limits: [{requests: 1, unit: Second, key: [{type: Header}]}]\n---\n";
    let t = translate_yaml(&format!(
        "{}{}{}{}{}{}{}",
        route("web", "", ROUTE),
        rate_limit_policy(
            "older",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}]",
            10
        ),
        rate_limit_policy(
            "newer",
            "2026-02-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}]",
            99
        ),
        rate_limit_policy(
            "no-route",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: missing}]",
            1
        ),
        rate_limit_policy(
            "no-rule",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web, sectionName: nope}]",
            1
        ),
        rate_limit_policy(
            "no-listener",
            "2026-01-01T00:00:00Z",
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw, sectionName: nope}]",
            1
        ),
        invalid,
    ));
    let reason = |name: &str| {
        let c = policy_conditions(&t, name);
        (c[0].1.status.clone(), c[0].1.reason.clone())
    };
    let refused = |r: &str| ("False".to_owned(), r.to_owned());
    assert_eq!(reason("older"), ("True".to_owned(), "Accepted".to_owned()));
    assert_eq!(reason("newer"), refused("Conflicted"));
    assert_eq!(reason("no-route"), refused("TargetNotFound"));
    assert_eq!(reason("no-rule"), refused("TargetNotFound"));
    assert_eq!(reason("no-listener"), refused("TargetNotFound"));
    assert_eq!(reason("bad-key"), refused("Invalid"));
    // Only the older, valid one applies.
    let (rules, _) = limits(&t, "http-80");
    assert!(rules.iter().all(|(_, r)| *r == Some(10)), "{rules:?}");
    // The Gateway of another controller, or a route attached to nothing of ours: no entry.
    let foreign = translate_yaml(&rate_limit_policy(
        "foreign",
        "2026-01-01T00:00:00Z",
        "[{group: gateway.networking.k8s.io, kind: Gateway, name: foreign}]",
        1,
    ));
    assert!(foreign.status.rate_limit_policies.is_empty());
}
