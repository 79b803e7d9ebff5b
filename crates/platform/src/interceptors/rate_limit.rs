//! Per-tenant rate limit: a token bucket per tenant in this process (the Redis GCRA limiter of the
//! storage issue will replace it, with this one as its fallback). A call costs its method's
//! `rate_limit_tokens`; an empty bucket answers RESOURCE_EXHAUSTED with a retry delay.

use commerce_api::commerce::common::v1::ErrorReason;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use tonic::body::Body;
use tonic::{Code, Status};

use super::check::Check;
use super::context::Tenant;
use super::errors;
use super::policy::MethodPolicy;

/// Rate-limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens added per second per tenant.
    pub tokens_per_second: f64,
    /// Bucket size: the burst a tenant may spend at once.
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

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// The rate-limit check.
#[derive(Clone)]
pub struct RateLimit {
    config: RateLimitConfig,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimit {
    /// A limiter with `config`.
    pub fn new(config: RateLimitConfig) -> Self {
        RateLimit {
            config,
            buckets: Arc::default(),
        }
    }

    /// Takes `cost` tokens from `tenant`'s bucket, or says how long until they are there.
    pub fn take(&self, tenant: &str, cost: f64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(tenant.to_owned()).or_insert(Bucket {
            tokens: self.config.burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.config.tokens_per_second).min(self.config.burst);
        bucket.refilled = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (cost - bucket.tokens) / self.config.tokens_per_second,
            ))
        }
    }
}

impl Check for RateLimit {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        let (Some(Tenant(tenant)), Some(policy)) = (
            request.extensions().get::<Tenant>(),
            request.extensions().get::<Arc<MethodPolicy>>(),
        ) else {
            return Ok(()); // infrastructure calls have no tenant and are not limited
        };
        self.take(tenant, f64::from(policy.rate_limit_tokens), Instant::now())
            .map_err(|retry_after| {
                errors::retryable(
                    Code::ResourceExhausted,
                    ErrorReason::RateLimited,
                    &policy.error_domain,
                    "tenant rate limit exceeded",
                    retry_after,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_a_burst_then_refill_per_tenant() {
        let limiter = RateLimit::new(RateLimitConfig {
            tokens_per_second: 10.0,
            burst: 3.0,
        });
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take("a", 1.0, start).is_ok());
        }
        let wait = limiter.take("a", 1.0, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9);
        assert!(
            limiter.take("b", 1.0, start).is_ok(),
            "tenants have separate buckets"
        );
        assert!(
            limiter
                .take("a", 1.0, start + Duration::from_millis(100))
                .is_ok()
        );
    }
}
