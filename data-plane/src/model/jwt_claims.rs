//! What a JWT provider checks in a token's claims besides its signature (issuer, audience,
//! times, required claims), and the claims it copies into request headers. The checks are
//! ours rather than the JWT library's: a claim of the wrong JSON type (say, `exp` as a
//! string) must fail the token, not be skipped.

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// Why a verified token's claims are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimsFailure {
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Required,
}

/// A claim's path: its name split at dots ("org.team" is `team` inside `org`).
#[derive(Debug, Clone)]
pub struct ClaimPath(Box<[Box<str>]>);

impl ClaimPath {
    pub fn new(name: &str) -> ClaimPath {
        ClaimPath(name.split('.').map(Into::into).collect())
    }

    fn is_scope(&self) -> bool {
        matches!(&*self.0, [one] if &**one == "scope")
    }

    /// The claim: a top-level claim of the whole name first (names such as
    /// `https://example.com/roles` have dots of their own), else the nested one.
    pub fn get<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c Value> {
        if self.0.len() > 1
            && let Some(v) = claims.get(&self.0.join("."))
        {
            return Some(v);
        }
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(&**first)?;
        for part in rest {
            value = value.as_object()?.get(&**part)?;
        }
        Some(value)
    }
}

/// A claim that must be there, with one of `values` (any value when empty).
#[derive(Debug, Clone)]
pub struct RequiredClaimRt {
    pub path: ClaimPath,
    pub values: Box<[Box<str>]>,
}

impl RequiredClaimRt {
    pub fn holds(&self, claims: &Map<String, Value>) -> bool {
        let Some(value) = self.path.get(claims) else {
            return false;
        };
        if self.values.is_empty() {
            return true;
        }
        let wanted = |s: &str| self.values.iter().any(|v| **v == *s);
        match value {
            // `scope` is a space-separated list (RFC 8693): it holds each of its words. Other
            // strings are compared whole ("x admin" is not "admin").
            Value::String(s) if self.path.is_scope() => s.split(' ').any(wanted),
            Value::String(s) => wanted(s),
            Value::Array(items) => items.iter().filter_map(Value::as_str).any(wanted),
            Value::Bool(b) => wanted(if *b { "true" } else { "false" }),
            Value::Number(n) => wanted(&n.to_string()),
            Value::Null | Value::Object(_) => false,
        }
    }
}

/// The claim checks of one provider.
#[derive(Debug, Clone, Default)]
pub struct ClaimChecks {
    pub issuer: Option<Box<str>>,
    pub audiences: Box<[Box<str>]>,
    pub required: Box<[RequiredClaimRt]>,
    /// Clock skew allowed, in seconds.
    pub skew: f64,
}

impl ClaimChecks {
    /// Checks `claims` at `now` (seconds since the Unix epoch); on success, until when the
    /// token is good (its `exp`, or `f64::INFINITY`).
    pub fn check(&self, claims: &Map<String, Value>, now: f64) -> Result<f64, ClaimsFailure> {
        let time = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|t| t.is_finite())
                .map(Some)
                .ok_or(ClaimsFailure::Required),
        };
        let exp = time("exp")?;
        if exp.is_some_and(|exp| exp + self.skew <= now) {
            return Err(ClaimsFailure::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| nbf - self.skew > now) {
            return Err(ClaimsFailure::NotYetValid);
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(&**issuer)
        {
            return Err(ClaimsFailure::Issuer);
        }
        if !self.audiences.is_empty() {
            let ours = |a: &str| self.audiences.iter().any(|x| **x == *a);
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => ours(a),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(ours),
                _ => false,
            };
            if !ok {
                return Err(ClaimsFailure::Audience);
            }
        }
        if !self.required.iter().all(|r| r.holds(claims)) {
            return Err(ClaimsFailure::Required);
        }
        Ok(exp.map_or(f64::INFINITY, |e| e + self.skew))
    }
}

/// A claim copied into a request header.
#[derive(Debug, Clone)]
pub struct ClaimHeader {
    pub path: ClaimPath,
    pub header: HeaderName,
}

