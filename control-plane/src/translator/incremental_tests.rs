//! The incremental translator against the reference: random sequences of object changes
//! (adds, edits and deletes of every kind the golden cases use: Gateways, routes of each
//! kind, Services, EndpointSlices, ReferenceGrants, Secrets, ConfigMaps, BackendTLSPolicies,
//! ListenerSets, our policy kinds, RateLimitPolicies), and after each one the incremental result and status must
//! equal a full translation of the same objects.

use std::path::Path;

use rauta_common::types::ResourceType;
use serde_json::Value;

use super::*;
use crate::objects::{Kind, Object, ObjectRef};
use crate::source::parse_manifests;

/// Every object of every golden input, plus edited copies of routes, Services, Namespaces,
/// Gateways and ListenerSets: the versions a random change picks from. Golden cases reuse
/// names (a Gateway `gw`, a Service `web`), so the same key has several versions here.
fn universe() -> Vec<(ObjectRef, Object)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translator/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "golden inputs: {files:?}");
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("golden input");
        let (objects, _) = parse_manifests(&text);
        for kind in Kind::ALL {
            for key in objects.keys(kind) {
                let Some(object) = objects.get(kind, &key) else {
                    continue;
                };
                for edited in edits(&key, &object) {
                    out.push((key.clone(), edited));
                }
                out.push((key, object));
            }
        }
    }
    out
}

/// One edit of an object's JSON; `None` where the object lacks what it edits.
type Change = Box<dyn Fn(&mut Value) -> Option<()>>;

/// Changed versions of an object, as edits would make them, each changing one thing: a
/// route's first path (or its hostnames), a Service's first port, a Namespace's labels (gone,
/// or the ones golden listeners select), and each field of a Gateway's or ListenerSet's first
/// listener that attachment reads, one at a time (several at once would hide one that the
/// attachment memo failed to compare), and a ListenerSet's parent.
fn edits(key: &ObjectRef, object: &Object) -> Vec<Object> {
    let (kind, value) = match object {
        Object::HttpRoute(r) => (Kind::HttpRoute, serde_json::to_value(&**r)),
        Object::GrpcRoute(r) => (Kind::GrpcRoute, serde_json::to_value(&**r)),
        Object::Service(s) => (Kind::Service, serde_json::to_value(&**s)),
        Object::Namespace(n) => (Kind::Namespace, serde_json::to_value(&**n)),
        Object::Gateway(g) => (Kind::Gateway, serde_json::to_value(&**g)),
        Object::ListenerSet(l) => (Kind::ListenerSet, serde_json::to_value(&**l)),
        Object::RateLimitPolicy(p) => (Kind::RateLimitPolicy, serde_json::to_value(&**p)),
        _ => return Vec::new(),
    };
    let Ok(value) = value else {
        return Vec::new();
    };
    let edit = |change: &dyn Fn(&mut Value) -> Option<()>| {
        let mut value = value.clone();
        change(&mut value)?;
        Object::decode(kind, key, value).ok()
    };
    let listener = |field: &'static str, new: fn(Option<&Value>) -> Value| {
        move |v: &mut Value| {
            let listener = v.pointer_mut("/spec/listeners/0")?.as_object_mut()?;
            let value = new(listener.get(field));
            listener.insert(field.into(), value);
            Some(())
        }
    };
    let changes: Vec<Change> = match kind {
        Kind::Namespace => vec![
            Box::new(|v| {
                v.get_mut("metadata")?
                    .as_object_mut()?
                    .remove("labels")
                    .map(drop)
            }),
            Box::new(|v| {
                let metadata = v.get_mut("metadata")?.as_object_mut()?;
                metadata.insert("labels".into(), serde_json::json!({"team": "blue"}));
                Some(())
            }),
        ],
        Kind::Service => vec![Box::new(|v| {
            let port = v.pointer_mut("/spec/ports/0/port")?;
            *port = Value::from(port.as_i64()? + 1);
            Some(())
        })],
        // A limit's value, and its first target's rule (none, or one that may not exist).
        Kind::RateLimitPolicy => vec![
            Box::new(|v| {
                let requests = v.pointer_mut("/spec/local/limits/0/requests")?;
                *requests = Value::from(requests.as_i64()? + 1);
                Some(())
            }),
            Box::new(|v| {
                let target = v.pointer_mut("/spec/targetRefs/0")?.as_object_mut()?;
                match target.remove("sectionName") {
                    Some(_) => {}
                    None => drop(target.insert("sectionName".into(), Value::from("login"))),
                }
                Some(())
            }),
        ],
        Kind::Gateway | Kind::ListenerSet => {
            let mut changes: Vec<Change> = vec![
                Box::new(listener("allowedRoutes", |now| {
                    let from = now.and_then(|a| a.pointer("/namespaces/from"));
                    let other = if from == Some(&Value::from("All")) {
                        "Same"
                    } else {
                        "All"
                    };
                    serde_json::json!({"namespaces": {"from": other}})
                })),
                Box::new(listener(
                    "allowedRoutes",
                    |_| serde_json::json!({"kinds": [{"kind": "GRPCRoute"}]}),
                )),
                Box::new(listener("hostname", |_| Value::from("edited.example.com"))),
                Box::new(listener("port", |now| {
                    Value::from(now.and_then(Value::as_i64).unwrap_or(80) + 1)
                })),
                Box::new(listener("name", |now| {
                    Value::from(format!(
                        "{}-edited",
                        now.and_then(Value::as_str).unwrap_or("")
                    ))
                })),
                Box::new(listener("protocol", |now| {
                    let http = now == Some(&Value::from("HTTP"));
                    Value::from(if http { "TCP" } else { "HTTP" })
                })),
            ];
            if kind == Kind::ListenerSet {
                changes.push(Box::new(|v| {
                    let parent = v.pointer_mut("/spec/parentRef/name")?;
                    let other = if parent == "gw" { "selective" } else { "gw" };
                    *parent = Value::from(other);
                    Some(())
                }));
            }
            changes
        }
        _ => vec![Box::new(|v| {
            match v.pointer_mut("/spec/rules/0/matches/0/path/value") {
                Some(Value::String(path)) => {
                    path.push_str("/edited");
                    Some(())
                }
                _ => {
                    let spec = v.get_mut("spec")?.as_object_mut()?;
                    let hostnames = serde_json::json!(["edited.example.com"]);
                    spec.insert("hostnames".into(), hostnames);
                    Some(())
                }
            }
        })],
    };
    changes.iter().filter_map(|c| edit(&**c)).collect()
}

