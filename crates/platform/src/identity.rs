//! Service identity: how one service proves who it is to another.
//!
//! A calling service signs its own short-lived JWT (ES256) with its private key: subject
//! `service:<name>`, the tenant of the request it serves, and only the scopes the callee's
//! contract demands for the RPC it calls (read from the callee's `(commerce.api.v1.rpc).auth`,
//! never granted wholesale). The callee verifies it like any other token, through the JWKS it is
//! configured with (`--jwks-file`), which lists the public keys of the services it trusts. A
//! user's token is never forwarded: a service calls as itself.
//!
//! Tokens are cached per (tenant, scopes) and renewed well before they expire, so signing is not
//! on every call's path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Why a service identity cannot be built or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The private key is not a PKCS#8 PEM EC P-256 key.
    #[error("service key: {0}")]
    Key(String),
    /// Signing failed.
    #[error("signing a service token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The claims of a service token.
#[derive(Debug, Serialize)]
struct ServiceClaims<'a> {
    sub: &'a str,
    tenant: &'a str,
    scope: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// A service's signing identity.
pub struct ServiceIdentity {
    subject: String,
    header: Header,
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    lifetime: Duration,
    /// (tenant, scopes) → the token and when to sign a new one.
    cache: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl std::fmt::Debug for ServiceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceIdentity")
            .field("subject", &self.subject)
            .field("kid", &self.header.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl ServiceIdentity {
    /// Service `name` signing with the EC P-256 private key `pem` (PKCS#8), published in the
    /// callees' JWKS under key id `kid`.
    pub fn from_pem(name: &str, kid: &str, pem: &[u8]) -> Result<Self, IdentityError> {
        let key =
            EncodingKey::from_ec_pem(pem).map_err(|error| IdentityError::Key(error.to_string()))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        Ok(ServiceIdentity {
            subject: format!("service:{name}"),
            header,
            key,
            issuer: None,
            audience: None,
            lifetime: Duration::from_secs(300),
            cache: Mutex::default(),
        })
    }

    /// Tokens carry this issuer and audience (what the callees require, if anything).
    pub fn with_issuer_and_audience(
        mut self,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Self {
        self.issuer = issuer;
        self.audience = audience;
        self
    }

    /// Tokens live this long (default 5 minutes); a new one is signed after half of it.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.max(Duration::from_secs(2));
        self
    }

    /// `service:<name>`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// A token for `tenant` carrying exactly `scopes` (the callee's contract demands for the RPC
    /// about to be called).
    pub fn token(&self, tenant: &str, scopes: &[String]) -> Result<String, IdentityError> {
        let mut sorted = scopes.to_vec();
        sorted.sort();
        sorted.dedup();
        let scope = sorted.join(" ");
        let cache_key = (tenant.to_owned(), scope.clone());
        let now = Instant::now();
        {
            let cache = self
                .cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((token, renew_at)) = cache.get(&cache_key)
                && *renew_at > now
            {
                return Ok(token.clone());
            }
        }
        let issued = unix_now();
        let claims = ServiceClaims {
            sub: &self.subject,
            tenant,
            scope,
            iat: issued,
            nbf: issued,
            exp: issued + self.lifetime.as_secs(),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key)?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Bounded: a service serves few tenants per process lifetime, but never let it grow.
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(cache_key, (token.clone(), now + self.lifetime / 2));
        Ok(token)
    }
}

/// The key id a service's key is published under: `<service>-<16 hex digits>`, the digits from
/// the SHA-256 of its public key. Derived from the key itself, so a service's old and new keys
/// have different ids and can both be in the callees' JWKS while a rotation rolls out, and a
/// process needs nothing besides its PEM to name its key.
pub fn key_id(service: &str, pem: &[u8]) -> Result<String, IdentityError> {
    use p256::pkcs8::DecodePrivateKey as _;
    let text = std::str::from_utf8(pem).map_err(|error| IdentityError::Key(error.to_string()))?;
    let secret = p256::SecretKey::from_pkcs8_pem(text)
        .map_err(|error| IdentityError::Key(error.to_string()))?;
    Ok(key_id_of(service, &secret.public_key()))
}

fn key_id_of(service: &str, public: &p256::PublicKey) -> String {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(public.to_encoded_point(false).as_bytes());
    let hex: String = digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{service}-{hex}")
}

/// A new ES256 key pair for `service`: the private key as PKCS#8 PEM (keep it secret) and the
/// public key as a JWK under its [`key_id`] (put it in the callees' JWKS).
pub fn generate_es256(service: &str) -> Result<(String, serde_json::Value), IdentityError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|error| IdentityError::Key(error.to_string()))?
        .to_string();
    let public = secret.public_key();
    let point = public.to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err(IdentityError::Key("public key has no coordinates".into()));
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "alg": "ES256",
        "use": "sig",
        "kid": key_id_of(service, &public),
        "x": b64.encode(x),
        "y": b64.encode(y),
    });
    Ok((pem, jwk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interceptors::{AuthConfig, Authenticate};

    fn verifier(jwks: &[serde_json::Value]) -> Authenticate {
        Authenticate::new(&AuthConfig {
            jwks_json: Some(serde_json::json!({ "keys": jwks }).to_string()),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_service_token_verifies_with_its_public_key_and_carries_only_the_scopes_asked_for() {
        let (pem, jwk) = generate_es256("checkout").unwrap();
        let kid = key_id("checkout", pem.as_bytes()).unwrap();
        assert_eq!(
            jwk["kid"],
            kid.as_str(),
            "the JWK and the PEM name the key alike"
        );
        let identity = ServiceIdentity::from_pem("checkout", &kid, pem.as_bytes()).unwrap();
        let scopes = vec![
            "loyalty.redemptions.write".to_owned(),
            "loyalty.members.read".to_owned(),
        ];
        let token = identity.token("tenant-a", &scopes).unwrap();
        let principal = verifier(&[jwk]).verify(&token).unwrap();
        assert_eq!(principal.subject, "service:checkout");
        assert_eq!(principal.tenant, "tenant-a");
        assert_eq!(
            principal.scopes.into_iter().collect::<Vec<_>>(),
            ["loyalty.members.read", "loyalty.redemptions.write"]
        );
        assert_eq!(
            identity.token("tenant-a", &scopes).unwrap(),
            token,
            "cached until half its lifetime"
        );
        assert_ne!(identity.token("tenant-b", &scopes).unwrap(), token);
    }

    #[test]
    fn a_token_signed_by_another_service_key_is_refused() {
        let (pem, _) = generate_es256("checkout").unwrap();
        let (_, trusted) = generate_es256("checkout").unwrap();
        // Even under the trusted key's id, the signature gives it away.
        let trusted_kid = trusted["kid"].as_str().unwrap().to_owned();
        let forged = ServiceIdentity::from_pem("checkout", &trusted_kid, pem.as_bytes())
            .unwrap()
            .token("tenant-a", &["loyalty.admin".to_owned()])
            .unwrap();
        let refused = verifier(&[trusted]).verify(&forged).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    /// Rotation: while the JWKS lists a service's old and new keys (different ids, same
    /// service), tokens signed with either verify; once the old one is removed, only the new.
    #[test]
    fn a_service_key_rotates_with_both_keys_published_during_the_rollout() {
        let (old_pem, old_jwk) = generate_es256("checkout").unwrap();
        let (new_pem, new_jwk) = generate_es256("checkout").unwrap();
        assert_ne!(old_jwk["kid"], new_jwk["kid"]);
        let token = |pem: &str| {
            let kid = key_id("checkout", pem.as_bytes()).unwrap();
            ServiceIdentity::from_pem("checkout", &kid, pem.as_bytes())
                .unwrap()
                .token("tenant-a", &["loyalty.members.read".to_owned()])
                .unwrap()
        };
        let both = verifier(&[old_jwk, new_jwk.clone()]);
        assert!(both.verify(&token(&old_pem)).is_ok());
        assert!(both.verify(&token(&new_pem)).is_ok());
        let only_new = verifier(&[new_jwk]);
        assert!(only_new.verify(&token(&old_pem)).is_err());
        assert!(only_new.verify(&token(&new_pem)).is_ok());
    }

    #[test]
    fn a_key_that_is_not_an_ec_private_key_is_refused_at_start() {
        assert!(matches!(
            ServiceIdentity::from_pem("checkout", "k", b"not a key"),
            Err(IdentityError::Key(_))
        ));
    }
}