impl ClaimHeader {
    /// The header's value for these claims: strings as they are, numbers and booleans as
    /// JSON, arrays of strings joined with ","; `None` when the claim is missing, of another
    /// type, or not a valid header value.
    pub fn value(&self, claims: &Map<String, Value>) -> Option<HeaderValue> {
        let text = match self.path.get(claims)? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(items) => {
                let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                strings?.join(",")
            }
            Value::Null | Value::Object(_) => return None,
        };
        HeaderValue::from_str(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn times_issuer_audience_and_required_claims_are_checked() {
        let checks = ClaimChecks {
            issuer: Some("https://issuer".into()),
            audiences: vec!["api".into()].into(),
            required: vec![RequiredClaimRt {
                path: ClaimPath::new("scope"),
                values: vec!["read".into()].into(),
            }]
            .into(),
            skew: 30.0,
        };
        let ok = json!({"iss": "https://issuer", "aud": ["other", "api"], "exp": 1000, "scope": "write read"});
        assert_eq!(checks.check(&claims(ok.clone()), 1000.0), Ok(1030.0));
        assert_eq!(
            checks.check(&claims(ok), 1030.0),
            Err(ClaimsFailure::Expired)
        );
        let cases = [
            (
                json!({"iss": "https://issuer", "aud": "api", "exp": "never", "scope": "read"}),
                ClaimsFailure::Required,
            ),
            (
                json!({"iss": "https://issuer", "aud": "api", "nbf": 2000, "scope": "read"}),
                ClaimsFailure::NotYetValid,
            ),
            (
                json!({"iss": "https://other", "aud": "api", "scope": "read"}),
                ClaimsFailure::Issuer,
            ),
            (
                json!({"aud": "api", "scope": "read"}),
                ClaimsFailure::Issuer,
            ),
            (
                json!({"iss": "https://issuer", "aud": "web", "scope": "read"}),
                ClaimsFailure::Audience,
            ),
            (
                json!({"iss": "https://issuer", "aud": 7, "scope": "read"}),
                ClaimsFailure::Audience,
            ),
            (
                json!({"iss": "https://issuer", "aud": "api", "scope": "write"}),
                ClaimsFailure::Required,
            ),
            (
                json!({"iss": "https://issuer", "aud": "api"}),
                ClaimsFailure::Required,
            ),
        ];
        for (c, failure) in cases {
            assert_eq!(
                checks.check(&claims(c.clone()), 1000.0),
                Err(failure),
                "{c}"
            );
        }
        let name = RequiredClaimRt {
            path: ClaimPath::new("role"),
            values: vec!["admin".into()].into(),
        };
        assert!(
            !name.holds(&claims(json!({"role": "x admin"}))),
            "words only in scope"
        );
        assert!(name.holds(&claims(json!({"role": "admin"}))));
        let dotted = ClaimPath::new("https://x.example/roles");
        let c = claims(json!({"https://x.example/roles": ["a"]}));
        assert_eq!(dotted.get(&c), Some(&json!(["a"])));
        let no_exp = json!({"iss": "https://issuer", "aud": "api", "scope": ["read"]});
        assert_eq!(checks.check(&claims(no_exp), 1000.0), Ok(f64::INFINITY));
    }

    #[test]
    fn claims_render_as_header_values() {
        let c = claims(
            json!({"sub": "alice", "n": 7, "admin": true, "groups": ["a", "b"], "org": {"team": "core"}, "bad": "x\ny", "obj": {}}),
        );
        let header = |claim: &str| {
            ClaimHeader {
                path: ClaimPath::new(claim),
                header: HeaderName::from_static("x-h"),
            }
            .value(&c)
            .map(|v| v.to_str().unwrap_or("").to_owned())
        };
        assert_eq!(header("sub").as_deref(), Some("alice"));
        assert_eq!(header("n").as_deref(), Some("7"));
        assert_eq!(header("admin").as_deref(), Some("true"));
        assert_eq!(header("groups").as_deref(), Some("a,b"));
        assert_eq!(header("org.team").as_deref(), Some("core"));
        assert_eq!(header("bad"), None);
        assert_eq!(header("obj"), None);
        assert_eq!(header("missing"), None);
    }
}
