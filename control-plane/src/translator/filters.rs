//! Compiles an HTTPRoute rule's filters (RequestHeaderModifier, ResponseHeaderModifier,
//! RequestRedirect, URLRewrite) into route-table fields.

use gateway_api::experimental::httproutes::{
    HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirect,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersType,
};
use rauta_common::api::v1::{
    CorsPolicy, HeaderModifier, HeaderValue, PathModifier, Redirect, UrlRewrite, path_modifier,
};
use serde::Serialize;
use serde_json::Value;

/// Why a rule's filters cannot be served; the message is what the route's Accepted condition
/// carries (UnsupportedValue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A filter of a type without the field of that type.
    #[error("{kind} without {field}")]
    Missing {
        kind: &'static str,
        field: &'static str,
    },
    #[error("{0}")]
    HeaderModifier(String),
    #[error("invalid header {0:?}")]
    InvalidHeader(String),
    #[error("ReplacePrefixMatch needs every match of the rule to be a PathPrefix match")]
    PrefixMatchNeeded,
    #[error("redirect status code {0} is not supported")]
    RedirectStatus(i64),
    #[error("mirror fraction {0} out of range")]
    FractionOutOfRange(&'static str),
    #[error("mirror fraction must be between 0 and 1")]
    FractionAboveOne,
    #[error("the ExternalAuth filter is not supported yet")]
    ExternalAuth,
    #[error("RequestRedirect and URLRewrite cannot be used together")]
    RedirectAndRewrite,
}

fn missing(kind: &'static str, field: &'static str) -> FilterError {
    FilterError::Missing { kind, field }
}

/// What a rule's filters ask for.
#[derive(Debug, Default, Clone)]
pub struct RuleFilters {
    pub redirect: Option<Redirect>,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub url_rewrite: Option<UrlRewrite>,
    pub mirrors: Vec<MirrorRef>,
    pub cors: Option<CorsPolicy>,
    /// ExtensionRef filters, resolved against the route's namespace later (`extensions.rs`).
    pub extensions: Vec<ExtensionRef>,
}

/// An ExtensionRef filter: a local object reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// A RequestMirror filter before its backend is resolved.
#[derive(Debug, Clone)]
pub struct MirrorRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i32>,
    /// Share of requests to mirror: (numerator, denominator).
    pub fraction: (u32, u32),
}

/// The request and response header modifier types are distinct generated structs of the same
/// shape; read both through their JSON form.
fn header_modifier(m: &impl Serialize) -> Result<HeaderModifier, FilterError> {
    let v = serde_json::to_value(m).map_err(|e| FilterError::HeaderModifier(e.to_string()))?;
    let pairs = |key: &str| -> Vec<HeaderValue> {
        v.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|h| {
                Some(HeaderValue {
                    name: h.get("name")?.as_str()?.to_ascii_lowercase(),
                    value: h.get("value")?.as_str()?.to_owned(),
                })
            })
            .collect()
    };
    let remove = v
        .get("remove")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_ascii_lowercase))
        .collect();
    let modifier = HeaderModifier {
        set: pairs("set"),
        add: pairs("add"),
        remove,
    };
    for h in modifier.set.iter().chain(&modifier.add) {
        if http_header_name_ok(&h.name).is_err()
            || h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
        {
            return Err(FilterError::InvalidHeader(h.name.clone()));
        }
    }
    Ok(modifier)
}

fn http_header_name_ok(name: &str) -> Result<(), ()> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.is_empty() && name.bytes().all(token) {
        Ok(())
    } else {
        Err(())
    }
}

fn path_modifier(
    full: Option<&String>,
    prefix: Option<&String>,
    prefix_ok: bool,
) -> Result<Option<PathModifier>, FilterError> {
    match (full, prefix) {
        (Some(f), _) => Ok(Some(PathModifier {
            kind: Some(path_modifier::Kind::ReplaceFullPath(f.clone())),
        })),
        (None, Some(p)) if prefix_ok => Ok(Some(PathModifier {
            kind: Some(path_modifier::Kind::ReplacePrefixMatch(p.clone())),
        })),
        (None, Some(_)) => Err(FilterError::PrefixMatchNeeded),
        (None, None) => Ok(None),
    }
}

