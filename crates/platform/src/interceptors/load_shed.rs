//! Load shedding: at most `max_in_flight` calls run at once (a call counts until its response
//! body ends, so streams count too); beyond that, calls are refused at once with UNAVAILABLE and
//! a retry hint instead of queueing until their deadlines pass.

use commerce_api::commerce::common::v1::ErrorReason;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, ready};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tonic::body::Body;

use super::around::{Around, Next};
use super::errors;
use super::policy::PLATFORM_ERROR_DOMAIN;

/// Refuses calls beyond a concurrency limit.
#[derive(Debug, Clone)]
pub struct LoadShed {
    permits: Arc<Semaphore>,
}

impl LoadShed {
    /// At most `max_in_flight` concurrent calls.
    pub fn new(max_in_flight: usize) -> Self {
        LoadShed {
            permits: Arc::new(Semaphore::new(max_in_flight)),
        }
    }
}

impl Around for LoadShed {
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let status = errors::retryable(
                Code::Unavailable,
                ErrorReason::Overloaded,
                PLATFORM_ERROR_DOMAIN,
                "server is at its concurrency limit",
                Duration::from_millis(250),
            );
            return ready(errors::response(status)).boxed();
        };
        next.run(request)
            .map(move |response| {
                response.map(|body| {
                    Body::new(PermitBody {
                        body,
                        _permit: permit,
                    })
                })
            })
            .boxed()
    }
}

/// A response body that holds a concurrency permit until it ends or is dropped.
struct PermitBody {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
