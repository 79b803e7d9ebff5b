//! The last layer before the handler: the handler runs inside its call's
//! [`CallContext`](crate::outbound::CallContext) (deadline, request id, trace, tenant), so calls it
//! makes to other services — however deep in domain code — carry them
//! ([`CallContext::current`](crate::outbound::CallContext::current)).

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;

use super::around::{Around, Next};
use crate::outbound::CallContext;

/// Scopes each call's handler in its [`CallContext`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CallScope;

impl Around for CallScope {
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        let context = CallContext::from_extensions(request.extensions());
        // `next.run` inside the scope: a layer or handler may do work when the call is made, not
        // only when its future is polled.
        context
            .scope(async move { next.run(request).await })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::interceptors::{Deadline, RequestId};

    #[tokio::test]
    async fn the_handler_sees_its_calls_deadline_and_request_id() {
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut request = Request::new(Body::empty());
        request.extensions_mut().insert(Deadline(deadline));
        request
            .extensions_mut()
            .insert(RequestId("req-1".to_owned()));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let recorded = seen.clone();
        let next = Next::from_fn(move |_request| {
            *recorded.lock().unwrap() = Some(CallContext::current());
            async { Response::new(Body::empty()) }.boxed()
        });
        CallScope.around(request, next).await;
        let context = seen.lock().unwrap().clone().expect("handler ran");
        assert_eq!(context.deadline, Some(deadline));
        assert_eq!(context.request_id.as_deref(), Some("req-1"));
        assert!(
            CallContext::current().deadline.is_none(),
            "nothing leaks outside the call"
        );
    }
}
