//! HTTP Basic authentication (SecurityPolicy `basicAuth`) against htpasswd users: bcrypt or
//! SHA-1 entries. A bcrypt check costs milliseconds of CPU by design, so it runs on tokio's
//! blocking threads, at most [`MAX_BCRYPT_CHECKS`] at a time per proxy (a flood of wrong
//! passwords queues there instead of stalling request workers; past [`BCRYPT_QUEUE_WAIT`] it
//! is refused), and a name and password that passed are remembered for [`REMEMBERED_FOR`] by
//! a salted SHA-256 (the salt is per process: the digests are worth nothing elsewhere), so a
//! client's next requests cost a hash.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use rauta_common::api::v1::BasicAuth;
use tokio::sync::Semaphore;

/// Most bcrypt checks under way at once, per proxy.
pub const MAX_BCRYPT_CHECKS: usize = 2;
/// Longest a request waits for a turn to have its bcrypt hash checked.
pub const BCRYPT_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// How long a name and password that passed are remembered.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(300);
/// Most remembered per policy; past it, it starts over.
const MAX_REMEMBERED: usize = 10_000;

/// Permits for bcrypt checks; a permit goes with its check to the blocking thread, so a
/// client that hangs up does not free it while the check still runs.
static BCRYPT_CHECKS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(MAX_BCRYPT_CHECKS)));
static SALT: LazyLock<[u8; 16]> = LazyLock::new(rand::random);

/// Why a BasicAuth is invalid.
#[derive(Debug, thiserror::Error)]
pub enum BasicAuthError {
    #[error("basic auth: user {0:?} has a hash of an unsupported kind (bcrypt or {{SHA}})")]
    Hash(Box<str>),
    #[error("basic auth: invalid header name {0:?}")]
    Header(Box<str>),
    #[error("basic auth: user name {0:?} cannot be a header value")]
    Username(Box<str>),
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicFailure {
    /// No `Authorization: Basic` credentials.
    Missing,
    /// Credentials that are not base64 of "name:password".
    Malformed,
    /// No such user, or the wrong password.
    Invalid,
    /// Too many bcrypt checks queued.
    Busy,
}

impl BasicFailure {
    pub fn label(self) -> &'static str {
        match self {
            BasicFailure::Missing => "missing",
            BasicFailure::Malformed => "malformed",
            BasicFailure::Invalid => "invalid",
            BasicFailure::Busy => "busy",
        }
    }
}

#[derive(Debug)]
enum PasswordHash {
    Bcrypt(Arc<str>),
    Sha1([u8; 20]),
}

#[derive(Debug)]
struct User {
    hash: PasswordHash,
    /// The name, as the header value set upstream.
    header: HeaderValue,
}

#[derive(Debug)]
pub struct BasicAuthRt {
    config: BasicAuth,
    users: HashMap<Box<str>, User>,
    forward_username: Option<HeaderName>,
    forward_credentials: bool,
    /// Digest of name and password → when it passed.
    passed: papaya::HashMap<[u8; 32], Instant, foldhash::fast::RandomState>,
    /// The policy, for metrics.
    pub name: Box<str>,
}

impl BasicAuthRt {
    pub fn build(b: &BasicAuth) -> Result<BasicAuthRt, BasicAuthError> {
        let mut users = HashMap::new();
        for u in &b.users {
            let h = &u.password_hash;
            let hash = if let Some(sha) = h.strip_prefix("{SHA}") {
                let digest = STANDARD.decode(sha).ok().and_then(|d| d.try_into().ok());
                PasswordHash::Sha1(
                    digest.ok_or_else(|| BasicAuthError::Hash(u.username.as_str().into()))?,
                )
            } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p)) {
                PasswordHash::Bcrypt(h.as_str().into())
            } else {
                return Err(BasicAuthError::Hash(u.username.as_str().into()));
            };
            let header = HeaderValue::from_str(&u.username)
                .map_err(|_| BasicAuthError::Username(u.username.as_str().into()))?;
            users.insert(u.username.as_str().into(), User { hash, header });
        }
        let forward_username = match b.forward_username_header.as_str() {
            "" => None,
            h => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| BasicAuthError::Header(h.into()))?,
            ),
        };
        Ok(BasicAuthRt {
            config: b.clone(),
            users,
            forward_username,
            forward_credentials: b.forward_credentials,
            passed: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
            name: b.name.as_str().into(),
        })
    }

    /// The policy it was built from.
    pub fn config(&self) -> &BasicAuth {
        &self.config
    }

    /// The user whose name and password the request carries, or why it is refused.
    pub async fn check(&self, headers: &HeaderMap) -> Result<HeaderValue, BasicFailure> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(BasicFailure::Missing)?;
        let encoded = value
            .get(..6)
            .filter(|scheme| scheme.eq_ignore_ascii_case("basic "))
            .map(|_| value[6..].trim())
            .ok_or(BasicFailure::Missing)?;
        let decoded = STANDARD
            .decode(encoded)
            .map_err(|_| BasicFailure::Malformed)?;
        let text = std::str::from_utf8(&decoded).map_err(|_| BasicFailure::Malformed)?;
        let (name, password) = text.split_once(':').ok_or(BasicFailure::Malformed)?;
        let user = self.users.get(name).ok_or(BasicFailure::Invalid)?;
        let ok = match &user.hash {
            PasswordHash::Sha1(expected) => {
                let digest = ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    password.as_bytes(),
                );
                ring_compare(digest.as_ref(), expected)
            }
            PasswordHash::Bcrypt(hash) => self.bcrypt(name, password, hash).await?,
        };
        match ok {
            true => Ok(user.header.clone()),
            false => Err(BasicFailure::Invalid),
        }
    }

    /// A bcrypt check, remembered when it passes.
    async fn bcrypt(
        &self,
        name: &str,
        password: &str,
        hash: &Arc<str>,
    ) -> Result<bool, BasicFailure> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&*SALT);
        // The name cannot hold ':' (RFC 7617): "name:password" is unambiguous.
        ctx.update(name.as_bytes());
        ctx.update(b":");
        ctx.update(password.as_bytes());
        let mut digest = [0; 32];
        digest.copy_from_slice(ctx.finish().as_ref());
        let remembered = self.passed.pin().get(&digest).copied();
        if remembered.is_some_and(|at| at.elapsed() < REMEMBERED_FOR) {
            return Ok(true);
        }
        let permits = Arc::clone(&BCRYPT_CHECKS);
        let permit = tokio::time::timeout(BCRYPT_QUEUE_WAIT, permits.acquire_owned())
            .await
            .map_err(|_| BasicFailure::Busy)?
            .map_err(|_| BasicFailure::Busy)?;
        let (password, hash) = (password.to_owned(), Arc::clone(hash));
        let verified = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(password, &hash)
        })
        .await
        .map_err(|_| BasicFailure::Busy)?;
        let ok = verified.unwrap_or(false);
        if ok {
            let map = self.passed.pin();
            if map.len() >= MAX_REMEMBERED {
                map.clear();
            }
            map.insert(digest, Instant::now());
        }
        Ok(ok)
    }

    /// The request's fields as the backend gets them: the credentials removed (unless
    /// forwarded), the user's name set (a client's own value replaced).
    pub fn prepare(&self, headers: &mut HeaderMap, user: HeaderValue) {
        if !self.forward_credentials {
            headers.remove(header::AUTHORIZATION);
        }
        if let Some(h) = &self.forward_username {
            super::remove_field(headers, h);
            headers.insert(h.clone(), user);
        }
    }
}

