//! Session persistence (Gateway API sessionPersistence): the proxy hands the client a token
//! naming the endpoint that served it, as a cookie or a header, and sends later requests that
//! bring the token back to that endpoint while it is ready and the session is live.
//!
//! The token is `<endpoint address in hex>.<absolute deadline>.<idle deadline>.<signature>`
//! (deadlines in Unix seconds, 0 for none): every proxy replica reads it the same way, with no
//! shared state but the route table's keys. The signature is the first 16 bytes of an
//! HMAC-SHA256 (in hex) over the session name and the rest of the token, with a key the
//! controller derives for the Gateway, so a client cannot choose its endpoint or stretch its
//! deadlines: a token whose signature does not verify is ignored, as if it were absent.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use rauta_common::api::v1::SessionPersistence;
use rauta_common::api::v1::session_persistence::Kind;
use ring::hmac;

use crate::model::request::RequestHeaders;

/// Bytes of the HMAC-SHA256 kept in a token (128 bits, hex-encoded).
const SIGNATURE_BYTES: usize = 16;
/// Most keys a route table may carry (the current one and a few earlier ones).
const MAX_KEYS: usize = 4;
/// Shortest key accepted, in bytes.
const MIN_KEY_BYTES: usize = 16;

/// The keys of a route table that sign and verify its session tokens: the first signs, each
/// verifies.
#[derive(Clone, Default)]
pub struct SessionKeys(Arc<[hmac::Key]>);

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys({} keys)", self.0.len())
    }
}

/// Why session persistence (or a route table's session keys) is invalid.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("at most {MAX_KEYS} session keys, got {0}")]
    TooManyKeys(usize),
    #[error("a session key must have at least {MIN_KEY_BYTES} bytes")]
    ShortKey,
    #[error("session persistence without a key to sign its tokens")]
    NoKey,
    #[error("unknown session kind {0}")]
    Kind(i32),
    #[error("invalid session header name {0:?}")]
    HeaderName(String),
    #[error("invalid session cookie path {0:?}")]
    CookiePath(String),
    #[error("invalid session cookie name {0:?}")]
    CookieName(String),
    #[error("session timeout: {0}")]
    Timeout(String),
}