/// A RequestRedirect filter as the proxy applies it.
fn redirect(
    r: &HttpRouteRulesFiltersRequestRedirect,
    prefix_ok: bool,
) -> Result<Redirect, FilterError> {
    let status_code = match r.status_code {
        None => 302,
        Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u32,
        Some(c) => return Err(FilterError::RedirectStatus(c)),
    };
    let path = r.path.as_ref();
    Ok(Redirect {
        scheme: match r.scheme {
            Some(HttpRouteRulesFiltersRequestRedirectScheme::Http) => "http".into(),
            Some(HttpRouteRulesFiltersRequestRedirectScheme::Https) => "https".into(),
            None => String::new(),
        },
        hostname: r.hostname.clone().unwrap_or_default(),
        port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        path: path_modifier(
            path.and_then(|p| p.replace_full_path.as_ref()),
            path.and_then(|p| p.replace_prefix_match.as_ref()),
            prefix_ok,
        )?,
        status_code,
    })
}

/// `prefix_ok`: all of the rule's matches are PathPrefix matches (ReplacePrefixMatch needs it).
pub fn compile(
    filters: &[HttpRouteRulesFilters],
    prefix_ok: bool,
) -> Result<RuleFilters, FilterError> {
    let mut out = RuleFilters::default();
    for f in filters {
        match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                let m = f
                    .request_header_modifier
                    .as_ref()
                    .ok_or(missing("RequestHeaderModifier", "requestHeaderModifier"))?;
                out.request_headers = Some(header_modifier(m)?);
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                let m = f
                    .response_header_modifier
                    .as_ref()
                    .ok_or(missing("ResponseHeaderModifier", "responseHeaderModifier"))?;
                out.response_headers = Some(header_modifier(m)?);
            }
            HttpRouteRulesFiltersType::RequestRedirect => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or(missing("RequestRedirect", "requestRedirect"))?;
                out.redirect = Some(redirect(r, prefix_ok)?);
            }
            HttpRouteRulesFiltersType::UrlRewrite => {
                let r = f
                    .url_rewrite
                    .as_ref()
                    .ok_or(missing("URLRewrite", "urlRewrite"))?;
                let path = r.path.as_ref();
                out.url_rewrite = Some(UrlRewrite {
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: path_modifier(
                        path.and_then(|p| p.replace_full_path.as_ref()),
                        path.and_then(|p| p.replace_prefix_match.as_ref()),
                        prefix_ok,
                    )?,
                });
            }
            HttpRouteRulesFiltersType::RequestMirror => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or(missing("RequestMirror", "requestMirror"))?;
                let fraction = match (&m.fraction, m.percent) {
                    (Some(f), _) => {
                        let den = u32::try_from(f.denominator.unwrap_or(100))
                            .map_err(|_| FilterError::FractionOutOfRange("denominator"))?;
                        let num = u32::try_from(f.numerator)
                            .map_err(|_| FilterError::FractionOutOfRange("numerator"))?;
                        if den == 0 || num > den {
                            return Err(FilterError::FractionAboveOne);
                        }
                        (num, den)
                    }
                    (None, Some(p)) => (u32::try_from(p.clamp(0, 100)).unwrap_or(100), 100),
                    (None, None) => (1, 1),
                };
                let b = &m.backend_ref;
                out.mirrors.push(MirrorRef {
                    group: b.group.clone(),
                    kind: b.kind.clone(),
                    name: b.name.clone(),
                    namespace: b.namespace.clone(),
                    port: b.port,
                    fraction,
                });
            }
            HttpRouteRulesFiltersType::Cors => {
                let c = f.cors.as_ref().ok_or(missing("CORS", "cors"))?;
                let list = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
                out.cors = Some(CorsPolicy {
                    allow_origins: list(&c.allow_origins),
                    allow_methods: list(&c.allow_methods),
                    allow_headers: list(&c.allow_headers),
                    expose_headers: list(&c.expose_headers),
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    // The CRD defaults maxAge to 5 seconds.
                    max_age_seconds: u32::try_from(c.max_age.unwrap_or(5)).unwrap_or(0),
                });
            }
            HttpRouteRulesFiltersType::ExternalAuth => {
                return Err(FilterError::ExternalAuth);
            }
            HttpRouteRulesFiltersType::ExtensionRef => {
                let e = f
                    .extension_ref
                    .as_ref()
                    .ok_or(missing("ExtensionRef", "extensionRef"))?;
                out.extensions.push(ExtensionRef {
                    group: e.group.clone(),
                    kind: e.kind.clone(),
                    name: e.name.clone(),
                });
            }
        }
    }
    if out.redirect.is_some() && out.url_rewrite.is_some() {
        return Err(FilterError::RedirectAndRewrite);
    }
    Ok(out)
}
