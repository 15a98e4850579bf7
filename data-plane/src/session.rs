//! Session persistence (Gateway API sessionPersistence): the proxy hands the client a token
//! naming the endpoint that served it, as a cookie or a header, and sends later requests that
//! bring the token back to that endpoint while it is ready and the session is live.
//!
//! The token is `<endpoint address in hex>.<absolute deadline>.<idle deadline>` (Unix seconds,
//! 0 for none): every proxy replica reads it the same way, with no shared state. Like Envoy's
//! stateful sessions it is not signed; a client that forges one can only choose among the
//! route's own endpoints, or stretch its own session.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use rauta_common::api::v1::SessionPersistence;
use rauta_common::api::v1::session_persistence::Kind;

use crate::routing::RequestHeaders;

#[derive(Debug)]
pub struct SessionRt {
    name: HeaderName,
    cookie: Option<Box<str>>,
    /// The cookie's Path attribute.
    path: Box<str>,
    absolute: Option<Duration>,
    idle: Option<Duration>,
    permanent: bool,
}

/// A live session a request brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub endpoint: SocketAddr,
    /// When the session ends whatever happens (Unix seconds; 0: never).
    absolute_deadline: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The Unix second at which a period starting now has passed, rounded up: a session lives at
/// least its timeout.
fn deadline(after: Duration) -> u64 {
    let end = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + after;
    end.as_secs() + u64::from(end.subsec_nanos() > 0)
}

fn duration(d: Option<&prost_types::Duration>) -> Result<Option<Duration>, String> {
    d.map(|d| Duration::try_from(*d).map_err(|e| format!("session timeout: {e}")))
        .transpose()
}

impl SessionRt {
    pub fn build(p: &SessionPersistence) -> Result<SessionRt, String> {
        let kind =
            Kind::try_from(p.kind).map_err(|_| format!("unknown session kind {}", p.kind))?;
        let (name, cookie) = match kind {
            Kind::Cookie => (
                http::header::SET_COOKIE,
                Some(p.name.clone().into_boxed_str()),
            ),
            Kind::Header => (
                HeaderName::from_bytes(p.name.as_bytes())
                    .ok()
                    .filter(|n| !rauta_common::fields::reserved_for_session(n.as_str()))
                    .ok_or_else(|| format!("invalid session header name {:?}", p.name))?,
                None,
            ),
        };
        let path = match p.cookie_path.as_str() {
            "" => "/",
            path if path.starts_with('/')
                && path.bytes().all(|b| b.is_ascii_graphic() && b != b';') =>
            {
                path
            }
            path => return Err(format!("invalid session cookie path {path:?}")),
        };
        if cookie.as_deref().is_some_and(|c| {
            c.is_empty()
                || c.bytes()
                    .any(|b| !b.is_ascii_graphic() || b"=;,".contains(&b))
        }) {
            return Err(format!("invalid session cookie name {:?}", p.name));
        }
        Ok(SessionRt {
            name,
            cookie,
            path: path.into(),
            absolute: duration(p.absolute_timeout.as_ref())?,
            idle: duration(p.idle_timeout.as_ref())?,
            permanent: p.permanent,
        })
    }

