//! Session persistence (GEP-1619): a rule's own, or an XBackendTrafficPolicy's for every
//! rule to its Service.

use gateway_api::experimental::httproutes::{
    HttpRouteRules, HttpRouteRulesMatches, HttpRouteRulesMatchesPathType,
    HttpRouteRulesSessionPersistence,
};
use rauta_common::api::v1::{SessionPersistence, session_persistence};

use super::routes::parse_timeout;

/// The cookie Path of a sticky rule: its path match when all its matches share one Exact or
/// PathPrefix path, "/" otherwise.
fn session_cookie_path(matches: &[HttpRouteRulesMatches]) -> String {
    let paths: Vec<&str> = matches
        .iter()
        .map(|m| match &m.path {
            Some(p) if p.r#type != Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                p.value.as_deref().unwrap_or("/")
            }
            Some(_) => "/",
            None => "/",
        })
        .collect();
    match paths.split_first() {
        Some((first, rest))
            if rest.iter().all(|p| p == first)
                && first.starts_with('/')
                && first.bytes().all(|b| b.is_ascii_graphic() && b != b';') =>
        {
            (*first).to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// A rule's session persistence (GEP-1619). Without a sessionName the name is derived from
/// the rule's, so that two sticky rules never share (and overwrite) one token.
pub(super) fn compile_session(
    rule: &HttpRouteRules,
    rule_name: &str,
    matches: &[HttpRouteRulesMatches],
) -> Result<Option<SessionPersistence>, String> {
    let Some(p) = &rule.session_persistence else {
        return Ok(None);
    };
    session_persistence(p, rule_name, || session_cookie_path(matches)).map(Some)
}

/// A session persistence setting, of a rule or of an XBackendTrafficPolicy (`owner`, which
/// names the token when the setting does not); `cookie_path` for a cookie's Path.
pub(super) fn session_persistence(
    p: &HttpRouteRulesSessionPersistence,
    owner: &str,
    cookie_path: impl FnOnce() -> String,
) -> Result<SessionPersistence, String> {
    use gateway_api::experimental::httproutes::{
        HttpRouteRulesSessionPersistenceCookieConfigLifetimeType as Lifetime,
        HttpRouteRulesSessionPersistenceType as Type,
    };
    let derived = format!(
        "rauta-session-{:08x}",
        rauta_common::hash::fnv1a64(owner.as_bytes()) as u32
    );
    let name = p.session_name.as_deref().unwrap_or(&derived);
    // A token: valid as a cookie name and as a header name.
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!(
            "sessionPersistence.sessionName {name:?} is not a valid token"
        ));
    }
    let duration = |field: &str, value: Option<&String>| {
        parse_timeout(&format!("sessionPersistence.{field}"), value)
            .map(|d| d.and_then(|d| prost_types::Duration::try_from(d).ok()))
    };
    let absolute_timeout = duration("absoluteTimeout", p.absolute_timeout.as_ref())?;
    let idle_timeout = duration("idleTimeout", p.idle_timeout.as_ref())?;
    let kind = match p.r#type {
        Some(Type::Header) => session_persistence::Kind::Header,
        Some(Type::Cookie) | None => session_persistence::Kind::Cookie,
    };
    if kind == session_persistence::Kind::Header
        && rauta_common::fields::reserved_for_session(&name.to_ascii_lowercase())
    {
        return Err(format!(
            "sessionPersistence.sessionName {name:?} is a header the gateway manages"
        ));
    }
    let permanent = kind == session_persistence::Kind::Cookie
        && p.cookie_config
            .as_ref()
            .and_then(|c| c.lifetime_type.as_ref())
            .is_some_and(|l| *l == Lifetime::Permanent);
    if permanent && absolute_timeout.is_none() {
        return Err(
            "sessionPersistence: a Permanent cookie needs absoluteTimeout (its Max-Age)".into(),
        );
    }
    Ok(SessionPersistence {
        name: name.to_owned(),
        kind: kind.into(),
        absolute_timeout,
        idle_timeout,
        permanent,
        cookie_path: if kind == session_persistence::Kind::Cookie {
            cookie_path()
        } else {
            String::new()
        },
    })
}
