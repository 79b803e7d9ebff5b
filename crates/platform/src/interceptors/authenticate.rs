//! JWT bearer authentication: HS256 with a shared secret (local use) and RS256/ES256 with public
//! keys from a JWKS document. A valid token becomes a [`Principal`]; a bad one is refused here
//! with UNAUTHENTICATED. Whether a token is *required* is the authorization layer's call.
//!
//! Time claims, each with [`CLOCK_LEEWAY_SECONDS`] of leeway for clocks that disagree a little:
//! `exp` in the past → `TOKEN_EXPIRED` (getting a fresh token helps); `nbf` in the future or
//! `iat` in the future → `TOKEN_INVALID` (the token is not usable as issued — a fresh one from the
//! same issuer would be no better; the issuer's clock or the token is wrong).

use commerce_api::commerce::common::v1::ErrorReason;
use std::collections::BTreeSet;
use std::fmt;

use http::Request;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Serialize};
use tonic::body::Body;
use tonic::{Code, Status};

use super::check::Check;
use super::context::Principal;
use super::errors;
use super::policy::PLATFORM_ERROR_DOMAIN;

/// Which tokens are accepted.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens (local development); `None` refuses HS256.
    pub hs256_secret: Option<Vec<u8>>,
    /// JWKS document (JSON) with the RS256/ES256 public keys accepted.
    pub jwks_json: Option<String>,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "jwks_json",
                &self
                    .jwks_json
                    .as_ref()
                    .map(|jwks| format!("<{} bytes>", jwks.len())),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Why an [`AuthConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The JWKS document is not valid.
    #[error("invalid JWKS: {0}")]
    Jwks(String),
    /// Neither a secret nor a JWKS was given.
    #[error("no token verification key configured (set an HS256 secret or a JWKS)")]
    NoKeys,
}

/// Claims the platform reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Subject: the caller.
    pub sub: String,
    /// Tenant the caller acts for.
    pub tenant: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
}

/// Longest customer id a token may name: the contracts cap `customer_id` fields at 64.
const MAX_CUSTOMER_ID_LEN: usize = 64;

/// Seconds by which a token's time claims may disagree with this server's clock.
const CLOCK_LEEWAY_SECONDS: u64 = 5;

/// What is decoded from a token: the claims the platform uses and the time claims it checks.
#[derive(Deserialize)]
struct TokenClaims {
    #[serde(flatten)]
    claims: Claims,
    /// Issued at (seconds since the epoch; a JSON number, possibly fractional).
    #[serde(default)]
    iat: Option<f64>,
    /// The customer a customer token acts for ([`CUSTOMER_ID_CLAIM`]); absent on staff and
    /// service tokens.
    #[serde(default)]
    customer_id: Option<String>,
}

/// The claim that makes a token a customer token: its value is the customer's id (the same id
/// carts, orders, members and subscriptions carry as `customer_id`). A token with it may call only
/// the methods the contract opens to customers (`(commerce.api.v1.rpc).auth.customer`), for that
/// customer's own objects. `sub` stays the caller's identity (e.g. `customer:<id>`).
pub const CUSTOMER_ID_CLAIM: &str = "customer_id";

struct JwksKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Authenticate {
    inner: std::sync::Arc<Keys>,
    verified: std::sync::Arc<Verified>,
}

/// Tokens verified recently, by the SHA-256 of the whole token (header, claims and signature),
/// so a caller that sends the same token on every call pays for its signature and claims once.
/// A token that was never verified — a forged or altered one, whose bytes differ — cannot match
/// an entry. An entry dies at its token's `exp` (without the leeway); the keys are fixed for the
/// process's life, so a revoked signing key is dropped by restarting with a new JWKS, which
/// starts with an empty cache. Bounded: when full it is emptied (a burst of new tokens only costs
/// their verification, as without the cache).
struct Verified {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Principal, u64)>>,
}

/// Most tokens kept verified at once (one per active caller; ~200 bytes each).
const VERIFIED_CAPACITY: usize = 10_000;

impl Verified {
    fn get(&self, digest: &[u8; 32], now: u64) -> Option<Principal> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match entries.get(digest) {
            Some((principal, exp)) if *exp > now => Some(principal.clone()),
            Some(_) => {
                entries.remove(digest);
                None
            }
            None => None,
        }
    }

    fn put(&self, digest: [u8; 32], principal: &Principal, exp: u64) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= VERIFIED_CAPACITY {
            entries.clear();
        }
        entries.insert(digest, (principal.clone(), exp));
    }
}

struct Keys {
    hs256: Option<DecodingKey>,
    jwks: Vec<JwksKey>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Authenticate {
    /// Builds the verifier; fails on a bad JWKS or when no key is configured.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let mut jwks = Vec::new();
        if let Some(json) = &config.jwks_json {
            let set: JwkSet =
                serde_json::from_str(json).map_err(|err| AuthConfigError::Jwks(err.to_string()))?;
            for jwk in &set.keys {
                let algorithm = match jwk
                    .common
                    .key_algorithm
                    .map(|alg| alg.to_string())
                    .as_deref()
                {
                    Some("RS256") => Algorithm::RS256,
                    Some("ES256") => Algorithm::ES256,
                    other => {
                        return Err(AuthConfigError::Jwks(format!(
                            "unsupported key algorithm {other:?}; use RS256 or ES256"
                        )));
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|err| AuthConfigError::Jwks(err.to_string()))?;
                jwks.push(JwksKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                });
            }
        }
        let hs256 = config.hs256_secret.as_deref().map(DecodingKey::from_secret);
        if hs256.is_none() && jwks.is_empty() {
            return Err(AuthConfigError::NoKeys);
        }
        Ok(Authenticate {
            inner: std::sync::Arc::new(Keys {
                hs256,
                jwks,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
            }),
            verified: std::sync::Arc::new(Verified {
                entries: std::sync::Mutex::default(),
            }),
        })
    }

    /// Verifies one token: from the cache of verified tokens when it is there and unexpired,
    /// else by its signature and claims (and then cached).
    pub fn verify(&self, token: &str) -> Result<Principal, Status> {
        use sha2::{Digest as _, Sha256};
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(principal) = self.verified.get(&digest, now) {
            return Ok(principal);
        }
        let (principal, exp) = self.verify_signed(token)?;
        self.verified.put(digest, &principal, exp);
        Ok(principal)
    }

    /// Verifies one token's signature and claims; returns its principal and `exp`.
    fn verify_signed(&self, token: &str) -> Result<(Principal, u64), Status> {
        let keys = &self.inner;
        let invalid = |message: &str| {
            errors::status(
                Code::Unauthenticated,
                ErrorReason::TokenInvalid,
                PLATFORM_ERROR_DOMAIN,
                message,
            )
        };
        // An unknown `alg` (including "none") fails to parse here.
        let header = decode_header(token)
            .map_err(|_| invalid("malformed token or unsupported algorithm"))?;
        let key = match header.alg {
            Algorithm::HS256 => keys
                .hs256
                .as_ref()
                .ok_or_else(|| invalid("HS256 tokens are not accepted"))?,
            Algorithm::RS256 | Algorithm::ES256 => keys
                .jwks
                .iter()
                .find(|key| {
                    key.algorithm == header.alg && (header.kid.is_none() || key.kid == header.kid)
                })
                .map(|key| &key.key)
                .ok_or_else(|| invalid("token signed with an unknown key"))?,
            _ => return Err(invalid("token algorithm not accepted")),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = CLOCK_LEEWAY_SECONDS;
        // Off by default in jsonwebtoken: a token that is not valid yet must not be accepted.
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss`/`aud` only when the token has them: a configured issuer or
        // audience must also make the claim required, or a token that leaves it out passes.
        let mut required = vec!["exp"];
        if let Some(issuer) = &keys.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &keys.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let TokenClaims {
            claims,
            iat,
            customer_id,
        } = decode::<TokenClaims>(token, key, &validation)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => errors::status(
                    Code::Unauthenticated,
                    ErrorReason::TokenExpired,
                    PLATFORM_ERROR_DOMAIN,
                    "token expired",
                ),
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    invalid("token not valid yet: its nbf is in the future")
                }
                _ => invalid("token signature or claims invalid"),
            })?
            .claims;
        let latest_issue = jsonwebtoken::get_current_timestamp() + CLOCK_LEEWAY_SECONDS;
        if iat.is_some_and(|iat| iat > latest_issue as f64) {
            return Err(invalid(
                "token issued in the future: its iat is ahead of this server's clock",
            ));
        }
        if claims.tenant.is_empty() || claims.sub.is_empty() {
            return Err(invalid("token lacks a sub or tenant claim"));
        }
        // An empty or oversized customer id would match no object (or every object without
        // one): refuse the token rather than guess what it means.
        if customer_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > MAX_CUSTOMER_ID_LEN)
        {
            return Err(invalid("token's customer_id claim is empty or too long"));
        }
        let exp = claims.exp;
        let principal = Principal {
            subject: claims.sub,
            tenant: claims.tenant,
            scopes: claims
                .scope
                .split_whitespace()
                .map(str::to_owned)
                .collect::<BTreeSet<_>>(),
            customer: customer_id,
        };
        Ok((principal, exp))
    }
}

