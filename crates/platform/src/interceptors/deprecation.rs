//! Deprecated methods (per the contract's `(commerce.api.v1.rpc).deprecation`) still work, but every
//! answer carries `Deprecation: true` and, when announced, `Sunset: <date>`; every call is counted
//! per caller in `rpc_deprecated_calls_total`, so owners can see who still calls before removal.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};

use super::context::{Principal, Tenant};
use super::observe::Metrics;
use super::policy::MethodPolicy;

/// Marks answers of deprecated methods and counts their callers.
#[derive(Clone)]
pub struct DeprecationLayer {
    metrics: Metrics,
}

impl DeprecationLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        DeprecationLayer { metrics }
    }
}

impl<S> Layer<S> for DeprecationLayer {
    type Service = Deprecation<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deprecation {
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

/// The service produced by [`DeprecationLayer`].
#[derive(Clone)]
pub struct Deprecation<S> {
    metrics: Metrics,
    inner: S,
}

impl<S> Service<Request<Body>> for Deprecation<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let policy = request.extensions().get::<Arc<MethodPolicy>>().cloned();
        let Some((name, deprecation)) =
            policy.and_then(|p| p.deprecation.clone().map(|d| (p.name.clone(), d)))
        else {
            return self.inner.call(request).boxed();
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
        self.inner
            .call(request)
            .map(move |result| {
                result.map(|mut response| {
                    let headers = response.headers_mut();
                    headers.insert("deprecation", HeaderValue::from_static("true"));
                    if let Some(sunset) = sunset {
                        headers.insert("sunset", sunset);
                    }
                    response
                })
            })
            .boxed()
    }
}
