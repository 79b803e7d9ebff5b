//! The channel a generated client runs over: `tower::balance::p2c::Balance` (power of two choices
//! by in-flight calls) over the callee's endpoints, behind a `tower::buffer::Buffer` so it is
//! `Clone` and shared by every caller — or, for a hedge, one endpoint chosen by the call loop.
//!
//! It is a `tonic::client::GrpcService<tonic::body::Body>`, so any generated
//! `…Client<CalleeChannel>` works over it.

use std::task::{Context, Poll};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tower::Service;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;

use super::discovery::Discovered;
use super::endpoint::{BoxError, EndpointService};

type Balanced = Balance<Discovered, Request<Body>>;
type BalancedFuture = <Balanced as Service<Request<Body>>>::Future;

/// A channel to one callee; cheap to clone.
#[derive(Clone)]
pub struct CalleeChannel {
    route: Route,
}

impl std::fmt::Debug for CalleeChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.route {
            Route::Balanced(_) => f.write_str("CalleeChannel::Balanced"),
            Route::Pinned(endpoint) => write!(f, "CalleeChannel::Pinned({})", endpoint.address()),
        }
    }
}

#[derive(Clone)]
enum Route {
    /// Whichever endpoint the balancer picks.
    Balanced(Buffer<Request<Body>, BalancedFuture>),
    /// This endpoint (a hedge goes to another endpoint than the first attempt).
    Pinned(EndpointService),
}

impl CalleeChannel {
    /// Balances over the endpoints `discovered` announces; `buffer` calls may wait for an
    /// endpoint to be ready.
    pub(crate) fn balanced(discovered: Discovered, buffer: usize) -> Self {
        CalleeChannel {
            route: Route::Balanced(Buffer::new(Balance::new(discovered), buffer.max(1))),
        }
    }

    /// Sends every call to `endpoint`.
    pub(crate) fn pinned(endpoint: EndpointService) -> Self {
        CalleeChannel {
            route: Route::Pinned(endpoint),
        }
    }
}

impl Service<Request<Body>> for CalleeChannel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.route {
            Route::Balanced(balanced) => balanced.poll_ready(cx),
            Route::Pinned(endpoint) => endpoint.poll_ready(cx),
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match &mut self.route {
            Route::Balanced(balanced) => balanced.call(request).boxed(),
            Route::Pinned(endpoint) => endpoint.call(request),
        }
    }
}
