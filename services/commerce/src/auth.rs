//! Tokens: what `serve` accepts (`AuthArgs`) and the development tokens `commerce token` mints.

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use platform::interceptors::{AuthConfig, Claims, Policies, mint_hs256};

/// The secret used when none is configured: fine on a laptop, never in a deployment.
const DEV_SECRET: &str = "commerce-dev-secret-not-for-production";

/// Token verification settings shared by `serve` and `token`.
#[derive(Args, Clone)]
pub struct AuthArgs {
    /// HS256 secret for bearer tokens; unset uses a fixed development secret (with a warning).
    #[arg(long, env = "COMMERCE_JWT_HS256_SECRET")]
    pub jwt_hs256_secret: Option<String>,
    /// JWKS file with the RS256/ES256 public keys to accept.
    #[arg(long, env = "COMMERCE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Required token issuer (`iss`).
    #[arg(long, env = "COMMERCE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required token audience (`aud`).
    #[arg(long, env = "COMMERCE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl AuthArgs {
    pub fn secret(&self) -> &str {
        self.jwt_hs256_secret.as_deref().unwrap_or(DEV_SECRET)
    }

    pub fn config(&self) -> anyhow::Result<AuthConfig> {
        let jwks_json = match &self.jwks_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            ),
            None => None,
        };
        Ok(AuthConfig {
            hs256_secret: Some(self.secret().as_bytes().to_vec()),
            jwks_json,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        })
    }
}

impl fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthArgs")
            .field(
                "jwt_hs256_secret",
                &if self.jwt_hs256_secret.is_some() {
                    "<redacted>"
                } else {
                    "<development secret>"
                },
            )
            .field("jwks_file", &self.jwks_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish()
    }
}

/// Arguments of `token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Tenant the token acts for.
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    /// Subject (caller) of the token.
    #[arg(long, default_value = "developer")]
    pub subject: String,
    /// Scopes (space- or comma-separated); default: every scope the contract declares.
    #[arg(long)]
    pub scopes: Option<String>,
    /// Lifetime in minutes.
    #[arg(long, default_value_t = 60)]
    pub ttl_minutes: u64,
    /// Makes a customer token for this customer id (claim `customer_id`): it may call only the
    /// methods the contract opens to customers, for that customer's own objects.
    #[arg(long)]
    pub customer: Option<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// A development token (HS256) for `args`.
pub fn token(args: &TokenArgs) -> anyhow::Result<String> {
    let scopes = match &args.scopes {
        Some(scopes) => scopes
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        None => all_contract_scopes()?.join(" "),
    };
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + args.ttl_minutes * 60;
    let claims = Claims {
        sub: args.subject.clone(),
        tenant: args.tenant.clone(),
        scope: scopes,
        exp,
    };
    // A server that requires an issuer or audience refuses tokens without them: the token
    // carries the ones configured here (the same flags and environment the server reads).
    let mut claims = serde_json::to_value(&claims)?;
    if let Some(issuer) = &args.auth.jwt_issuer {
        claims["iss"] = issuer.clone().into();
    }
    if let Some(audience) = &args.auth.jwt_audience {
        claims["aud"] = audience.clone().into();
    }
    if let Some(customer) = &args.customer {
        claims[platform::interceptors::CUSTOMER_ID_CLAIM] = customer.clone().into();
    }
    Ok(mint_hs256(args.auth.secret().as_bytes(), &claims)?)
}

/// Every scope any RPC of the contract requires.
pub fn all_contract_scopes() -> anyhow::Result<Vec<String>> {
    let pool = prost_reflect::DescriptorPool::decode(commerce_api::FILE_DESCRIPTOR_SET)?;
    let policies = Policies::from_pool(&pool);
    let mut scopes: Vec<String> = pool
        .services()
        .flat_map(|service| {
            service
                .methods()
                .map(|method| format!("/{}/{}", service.full_name(), method.name()))
                .collect::<Vec<_>>()
        })
        .filter_map(|path| policies.get(&path).map(|policy| policy.scopes.clone()))
        .flatten()
        .collect();
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}