/// Equality that takes the same time wherever the first difference is.
fn ring_compare(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use rauta_common::api::v1::BasicAuthUser;

    use super::*;

    fn auth() -> BasicAuthRt {
        let sha = STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            b"sha-pass",
        ));
        BasicAuthRt::build(&BasicAuth {
            users: vec![
                BasicAuthUser {
                    username: "ann".into(),
                    password_hash: bcrypt::hash("bcrypt-pass", 4).unwrap_or_default(),
                },
                BasicAuthUser {
                    username: "sam".into(),
                    password_hash: format!("{{SHA}}{sha}"),
                },
            ],
            forward_username_header: "x-user".into(),
            forward_credentials: false,
            name: "apps/basic".into(),
        })
        .unwrap()
    }

    fn with(credentials: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(credentials));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        h
    }

    /// The tests that use the process's bcrypt permits, one at a time.
    static PERMITS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn bcrypt_and_sha_users_pass_with_their_passwords_only() {
        let _serial = PERMITS.lock().await;
        let a = auth();
        assert_eq!(a.check(&with("ann:bcrypt-pass")).await.unwrap(), "ann");
        // Remembered: a second check needs no bcrypt.
        assert_eq!(a.passed.pin().len(), 1);
        assert_eq!(a.check(&with("ann:bcrypt-pass")).await.unwrap(), "ann");
        assert_eq!(a.check(&with("sam:sha-pass")).await.unwrap(), "sam");
        for wrong in ["ann:sha-pass", "sam:bcrypt-pass", "bob:x", "ann:"] {
            assert_eq!(
                a.check(&with(wrong)).await,
                Err(BasicFailure::Invalid),
                "{wrong}"
            );
        }
        assert_eq!(
            a.check(&with("no-colon")).await,
            Err(BasicFailure::Malformed)
        );
        assert_eq!(a.check(&HeaderMap::new()).await, Err(BasicFailure::Missing));
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(a.check(&bearer).await, Err(BasicFailure::Missing));
        let mut junk = HeaderMap::new();
        junk.insert(header::AUTHORIZATION, HeaderValue::from_static("basic !!!"));
        assert_eq!(a.check(&junk).await, Err(BasicFailure::Malformed));

        let mut h = with("ann:bcrypt-pass");
        h.insert("x-user", HeaderValue::from_static("root"));
        a.prepare(&mut h, HeaderValue::from_static("ann"));
        assert_eq!(h["x-user"], "ann");
        assert!(!h.contains_key(header::AUTHORIZATION));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_whose_client_left_keeps_its_permit_until_it_ends() {
        let _serial = PERMITS.lock().await;
        let slow = BasicAuthRt::build(&BasicAuth {
            users: vec![BasicAuthUser {
                username: "u".into(),
                password_hash: bcrypt::hash("p", 12).unwrap_or_default(),
            }],
            ..Default::default()
        })
        .map(Arc::new)
        .unwrap();
        let before = BCRYPT_CHECKS.available_permits();
        let check = {
            let slow = Arc::clone(&slow);
            tokio::spawn(async move { slow.check(&with("u:wrong")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        check.abort();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            BCRYPT_CHECKS.available_permits(),
            before - 1,
            "the hash still runs on its blocking thread: its permit with it"
        );
    }

    #[test]
    fn unsupported_hashes_are_refused() {
        let md5 = BasicAuth {
            users: vec![BasicAuthUser {
                username: "x".into(),
                password_hash: "$apr1$salt$hash".into(),
            }],
            ..Default::default()
        };
        assert!(matches!(
            BasicAuthRt::build(&md5),
            Err(BasicAuthError::Hash(_))
        ));
    }
}
