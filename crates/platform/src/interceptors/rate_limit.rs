//! Per-tenant rate limit with GCRA from the fast path: in Redis when configured, so every replica
//! shares a tenant's limit; in process otherwise, and as the fallback while Redis fails. A call
//! costs its method's `rate_limit_tokens`; over the limit it gets RESOURCE_EXHAUSTED with a retry
//! delay.

use std::sync::Arc;

use commerce_api::commerce::common::v1::ErrorReason;
use fastpath::{Decision, GcraLimit, RateLimiter};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tonic::Code;
use tonic::body::Body;

use super::around::{Around, Next};
use super::context::Tenant;
use super::errors;
use super::policy::MethodPolicy;

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

/// The rate-limit interceptor.
#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<RateLimiter>,
}

impl RateLimit {
    /// Limits with `limiter`.
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        RateLimit { limiter }
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
        let limiter = self.limiter.clone();
        async move {
            match limiter.check(&tenant, policy.rate_limit_tokens).await {
                Decision::Allowed => next.run(request).await,
                Decision::Limited { retry_after } => errors::response(errors::retryable(
                    Code::ResourceExhausted,
                    ErrorReason::RateLimited,
                    &policy.error_domain,
                    "tenant rate limit exceeded",
                    retry_after,
                )),
            }
        }
        .boxed()
    }
}
