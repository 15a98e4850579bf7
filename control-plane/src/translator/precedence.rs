//! Gateway API precedence of one route match among all matches on a host, and the bytes
//! that carry it to the proxies (`RankedRule.precedence`), which sort the same way.

use std::cmp::Reverse;

use gateway_api::experimental::httproutes::HttpRouteRulesMatches;
use rauta_common::api::v1::{PathMatchKind, RouteMatch};

use crate::objects::ObjectRef;

/// Precedence of one match among all matches of all routes on a host (spec: HTTPRouteRule).
/// Smaller sorts first and wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    pub(super) path_kind: u8,
    path_len: Reverse<usize>,
    has_method: Reverse<bool>,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    created: Option<k8s_openapi::jiff::Timestamp>,
    route: ObjectRef,
    rule: usize,
    matched: usize,
}

impl Precedence {
    /// The precedence of match `matched` of rule `rule` of route `route`.
    pub(super) fn of(
        m: &HttpRouteRulesMatches,
        compiled: &RouteMatch,
        created: Option<k8s_openapi::jiff::Timestamp>,
        route: &ObjectRef,
        rule: usize,
        matched: usize,
    ) -> Precedence {
        let path = compiled
            .path
            .as_ref()
            .map_or(("", PathMatchKind::Prefix), |p| {
                (p.value.as_str(), p.kind())
            });
        Precedence {
            // Exact, then RegularExpression, then PathPrefix (the spec leaves regular
            // expressions to implementations; Envoy Gateway orders them so too, which keeps
            // a PathPrefix "/" from shadowing every pattern).
            path_kind: match path.1 {
                PathMatchKind::Exact => 0,
                PathMatchKind::Regex => 1,
                _ => 2,
            },
            path_len: Reverse(path.0.len()),
            has_method: Reverse(m.method.is_some()),
            headers: Reverse(m.headers.as_ref().map_or(0, Vec::len)),
            query_params: Reverse(m.query_params.as_ref().map_or(0, Vec::len)),
            created,
            route: route.clone(),
            rule,
            matched,
        }
    }
}

impl Precedence {
    /// The precedence as bytes that sort as it does (`RankedRule.precedence`): fixed-width
    /// big-endian numbers, "larger first" fields inverted, and names ended by a 0 byte, which
    /// no Kubernetes name contains.
    pub fn key(&self) -> Vec<u8> {
        let inverted = |n: usize| u32::MAX - u32::try_from(n).unwrap_or(u32::MAX);
        let mut key = Vec::with_capacity(48 + self.route.namespace.len() + self.route.name.len());
        key.push(self.path_kind);
        key.extend_from_slice(&inverted(self.path_len.0).to_be_bytes());
        key.push(u8::from(!self.has_method.0));
        key.extend_from_slice(&inverted(self.headers.0).to_be_bytes());
        key.extend_from_slice(&inverted(self.query_params.0).to_be_bytes());
        match self.created {
            // `None` sorts first, as in the derived order.
            None => key.push(0),
            Some(t) => {
                key.push(1);
                // Nanoseconds since the epoch (negative before 1970) with the sign bit
                // flipped: two's complement then sorts as unsigned bytes.
                let nanos = (t.as_nanosecond() as u128) ^ (1 << 127);
                key.extend_from_slice(&nanos.to_be_bytes());
            }
        }
        for part in [&self.route.namespace, &self.route.name] {
            key.extend_from_slice(part.as_bytes());
            key.push(0);
        }
        let index = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
        key.extend_from_slice(&index(self.rule));
        key.extend_from_slice(&index(self.matched));
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    /// The bytes the proxies sort by must order exactly as Gateway API precedence does.
    #[test]
    fn precedence_keys_sort_as_precedence_does() {
        let times = [
            None,
            Some(Timestamp::new(-6, -100_000_000).unwrap()),
            Some(Timestamp::new(-5, -100_000_000).unwrap()),
            Some(Timestamp::new(-5, 0).unwrap()),
            Some(Timestamp::new(0, -500_000_000).unwrap()),
            Some(Timestamp::UNIX_EPOCH),
            Some(Timestamp::new(0, 1).unwrap()),
            Some(Timestamp::new(1_700_000_000, 0).unwrap()),
            Some(Timestamp::new(1_700_000_000, 999_999_999).unwrap()),
        ];
        let mut all = Vec::new();
        for path_kind in [0, 1, 2] {
            for path_len in [0, 1, 300] {
                for created in times {
                    for (ns, name) in [("a", "z"), ("ab", "a"), ("b", ""), ("a", "za")] {
                        for (rule, matched) in [(0, 0), (0, 1), (1, 0), (256, 0)] {
                            all.push(Precedence {
                                path_kind,
                                path_len: Reverse(path_len),
                                has_method: Reverse(rule % 2 == 0),
                                headers: Reverse(path_len % 3),
                                query_params: Reverse(matched),
                                created,
                                route: ObjectRef::new(ns, name),
                                rule,
                                matched,
                            });
                        }
                    }
                }
            }
        }
        for a in &all {
            for b in &all {
                assert_eq!(a.key().cmp(&b.key()), a.cmp(b), "{a:?} against {b:?}");
            }
        }
    }
}
