//! A layer for interceptors that only look at the request and either let it through (possibly
//! adding to its extensions) or answer with an error status.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::errors;

/// A synchronous check of a request.
pub trait Check: Clone + Send + Sync + 'static {
    /// `Err` answers the call with that status without reaching the handler.
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status>;
}

/// Applies a [`Check`] in front of a service.
#[derive(Debug, Clone)]
pub struct CheckLayer<C>(pub C);

impl<C: Clone, S> Layer<S> for CheckLayer<C> {
    type Service = CheckService<C, S>;
    fn layer(&self, inner: S) -> Self::Service {
        CheckService {
            check: std::sync::Arc::new(self.0.clone()),
            inner,
        }
    }
}

/// The service produced by [`CheckLayer`]; its check behind one `Arc` (see `AroundService`).
#[derive(Debug, Clone)]
pub struct CheckService<C, S> {
    check: std::sync::Arc<C>,
    inner: S,
}

impl<C, S> Service<Request<Body>> for CheckService<C, S>
where
    C: Check,
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.check.check(&mut request) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(status) => Either::Right(ready(Ok(errors::response(status)))),
        }
    }
}
