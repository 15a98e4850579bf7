//! URLRewrite: a new host, a new path or a new path prefix, before the request goes upstream.

use http::HeaderValue;
use rauta_common::api::v1::{PathModifier, UrlRewrite, path_modifier};

/// Why a URL rewrite (or a redirect's path) is invalid.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("path {0:?} does not start with '/'")]
    RelativePath(String),
    #[error("invalid rewrite hostname {0:?}")]
    Hostname(String),
}

/// A new path.
#[derive(Debug)]
pub enum PathRewrite {
    Full(Box<str>),
    /// Replaces the matched PathPrefix.
    Prefix(Box<str>),
}

impl PathRewrite {
    pub fn build(m: &PathModifier) -> Result<Option<PathRewrite>, RewriteError> {
        match &m.kind {
            None => Ok(None),
            Some(path_modifier::Kind::ReplaceFullPath(p))
            | Some(path_modifier::Kind::ReplacePrefixMatch(p))
                if !p.is_empty() && !p.starts_with('/') =>
            {
                Err(RewriteError::RelativePath(p.clone()))
            }
            Some(path_modifier::Kind::ReplaceFullPath(p)) => {
                Ok(Some(PathRewrite::Full(p.as_str().into())))
            }
            Some(path_modifier::Kind::ReplacePrefixMatch(p)) => {
                Ok(Some(PathRewrite::Prefix(p.as_str().into())))
            }
        }
    }

    /// The rewritten path; `matched_prefix` is the rule's PathPrefix without trailing slash.
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            PathRewrite::Full(p) => p.to_string(),
            PathRewrite::Prefix(replacement) => {
                let prefix = matched_prefix.unwrap_or("");
                // The prefix matched at a segment boundary, so the rest is empty or starts with '/'.
                let rest = path.get(prefix.len()..).unwrap_or("");
                let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
                if joined.is_empty() {
                    "/".to_owned()
                } else {
                    joined
                }
            }
        }
    }
}

/// URLRewrite at run time.
#[derive(Debug, Default)]
pub struct Rewrite {
    pub host: Option<HeaderValue>,
    pub path: Option<PathRewrite>,
}

impl Rewrite {
    pub fn build(r: &UrlRewrite) -> Result<Rewrite, RewriteError> {
        let host = if r.hostname.is_empty() {
            None
        } else {
            Some(
                HeaderValue::from_str(&r.hostname)
                    .map_err(|_| RewriteError::Hostname(r.hostname.clone()))?,
            )
        };
        let path = match &r.path {
            Some(p) => PathRewrite::build(p)?,
            None => None,
        };
        Ok(Rewrite { host, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement_follows_the_spec_examples() {
        let r = |repl: &str, prefix: &str, path: &str| {
            PathRewrite::Prefix(repl.into()).apply(path, Some(prefix))
        };
        assert_eq!(r("/xyz", "/foo", "/foo/bar"), "/xyz/bar");
        assert_eq!(r("/xyz/", "/foo", "/foo/bar"), "/xyz/bar");
        assert_eq!(r("/", "/foo", "/foo/bar"), "/bar");
        assert_eq!(r("/", "/foo", "/foo"), "/");
        assert_eq!(r("/xyz", "/foo", "/foo"), "/xyz");
        assert_eq!(r("/xyz", "", "/a"), "/xyz/a");
    }
}
