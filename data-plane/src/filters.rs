//! Runtime forms of route filters: header changes, URL rewrites and redirects, validated when
//! a snapshot is built so that applying them per request cannot fail.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rauta_common::api::v1::{HeaderModifier, PathModifier, Redirect, UrlRewrite, path_modifier};

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    let v = HeaderValue::from_bytes(value.as_bytes())
        .map_err(|_| format!("invalid value for header {name:?}"))?;
    Ok((n, v))
}

/// Set, add, then remove headers.
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn build(m: &HeaderModifier) -> Result<HeaderOps, String> {
        Ok(HeaderOps {
            set: m
                .set
                .iter()
                .map(|h| header(&h.name, &h.value))
                .collect::<Result<_, _>>()?,
            add: m
                .add
                .iter()
                .map(|h| header(&h.name, &h.value))
                .collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("invalid header name {n:?}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether any change names one of these (lower-case) headers.
    pub fn touches(&self, names: &[&str]) -> bool {
        self.set
            .iter()
            .chain(&self.add)
            .map(|(n, _)| n)
            .chain(&self.remove)
            .any(|n| names.contains(&n.as_str()))
    }

    /// Whether the changes replace or remove every field called `name` (ASCII case-insensitive).
    fn overrides(&self, name: &str) -> bool {
        self.set
            .iter()
            .map(|(n, _)| n)
            .chain(&self.remove)
            .any(|n| n.as_str().eq_ignore_ascii_case(name))
    }

    /// For raw header fields (the HTTP/1.1 fast path): the fields a sequence of changes
    /// leaves, in order, as applying them one after the other to a map would.
    pub fn added_by<'o>(ops: &[&'o HeaderOps]) -> Vec<(&'o HeaderName, &'o HeaderValue)> {
        let mut added: Vec<(&HeaderName, &HeaderValue)> = Vec::new();
        for op in ops {
            for (n, v) in &op.set {
                added.retain(|(a, _)| *a != n);
                added.push((n, v));
            }
            for (n, v) in &op.add {
                added.push((n, v));
            }
            for n in &op.remove {
                added.retain(|(a, _)| *a != n);
            }
        }
        added
    }

    /// For raw header fields: whether a message's own field `name` survives the changes.
    pub fn keeps(ops: &[&HeaderOps], name: &str) -> bool {
        !ops.iter().any(|op| op.overrides(name))
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n, v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n, v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

/// A new path.
#[derive(Debug)]
pub enum PathRewrite {
    Full(Box<str>),
    /// Replaces the matched PathPrefix.
    Prefix(Box<str>),
}

impl PathRewrite {
    pub fn build(m: &PathModifier) -> Result<Option<PathRewrite>, String> {
        match &m.kind {
            None => Ok(None),
            Some(path_modifier::Kind::ReplaceFullPath(p))
            | Some(path_modifier::Kind::ReplacePrefixMatch(p))
                if !p.is_empty() && !p.starts_with('/') =>
            {
                Err(format!("path {p:?} does not start with '/'"))
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
    pub fn build(r: &UrlRewrite) -> Result<Rewrite, String> {
        let host = if r.hostname.is_empty() {
            None
        } else {
            Some(
                HeaderValue::from_str(&r.hostname)
                    .map_err(|_| format!("invalid rewrite hostname {:?}", r.hostname))?,
            )
        };
        let path = match &r.path {
            Some(p) => PathRewrite::build(p)?,
            None => None,
        };
        Ok(Rewrite { host, path })
    }
}

/// RequestRedirect at run time.
#[derive(Debug)]
pub struct RedirectRt {
    scheme: Option<Box<str>>,
    host: Option<Box<str>>,
    port: Option<u16>,
    path: Option<PathRewrite>,
    pub status: StatusCode,
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl RedirectRt {
    pub fn build(r: &Redirect) -> Result<RedirectRt, String> {
        let status = match r.status_code {
            0 => StatusCode::FOUND,
            301 | 302 | 303 | 307 | 308 => {
                StatusCode::from_u16(r.status_code as u16).map_err(|e| e.to_string())?
            }
            other => return Err(format!("redirect status {other} is not a redirect")),
        };
        let scheme = match r.scheme.as_str() {
            "" => None,
            s @ ("http" | "https") => Some(s.into()),
            other => return Err(format!("redirect scheme {other:?} is not supported")),
        };
        let port = match r.port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| format!("redirect port {p} out of range"))?),
        };
        let path = match &r.path {
            Some(p) => PathRewrite::build(p)?,
            None => None,
        };
        let host = (!r.hostname.is_empty()).then(|| r.hostname.as_str().into());
        Ok(RedirectRt {
            scheme,
            host,
            port,
            path,
            status,
        })
    }

    /// The Location for a request (Gateway API HTTPRequestRedirectFilter rules).
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
        listener_port: u16,
        matched_prefix: Option<&str>,
    ) -> String {
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.host.as_deref().unwrap_or(host);
        let port = self.port.unwrap_or_else(|| match &self.scheme {
            Some(s) => well_known_port(s).unwrap_or(listener_port),
            None => listener_port,
        });
        let path = match &self.path {
            Some(p) => p.apply(path, matched_prefix),
            None => path.to_owned(),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let authority = if well_known_port(scheme_out) == Some(port) {
            host
        } else {
            format!("{host}:{port}")
        };
        match query {
            Some(q) => format!("{scheme_out}://{authority}{path}?{q}"),
            None => format!("{scheme_out}://{authority}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_fields_change_as_a_map_would() {
        let ops = |set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]| {
            let pair = |(n, v): &(&str, &str)| rauta_common::api::v1::HeaderValue {
                name: (*n).into(),
                value: (*v).into(),
            };
            HeaderOps::build(&HeaderModifier {
                set: set.iter().map(pair).collect(),
                add: add.iter().map(pair).collect(),
                remove: remove.iter().map(|r| (*r).into()).collect(),
            })
            .unwrap()
        };
        let rule = ops(&[("x-a", "1")], &[("x-b", "2"), ("x-gone", "0")], &["x-c"]);
        let backend = ops(&[("x-b", "3")], &[("x-a", "4")], &["x-gone"]);
        let raw: Vec<(String, String)> =
            [("X-A", "client"), ("X-C", "c"), ("X-D", "d"), ("X-B", "b")]
                .into_iter()
                .filter(|(n, _)| HeaderOps::keeps(&[&rule, &backend], n))
                .chain(
                    HeaderOps::added_by(&[&rule, &backend])
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.to_str().unwrap())),
                )
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
                .collect();
        let mut map = HeaderMap::new();
        for (n, v) in [("x-a", "client"), ("x-c", "c"), ("x-d", "d"), ("x-b", "b")] {
            map.append(n, HeaderValue::from_static(v));
        }
        rule.apply(&mut map);
        backend.apply(&mut map);
        let mut from_map: Vec<(String, String)> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let mut raw = raw;
        raw.sort();
        from_map.sort();
        assert_eq!(raw, from_map);
    }

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

    #[test]
    fn redirect_location_derives_scheme_host_and_port() {
        let redirect = |scheme: &str, host: &str, port: u32| {
            RedirectRt::build(&Redirect {
                scheme: scheme.into(),
                hostname: host.into(),
                port,
                path: None,
                status_code: 0,
            })
            .unwrap()
        };
        assert_eq!(
            redirect("", "", 0).location("http", "a.com", "/p", None, 80, None),
            "http://a.com/p"
        );
        assert_eq!(
            redirect("", "", 0).location("http", "a.com", "/p", Some("x=1"), 8080, None),
            "http://a.com:8080/p?x=1"
        );
        assert_eq!(
            redirect("https", "", 0).location("http", "a.com", "/p", None, 8080, None),
            "https://a.com/p"
        );
        assert_eq!(
            redirect("", "b.org", 8083).location("http", "a.com", "/p", None, 80, None),
            "http://b.org:8083/p"
        );
        assert_eq!(
            redirect("https", "", 443).location("http", "a.com", "/", None, 80, None),
            "https://a.com/"
        );
        assert!(
            RedirectRt::build(&Redirect {
                status_code: 200,
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn header_ops_set_add_remove() {
        let ops = HeaderOps::build(&HeaderModifier {
            set: vec![rauta_common::api::v1::HeaderValue {
                name: "x-set".into(),
                value: "s".into(),
            }],
            add: vec![rauta_common::api::v1::HeaderValue {
                name: "x-add".into(),
                value: "a".into(),
            }],
            remove: vec!["x-gone".into()],
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("first"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        ops.apply(&mut h);
        assert_eq!(h.get("x-set").unwrap(), "s");
        assert_eq!(
            h.get_all("x-add").iter().collect::<Vec<_>>(),
            ["first", "a"]
        );
        assert!(h.get("x-gone").is_none());
    }
}
