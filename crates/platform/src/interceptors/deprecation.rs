//! Deprecated methods (per the contract's `(commerce.api.v1.rpc).deprecation`) still work, but every
//! answer carries `Deprecation: true` and, when announced, `Sunset: <date>`; every call is counted
//! per caller in `rpc_deprecated_calls_total`, so owners can see who still calls before removal.

use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tonic::body::Body;

use super::around::{Around, Next};
use super::context::{Principal, Tenant};
use super::observe::Metrics;
use super::policy::MethodPolicy;

/// Marks answers of deprecated methods and counts their callers.
#[derive(Clone)]
pub struct Deprecations {
    metrics: Metrics,
}

impl Deprecations {
    /// Counts into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Deprecations { metrics }
    }
}

impl Around for Deprecations {
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        let policy = request.extensions().get::<Arc<MethodPolicy>>().cloned();
        let Some((name, deprecation)) =
            policy.and_then(|p| p.deprecation.clone().map(|d| (p.name.clone(), d)))
        else {
            return next.run(request);
        };
        let caller = match (
            request.extensions().get::<Tenant>(),
            request.extensions().get::<Principal>(),
        ) {
            (Some(tenant), Some(principal)) => format!("{}/{}", tenant.0, principal.subject),
            (Some(tenant), None) => tenant.0.clone(),
            (None, Some(principal)) => format!("{}/{}", principal.tenant, principal.subject),
            (None, None) => "anonymous".to_owned(),
        };
        self.metrics.count_deprecated_call(&name, &caller);
        let sunset = deprecation
            .sunset_date
            .and_then(|date| HeaderValue::from_str(&date).ok());
        next.run(request)
            .map(move |mut response| {
                let headers = response.headers_mut();
                headers.insert("deprecation", HeaderValue::from_static("true"));
                if let Some(sunset) = sunset {
                    headers.insert("sunset", sunset);
                }
                response
            })
            .boxed()
    }
}
