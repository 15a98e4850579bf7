//! ExtensionRef filters: objects of RAUTA's own group that a route rule names. A
//! DirectResponse makes the rule answer by itself. A reference to a kind RAUTA does not
//! define, or to an object that does not exist, makes the rule answer 500 and the route's
//! ResolvedRefs False (InvalidKind, BackendNotFound): the spec forbids skipping a custom
//! filter that cannot be resolved, and the route's other rules keep working.

use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{DirectResponse, HeaderValue};

use super::backends::{RefProblem, error_answer};
use super::filters::{ExtensionRef, RuleFilters};
use crate::crds::GROUP;
use crate::crds::direct_response::{self, DirectResponseSpec};
use crate::objects::{ObjectRef, ObjectSet};

/// Headers a DirectResponse may not set: the proxy frames the answer and owns the connection.
const MANAGED_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The action a rule's ExtensionRef filters give it, if any (it replaces forwarding), and the
/// first reference that did not resolve; `Err` when the rule cannot be served as written (the
/// route is then not accepted).
pub fn action(
    objects: &ObjectSet,
    namespace: &str,
    filters: &RuleFilters,
) -> Result<(Option<Action>, Option<RefProblem>), String> {
    let mut direct = None;
    let mut unresolved = None;
    for e in &filters.extensions {
        match resolve(objects, namespace, e) {
            Ok(spec) => {
                if filters.redirect.is_some()
                    || filters.url_rewrite.is_some()
                    || !filters.mirrors.is_empty()
                {
                    return Err(format!(
                        "DirectResponse {}: the rule answers by itself, so RequestRedirect, \
                         URLRewrite and RequestMirror cannot apply",
                        e.name
                    ));
                }
                if direct.is_some() {
                    return Err("a rule may name one DirectResponse".into());
                }
                direct = Some(direct_response(&e.name, &spec)?);
            }
            Err(problem) => {
                unresolved.get_or_insert(problem);
            }
        }
    }
    // An unresolved reference wins: the rule answers 500.
    Ok(match unresolved {
        Some(problem) => (Some(error_answer()), Some(problem)),
        None => (direct.map(Action::DirectResponse), None),
    })
}

/// The object an ExtensionRef names, or why it cannot be used.
fn resolve(
    objects: &ObjectSet,
    namespace: &str,
    e: &ExtensionRef,
) -> Result<DirectResponseSpec, RefProblem> {
    if e.group != GROUP || e.kind != "DirectResponse" {
        return Err(RefProblem {
            reason: "InvalidKind",
            message: format!(
                "ExtensionRef {}/{} is not a kind RAUTA defines (gateway.rauta.dev/DirectResponse)",
                e.group, e.kind
            ),
        });
    }
    let key = ObjectRef::new(namespace, e.name.as_str());
    match objects.direct_responses.get(&key) {
        Some(object) => Ok(object.spec.clone()),
        None => Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("DirectResponse {key} not found"),
        }),
    }
}

/// A DirectResponse as the proxy serves it; `Err` says what is wrong with the object.
fn direct_response(name: &str, spec: &DirectResponseSpec) -> Result<DirectResponse, String> {
    let problem = |what: String| format!("DirectResponse {name}: {what}");
    let status = u32::try_from(spec.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .ok_or_else(|| problem(format!("status {} is not 200 to 599", spec.status)))?;
    if spec.body.len() > direct_response::MAX_BODY_BYTES {
        return Err(problem(format!(
            "body is over {} bytes",
            direct_response::MAX_BODY_BYTES
        )));
    }
    if spec.headers.len() > direct_response::MAX_HEADERS {
        return Err(problem(format!(
            "more than {} headers",
            direct_response::MAX_HEADERS
        )));
    }
    let content_type = spec.content_type.iter().map(|value| HeaderValue {
        name: "content-type".into(),
        value: value.clone(),
    });
    if let Some(h) = spec
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
    {
        return Err(problem(format!(
            "header {:?}: set contentType instead",
            h.name
        )));
    }
    let others = spec.headers.iter().map(|h| HeaderValue {
        name: h.name.to_ascii_lowercase(),
        value: h.value.clone(),
    });
    let headers: Vec<HeaderValue> = content_type.chain(others).collect();
    for h in &headers {
        let token = !h.name.is_empty()
            && h.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let value = h
            .value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !token || !value || MANAGED_HEADERS.contains(&h.name.as_str()) {
            return Err(problem(format!("header {:?} cannot be set", h.name)));
        }
    }
    Ok(DirectResponse {
        status,
        body: spec.body.clone(),
        headers,
    })
}
