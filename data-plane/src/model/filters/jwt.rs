//! JSON Web Tokens (SecurityPolicy `jwt`): a request must carry a token one of the policy's
//! providers verifies: signed by one of its keys ([`crate::model::jwks`]), with its issuer,
//! one of its audiences, not expired, with the claims it requires
//! ([`crate::model::jwt_claims`]). Verified tokens are remembered by the SHA-256 of the token
//! (with the provider's index) until they expire or the provider's keys change, so a client's
//! next requests cost a hash and a lookup, not a signature check; the memory is bounded
//! ([`MAX_VERIFIED`]: past it, it starts over).
//!
//! The verifier is kept across snapshots while its policy stays the same (a kept store), so
//! a snapshot that changes something else keeps its fetched keys and its verified tokens, and
//! every rule under one policy shares them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use jsonwebtoken::{Algorithm, Validation};
use rauta_common::api::v1::{JwtAuth, JwtProvider, jwt_provider, token_source};
use serde_json::{Map, Value};

use super::api_key::{query_value, without_params};
use crate::model::jwks::{KeySet, RemoteJwks};
use crate::model::jwt_claims::{
    ClaimChecks, ClaimHeader, ClaimPath, ClaimsFailure, RequiredClaimRt,
};

/// Most verified tokens remembered per policy.
pub const MAX_VERIFIED: usize = 10_000;
/// Most providers a policy may have.
const MAX_PROVIDERS: usize = 4;

/// Why a JWT policy is invalid.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("jwt: 1 to {MAX_PROVIDERS} providers")]
    Providers,
    /// The provider and what is wrong with it, in one boxed message (it travels in every
    /// build error).
    #[error("jwt provider {0}")]
    Provider(Box<str>),
}

/// Why a request's token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtFailure {
    /// No token where the providers look for one.
    Missing,
    /// Not a JWT, or signed with an algorithm we do not take.
    Malformed,
    /// Its provider's keys could not be fetched.
    KeysUnavailable,
    /// Signed by a key the provider does not have.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    Claims(ClaimsFailure),
}

impl JwtFailure {
    pub fn label(self) -> &'static str {
        match self {
            JwtFailure::Missing => "missing",
            JwtFailure::Malformed => "malformed",
            JwtFailure::KeysUnavailable => "keys_unavailable",
            JwtFailure::UnknownKey => "unknown_key",
            JwtFailure::Signature => "bad_signature",
            JwtFailure::Claims(ClaimsFailure::Expired) => "expired",
            JwtFailure::Claims(ClaimsFailure::NotYetValid) => "not_yet_valid",
            JwtFailure::Claims(ClaimsFailure::Issuer) => "wrong_issuer",
            JwtFailure::Claims(ClaimsFailure::Audience) => "wrong_audience",
            JwtFailure::Claims(ClaimsFailure::Required) => "claims",
        }
    }

    /// The `error_description` of the challenge (RFC 6750 3): says what is wrong with the
    /// token, nothing about the keys or the policy.
    pub fn description(self) -> &'static str {
        match self {
            JwtFailure::Missing => "",
            JwtFailure::Claims(ClaimsFailure::Expired) => "the token has expired",
            JwtFailure::Claims(ClaimsFailure::NotYetValid) => "the token is not valid yet",
            _ => "the token is not valid here",
        }
    }
}

/// Where a provider looks for tokens.
#[derive(Debug, Clone)]
enum TokenPlace {
    Header { name: HeaderName, prefix: Box<str> },
    Cookie(Box<str>),
    Query(Box<str>),
}

