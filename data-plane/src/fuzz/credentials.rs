//! The `credentials` fuzz target: what a SecurityPolicy reads from a request (the path in
//! normal form, API keys, Basic credentials, JWTs from headers, cookies and the query, the
//! client address through X-Forwarded-For), checked and prepared for forwarding against fixed
//! policies. None may panic; path normalization must be idempotent and leave no dot segment or
//! repeated slash.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use rauta_common::api::v1::{
    ApiKeyAuth, ApiKeyCredential, Authorization, AuthorizationRule, BasicAuth, BasicAuthUser,
    HeaderToken, JwtAuth, JwtProvider, RequiredClaim, TokenSource, jwt_provider, token_source,
};
use rauta_common::paths;
use tokio::runtime::Runtime;

use crate::model::filters::authorization::Asking;
use crate::model::filters::jwt::JwtVerifier;
use crate::model::filters::{ApiKeyAuthRt, AuthorizationRt, BasicAuthRt};

struct Policies {
    api_keys: ApiKeyAuthRt,
    basic: BasicAuthRt,
    jwt: JwtVerifier,
    authorization: AuthorizationRt,
    runtime: Runtime,
}

static POLICIES: LazyLock<Option<Policies>> = LazyLock::new(|| {
    let digest = ring::digest::digest(&ring::digest::SHA256, b"key");
    let api_keys = ApiKeyAuthRt::build(&ApiKeyAuth {
        credentials: vec![ApiKeyCredential {
            client_id: "c".into(),
            key_sha256: digest.as_ref().to_vec(),
        }],
        headers: vec!["x-api-key".into()],
        query_params: vec!["key".into()],
        forward_client_id_header: "x-client-id".into(),
        ..Default::default()
    })
    .ok()?;
    let basic = BasicAuthRt::build(&BasicAuth {
        users: vec![BasicAuthUser {
            username: "u".into(),
            // SHA-1 of "p": bcrypt would make every input cost milliseconds.
            password_hash: "{SHA}UWuXg/ylF+7L0dBk2i0WUxCxl1k=".into(),
        }],
        forward_username_header: "x-user".into(),
        ..Default::default()
    })
    .ok()?;
    let source = |s| TokenSource { source: Some(s) };
    let jwt = JwtVerifier::build(JwtAuth {
        providers: vec![JwtProvider {
            name: "p".into(),
            issuer: "i".into(),
            audiences: vec!["a".into()],
            // RFC 8037's example Ed25519 public key.
            keys: Some(jwt_provider::Keys::LocalJwks(
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#.into(),
            )),
            sources: vec![
                source(token_source::Source::Header(HeaderToken {
                    name: "authorization".into(),
                    value_prefix: "Bearer ".into(),
                })),
                source(token_source::Source::Cookie("session".into())),
                source(token_source::Source::QueryParam("token".into())),
            ],
            claim_to_headers: vec![rauta_common::api::v1::ClaimToHeader {
                claim: "org.team".into(),
                header: "x-team".into(),
            }],
            required_claims: vec![RequiredClaim {
                name: "scope".into(),
                values: vec!["read".into()],
            }],
            ..Default::default()
        }],
        optional: true,
        name: "fuzz/jwt".into(),
    })
    .ok()?;
    let authorization = AuthorizationRt::build(&Authorization {
        rules: vec![AuthorizationRule {
            name: "r".into(),
            client_cidrs: vec!["10.0.0.0/8".into()],
            path_prefixes: vec!["/admin".into()],
            methods: vec!["GET".into()],
            ..Default::default()
        }],
        xff_trusted_hops: 2,
        ..Default::default()
    })
    .ok()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    Some(Policies {
        api_keys,
        basic,
        jwt,
        authorization,
        runtime,
    })
});

/// Input: the request target on the first line, then `name: value` header lines.
pub fn credentials(data: &[u8]) {
    let Some(p) = POLICIES.as_ref() else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    // An invalid path is refused at admission; the checks below read it as it is then.
    let normalized = paths::normalized(path);
    let once = normalized
        .clone()
        .unwrap_or(std::borrow::Cow::Borrowed(path));
    if let Some(once) = &normalized {
        let twice = paths::normalized(once);
        assert_eq!(Some(once), twice.as_ref(), "normalizing {path:?} twice");
    }
    if path.starts_with('/') && normalized.is_some() {
        assert!(
            !once.contains("//") && !paths::has_dot_segments(&once),
            "{path:?} -> {once:?}"
        );
    }
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(n, v);
        }
    }
    let uri: Option<Uri> = target.parse().ok();
    let query = uri.as_ref().and_then(Uri::query);
    if let (Ok(client), Some(uri)) = (p.api_keys.check(&headers, query), &uri) {
        let mut prepared = headers.clone();
        let mut forwarded = uri.clone();
        let stripped = p.api_keys.without_credentials(uri);
        p.api_keys
            .prepare(&mut prepared, &mut forwarded, stripped.as_ref(), client);
    }
    p.runtime.block_on(async {
        if let Ok(user) = p.basic.check(&headers).await {
            p.basic.prepare(&mut headers.clone(), user);
        }
        if let Some(found) = p.jwt.find(&headers, query) {
            let verified = p.jwt.verify(&found).await;
            let at = found.at();
            if let Ok(v) = &verified {
                p.jwt.prepare(&mut headers.clone(), Some((at, v)));
            }
        }
    });
    if let Some(uri) = &uri {
        let _ = p.jwt.without_any_token(uri);
    }
    let asking = Asking {
        peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        headers: &headers,
        method: "GET",
        path: &once,
        claims: None,
    };
    let _ = p.authorization.decide(&asking);
}