impl SessionKeys {
    /// The keys of a route table (`RouteTable.session_keys`).
    pub fn build(keys: &[String]) -> Result<SessionKeys, SessionError> {
        if keys.len() > MAX_KEYS {
            return Err(SessionError::TooManyKeys(keys.len()));
        }
        if keys.iter().any(|k| k.len() < MIN_KEY_BYTES) {
            return Err(SessionError::ShortKey);
        }
        Ok(SessionKeys(
            keys.iter()
                .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k.as_bytes()))
                .collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The signature of a token's other parts, for the session `name`.
fn signature(key: &hmac::Key, name: &str, unsigned: &str) -> [u8; SIGNATURE_BYTES] {
    let mut context = hmac::Context::with_key(key);
    context.update(name.as_bytes());
    context.update(&[0]);
    context.update(unsigned.as_bytes());
    let tag = context.sign();
    let mut out = [0; SIGNATURE_BYTES];
    out.copy_from_slice(&tag.as_ref()[..SIGNATURE_BYTES]);
    out
}

/// Whether two byte strings are equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex_encode(bytes: &[u8], out: &mut String) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

#[derive(Debug)]
pub struct SessionRt {
    name: HeaderName,
    cookie: Option<Box<str>>,
    /// The cookie's Path attribute.
    path: Box<str>,
    absolute: Option<Duration>,
    idle: Option<Duration>,
    permanent: bool,
    /// The session name, signed with the token: a token is good for one rule's sessions.
    label: Box<str>,
    keys: SessionKeys,
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

fn duration(d: Option<&prost_types::Duration>) -> Result<Option<Duration>, SessionError> {
    d.map(|d| Duration::try_from(*d).map_err(|e| SessionError::Timeout(e.to_string())))
        .transpose()
}

impl SessionRt {
    pub fn build(p: &SessionPersistence, keys: &SessionKeys) -> Result<SessionRt, SessionError> {
        if keys.is_empty() {
            return Err(SessionError::NoKey);
        }
        let kind = Kind::try_from(p.kind).map_err(|_| SessionError::Kind(p.kind))?;
        let (name, cookie) = match kind {
            Kind::Cookie => (
                http::header::SET_COOKIE,
                Some(p.name.clone().into_boxed_str()),
            ),
            Kind::Header => (
                HeaderName::from_bytes(p.name.as_bytes())
                    .ok()
                    .filter(|n| !rauta_common::fields::reserved_for_session(n.as_str()))
                    .ok_or_else(|| SessionError::HeaderName(p.name.clone()))?,
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
            path => return Err(SessionError::CookiePath(path.to_owned())),
        };
        if cookie.as_deref().is_some_and(|c| {
            c.is_empty()
                || c.bytes()
                    .any(|b| !b.is_ascii_graphic() || b"=;,".contains(&b))
        }) {
            return Err(SessionError::CookieName(p.name.clone()));
        }
        Ok(SessionRt {
            name,
            cookie,
            path: path.into(),
            absolute: duration(p.absolute_timeout.as_ref())?,
            idle: duration(p.idle_timeout.as_ref())?,
            permanent: p.permanent,
            label: p.name.clone().into_boxed_str(),
            keys: keys.clone(),
        })
    }

    /// The live session a request carries, if any.
    pub fn of_request(&self, headers: RequestHeaders<'_>) -> Option<Session> {
        let token = match &self.cookie {
            Some(cookie) => headers.cookie(cookie)?,
            None => headers.get(&self.name)?,
        };
        let text = std::str::from_utf8(token).ok()?;
        let (unsigned, signed) = text.rsplit_once('.')?;
        let signed = hex_decode(signed)?;
        // Every key is tried, so the time taken does not tell which one matched.
        let genuine = self.keys.0.iter().fold(false, |found, key| {
            same(&signature(key, &self.label, unsigned), &signed) | found
        });
        if !genuine {
            return None;
        }
        let mut parts = unsigned.split('.');
        let (addr, absolute, idle) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let bytes = hex_decode(addr)?;
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
        let mut token = String::with_capacity(128);
        hex_encode(endpoint.to_string().as_bytes(), &mut token);
        let _ = write!(token, ".{absolute_deadline}.{idle_deadline}");
        let signed = signature(self.keys.0.first()?, &self.label, &token);
        token.push('.');
        hex_encode(&signed, &mut token);
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

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn keys(keys: &[&str]) -> SessionKeys {
        SessionKeys::build(&keys.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn rt_with(
        kind: Kind,
        absolute: Option<u64>,
        idle: Option<u64>,
        permanent: bool,
        keys: &SessionKeys,
    ) -> SessionRt {
        let d = |s: u64| prost_types::Duration {
            seconds: s as i64,
            nanos: 0,
        };
        SessionRt::build(
            &SessionPersistence {
                name: "sticky".into(),
                kind: kind.into(),
                absolute_timeout: absolute.map(d),
                idle_timeout: idle.map(d),
                permanent,
                cookie_path: "/shop".into(),
            },
            keys,
        )
        .unwrap()
    }

    fn rt(kind: Kind, absolute: Option<u64>, idle: Option<u64>, permanent: bool) -> SessionRt {
        rt_with(kind, absolute, idle, permanent, &keys(&[KEY]))
    }

    /// The token a cookie header value carries, e.g. from `sticky=TOKEN; Path=...`.
    fn token_of(value: &HeaderValue) -> String {
        let value = value.to_str().unwrap();
        value["sticky=".len()..]
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    fn brought(session: &SessionRt, token: &str) -> Option<Session> {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("a=1; sticky={token}").parse().unwrap(),
        );
        session.of_request(RequestHeaders::Map(&h))
    }

    /// `token` with its deadlines replaced and signed with `key` for session "sticky".
    fn resigned(token: &str, deadlines: &str, key: &str) -> String {
        let unsigned = format!("{}.{deadlines}", token.split('.').next().unwrap());
        let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
        let mut out = unsigned.clone();
        out.push('.');
        hex_encode(&signature(&key, "sticky", &unsigned), &mut out);
        out
    }

    #[test]
    fn a_cookie_token_names_its_endpoint_until_it_expires() {
        let session = rt(Kind::Cookie, Some(3600), None, true);
        let endpoint: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let (name, value) = session.response_header(endpoint, None, true).unwrap();
        assert_eq!(name, http::header::SET_COOKIE);
        let text = value.to_str().unwrap();
        assert!(text.starts_with("sticky="), "{text}");
        assert!(
            text.ends_with("; Path=/shop; HttpOnly; Secure; Max-Age=3600"),
            "{text}"
        );
        let token = token_of(&value);
        assert_eq!(token.split('.').count(), 4, "{token}");
        let session_brought = brought(&session, &token).unwrap();
        assert_eq!(session_brought.endpoint, endpoint);
        assert!(
            session
                .response_header(endpoint, Some(session_brought), true)
                .is_none(),
            "nothing to renew"
        );
        let other: SocketAddr = "10.1.2.4:8080".parse().unwrap();
        assert!(
            session
                .response_header(other, Some(session_brought), true)
                .is_some(),
            "moved: a new token"
        );
        // A genuine token whose deadline passed.
        let expired = resigned(&token, "1.0", KEY);
        assert_eq!(brought(&session, &expired), None);
        for malformed in ["zz.0.0", "3130.0.0", "", "3a.0", "31.0.0.0", "..."] {
            assert_eq!(brought(&session, malformed), None, "{malformed}");
        }
    }

    #[test]
    fn forged_tokens_are_ignored() {
        let session = rt(Kind::Cookie, Some(60), Some(30), false);
        let endpoint: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let (_, value) = session.response_header(endpoint, None, false).unwrap();
        let token = token_of(&value);
        assert!(brought(&session, &token).is_some());
        let (unsigned, signed) = token.rsplit_once('.').unwrap();
        let hex = |s: &str| {
            let mut out = String::new();
            hex_encode(s.as_bytes(), &mut out);
            out
        };
        let forgeries = [
            // The unsigned format of old: "never expires".
            format!("{}.0.0", hex("10.1.2.3:8080")),
            // A genuine signature on other deadlines, or another endpoint.
            format!("{}.0.0.{signed}", hex("10.1.2.3:8080")),
            format!("{}.{}.{signed}", hex("10.1.2.4:8080"), {
                let mut p = unsigned.split('.');
                p.next();
                p.collect::<Vec<_>>().join(".")
            }),
            // Signed with a key the proxy does not hold.
            resigned(&token, "0.0", "another key, long enough to use"),
            // The signature cut, extended or changed.
            token[..token.len() - 2].to_owned(),
            format!("{token}00"),
            format!("{unsigned}.{}", "0".repeat(2 * SIGNATURE_BYTES)),
        ];
        for forged in &forgeries {
            assert_eq!(brought(&session, forged), None, "{forged}");
        }
        // The same token for another rule's session name does not verify either.
        let mut other = rt(Kind::Cookie, Some(60), Some(30), false);
        other.label = "other".into();
        assert_eq!(brought(&other, &token), None);
    }

    #[test]
    fn tokens_of_the_previous_key_verify_until_it_is_dropped() {
        const NEXT: &str = "fedcba9876543210fedcba9876543210";
        let old = rt(Kind::Cookie, None, None, false);
        let endpoint: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let token = token_of(&old.response_header(endpoint, None, false).unwrap().1);
        // Rotated: the new key signs, the old one still verifies.
        let rotated = rt_with(Kind::Cookie, None, None, false, &keys(&[NEXT, KEY]));
        assert_eq!(
            brought(&rotated, &token).map(|s| s.endpoint),
            Some(endpoint)
        );
        let fresh = token_of(&rotated.response_header(endpoint, None, false).unwrap().1);
        assert_ne!(fresh, token);
        assert!(brought(&old, &fresh).is_none(), "signed with the new key");
        // Dropped: the old tokens end.
        let later = rt_with(Kind::Cookie, None, None, false, &keys(&[NEXT]));
        assert!(brought(&later, &token).is_none());
        assert!(brought(&later, &fresh).is_some());
    }

    #[test]
    fn session_persistence_needs_good_keys() {
        let p = SessionPersistence {
            name: "sticky".into(),
            ..Default::default()
        };
        let err = SessionRt::build(&p, &SessionKeys::default()).unwrap_err();
        assert!(matches!(err, SessionError::NoKey), "{err}");
        assert!(SessionKeys::build(&["short".into()]).is_err());
        assert!(SessionKeys::build(&vec![KEY.to_owned(); MAX_KEYS + 1]).is_err());
        assert!(SessionRt::build(&p, &keys(&[KEY])).is_ok());
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
