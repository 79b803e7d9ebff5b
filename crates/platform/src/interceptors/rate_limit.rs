//! Rate limits with GCRA from the fast path: in Redis when configured, so every replica shares
//! a limit; in process otherwise, and as the fallback while Redis is down. A call costs its
//! method's `rate_limit_tokens`; over a limit it gets RESOURCE_EXHAUSTED / RATE_LIMITED with a
//! retry delay and the budget it ran out of (`ErrorInfo` metadata `limit`).
//!
//! Three budgets, so that nobody without a token can spend a tenant's:
//!
//! - an **authenticated** call (it carries a valid token) is charged to its tenant (`tenant`);
//! - an **anonymous** call (a public method without a token; its tenant comes from the
//!   unauthenticated `commerce-tenant` header) is charged first to its client address
//!   (`anonymous_client`: one caller cannot take all anonymous capacity), then to the tenant's
//!   anonymous budget (`anonymous_tenant`: all anonymous callers of a tenant together). It never
//!   touches the tenant's authenticated budget, so anonymous floods cannot starve signed-in
//!   callers. A call refused by its client budget is not charged to the tenant's.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use commerce_api::commerce::common::v1::ErrorReason;
use fastpath::{Decision, GcraLimit, RateLimiter};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tonic::Code;
use tonic::body::Body;

use super::around::{Around, Next};
use super::client_address::{TrustedProxies, client_key};
use super::context::{ClientAddress, Principal, Tenant};
use super::errors;
use super::policy::MethodPolicy;
use crate::ApiError;

/// Rate-limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Calls per second a tenant may sustain.
    pub tokens_per_second: f64,
    /// Calls a tenant may make at once.
    pub burst: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            tokens_per_second: 200.0,
            burst: 400.0,
        }
    }
}

impl RateLimitConfig {
    /// The GCRA limit these settings describe.
    pub fn limit(&self) -> GcraLimit {
        GcraLimit {
            rate_per_second: self.tokens_per_second,
            burst: self.burst.max(1.0) as u32,
        }
    }
}

/// Limits of anonymous calls (public methods called without a token).
#[derive(Debug, Clone, PartialEq)]
pub struct AnonymousRateLimitConfig {
    /// What one client address (an IPv4 address or an IPv6 /64) may call, over all tenants.
    pub per_client: RateLimitConfig,
    /// What all anonymous callers of one tenant may call together; separate from the tenant's
    /// authenticated limit.
    pub per_tenant: RateLimitConfig,
    /// Proxies whose `X-Forwarded-For` names the client; none by default.
    pub trusted_proxies: TrustedProxies,
}

impl Default for AnonymousRateLimitConfig {
    fn default() -> Self {
        AnonymousRateLimitConfig {
            // Generous for one address (many customers can share one behind a carrier NAT), yet a
            // quarter of a tenant's anonymous budget, so one address cannot take it all.
            per_client: RateLimitConfig {
                tokens_per_second: 50.0,
                burst: 100.0,
            },
            // As much as the tenant's signed-in callers get by default, and apart from it.
            per_tenant: RateLimitConfig {
                tokens_per_second: 200.0,
                burst: 400.0,
            },
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// The budget a refused call ran out of (the `limit` metadata of its `ErrorInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    Tenant,
    AnonymousClient,
    AnonymousTenant,
}

impl Budget {
    /// The metadata value, also the prefix of the budget's keys.
    fn name(self) -> &'static str {
        match self {
            Budget::Tenant => "tenant",
            Budget::AnonymousClient => "anonymous_client",
            Budget::AnonymousTenant => "anonymous_tenant",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Budget::Tenant => "tenant rate limit exceeded",
            Budget::AnonymousClient => {
                "rate limit for anonymous calls from this address exceeded; retry later or sign in"
            }
            Budget::AnonymousTenant => {
                "rate limit for anonymous calls to this tenant exceeded; retry later or sign in"
            }
        }
    }
}

/// The limiters behind the three budgets.
pub struct Limiters {
    /// Authenticated calls, per tenant.
    pub tenants: RateLimiter,
    /// Anonymous calls, per client address.
    pub anonymous_clients: RateLimiter,
    /// Anonymous calls, per tenant.
    pub anonymous_tenants: RateLimiter,
}

/// The rate-limit interceptor.
#[derive(Clone)]
pub struct RateLimit {
    limiters: Arc<Limiters>,
    trusted_proxies: Arc<TrustedProxies>,
}

impl RateLimit {
    /// Limits with `limiters`, attributing anonymous calls through `trusted_proxies`.
    pub fn new(limiters: Limiters, trusted_proxies: TrustedProxies) -> Self {
        RateLimit {
            limiters: Arc::new(limiters),
            trusted_proxies: Arc::new(trusted_proxies),
        }
    }
}

/// Charges `cost` to `key` of `budget`; the wait when refused.
async fn charge(
    limiter: &RateLimiter,
    budget: Budget,
    key: &str,
    cost: u32,
) -> Result<(), (Budget, Duration)> {
    match limiter
        .check(&format!("{}:{key}", budget.name()), cost)
        .instrument(crate::telemetry::fast_path_span("rate_limit"))
        .await
    {
        Decision::Allowed => Ok(()),
        Decision::Limited { retry_after } => Err((budget, retry_after)),
    }
}

impl Around for RateLimit {
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        let (Some(Tenant(tenant)), Some(policy)) = (
            request.extensions().get::<Tenant>().cloned(),
            request.extensions().get::<Arc<MethodPolicy>>().cloned(),
        ) else {
            return next.run(request); // infrastructure calls have no tenant and are not limited
        };
        let anonymous_client = request.extensions().get::<Principal>().is_none().then(|| {
            client_key(self.trusted_proxies.client_of(
                request.extensions().get::<ClientAddress>(),
                request.headers(),
            ))
        });
        let limiters = self.limiters.clone();
        async move {
            let cost = policy.rate_limit_tokens;
            let charged = match &anonymous_client {
                None => charge(&limiters.tenants, Budget::Tenant, &tenant, cost).await,
                Some(client) => {
                    match charge(
                        &limiters.anonymous_clients,
                        Budget::AnonymousClient,
                        client,
                        cost,
                    )
                    .await
                    {
                        Ok(()) => {
                            charge(
                                &limiters.anonymous_tenants,
                                Budget::AnonymousTenant,
                                &tenant,
                                cost,
                            )
                            .await
                        }
                        refused => refused,
                    }
                }
            };
            match charged {
                Ok(()) => next.run(request).await,
                Err((budget, retry_after)) => errors::response(
                    ApiError::new(
                        Code::ResourceExhausted,
                        ErrorReason::RateLimited,
                        budget.message(),
                    )
                    .with_retry_after(retry_after)
                    .with_metadata("limit", budget.name())
                    .into_status(&policy.error_domain),
                ),
            }
        }
        .boxed()
    }
}
