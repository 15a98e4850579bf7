//! Rule matches: path, header, query parameter and method conditions, validated when the
//! snapshot is built so that matching a request cannot fail.

use http::{HeaderName, HeaderValue, Method};
use rauta_common::api::v1::{PathMatchKind, RouteMatch, ValueMatchKind};
use regex::Regex;

use super::request::RequestView;

/// Why a match in a snapshot is invalid (the text the NACK carries).
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("match without path")]
    NoPath,
    #[error("path {0:?} does not start with '/'")]
    RelativePath(String),
    #[error("unsupported path match kind {0}")]
    PathKind(i32),
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    #[error("invalid header value for {0:?}")]
    HeaderValue(String),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid regular expression {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
}

#[derive(Debug)]
enum PathRt {
    Exact(Box<str>),
    /// Without a trailing slash; matches itself and anything below it.
    Prefix(Box<str>),
    /// Anchored at both ends.
    Regex(Regex),
}

impl PathRt {
    #[inline]
    fn matches(&self, path: &str) -> bool {
        match self {
            PathRt::Exact(p) => path == &**p,
            PathRt::Prefix(p) => {
                p.is_empty()
                    || (path.starts_with(&**p)
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathRt::Regex(re) => re.is_match(path),
        }
    }
}

/// A header or query parameter value condition.
#[derive(Debug)]
enum ValueRt<T> {
    Exact(T),
    /// Anchored at both ends; a header value that is not UTF-8 never matches.
    Regex(Regex),
}

impl ValueRt<HeaderValue> {
    #[inline]
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueRt::Exact(v) => v.as_bytes() == value,
            // Visible ASCII only, as HeaderValue::to_str.
            ValueRt::Regex(re) => value
                .iter()
                .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
                .then(|| std::str::from_utf8(value).ok())
                .flatten()
                .is_some_and(|v| re.is_match(v)),
        }
    }
}

impl ValueRt<Box<str>> {
    #[inline]
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueRt::Exact(v) => **v == *value,
            ValueRt::Regex(re) => re.is_match(value),
        }
    }
}

#[derive(Debug)]
pub struct MatchRt {
    path: PathRt,
    headers: Vec<(HeaderName, ValueRt<HeaderValue>)>,
    query: Vec<(Box<str>, ValueRt<Box<str>>)>,
    method: Option<Method>,
}

/// The first value of a query parameter, undecoded.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

impl MatchRt {
    #[inline]
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path)
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.as_str() == req.method)
            && self
                .headers
                .iter()
                .all(|(name, value)| req.headers.get(name).is_some_and(|v| value.matches(v)))
            && self.query.iter().all(|(name, value)| {
                req.query
                    .and_then(|q| query_param(q, name))
                    .is_some_and(|v| value.matches(v))
            })
    }

    /// The path of a match that is an Exact path and nothing else but perhaps a method: its
    /// outcome depends on the method and the path alone.
    pub fn exact_path_only(&self) -> Option<(&str, Option<&Method>)> {
        match &self.path {
            PathRt::Exact(p) if self.headers.is_empty() && self.query.is_empty() => {
                Some((p, self.method.as_ref()))
            }
            _ => None,
        }
    }

    /// The PathPrefix this match matched on (without trailing slash), for prefix rewrites.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathRt::Prefix(p) => Some(p),
            PathRt::Exact(_) | PathRt::Regex(_) => None,
        }
    }
}

/// A regular expression that must match the whole value.
pub(crate) fn regex(pattern: &str) -> Result<Regex, MatchError> {
    rauta_common::matching::full_match(pattern).map_err(|e| MatchError::Regex {
        pattern: pattern.to_owned(),
        reason: e.to_string(),
    })
}

impl MatchRt {
    /// Validates one match of a rule.
    pub fn build(m: &RouteMatch) -> Result<MatchRt, MatchError> {
        let path = m.path.as_ref().ok_or(MatchError::NoPath)?;
        let kind = PathMatchKind::try_from(path.kind);
        if kind != Ok(PathMatchKind::Regex) && !path.value.starts_with('/') {
            return Err(MatchError::RelativePath(path.value.clone()));
        }
        let path = match kind {
            Ok(PathMatchKind::Exact) => PathRt::Exact(path.value.as_str().into()),
            Ok(PathMatchKind::Prefix) => PathRt::Prefix(path.value.trim_end_matches('/').into()),
            Ok(PathMatchKind::Regex) => PathRt::Regex(regex(&path.value)?),
            _ => return Err(MatchError::PathKind(path.kind)),
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for h in &m.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| MatchError::HeaderName(h.name.clone()))?;
            let value = match h.kind() {
                ValueMatchKind::Exact => ValueRt::Exact(
                    HeaderValue::from_bytes(h.value.as_bytes())
                        .map_err(|_| MatchError::HeaderValue(h.name.clone()))?,
                ),
                ValueMatchKind::Regex => ValueRt::Regex(regex(&h.value)?),
            };
            headers.push((name, value));
        }
        let mut query = Vec::with_capacity(m.query_params.len());
        for q in &m.query_params {
            let value = match q.kind() {
                ValueMatchKind::Exact => ValueRt::Exact(q.value.as_str().into()),
                ValueMatchKind::Regex => ValueRt::Regex(regex(&q.value)?),
            };
            query.push((q.name.as_str().into(), value));
        }
        let method = match m.method.as_str() {
            "" => None,
            name => Some(
                Method::from_bytes(name.as_bytes())
                    .map_err(|_| MatchError::Method(name.to_owned()))?,
            ),
        };
        Ok(MatchRt {
            path,
            headers,
            query,
            method,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_at_segment_boundaries() {
        let p = PathRt::Prefix("/foo".into());
        assert!(p.matches("/foo"));
        assert!(p.matches("/foo/"));
        assert!(p.matches("/foo/bar"));
        assert!(!p.matches("/foobar"));
        assert!(!p.matches("/"));
        let root = PathRt::Prefix("".into());
        assert!(root.matches("/") && root.matches("/anything"));
        let exact = PathRt::Exact("/foo".into());
        assert!(exact.matches("/foo") && !exact.matches("/foo/"));
    }
}
