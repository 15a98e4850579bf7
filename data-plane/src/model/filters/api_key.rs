//! API keys (SecurityPolicy `apiKeyAuth`): a request must carry one of the keys, in one of the
//! configured headers or query parameters; the key's client id may be passed upstream, and
//! the key is removed before forwarding unless the policy forwards it. Keys arrive as SHA-256
//! digests: the request's key is hashed and looked up, so no key is ever compared byte by byte
//! (no timing to learn a key from) and no key is held in the proxy's memory.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use rauta_common::api::v1::ApiKeyAuth;

/// Why an ApiKeyAuth is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("api key auth: a key digest is not 32 bytes")]
    Digest,
    #[error("api key auth: invalid header name {0:?}")]
    Header(String),
    #[error("api key auth: client id {0:?} cannot be a header value")]
    ClientId(String),
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No key where the policy looks for one.
    Missing,
    /// A key that is none of the valid ones.
    Invalid,
}

impl AuthFailure {
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
        }
    }
}

#[derive(Debug)]
pub struct ApiKeyAuthRt {
    /// Client id (as a header value) by key digest.
    keys: HashMap<[u8; 32], HeaderValue>,
    headers: Box<[HeaderName]>,
    query_params: Box<[Box<str>]>,
    forward_client_id: Option<HeaderName>,
    forward_credentials: bool,
    /// The policy, for metrics.
    pub name: Box<str>,
}

impl ApiKeyAuthRt {
    pub fn build(a: &ApiKeyAuth) -> Result<ApiKeyAuthRt, ApiKeyError> {
        let header = |h: &str| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| ApiKeyError::Header(h.to_owned()))
        };
        let keys = a
            .credentials
            .iter()
            .map(|c| {
                let digest: [u8; 32] = c
                    .key_sha256
                    .as_slice()
                    .try_into()
                    .map_err(|_| ApiKeyError::Digest)?;
                let id = HeaderValue::from_str(&c.client_id)
                    .map_err(|_| ApiKeyError::ClientId(c.client_id.clone()))?;
                Ok((digest, id))
            })
            .collect::<Result<_, ApiKeyError>>()?;
        let mut headers: Vec<HeaderName> = a
            .headers
            .iter()
            .map(|h| header(h))
            .collect::<Result<_, _>>()?;
        if headers.is_empty() && a.query_params.is_empty() {
            headers.push(HeaderName::from_static("x-api-key"));
        }
        let forward_client_id = match a.forward_client_id_header.as_str() {
            "" => None,
            h => Some(header(h)?),
        };
        Ok(ApiKeyAuthRt {
            keys,
            headers: headers.into_boxed_slice(),
            query_params: a.query_params.iter().map(|p| p.as_str().into()).collect(),
            forward_client_id,
            forward_credentials: a.forward_credentials,
            name: a.name.as_str().into(),
        })
    }

    /// The client whose key the request carries (the first configured place holding a value
    /// decides), or why it is refused.
    pub fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<HeaderValue, AuthFailure> {
        // A key given twice in its place is refused: a backend forwarded the key might read
        // the other one.
        let mut twice = false;
        let from_header = self
            .headers
            .iter()
            .find(|h| headers.get(*h).is_some_and(|v| !v.is_empty()))
            .and_then(|h| {
                twice = headers.get_all(h).iter().nth(1).is_some();
                headers.get(h)
            })
            .map(HeaderValue::as_bytes);
        let key = from_header.or_else(|| {
            let query = query?;
            let param = self
                .query_params
                .iter()
                .find(|p| query_value(query, p).is_some_and(|v| !v.is_empty()))?;
            twice = query
                .split('&')
                .filter(|pair| pair.split('=').next() == Some(&**param))
                .count()
                > 1;
            query_value(query, param).map(str::as_bytes)
        });
        let key = key.ok_or(AuthFailure::Missing)?;
        if twice {
            return Err(AuthFailure::Invalid);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let digest: &[u8; 32] = digest
            .as_ref()
            .try_into()
            .map_err(|_| AuthFailure::Invalid)?;
        self.keys.get(digest).cloned().ok_or(AuthFailure::Invalid)
    }

    /// The request target without the query parameters a key may be in, when it has any:
    /// what the access log, redirects and (unless the policy forwards keys) the backend see.
    pub fn without_credentials(&self, uri: &Uri) -> Option<Uri> {
        if self.query_params.is_empty() {
            return None;
        }
        without_params(uri, &self.query_params)
    }

    /// The request as the backend gets it: the key removed (unless forwarded; `stripped` is
    /// [`ApiKeyAuthRt::without_credentials`]), the client's id set (whatever the client sent
    /// in that header is replaced).
    pub fn prepare(
        &self,
        headers: &mut HeaderMap,
        uri: &mut Uri,
        stripped: Option<&Uri>,
        client: HeaderValue,
    ) {
        if !self.forward_credentials {
            for h in self.headers.iter() {
                headers.remove(h);
            }
            if let Some(stripped) = stripped {
                *uri = stripped.clone();
            }
        }
        if let Some(h) = &self.forward_client_id {
            super::remove_field(headers, h);
            headers.insert(h.clone(), client);
        }
    }
}

