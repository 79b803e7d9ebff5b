//! A layer for interceptors that wrap the call: look at the request, run the rest of the stack
//! (`next`) at most once — or answer without it — and look at or change the response. Each such
//! interceptor is then only its logic; the tower plumbing lives here once.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};

/// The rest of the stack, callable once.
pub struct Next(Box<dyn FnOnce(Request<Body>) -> BoxFuture<'static, Response<Body>> + Send>);

impl Next {
    /// The rest of the stack as a function (tests of a single interceptor).
    #[cfg(test)]
    pub fn from_fn(
        run: impl FnOnce(Request<Body>) -> BoxFuture<'static, Response<Body>> + Send + 'static,
    ) -> Self {
        Next(Box::new(run))
    }

    /// Runs the rest of the stack.
    pub fn run(self, request: Request<Body>) -> BoxFuture<'static, Response<Body>> {
        (self.0)(request)
    }
}

/// An interceptor around the rest of the stack.
pub trait Around: Clone + Send + Sync + 'static {
    /// Handles one call.
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>>;
}

/// Applies an [`Around`] interceptor.
#[derive(Debug, Clone)]
pub struct AroundLayer<A>(pub A);

impl<A: Clone, S> Layer<S> for AroundLayer<A> {
    type Service = AroundService<A, S>;
    fn layer(&self, inner: S) -> Self::Service {
        AroundService {
            around: std::sync::Arc::new(self.0.clone()),
            inner,
        }
    }
}

/// The service produced by [`AroundLayer`]. Every call clones the stack below it (tower's
/// ready-service hand-off), so the interceptor's state sits behind one `Arc`: a clone is one
/// reference count, not a copy of its metrics families, limiters and stores.
#[derive(Debug, Clone)]
pub struct AroundService<A, S> {
    around: std::sync::Arc<A>,
    inner: S,
}

impl<A, S> Service<Request<Body>> for AroundService<A, S>
where
    A: Around,
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Hand the service that was polled ready to `next`; keep a fresh clone for later calls.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let next = Next(Box::new(move |request| {
            inner
                .call(request)
                .map(|result| result.unwrap_or_else(|never| match never {}))
                .boxed()
        }));
        self.around.around(request, next).map(Ok).boxed()
    }
}
