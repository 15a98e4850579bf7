//! Authorization rules (SecurityPolicy `authorization`): allow or deny by client address (with
//! a stated number of trusted X-Forwarded-For hops), verified JWT claims and scopes, method and
//! path prefix; the first rule that matches decides, else the default. Checked after
//! authentication, so claims are the verified token's, never the client's say-so.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use rauta_common::api::v1::Authorization;
use rauta_common::paths;
use serde_json::{Map, Value};

use crate::model::jwt_claims::{ClaimPath, RequiredClaimRt};

/// Most rules one policy may have.
const MAX_RULES: usize = 64;

/// Why an Authorization is invalid.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizationError {
    #[error("authorization: at most {MAX_RULES} rules")]
    Rules,
    #[error("authorization rule {rule}: {problem}")]
    Rule { rule: Box<str>, problem: Box<str> },
}

#[derive(Debug)]
struct RuleRt {
    name: Box<str>,
    allow: bool,
    cidrs: Box<[IpNet]>,
    claims: Box<[RequiredClaimRt]>,
    scopes: Box<[Box<str>]>,
    methods: Box<[Box<str>]>,
    path_prefixes: Box<[Box<str>]>,
}

/// What is known of a request when it is authorized.
pub struct Asking<'r> {
    pub peer: IpAddr,
    pub headers: &'r HeaderMap,
    pub method: &'r str,
    pub path: &'r str,
    /// The verified JWT's claims, if any.
    pub claims: Option<&'r Map<String, Value>>,
}

#[derive(Debug)]
pub struct AuthorizationRt {
    rules: Box<[RuleRt]>,
    default_allow: bool,
    xff_trusted_hops: usize,
    /// The policy, for metrics.
    pub name: Box<str>,
}

impl AuthorizationRt {
    pub fn build(a: &Authorization) -> Result<AuthorizationRt, AuthorizationError> {
        if a.rules.len() > MAX_RULES {
            return Err(AuthorizationError::Rules);
        }
        let rules = a
            .rules
            .iter()
            .map(|r| {
                let problem = |p: String| AuthorizationError::Rule {
                    rule: r.name.as_str().into(),
                    problem: p.into(),
                };
                let cidrs = r
                    .client_cidrs
                    .iter()
                    .map(|c| parse_cidr(c).ok_or_else(|| problem(format!("invalid CIDR {c:?}"))))
                    .collect::<Result<_, _>>()?;
                Ok(RuleRt {
                    name: r.name.as_str().into(),
                    allow: r.allow,
                    cidrs,
                    claims: r
                        .claims
                        .iter()
                        .map(|c| RequiredClaimRt {
                            path: ClaimPath::new(&c.name),
                            values: c.values.iter().map(|v| v.as_str().into()).collect(),
                        })
                        .collect(),
                    scopes: r.scopes.iter().map(|s| s.as_str().into()).collect(),
                    methods: r.methods.iter().map(|m| m.as_str().into()).collect(),
                    path_prefixes: r.path_prefixes.iter().map(|p| p.as_str().into()).collect(),
                })
            })
            .collect::<Result<_, AuthorizationError>>()?;
        Ok(AuthorizationRt {
            rules,
            default_allow: a.default_allow,
            xff_trusted_hops: usize::try_from(a.xff_trusted_hops).unwrap_or(usize::MAX),
            name: a.name.as_str().into(),
        })
    }

    /// Whether the request is allowed, and the name of the rule that decided ("" for the
    /// default).
    pub fn decide(&self, asking: &Asking<'_>) -> (bool, &str) {
        let client = self.client(asking.peer, asking.headers);
        let path = matching_path(asking.path);
        self.rules
            .iter()
            .find(|r| r.matches(client, &path, asking))
            .map_or((self.default_allow, ""), |r| (r.allow, &r.name))
    }

    /// The client's address: the peer, or with trusted hops the address that many places
    /// from the right of X-Forwarded-For (every field of it, in order).
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.xff_trusted_hops == 0 {
            return peer;
        }
        let mut from_right = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.rsplit(','));
        from_right
            .nth(self.xff_trusted_hops - 1)
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or(peer)
    }
}

impl RuleRt {
    fn matches(&self, client: IpAddr, path: &str, asking: &Asking<'_>) -> bool {
        (self.cidrs.is_empty() || self.cidrs.iter().any(|c| c.contains(&client)))
            && (self.methods.is_empty() || self.methods.iter().any(|m| **m == *asking.method))
            && (self.path_prefixes.is_empty() || self.path_prefixes.iter().any(|p| under(path, p)))
            && self.claims_hold(asking.claims)
    }

    fn claims_hold(&self, claims: Option<&Map<String, Value>>) -> bool {
        if self.claims.is_empty() && self.scopes.is_empty() {
            return true;
        }
        let Some(claims) = claims else {
            return false;
        };
        let has_scope = |s: &str| match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(list)), _) => list.split(' ').any(|x| x == s),
            (_, Some(Value::Array(list))) => list.iter().any(|x| x.as_str() == Some(s)),
            _ => false,
        };
        self.claims.iter().all(|c| c.holds(claims)) && self.scopes.iter().all(|s| has_scope(s))
    }
}

