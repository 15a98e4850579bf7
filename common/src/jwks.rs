//! The public keys of a JWK Set (RFC 7517) that JWT signatures are verified with: the
//! controller checks a policy's keys with this, the proxy verifies with what it makes.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Why a JWK Set is not usable.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWK Set is not JSON with a \"keys\" array: {0}")]
    Json(String),
    #[error("JWK Set has no usable key (RSA, EC P-256/P-384 or Ed25519 public keys)")]
    NoKeys,
}

/// Which algorithms a key verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// One public key.
pub struct PublicKey {
    kid: Option<Box<str>>,
    /// The key's own `alg`, when it names one: tokens must use it.
    alg: Option<Algorithm>,
    kind: KeyKind,
    pub key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({:?}, {:?})", self.kid, self.kind)
    }
}

/// The usable keys of a JWK Set.
#[derive(Debug)]
pub struct KeySet {
    keys: Box<[PublicKey]>,
    /// Which set this is, among those of its provider: tokens verified with an earlier set
    /// are verified again.
    pub generation: u64,
    /// Keys the set had that are not usable (other kinds, private or symmetric keys).
    pub skipped: usize,
}

impl KeySet {
    /// The usable keys of a JWK Set document. Keys of other kinds are skipped, not refused:
    /// a provider may publish keys for other uses too.
    pub fn parse(document: &[u8], generation: u64) -> Result<KeySet, JwksError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document =
            serde_json::from_slice(document).map_err(|e| JwksError::Json(e.to_string()))?;
        let total = doc.keys.len();
        let keys: Vec<PublicKey> = doc.keys.iter().filter_map(public_key).collect();
        if keys.is_empty() {
            return Err(JwksError::NoKeys);
        }
        Ok(KeySet {
            skipped: total - keys.len(),
            keys: keys.into_boxed_slice(),
            generation,
        })
    }

    /// A JWK Set document with only the keys [`KeySet::parse`] would use: what the controller
    /// sends the proxies, so that a private or symmetric key someone pasted in by mistake
    /// goes nowhere (and shows nowhere). Fails as `parse` does.
    pub fn public_document(document: &[u8]) -> Result<String, JwksError> {
        let doc: serde_json::Value =
            serde_json::from_slice(document).map_err(|e| JwksError::Json(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| JwksError::Json("no \"keys\" array".into()))?;
        let usable: Vec<&serde_json::Value> =
            keys.iter().filter(|k| public_key(k).is_some()).collect();
        if usable.is_empty() {
            return Err(JwksError::NoKeys);
        }
        Ok(serde_json::json!({ "keys": usable }).to_string())
    }

    /// A set without keys: a provider whose JWK Set is missing, whose tokens are all refused.
    pub fn empty() -> KeySet {
        KeySet {
            keys: Box::new([]),
            generation: 0,
            skipped: 0,
        }
    }

    /// The keys that may have signed a token with this header: the one its `kid` names, or
    /// without a `kid` every key of the algorithm's kind.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a PublicKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.kind.verifies(alg)
                && k.alg.is_none_or(|a| a == alg)
                && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
        })
    }

    /// Whether the set has a key of this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// A JWK of a kind we verify with, as a public key. Private members (`d`) and symmetric keys
/// are not taken: a token must never verify with a key that could also sign it here.
fn public_key(value: &serde_json::Value) -> Option<PublicKey> {
    if value.get("d").is_some() {
        return None;
    }
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKeyPair(_) | AlgorithmParameters::OctetKey(_) => return None,
    };
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(signing_algorithm(a)?),
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(PublicKey {
        kid: jwk.common.key_id.map(Into::into),
        alg,
        kind,
        key,
    })
}

/// The signing algorithm a JWK's `alg` names; `None` for encryption algorithms.
fn signing_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_signing_keys_of_known_kinds_are_taken() {
        let doc = br#"{"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "private", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "XYZ", "kid": "strange"}
        ]}"#;
        let set = KeySet::parse(doc, 1).unwrap();
        assert_eq!(set.skipped, 4);
        assert!(set.has_kid("ed"));
        assert!(!set.has_kid("hmac"));
        assert_eq!(set.candidates(Some("ed"), Algorithm::EdDSA).count(), 1);
        assert_eq!(set.candidates(None, Algorithm::EdDSA).count(), 1);
        assert_eq!(set.candidates(Some("ed"), Algorithm::RS256).count(), 0);
        assert_eq!(set.candidates(Some("hmac"), Algorithm::HS256).count(), 0);
        assert!(matches!(
            KeySet::parse(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#, 1),
            Err(JwksError::NoKeys)
        ));
        assert!(matches!(
            KeySet::parse(b"not json", 1),
            Err(JwksError::Json(_))
        ));
        let public = KeySet::public_document(doc).unwrap();
        assert!(public.contains("\"ed\"") && !public.contains("hmac") && !public.contains("nWGx"));
        assert_eq!(KeySet::parse(public.as_bytes(), 1).unwrap().skipped, 0);
    }
}