/// Where the keys come from.
#[derive(Debug)]
enum Keys {
    Local(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

#[derive(Debug)]
struct ProviderRt {
    keys: Keys,
    places: Box<[TokenPlace]>,
    checks: ClaimChecks,
    claim_headers: Box<[ClaimHeader]>,
    forward_token: bool,
}

/// A token that verified, as remembered.
#[derive(Debug)]
pub struct Verified {
    /// The keys' generation it verified with.
    generation: u64,
    /// Until when it is good, in seconds since the Unix epoch.
    until: f64,
    /// The claim headers to set.
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// The token's claims (authorization rules read them).
    pub claims: Map<String, Value>,
}

/// A token found in a request: which provider's, where, and the token.
pub struct Found<'r> {
    provider: usize,
    place: usize,
    token: &'r str,
    /// The place holds more than one token (two headers, cookies or parameters of its name):
    /// refused, since a backend might read the other one.
    ambiguous: bool,
}

/// Which provider found a token, and where.
#[derive(Debug, Clone, Copy)]
pub struct TokenAt {
    provider: usize,
    place: usize,
}

impl Found<'_> {
    pub fn at(&self) -> TokenAt {
        TokenAt {
            provider: self.provider,
            place: self.place,
        }
    }
}

/// The verification state of one policy (see the module's comment).
pub struct JwtVerifier {
    config: JwtAuth,
    providers: Box<[ProviderRt]>,
    optional: bool,
    /// The policy, for metrics.
    pub name: Box<str>,
    verified: papaya::HashMap<[u8; 32], Arc<Verified>, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtVerifier({})", self.name)
    }
}

