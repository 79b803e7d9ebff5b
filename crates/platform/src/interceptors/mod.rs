//! The interceptor stack (docs/architecture.md, "The request path"), one small tower layer per
//! concern, assembled in one place ([`stack`]) so the request path reads top to bottom:
//!
//! request id + trace context → observe (RED metrics, logs) → end streams on shutdown → load
//! shedding → deadline →
//! authentication → authorization (+ tenant) → rate limit → deprecation marks → validation →
//! idempotency → call scope (the handler's outbound calls inherit its deadline and trace) →
//! handler.

mod around;
mod authenticate;
mod authorize;
mod call_scope;
mod check;
mod client_address;
mod context;
mod deadline;
mod deprecation;
mod end_streams;
mod ends_when;
mod errors;
mod frame;
mod idempotency;
mod load_shed;
mod observe;
mod policy;
mod rate_limit;
mod request_id;
mod validate;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use prost_reflect::DescriptorPool;
use tonic::body::Body;
use tower::ServiceBuilder;
use tower::util::BoxCloneService;

use around::AroundLayer;
use check::CheckLayer;

pub use authenticate::{
    AuthConfig, AuthConfigError, Authenticate, CUSTOMER_ID_CLAIM, Claims, mint_hs256,
};
pub use authorize::TENANT_HEADER;
pub use client_address::{FORWARDED_FOR_HEADER, InvalidTrustedProxy, TrustedProxies};
pub use context::{ClientAddress, Customer, Deadline, Principal, RequestId, Tenant, TraceContext};

pub use idempotency::{
    IDEMPOTENCY_KEY_HEADER, IdempotencyConfig, IdempotencyContext, REPLAYED_HEADER, RecordedOutcome,
};
pub use observe::{Metrics, WireProtocol};
pub use policy::{CacheRule, CustomerAccess, DeprecationPolicy, MethodPolicy, Policies};
pub use rate_limit::{AnonymousRateLimitConfig, RateLimitConfig};

/// Settings of the interceptor stack.
#[derive(Debug, Clone)]
pub struct InterceptorConfig {
    /// Token verification; `None` runs open (no authentication, authorization or rate limit) —
    /// for protocol tests only, never for a deployed service.
    pub auth: Option<AuthConfig>,
    /// Per-tenant rate limit of authenticated calls (GCRA; in Redis when the server has a Redis
    /// URL).
    pub rate_limit: RateLimitConfig,
    /// Limits of anonymous calls (public methods without a token): per client address and per
    /// tenant, apart from the tenant's authenticated limit.
    pub anonymous_rate_limit: AnonymousRateLimitConfig,
    /// How the rate limiters share their limits through Redis: exact (one script per call, the
    /// default here) or batched (decided in process, synced in batches; see `fastpath::gcra`).
    pub rate_limit_sync: fastpath::RateLimitSync,
    /// Calls allowed in flight before shedding load.
    pub max_in_flight: usize,
    /// Deadline for calls that set none; `None` for no default.
    pub default_timeout: Option<Duration>,
    /// Retention and in-flight lock of idempotency keys.
    pub idempotency: IdempotencyConfig,
}

impl Default for InterceptorConfig {
    fn default() -> Self {
        InterceptorConfig {
            auth: None,
            rate_limit: RateLimitConfig::default(),
            anonymous_rate_limit: AnonymousRateLimitConfig::default(),
            rate_limit_sync: fastpath::RateLimitSync::Exact,
            max_in_flight: 1024,
            default_timeout: None,
            idempotency: IdempotencyConfig::default(),
        }
    }
}

/// A type-erased gRPC service: what the protocol layers sit on.
pub type GrpcService = BoxCloneService<Request<Body>, Response<Body>, Infallible>;

/// What the stack keeps state in: the fast path (Redis or in process) and the store that holds
/// idempotency records.
pub struct StackState {
    /// Redis, when configured.
    pub redis: Option<fastpath::Redis>,
    /// Reports fast-path failures to health.
    pub degraded: fastpath::Degraded,
    /// Where idempotent outcomes are recorded.
    pub store: Arc<dyn store::Store>,
    /// Turns true when the server begins to drain: open server streams then end.
    pub draining: tokio::sync::watch::Receiver<bool>,
}

/// Wraps `routes` in the interceptor stack, in the order listed above.
pub fn stack(
    routes: tonic::service::Routes,
    pool: &DescriptorPool,
    config: &InterceptorConfig,
    metrics: Metrics,
    max_message_bytes: usize,
    state: StackState,
) -> Result<GrpcService, AuthConfigError> {
    let StackState {
        redis,
        degraded,
        store,
        draining,
    } = state;
    let idempotency = idempotency::Idempotency::new(
        store,
        fastpath::Locks::new(redis.clone(), degraded.clone()),
        config.idempotency,
        max_message_bytes,
    );
    let policies = Arc::new(Policies::from_pool(pool));
    let known_methods: Arc<HashSet<String>> = Arc::new(
        pool.services()
            .flat_map(|service| {
                service
                    .methods()
                    .map(|method| format!("/{}/{}", service.full_name(), method.name()))
                    .collect::<Vec<_>>()
            })
            .collect(),
    );
    // Without authentication there is no tenant, so no rate limit either (open mode, tests only).
    let verifier = config
        .auth
        .as_ref()
        .map(authenticate::Authenticate::new)
        .transpose()?;
    let (authenticate, authorize, rate_limit) = match &verifier {
        Some(verifier) => {
            let limiter = |limit: &RateLimitConfig| {
                fastpath::RateLimiter::new(limit.limit(), redis.clone(), degraded.clone())
                    .with_sync(config.rate_limit_sync)
            };
            let anonymous = &config.anonymous_rate_limit;
            let limiters = rate_limit::Limiters {
                tenants: limiter(&config.rate_limit),
                anonymous_clients: limiter(&anonymous.per_client),
                anonymous_tenants: limiter(&anonymous.per_tenant),
            };
            (
                Some(CheckLayer(verifier.clone())),
                Some(CheckLayer(authorize::Authorize::new(known_methods))),
                Some(AroundLayer(rate_limit::RateLimit::new(
                    limiters,
                    anonymous.trusted_proxies.clone(),
                ))),
            )
        }
        None => (None, None, None),
    };
    let service = ServiceBuilder::new()
        // The id comes first so the metrics/log wrapper below can report it.
        .layer(request_id::RequestIdLayer)
        .layer(AroundLayer(observe::Observe::new(
            metrics.clone(),
            verifier.clone(),
        )))
        // Inside observe, so a stream ended by shutdown is counted with its status.
        .layer(AroundLayer(end_streams::EndStreams::new(pool, draining)))
        .layer(AroundLayer(load_shed::LoadShed::new(config.max_in_flight)))
        .layer(CheckLayer(policy::ResolvePolicy::new(policies)))
        .layer(AroundLayer(deadline::Deadlines::new(
            config.default_timeout,
        )))
        .option_layer(authenticate)
        .option_layer(authorize)
        .option_layer(rate_limit)
        .layer(AroundLayer(deprecation::Deprecations::new(metrics)))
        .layer(AroundLayer(validate::Validate::new(
            pool,
            max_message_bytes,
        )))
        .layer(AroundLayer(idempotency))
        .layer(AroundLayer(call_scope::CallScope))
        .service(routes);
    Ok(BoxCloneService::new(service))
}