/// The path rules compare: the request's (already in normal form, `rauta_common::paths`),
/// with encoded slashes and backslashes read as slashes too, as a backend that decodes them
/// would: a deny rule for `/admin` must catch `/admin%2Fusers`. (An allow rule may then miss
/// a path with an encoded slash in a segment; failing that way is safe.)
fn matching_path(path: &str) -> Cow<'_, str> {
    let encoded_slash = |w: &[u8]| {
        w[0] == b'%'
            && (w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f')
                || w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c'))
    };
    if !path.as_bytes().windows(3).any(encoded_slash) {
        return Cow::Borrowed(path);
    }
    let decoded = path
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%5C", "/")
        .replace("%5c", "/");
    // The request's path was valid (admission checks): decoding slashes keeps it so.
    let normalized = paths::normalized(&decoded).map(Cow::into_owned);
    Cow::Owned(normalized.unwrap_or(decoded))
}

/// Whether `path` is `prefix` or under it, by whole segments.
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A CIDR, or a single address as the range of just it.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use rauta_common::api::v1::{AuthorizationRule, RequiredClaim};
    use serde_json::json;

    use super::*;

    fn policy(hops: u32) -> AuthorizationRt {
        AuthorizationRt::build(&Authorization {
            rules: vec![
                AuthorizationRule {
                    name: "blocked".into(),
                    allow: false,
                    client_cidrs: vec!["192.0.2.0/24".into()],
                    ..Default::default()
                },
                AuthorizationRule {
                    name: "admins".into(),
                    allow: true,
                    claims: vec![RequiredClaim {
                        name: "groups".into(),
                        values: vec!["admin".into()],
                    }],
                    scopes: vec!["write".into()],
                    path_prefixes: vec!["/admin".into()],
                    ..Default::default()
                },
                AuthorizationRule {
                    name: "readers".into(),
                    allow: true,
                    methods: vec!["GET".into()],
                    path_prefixes: vec!["/public/".into()],
                    ..Default::default()
                },
            ],
            default_allow: false,
            xff_trusted_hops: hops,
            name: "apps/authz".into(),
        })
        .unwrap()
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let p = policy(0);
        let headers = HeaderMap::new();
        let admin = json!({"groups": ["dev", "admin"], "scope": "read write"});
        let admin = admin.as_object();
        let ask = |peer: &str, method: &'static str, path: &'static str, claims| Asking {
            peer: peer.parse().unwrap(),
            headers: &headers,
            method,
            path,
            claims,
        };
        assert_eq!(
            p.decide(&ask("10.0.0.1", "GET", "/public", None)),
            (true, "readers")
        );
        assert_eq!(
            p.decide(&ask("10.0.0.1", "GET", "/public/x", None)),
            (true, "readers")
        );
        assert_eq!(
            p.decide(&ask("10.0.0.1", "POST", "/public", None)),
            (false, "")
        );
        assert_eq!(
            p.decide(&ask("10.0.0.1", "GET", "/publicity", None)),
            (false, "")
        );
        assert_eq!(
            p.decide(&ask("192.0.2.9", "GET", "/public", None)),
            (false, "blocked")
        );
        assert_eq!(
            p.decide(&ask("10.0.0.1", "POST", "/admin/x", admin)),
            (true, "admins")
        );
        assert_eq!(
            p.decide(&ask("10.0.0.1", "POST", "/admin", None)),
            (false, "")
        );
        let reader = json!({"groups": ["admin"], "scope": "read"});
        assert_eq!(
            p.decide(&ask("10.0.0.1", "POST", "/admin", reader.as_object())),
            (false, "")
        );
        // An encoded slash is read as one: /public%2F..%2Fadmin is /admin, not under /public.
        assert_eq!(
            p.decide(&ask("10.0.0.1", "GET", "/public%2F..%2Fadmin", None)),
            (false, "")
        );
        assert_eq!(
            p.decide(&ask("10.0.0.1", "GET", "/public%2fx", None)),
            (true, "readers")
        );
    }

    #[test]
    fn the_client_is_read_from_trusted_hops_only() {
        fn ask(headers: &HeaderMap) -> Asking<'_> {
            Asking {
                peer: [10, 9, 9, 9].into(),
                headers,
                method: "GET",
                path: "/public",
                claims: None,
            }
        }
        let p = policy(1);
        let mut headers = HeaderMap::new();
        assert_eq!(p.decide(&ask(&headers)).1, "readers", "no header: the peer");
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.1, 192.0.2.5"),
        );
        assert_eq!(
            p.decide(&ask(&headers)).1,
            "blocked",
            "the rightmost address"
        );
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("192.0.2.5, 10.0.0.1"),
        );
        assert_eq!(
            p.decide(&ask(&headers)).1,
            "readers",
            "spoofed on the left: ignored"
        );
        let two = policy(2);
        assert_eq!(two.decide(&ask(&headers)).1, "blocked");
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(two.decide(&ask(&headers)).1, "readers", "too few: the peer");
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert_eq!(
            parse_cidr("10.1.2.3/8").map(|n| n.to_string()).as_deref(),
            Some("10.0.0.0/8")
        );
    }
}