/// A small deterministic generator (SplitMix64): the same seed gives the same sequence, so a
/// failure can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Applies one random change: mostly an add or replace from `universe`, else a delete.
fn change(
    objects: &mut ObjectSet,
    universe: &[(ObjectRef, Object)],
    random: &mut Random,
) -> String {
    if random.below(4) == 0 && !objects.is_empty() {
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| !objects.keys(*k).is_empty())
            .collect();
        let kind = kinds[random.below(kinds.len())];
        let keys = objects.keys(kind);
        let key = &keys[random.below(keys.len())];
        objects.remove(kind, key);
        return format!("delete {kind:?} {key}");
    }
    let (key, object) = &universe[random.below(universe.len())];
    objects.insert(key.clone(), object.clone());
    format!("put {:?} {key}", object.kind())
}

#[test]
fn incremental_translation_equals_a_full_one_after_every_change() {
    let universe = universe();
    let (mut reused, mut attachments_reused, mut changes) = (0, 0, 0);
    for seed in 0..12 {
        let mut random = Random(seed);
        let mut objects = ObjectSet::default();
        let mut translator = Translator::new(DEFAULT_CONTROLLER_NAME);
        let mut history = Vec::new();
        for _ in 0..150 {
            history.push(change(&mut objects, &universe, &mut random));
            let incremental = translator.translate(&objects);
            let full = translate(&objects, DEFAULT_CONTROLLER_NAME);
            let context = || format!("seed {seed}, after: {}", history.join("; "));
            assert_eq!(incremental.gateways, full.gateways, "{}", context());
            assert_eq!(incremental.status, full.status, "{}", context());
            reused += translator.reused_last;
            attachments_reused += translator.attachments_reused_last;
            changes += 1;
        }
    }
    // The test means something only if routes and their attachments were reused (and so
    // could have been stale).
    assert!(
        reused > changes,
        "only {reused} compiled routes reused over {changes} changes"
    );
    assert!(
        attachments_reused > changes,
        "only {attachments_reused} attachments reused over {changes} changes"
    );
}