impl Check for Authenticate {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        // Health and reflection read no token: verifying one a probe or a client library sends
        // anyway would be work for nothing.
        if request
            .extensions()
            .get::<std::sync::Arc<super::policy::MethodPolicy>>()
            .is_some_and(|policy| policy.infrastructure)
        {
            return Ok(());
        }
        let Some(header) = request.headers().get(http::header::AUTHORIZATION) else {
            return Ok(());
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                errors::status(
                    Code::Unauthenticated,
                    ErrorReason::TokenInvalid,
                    PLATFORM_ERROR_DOMAIN,
                    "authorization must be `Bearer <token>`",
                )
            })?;
        let principal = self.verify(token.trim())?;
        request.extensions_mut().insert(principal);
        Ok(())
    }
}

/// Mints an HS256 token, for local development and tests (`commerce token`): `claims` is a
/// [`Claims`], or any claim set that includes one (e.g. with `iss`/`aud` added).
pub fn mint_hs256(
    secret: &[u8],
    claims: &impl serde::Serialize,
) -> Result<String, jsonwebtoken::errors::Error> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret";

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> Authenticate {
        Authenticate::new(&AuthConfig {
            hs256_secret: Some(SECRET.into()),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn token(extra: serde_json::Value) -> String {
        let mut claims = serde_json::json!({
            "sub": "s",
            "tenant": "t",
            "exp": jsonwebtoken::get_current_timestamp() + 300,
        });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        mint_hs256(SECRET.as_bytes(), &claims).unwrap()
    }

    /// A configured issuer or audience is required, not only checked when present: a token that
    /// leaves the claim out is refused like one that names another.
    #[test]
    fn a_required_issuer_and_audience_refuse_tokens_without_them() {
        let strict = verifier(Some("https://id.example"), Some("commerce"));
        let right = serde_json::json!({"iss": "https://id.example", "aud": "commerce"});
        assert!(strict.verify(&token(right)).is_ok());
        for wrong in [
            serde_json::json!({}),
            serde_json::json!({"aud": "commerce"}),
            serde_json::json!({"iss": "https://id.example"}),
            serde_json::json!({"iss": "https://other.example", "aud": "commerce"}),
            serde_json::json!({"iss": "https://id.example", "aud": "other"}),
        ] {
            let refused = strict.verify(&token(wrong.clone())).unwrap_err();
            assert_eq!(refused.code(), Code::Unauthenticated, "{wrong}");
        }
        // Without them configured, tokens need neither.
        assert!(
            verifier(None, None)
                .verify(&token(serde_json::json!({})))
                .is_ok()
        );
    }

    /// `customer_id` makes a customer token; an empty or oversized one names nobody (or, compared
    /// with objects that carry no customer, everybody), so the token is refused.
    #[test]
    fn a_customer_token_names_its_customer_and_an_empty_one_is_refused() {
        let verifier = verifier(None, None);
        let principal = verifier
            .verify(&token(serde_json::json!({"customer_id": "cust-ada"})))
            .unwrap();
        assert_eq!(principal.customer.as_deref(), Some("cust-ada"));
        let staff = verifier.verify(&token(serde_json::json!({}))).unwrap();
        assert_eq!(staff.customer, None);
        for bad in [serde_json::json!(""), serde_json::json!("x".repeat(65))] {
            let refused = verifier
                .verify(&token(serde_json::json!({ "customer_id": bad })))
                .unwrap_err();
            assert_eq!(refused.code(), Code::Unauthenticated);
        }
    }

    /// The cache of verified tokens answers only for the very token verified: one changed byte
    /// (a forged signature, an altered claim) is verified afresh and refused, and an expired
    /// token is refused even though it was verified while it was valid.
    #[test]
    fn the_verified_token_cache_never_answers_for_a_forged_or_expired_token() {
        let verifier = verifier(None, None);
        let good = token(serde_json::json!({"scope": "a.read"}));
        assert_eq!(verifier.verify(&good).unwrap().tenant, "t");
        assert_eq!(
            verifier.verify(&good).unwrap().tenant,
            "t",
            "from the cache"
        );
        let (signed, signature) = good.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let forged = format!("{signed}.{flipped}{}", &signature[1..]);
        assert_eq!(
            verifier.verify(&forged).unwrap_err().code(),
            Code::Unauthenticated
        );
        let (header, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let claims = serde_json::json!({"sub": "s", "tenant": "other", "exp": jsonwebtoken::get_current_timestamp() + 300});
        let altered = format!(
            "{header}.{}.{signature}",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                claims.to_string()
            )
        );
        assert_eq!(
            verifier.verify(&altered).unwrap_err().code(),
            Code::Unauthenticated
        );
        // Verified while valid, then its exp passes: the cached entry dies with it.
        let digest: [u8; 32] = {
            use sha2::{Digest as _, Sha256};
            Sha256::digest(good.as_bytes()).into()
        };
        let later = jsonwebtoken::get_current_timestamp() + 301;
        assert!(verifier.verified.get(&digest, later).is_none());
    }
}