impl JwtVerifier {
    pub fn build(config: JwtAuth) -> Result<JwtVerifier, JwtError> {
        if config.providers.is_empty() || config.providers.len() > MAX_PROVIDERS {
            return Err(JwtError::Providers);
        }
        let providers = config
            .providers
            .iter()
            .map(|p| {
                provider(p)
                    .map_err(|problem| JwtError::Provider(format!("{}: {problem}", p.name).into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(JwtVerifier {
            providers,
            optional: config.optional,
            name: config.name.as_str().into(),
            verified: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
            config,
        })
    }

    /// The first token one of the providers finds.
    pub fn find<'r>(&self, headers: &'r HeaderMap, query: Option<&'r str>) -> Option<Found<'r>> {
        self.providers.iter().enumerate().find_map(|(provider, p)| {
            p.places.iter().enumerate().find_map(|(place, at)| {
                let token = token_at(at, headers, query)?;
                Some(Found {
                    provider,
                    place,
                    token,
                    ambiguous: more_than_one(at, headers, query),
                })
            })
        })
    }

    /// The policy it was built from.
    pub fn config(&self) -> &JwtAuth {
        &self.config
    }

    /// Whether a request without a token passes.
    pub fn optional(&self) -> bool {
        self.optional
    }

    /// Verifies a found token (see the module's comment).
    pub async fn verify(&self, found: &Found<'_>) -> Result<Arc<Verified>, JwtFailure> {
        if found.ambiguous {
            return Err(JwtFailure::Malformed);
        }
        let p = &self.providers[found.provider];
        let now = unix_now();
        let digest = digest(found);
        let keys = match &p.keys {
            Keys::Local(keys) => Some(Arc::clone(keys)),
            Keys::Remote(remote) => remote.keys().await,
        };
        let keys = keys.ok_or(JwtFailure::KeysUnavailable)?;
        if let Some(v) = self.verified.pin().get(&digest)
            && v.generation == keys.generation
            && v.until > now
        {
            return Ok(Arc::clone(v));
        }
        let header = jsonwebtoken::decode_header(found.token).map_err(|_| JwtFailure::Malformed)?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(JwtFailure::Malformed);
        }
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let mut candidates = keys
            .candidates(header.kid.as_deref(), header.alg)
            .peekable();
        if candidates.peek().is_none() {
            if let (Keys::Remote(remote), Some(kid)) = (&p.keys, &header.kid)
                && !keys.has_kid(kid)
            {
                remote.unknown_key();
            }
            return Err(JwtFailure::UnknownKey);
        }
        let mut failure = JwtFailure::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(found.token, &key.key, &validation) {
                Ok(data) => {
                    let until = p
                        .checks
                        .check(&data.claims, now)
                        .map_err(JwtFailure::Claims)?;
                    let verified = Arc::new(Verified {
                        generation: keys.generation,
                        until,
                        headers: p
                            .claim_headers
                            .iter()
                            .filter_map(|h| Some((h.header.clone(), h.value(&data.claims)?)))
                            .collect(),
                        claims: data.claims,
                    });
                    self.remember(digest, &verified);
                    return Ok(verified);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        failure = JwtFailure::Malformed;
                    }
                }
            }
        }
        Err(failure)
    }

    fn remember(&self, digest: [u8; 32], verified: &Arc<Verified>) {
        let map = self.verified.pin();
        if map.len() >= MAX_VERIFIED {
            map.clear();
        }
        map.insert(digest, Arc::clone(verified));
    }

    /// The request target without the query parameters tokens may be in, when it has any and
    /// tokens are not forwarded: what the backend sees.
    pub fn without_credentials(&self, uri: &Uri) -> Option<Uri> {
        self.without_tokens(uri, false)
    }

    /// The request target without any query parameter a token may be in, forwarded or not:
    /// what the access log and redirects show.
    pub fn without_any_token(&self, uri: &Uri) -> Option<Uri> {
        self.without_tokens(uri, true)
    }

    fn without_tokens(&self, uri: &Uri, forwarded_too: bool) -> Option<Uri> {
        let params: Vec<Box<str>> = self
            .providers
            .iter()
            .filter(|p| forwarded_too || !p.forward_token)
            .flat_map(|p| p.places.iter())
            .filter_map(|place| match place {
                TokenPlace::Query(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        if params.is_empty() {
            return None;
        }
        without_params(uri, &params)
    }

    /// The request's fields as the backend gets them: every provider's claim headers
    /// removed, the verified token's set; the token itself removed unless its provider
    /// forwards it (a token in the query goes with [`JwtVerifier::without_credentials`]).
    pub fn prepare(&self, headers: &mut HeaderMap, verified: Option<(TokenAt, &Verified)>) {
        for h in self.providers.iter().flat_map(|p| p.claim_headers.iter()) {
            super::remove_field(headers, &h.header);
        }
        let Some((found, verified)) = verified else {
            return;
        };
        let p = &self.providers[found.provider];
        if !p.forward_token {
            match &p.places[found.place] {
                TokenPlace::Header { name, .. } => {
                    headers.remove(name);
                }
                TokenPlace::Cookie(name) => without_cookie(headers, name),
                TokenPlace::Query(_) => {}
            }
        }
        for (name, value) in verified.headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// One provider's runtime form.
fn provider(p: &JwtProvider) -> Result<ProviderRt, String> {
    let keys = match &p.keys {
        // No document: the controller found no JWK Set (a missing ConfigMap or Secret).
        Some(jwt_provider::Keys::LocalJwks(doc)) if doc.is_empty() => {
            Keys::Local(Arc::new(KeySet::empty()))
        }
        Some(jwt_provider::Keys::LocalJwks(doc)) => Keys::Local(Arc::new(
            KeySet::parse(doc.as_bytes(), 0).map_err(|e| e.to_string())?,
        )),
        Some(jwt_provider::Keys::RemoteJwks(r)) => {
            let uri: Uri = r
                .uri
                .parse()
                .map_err(|_| format!("invalid URL {:?}", r.uri))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!("{:?} is not an http or https URL", r.uri));
            }
            let refresh = r
                .refresh_interval
                .as_ref()
                .and_then(|d| std::time::Duration::try_from(*d).ok())
                .filter(|d| d.as_secs() >= 1)
                .ok_or("refresh_interval must be at least 1s")?;
            Keys::Remote(Arc::new(RemoteJwks::new(uri, refresh)))
        }
        None => return Err("no keys".into()),
    };
    let header = |h: &str| {
        HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("invalid header name {h:?}"))
    };
    let mut places = Vec::new();
    for s in &p.sources {
        places.push(match &s.source {
            Some(token_source::Source::Header(h)) => TokenPlace::Header {
                name: header(&h.name)?,
                prefix: h.value_prefix.as_str().into(),
            },
            Some(token_source::Source::Cookie(c)) => TokenPlace::Cookie(c.as_str().into()),
            Some(token_source::Source::QueryParam(q)) => TokenPlace::Query(q.as_str().into()),
            None => return Err("empty token source".into()),
        });
    }
    if places.is_empty() {
        places.push(TokenPlace::Header {
            name: header::AUTHORIZATION,
            prefix: "Bearer ".into(),
        });
    }
    let claim_headers = p
        .claim_to_headers
        .iter()
        .map(|c| {
            Ok(ClaimHeader {
                path: ClaimPath::new(&c.claim),
                header: header(&c.header)?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(ProviderRt {
        keys,
        places: places.into_boxed_slice(),
        checks: ClaimChecks {
            issuer: (!p.issuer.is_empty()).then(|| p.issuer.as_str().into()),
            audiences: p.audiences.iter().map(|a| a.as_str().into()).collect(),
            required: p
                .required_claims
                .iter()
                .map(|r| RequiredClaimRt {
                    path: ClaimPath::new(&r.name),
                    values: r.values.iter().map(|v| v.as_str().into()).collect(),
                })
                .collect(),
            skew: f64::from(p.clock_skew_seconds),
        },
        claim_headers,
        forward_token: p.forward_token,
    })
}

/// The token at a place, if there is a non-empty one.
fn token_at<'r>(
    place: &TokenPlace,
    headers: &'r HeaderMap,
    query: Option<&'r str>,
) -> Option<&'r str> {
    let token = match place {
        TokenPlace::Header { name, prefix } => {
            let value = headers.get(name)?.to_str().ok()?;
            let head = value.get(..prefix.len())?;
            if !head.eq_ignore_ascii_case(prefix) {
                return None;
            }
            value[prefix.len()..].trim()
        }
        TokenPlace::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (n, v) = pair.trim().split_once('=')?;
                (n == &**name).then_some(v)
            })?,
        TokenPlace::Query(name) => query_value(query?, name)?,
    };
    (!token.is_empty()).then_some(token)
}

/// Whether a place holds more than one value of its name.
fn more_than_one(place: &TokenPlace, headers: &HeaderMap, query: Option<&str>) -> bool {
    match place {
        TokenPlace::Header { name, .. } => headers.get_all(name).iter().nth(1).is_some(),
        TokenPlace::Cookie(name) => {
            let named = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter(|pair| pair.trim().split('=').next() == Some(&**name));
            named.count() > 1
        }
        TokenPlace::Query(name) => query.is_some_and(|q| {
            q.split('&')
                .filter(|pair| pair.split('=').next() == Some(&**name))
                .count()
                > 1
        }),
    }
}

/// Removes one cookie from the request's Cookie fields.
fn without_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        && !kept.is_empty()
    {
        headers.insert(header::COOKIE, v);
    }
}

fn digest(found: &Found<'_>) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[u8::try_from(found.provider).unwrap_or(u8::MAX)]);
    ctx.update(found.token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The filter: a rule's share of its policy's verifier.
#[derive(Debug)]
pub struct JwtAuthRt {
    pub verifier: Arc<JwtVerifier>,
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rauta_common::api::v1::{ClaimToHeader, TokenSource};
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    struct Signer {
        pkcs8: Vec<u8>,
        jwks: String,
    }

    fn signer() -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": x}]});
        Signer {
            pkcs8,
            jwks: jwks.to_string(),
        }
    }

    fn sign(s: &Signer, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some("k".into());
        let key = jsonwebtoken::EncodingKey::from_ed_der(&s.pkcs8);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn verifier(s: &Signer, sources: Vec<TokenSource>) -> JwtVerifier {
        JwtVerifier::build(JwtAuth {
            providers: vec![JwtProvider {
                name: "p".into(),
                issuer: "iss".into(),
                keys: Some(jwt_provider::Keys::LocalJwks(s.jwks.clone())),
                sources,
                claim_to_headers: vec![ClaimToHeader {
                    claim: "sub".into(),
                    header: "x-user".into(),
                }],
                ..Default::default()
            }],
            optional: false,
            name: "apps/jwt".into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_verified_token_is_remembered_until_it_expires() {
        let s = signer();
        let v = verifier(&s, Vec::new());
        let token = sign(
            &s,
            &json!({"iss": "iss", "sub": "alice", "exp": unix_now() + 60.0}),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("bearer {token}")).unwrap(),
        );
        headers.insert("x-user", HeaderValue::from_static("mallory"));
        let found = v.find(&headers, None).unwrap();
        let first = v.verify(&found).await.unwrap();
        let again = v.verify(&found).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second check is a lookup");
        let at = found.at();
        v.prepare(&mut headers, Some((at, &first)));
        assert_eq!(headers["x-user"], "alice");
        assert!(!headers.contains_key(header::AUTHORIZATION));

        // Remembered only while good: an entry past its time is checked again, and fails.
        let expired = sign(
            &s,
            &json!({"iss": "iss", "sub": "alice", "exp": unix_now() - 1.0}),
        );
        let found = Found {
            provider: 0,
            place: 0,
            token: &expired,
            ambiguous: false,
        };
        assert_eq!(
            v.verify(&found).await.err(),
            Some(JwtFailure::Claims(ClaimsFailure::Expired))
        );
        let stale = Arc::new(Verified {
            generation: 0,
            until: unix_now() - 1.0,
            headers: Box::new([]),
            claims: Map::new(),
        });
        v.remember(digest(&found), &stale);
        assert_eq!(
            v.verify(&found).await.err(),
            Some(JwtFailure::Claims(ClaimsFailure::Expired))
        );
    }

    #[tokio::test]
    async fn tokens_come_from_cookies_and_the_query_and_are_taken_out() {
        let s = signer();
        let sources = vec![
            TokenSource {
                source: Some(token_source::Source::Cookie("session".into())),
            },
            TokenSource {
                source: Some(token_source::Source::QueryParam("t".into())),
            },
        ];
        let v = verifier(&s, sources);
        let token = sign(&s, &json!({"iss": "iss", "sub": "bob"}));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; session={token}; b=2")).unwrap(),
        );
        let found = v.find(&headers, None).unwrap();
        let verified = v.verify(&found).await.unwrap();
        let at = found.at();
        v.prepare(&mut headers, Some((at, &verified)));
        assert_eq!(headers[header::COOKIE], "a=1; b=2");

        let uri: Uri = format!("/p?x=1&t={token}").parse().unwrap();
        let none = HeaderMap::new();
        let found = v.find(&none, uri.query()).unwrap();
        assert!(v.verify(&found).await.is_ok());
        assert_eq!(v.without_credentials(&uri).unwrap(), "/p?x=1");

        // A token of the wrong issuer, an empty cookie: refused, not found.
        let other = sign(&s, &json!({"iss": "elsewhere"}));
        let found = Found {
            provider: 0,
            place: 0,
            token: &other,
            ambiguous: false,
        };
        assert_eq!(
            v.verify(&found).await.err(),
            Some(JwtFailure::Claims(ClaimsFailure::Issuer))
        );
        let mut empty = HeaderMap::new();
        empty.insert(header::COOKIE, HeaderValue::from_static("session="));
        assert!(v.find(&empty, None).is_none());

        // Two tokens in one place: refused, whichever is valid.
        let mut two = HeaderMap::new();
        let both = format!("session={token}; session=forged");
        two.insert(header::COOKIE, HeaderValue::from_str(&both).unwrap());
        let found = v.find(&two, None).unwrap();
        assert_eq!(v.verify(&found).await.err(), Some(JwtFailure::Malformed));
        let twice: Uri = format!("/p?t={token}&t=x").parse().unwrap();
        let found = v.find(&none, twice.query()).unwrap();
        assert_eq!(v.verify(&found).await.err(), Some(JwtFailure::Malformed));
    }
}