    /// The live session a request carries, if any.
    pub fn of_request(&self, headers: RequestHeaders<'_>) -> Option<Session> {
        let token = match &self.cookie {
            Some(cookie) => crate::cluster::cookie(headers, cookie)?,
            None => headers.get(&self.name)?,
        };
        let text = std::str::from_utf8(token).ok()?;
        let mut parts = text.split('.');
        let (addr, absolute, idle) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || addr.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..addr.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(addr.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let endpoint = std::str::from_utf8(&bytes).ok()?.parse().ok()?;
        let absolute_deadline: u64 = absolute.parse().ok()?;
        let idle_deadline: u64 = idle.parse().ok()?;
        let now = now_secs();
        let live = |deadline: u64| deadline == 0 || now < deadline;
        (live(absolute_deadline) && live(idle_deadline)).then_some(Session {
            endpoint,
            absolute_deadline,
        })
    }

    /// The header that gives the client its token, when it needs one: a new session, or one
    /// whose idle deadline moves on. `secure`: the client came over TLS (the cookie is then
    /// only sent back over TLS).
    pub fn response_header(
        &self,
        endpoint: SocketAddr,
        brought: Option<Session>,
        secure: bool,
    ) -> Option<(HeaderName, HeaderValue)> {
        let continuing = brought.filter(|s| s.endpoint == endpoint);
        if continuing.is_some() && self.idle.is_none() {
            return None;
        }
        let now = now_secs();
        let absolute_deadline = match continuing {
            Some(s) => s.absolute_deadline,
            None => self.absolute.map_or(0, deadline),
        };
        let idle_deadline = self.idle.map_or(0, deadline);
        let mut token = String::with_capacity(64);
        for b in endpoint.to_string().bytes() {
            token.push_str(&format!("{b:02x}"));
        }
        let token = format!("{token}.{absolute_deadline}.{idle_deadline}");
        let value = match &self.cookie {
            Some(cookie) => {
                let mut v = format!("{cookie}={token}; Path={}; HttpOnly", self.path);
                if secure {
                    v.push_str("; Secure");
                }
                if self.permanent {
                    let left = match (continuing, self.absolute) {
                        // Rounded up, as the deadline in the token.
                        (None, Some(absolute)) => {
                            absolute.as_secs() + u64::from(absolute.subsec_nanos() > 0)
                        }
                        _ => absolute_deadline.saturating_sub(now),
                    };
                    v.push_str(&format!("; Max-Age={}", left.max(1)));
                }
                v
            }
            None => token,
        };
        HeaderValue::from_str(&value)
            .ok()
            .map(|v| (self.name.clone(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn rt(kind: Kind, absolute: Option<u64>, idle: Option<u64>, permanent: bool) -> SessionRt {
        let d = |s: u64| prost_types::Duration {
            seconds: s as i64,
            nanos: 0,
        };
        SessionRt::build(&SessionPersistence {
            name: "sticky".into(),
            kind: kind.into(),
            absolute_timeout: absolute.map(d),
            idle_timeout: idle.map(d),
            permanent,
            cookie_path: "/shop".into(),
        })
        .unwrap()
    }

    #[test]
    fn a_cookie_token_names_its_endpoint_until_it_expires() {
        let session = rt(Kind::Cookie, Some(3600), None, true);
        let endpoint: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let (name, value) = session.response_header(endpoint, None, true).unwrap();
        assert_eq!(name, http::header::SET_COOKIE);
        let value = value.to_str().unwrap();
        assert!(value.starts_with("sticky="), "{value}");
        assert!(
            value.ends_with("; Path=/shop; HttpOnly; Secure; Max-Age=3600"),
            "{value}"
        );
        let token = value["sticky=".len()..].split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("a=1; sticky={token}").parse().unwrap(),
        );
        let brought = session.of_request(RequestHeaders::Map(&h)).unwrap();
        assert_eq!(brought.endpoint, endpoint);
        assert!(
            session
                .response_header(endpoint, Some(brought), true)
                .is_none(),
            "nothing to renew"
        );
        let other: SocketAddr = "10.1.2.4:8080".parse().unwrap();
        assert!(
            session
                .response_header(other, Some(brought), true)
                .is_some(),
            "moved: a new token"
        );

        let expired = format!("{}.1.0", token.split('.').next().unwrap());
        h.insert(
            http::header::COOKIE,
            format!("sticky={expired}").parse().unwrap(),
        );
        assert_eq!(session.of_request(RequestHeaders::Map(&h)), None);
        for forged in ["zz.0.0", "3130.0.0", "", "3a.0", "31.0.0.0"] {
            h.insert(
                http::header::COOKIE,
                format!("sticky={forged}").parse().unwrap(),
            );
            assert_eq!(
                session.of_request(RequestHeaders::Map(&h)),
                None,
                "{forged}"
            );
        }
    }

    #[test]
    fn a_header_session_with_an_idle_timeout_is_renewed_on_every_answer() {
        let session = rt(Kind::Header, None, Some(60), false);
        let endpoint: SocketAddr = "[::1]:9000".parse().unwrap();
        let (name, value) = session.response_header(endpoint, None, false).unwrap();
        assert_eq!(name.as_str(), "sticky");
        let mut h = HeaderMap::new();
        h.insert("sticky", value);
        let brought = session.of_request(RequestHeaders::Map(&h)).unwrap();
        assert_eq!(brought.endpoint, endpoint);
        assert!(
            session
                .response_header(endpoint, Some(brought), false)
                .is_some()
        );
    }
}