#[test]
fn an_unchanged_route_is_reused_and_an_edited_one_recompiled() {
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: rauta}\nspec: {controllerName: rauta.dev/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: rauta\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n";
    let route = |name: &str, path: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{matches: [{{path: {{value: {path}}}}}]}}]\n"
        )
    };
    let (before, _) = parse_manifests(&format!(
        "{gateway}---\n{}---\n{}",
        route("a", "/a"),
        route("b", "/b")
    ));
    let (after, _) = parse_manifests(&format!(
        "{gateway}---\n{}---\n{}",
        route("a", "/a"),
        route("b", "/b2")
    ));
    let mut translator = Translator::new(DEFAULT_CONTROLLER_NAME);
    let first = translator.translate(&before);
    assert_eq!(translator.reused_last, 0);
    // Parsed anew: route a is an equal object, not the same one, and is still reused.
    let translation = translator.translate(&after);
    assert_eq!(translator.reused_last, 1);
    assert_eq!(
        translation.gateways,
        translate(&after, DEFAULT_CONTROLLER_NAME).gateways
    );
    // Its RouteRules are handed on as the same allocation (the snapshot then neither compares
    // nor encodes them); the edited route's are new.
    let rules = |t: &Translation, name: &str| {
        let set = &t.gateways[&ObjectRef::new("apps", "gw")];
        Arc::clone(&set[&ResourceType::RouteRules][name])
    };
    let (a, b) = ("http-80/HTTPRoute/apps/a", "http-80/HTTPRoute/apps/b");
    assert!(Arc::ptr_eq(&rules(&first, a), &rules(&translation, a)));
    assert!(!Arc::ptr_eq(&rules(&first, b), &rules(&translation, b)));
    assert_ne!(rules(&first, b), rules(&translation, b));
    // The same objects again: nothing is rebuilt.
    let again = translator.translate(&after);
    assert!(Arc::ptr_eq(&rules(&translation, b), &rules(&again, b)));
}

#[test]
fn a_route_is_compiled_again_when_a_service_it_looked_up_changes_and_only_then() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translator/testdata");
    let text = std::fs::read_to_string(dir.join("mirrors.in.yaml")).expect("golden input");
    let (mut objects, _) = parse_manifests(&text);
    let mut translator = Translator::new(DEFAULT_CONTROLLER_NAME);
    translator.translate(&objects);
    let service = |objects: &ObjectSet, key: &ObjectRef| match objects.get(Kind::Service, key) {
        Some(object) => object,
        None => panic!("Service {key}"),
    };
    // Another app's Service: the route is reused.
    let other = ObjectRef::new("shop", "other");
    let main = service(&objects, &ObjectRef::new("shop", "main"));
    objects.insert(other.clone(), main);
    translator.translate(&objects);
    assert_eq!(
        translator.reused_last, 1,
        "an unrelated Service changes nothing"
    );
    // The backend, the mirror and the other namespace's mirror: each edited, then deleted.
    for key in [("shop", "main"), ("shop", "shadow"), ("infra", "audit")] {
        let key = ObjectRef::new(key.0, key.1);
        let edit = edits(&key, &service(&objects, &key))
            .into_iter()
            .next()
            .expect("an edited Service");
        for step in ["edit", "delete"] {
            match step {
                "edit" => objects.insert(key.clone(), edit.clone()),
                _ => objects.remove(Kind::Service, &key),
            };
            let incremental = translator.translate(&objects);
            assert_eq!(translator.reused_last, 0, "{step} {key}: compiled again");
            let full = translate(&objects, DEFAULT_CONTROLLER_NAME);
            assert_eq!(incremental.gateways, full.gateways, "{step} {key}");
            assert_eq!(incremental.status, full.status, "{step} {key}");
        }
    }
}

