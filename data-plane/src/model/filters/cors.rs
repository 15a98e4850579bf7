//! The CORS filter: preflight requests are answered by the proxy; other answers to an allowed
//! origin get the CORS response headers (Gateway API HTTPCORSFilter).

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method};
use rauta_common::api::v1::CorsPolicy;

#[derive(Debug)]
enum OriginPattern {
    Any,
    Exact(String),
    /// "https://*.bar.com:8443" -> ("https", ".bar.com", Some("8443")); without a port the
    /// origin must have none either.
    Wildcard(String, String, Option<String>),
}

#[derive(Debug)]
pub struct CorsRt {
    origins: Vec<OriginPattern>,
    any_method: bool,
    methods: Option<HeaderValue>,
    any_header: bool,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// "host:port" -> ("host", Some("port")); a host without a numeric port is returned whole.
fn split_port(hostport: &str) -> (&str, Option<&str>) {
    match hostport.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (hostport, None),
    }
}

/// Why a CORS policy is invalid.
#[derive(Debug, thiserror::Error)]
pub enum CorsError {
    #[error("invalid CORS origin {0:?}")]
    Origin(String),
    /// A list of methods or headers that is not a valid field value; the list as written.
    #[error("invalid CORS list {0}")]
    List(String),
}

fn joined(items: &[String]) -> Result<Option<HeaderValue>, CorsError> {
    let items: Vec<&str> = items
        .iter()
        .map(String::as_str)
        .filter(|i| *i != "*")
        .collect();
    if items.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&items.join(", "))
        .map(Some)
        .map_err(|_| CorsError::List(format!("{items:?}")))
}

impl CorsRt {
    pub fn build(p: &CorsPolicy) -> Result<CorsRt, CorsError> {
        let origins = p
            .allow_origins
            .iter()
            .map(|o| {
                let o = o.to_ascii_lowercase();
                if o == "*" {
                    return Ok(OriginPattern::Any);
                }
                let (scheme, host) = o
                    .split_once("://")
                    .ok_or_else(|| CorsError::Origin(o.clone()))?;
                let (host, port) = split_port(host);
                Ok(match host.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => OriginPattern::Wildcard(
                        scheme.to_owned(),
                        suffix.to_owned(),
                        port.map(str::to_owned),
                    ),
                    Some(_) => return Err(CorsError::Origin(o.clone())),
                    None => OriginPattern::Exact(o.clone()),
                })
            })
            .collect::<Result<_, CorsError>>()?;
        Ok(CorsRt {
            origins,
            any_method: p.allow_methods.iter().any(|m| m == "*"),
            methods: joined(&p.allow_methods)?,
            any_header: p.allow_headers.iter().any(|h| h == "*"),
            headers: joined(&p.allow_headers)?,
            // "*" exposes everything, but only without credentials (Fetch standard).
            expose: if p.expose_headers.iter().any(|h| h == "*") && !p.allow_credentials {
                Some(HeaderValue::from_static("*"))
            } else {
                joined(&p.expose_headers)?
            },
            credentials: p.allow_credentials,
            max_age: (p.max_age_seconds > 0).then(|| HeaderValue::from(p.max_age_seconds)),
        })
    }

    fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|p| match p {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => *o == origin,
            OriginPattern::Wildcard(scheme, suffix, want_port) => {
                origin.split_once("://").is_some_and(|(s, rest)| {
                    let (host, port) = split_port(rest);
                    s == scheme
                        && host.len() > suffix.len()
                        && host.ends_with(suffix.as_str())
                        && port == want_port.as_deref()
                })
            }
        })
    }

    /// Whether a request is a CORS preflight (answered by the proxy).
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(ORIGIN)
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Headers of a preflight answer; empty when the origin is not allowed.
    pub fn preflight_headers(&self, request: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        let Some(origin) = request
            .get(ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| self.allows(o)))
        else {
            return out;
        };
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(VARY, HeaderValue::from_static("Origin"));
        let methods = if self.any_method {
            request.get(ACCESS_CONTROL_REQUEST_METHOD).cloned()
        } else {
            self.methods.clone()
        };
        if let Some(m) = methods {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, m);
        }
        let headers = if self.any_header {
            request.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned()
        } else {
            self.headers.clone()
        };
        if let Some(h) = headers {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, h);
        }
        self.common(&mut out);
        if let Some(age) = &self.max_age {
            out.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        out
    }

    /// Adds CORS headers to an ordinary answer for an allowed origin.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        let Some(origin) = origin.filter(|o| o.to_str().is_ok_and(|o| self.allows(o))) else {
            return;
        };
        response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        response.append(VARY, HeaderValue::from_static("Origin"));
        self.common(response);
    }

    fn common(&self, out: &mut HeaderMap) {
        if self.credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsRt {
        CorsRt::build(&CorsPolicy {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["*".into()],
            expose_headers: vec!["x-e".into()],
            allow_credentials: credentials,
            max_age_seconds: 60,
        })
        .unwrap()
    }

    #[test]
    fn origins_match_exactly_or_by_host_wildcard() {
        let p = policy(&["https://www.foo.com", "https://*.bar.com"], false);
        assert!(p.allows("https://www.foo.com"));
        assert!(p.allows("https://www.bar.com") && p.allows("https://a.b.bar.com"));
        assert!(
            !p.allows("https://x.bar.com:8443"),
            "a pattern without port matches only origins without port"
        );
        let with_port = policy(&["https://*.bar.com:8443"], false);
        assert!(
            with_port.allows("https://x.bar.com:8443") && !with_port.allows("https://x.bar.com")
        );
        assert!(
            !p.allows("https://foobar.com")
                && !p.allows("http://www.bar.com")
                && !p.allows("https://bar.com")
        );
        assert!(policy(&["*"], false).allows("https://anything:1"));
        assert!(
            CorsRt::build(&CorsPolicy {
                allow_origins: vec!["nope".into()],
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn preflight_echoes_origin_and_requested_headers() {
        let p = policy(&["https://*.bar.com"], true);
        let mut req = HeaderMap::new();
        req.insert(ORIGIN, HeaderValue::from_static("https://www.bar.com"));
        req.insert(
            ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        req.insert(
            ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("x-a, x-b"),
        );
        let h = p.preflight_headers(&req);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://www.bar.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, OPTIONS");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "x-a, x-b");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "60");
        req.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(p.preflight_headers(&req).is_empty());
    }
}
