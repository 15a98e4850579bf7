//! JSON Web Tokens for tests: signing keys of each kind the proxy verifies (RS256 with a
//! committed test-only key, ES256 and EdDSA made anew per run), their JWK Set, and a small
//! HTTP server that serves a JWK Set which a test can change (key rotation) or break.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A 2048-bit RSA key made for these tests only (PKCS#1 DER): it signs test tokens, nothing
/// else. RSA keys cannot be made with ring, hence committed.
const TEST_RSA_DER: &[u8] = include_bytes!("../testdata/jwt-test-rsa.der");

/// A key that signs tokens, with its public JWK.
pub struct SigningKey {
    pub kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    pub fn rsa(kid: &str) -> SigningKey {
        let pair = signature::RsaKeyPair::from_der(TEST_RSA_DER).expect("test RSA key");
        let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(TEST_RSA_DER),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": URL_SAFE_NO_PAD.encode(trim(&public.n)), "e": URL_SAFE_NO_PAD.encode(trim(&public.e))}),
        }
    }

    pub fn es256(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("P-256");
        // Uncompressed point: 0x04, x, y.
        let point = pair.public_key().as_ref();
        SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}),
        }
    }

    pub fn ed25519(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519");
        SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())}),
        }
    }

    /// A token with these claims, signed by this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing a test token")
    }

    pub fn jwk(&self) -> &Value {
        &self.jwk
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[zeros..]
}

/// A JWK Set of these keys, as JSON text.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>()}).to_string()
}

/// Seconds since the Unix epoch, `offset` from now.
pub fn unix_time(offset: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(now).unwrap_or(i64::MAX) + offset
}

/// An HTTP server answering every request with the current document (status 200), or 500
/// when it is `None`; counts the requests it had.
pub struct JwksServer {
    pub addr: SocketAddr,
    document: Arc<Mutex<Option<String>>>,
    requests: Arc<Mutex<usize>>,
}

impl JwksServer {
    pub async fn start(document: &str) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let document = Arc::new(Mutex::new(Some(document.to_owned())));
        let requests = Arc::new(Mutex::new(0));
        let (doc, count) = (Arc::clone(&document), Arc::clone(&requests));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (doc, count) = (Arc::clone(&doc), Arc::clone(&count));
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut read = 0;
                    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                    }
                    *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    let current = doc.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let (status, body) = match current {
                        Some(d) => ("200 OK", d),
                        None => ("500 Internal Server Error", String::new()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                });
            }
        });
        JwksServer {
            addr,
            document,
            requests,
        }
    }

    /// Serves `document` from now on; `None`: answers 500.
    pub fn set(&self, document: Option<&str>) {
        *self.document.lock().unwrap_or_else(|e| e.into_inner()) = document.map(str::to_owned);
    }

    pub fn requests(&self) -> usize {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }
}