#[test]
fn a_route_attaches_again_when_what_attachment_read_changes_and_only_then() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translator/testdata");
    let text = std::fs::read_to_string(dir.join("attachment.in.yaml")).expect("golden input");
    let (mut objects, _) = parse_manifests(&text);
    let routes = objects.http_routes.len();
    let mut translator = Translator::new(DEFAULT_CONTROLLER_NAME);
    let first = translator.translate(&objects);
    assert_eq!(translator.attachments_reused_last, 0);
    let key = ObjectRef::new("apps", "by-label");
    let status = |t: &Translation| Arc::clone(&t.status.http_routes[&key]);
    let accepted = |t: &Translation| status(t).parents[0].conditions[0].status.clone();
    assert_eq!(accepted(&first), "True");

    // Nothing changed: every route's attachment and its very status allocation are reused.
    let again = translator.translate(&objects);
    assert_eq!(translator.attachments_reused_last, routes);
    assert!(Arc::ptr_eq(&status(&first), &status(&again)));

    // The route's Namespace loses the label its listener selects: it attaches again, and
    // no longer to that listener. Routes in other namespaces or on other listeners are
    // reused.
    let namespace = ObjectRef::new("", "apps");
    let labelled = objects
        .get(Kind::Namespace, &namespace)
        .expect("the apps Namespace");
    let unlabelled = edits(&namespace, &labelled)
        .into_iter()
        .next()
        .expect("an edited Namespace");
    objects.insert(namespace.clone(), unlabelled);
    let unselected = translator.translate(&objects);
    assert_eq!(
        unselected.status,
        translate(&objects, DEFAULT_CONTROLLER_NAME).status
    );
    assert_eq!(accepted(&unselected), "False");
    let reused = translator.attachments_reused_last;
    assert!(0 < reused && reused < routes, "{reused} of {routes}");

    // A listener of its Gateway changes: the routes of that Gateway attach again.
    objects.insert(namespace, labelled);
    translator.translate(&objects);
    let gateway = ObjectRef::new("infra", "selective");
    let Some(Object::Gateway(gw)) = objects.get(Kind::Gateway, &gateway) else {
        panic!("the selective Gateway");
    };
    let mut gw = (*gw).clone();
    gw.spec.listeners[0].hostname = Some("elsewhere.example".into());
    objects.insert(gateway, Object::Gateway(Arc::new(gw)));
    let moved = translator.translate(&objects);
    assert_eq!(
        moved.status,
        translate(&objects, DEFAULT_CONTROLLER_NAME).status
    );
    assert_eq!(translator.attachments_reused_last, routes - 1);
}

#[test]
fn a_policy_change_compiles_again_only_the_routes_that_looked_it_up() {
    let base = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: rauta}\nspec: {controllerName: rauta.dev/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: apps}\nspec:\n  gatewayClassName: rauta\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{name: login, matches: [{path: {value: /a}}]}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: b, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{matches: [{path: {value: /b}}], filters: [{type: ExtensionRef, extensionRef: {group: gateway.rauta.dev, kind: RateLimitPolicy, name: named}}]}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: c, namespace: apps}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{matches: [{path: {value: /c}}]}]\n";
    let policy = |name: &str, target: &str, requests: u32| {
        format!(
            "---\napiVersion: gateway.rauta.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  targetRefs: {target}\n  local: {{limits: [{{requests: {requests}, unit: Second}}]}}\n"
        )
    };
    let on_a = |section: &str| {
        format!("[{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: a{section}}}]")
    };
    let mut translator = Translator::new(DEFAULT_CONTROLLER_NAME);
    let mut step = |extra: String, reused: usize| {
        let (objects, problems) = parse_manifests(&format!("{base}{extra}"));
        assert!(problems.is_empty(), "{problems:?}");
        let incremental = translator.translate(&objects);
        let full = translate(&objects, DEFAULT_CONTROLLER_NAME);
        assert_eq!(incremental.gateways, full.gateways, "{extra}");
        assert_eq!(incremental.status, full.status, "{extra}");
        assert_eq!(
            translator.reused_last, reused,
            "routes reused after: {extra}"
        );
    };
    step(String::new(), 0);
    // A policy for route a: a compiled again, b and c reused.
    step(policy("p", &on_a(""), 5), 2);
    step(policy("p", &on_a(""), 6), 2);
    // Now for its login rule only, then a second one for the whole route.
    step(policy("p", &on_a(", sectionName: login"), 6), 2);
    let both = policy("p", &on_a(", sectionName: login"), 6) + &policy("q", &on_a(""), 7);
    step(both.clone(), 2);
    // The policy b's filter names appears, then changes: b compiled again, a and c reused.
    step(both.clone() + &policy("named", "[]", 1), 2);
    step(both.clone() + &policy("named", "[]", 2), 2);
    // A Gateway's policy reaches the proxies in the route table: no route is compiled again.
    let gateway = "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]";
    let all = both + &policy("named", "[]", 2) + &policy("g", gateway, 9);
    step(all, 3);
    // Every policy gone: a and b compiled again.
    step(String::new(), 1);
}