/// The first value of query parameter `name`, as sent (not percent-decoded).
pub(super) fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// `uri` without the query parameters `names`; `None` when it has none of them.
pub(super) fn without_params(uri: &Uri, names: &[Box<str>]) -> Option<Uri> {
    let query = uri.query()?;
    let named = |pair: &str| names.iter().any(|n| pair.split('=').next() == Some(&**n));
    if !query.split('&').any(named) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !named(p)).collect();
    let target = match kept.is_empty() {
        true => uri.path().to_owned(),
        false => format!("{}?{}", uri.path(), kept.join("&")),
    };
    let mut parts = uri.clone().into_parts();
    // A target that does not parse again loses its whole query rather than keep a key.
    parts.path_and_query = target.parse().or_else(|_| uri.path().parse()).ok();
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use rauta_common::api::v1::ApiKeyCredential;

    use super::*;

    fn auth(params: &[&str]) -> ApiKeyAuthRt {
        let digest = ring::digest::digest(&ring::digest::SHA256, b"s3cret");
        ApiKeyAuthRt::build(&ApiKeyAuth {
            credentials: vec![ApiKeyCredential {
                client_id: "alice".into(),
                key_sha256: digest.as_ref().to_vec(),
            }],
            headers: vec!["x-api-key".into()],
            query_params: params.iter().map(|p| (*p).to_owned()).collect(),
            forward_client_id_header: "x-client-id".into(),
            forward_credentials: false,
            name: "apps/keys".into(),
        })
        .unwrap()
    }

    #[test]
    fn keys_are_found_checked_and_removed() {
        let a = auth(&["key"]);
        let mut h = HeaderMap::new();
        assert_eq!(a.check(&h, None), Err(AuthFailure::Missing));
        h.insert("x-api-key", HeaderValue::from_static("wrong"));
        assert_eq!(a.check(&h, None), Err(AuthFailure::Invalid));
        h.insert("x-api-key", HeaderValue::from_static("s3cret"));
        assert_eq!(a.check(&h, None).unwrap(), "alice");
        let empty = HeaderMap::new();
        assert_eq!(a.check(&empty, Some("a=1&key=s3cret")).unwrap(), "alice");
        assert_eq!(
            a.check(&empty, Some("keyx=s3cret")),
            Err(AuthFailure::Missing)
        );

        // Given twice: refused.
        let mut dup = HeaderMap::new();
        dup.append("x-api-key", HeaderValue::from_static("s3cret"));
        dup.append("x-api-key", HeaderValue::from_static("other"));
        assert_eq!(a.check(&dup, None), Err(AuthFailure::Invalid));
        assert_eq!(
            a.check(&empty, Some("key=s3cret&key=x")),
            Err(AuthFailure::Invalid)
        );

        // An empty header is no key: the query is looked at.
        let mut blank = HeaderMap::new();
        blank.insert("x-api-key", HeaderValue::from_static(""));
        assert_eq!(a.check(&blank, Some("key=s3cret")).unwrap(), "alice");

        let mut uri: Uri = "/p?a=1&key=s3cret&b=2".parse().unwrap();
        h.insert("x-client-id", HeaderValue::from_static("forged"));
        let stripped = a.without_credentials(&uri);
        a.prepare(
            &mut h,
            &mut uri,
            stripped.as_ref(),
            HeaderValue::from_static("alice"),
        );
        assert_eq!(uri, "/p?a=1&b=2");
        assert!(!h.contains_key("x-api-key"));
        assert_eq!(h["x-client-id"], "alice");
        let mut only: Uri = "/p?key=s3cret".parse().unwrap();
        let stripped = a.without_credentials(&only);
        a.prepare(
            &mut h,
            &mut only,
            stripped.as_ref(),
            HeaderValue::from_static("alice"),
        );
        assert_eq!(only, "/p");
        assert_eq!(a.without_credentials(&"/p?a=1".parse().unwrap()), None);
    }

    #[test]
    fn a_digest_of_the_wrong_size_is_refused() {
        let bad = ApiKeyAuth {
            credentials: vec![ApiKeyCredential {
                client_id: "x".into(),
                key_sha256: vec![1, 2, 3],
            }],
            ..Default::default()
        };
        assert!(matches!(
            ApiKeyAuthRt::build(&bad),
            Err(ApiKeyError::Digest)
        ));
    }
}
