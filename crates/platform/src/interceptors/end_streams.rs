//! Server streams end when the server drains. A stream such as `WatchOrder` has no natural end, so
//! graceful shutdown would hold it for the whole grace period and then cut the connection, and the
//! caller would see a transport error (`GOAWAY`, `aborted`, "network error") instead of a status.
//! When draining begins, every open server stream — and any that starts after — ends at once with
//! UNAVAILABLE / `SERVER_SHUTTING_DOWN` and a `RetryInfo`, after the messages it already sent:
//! gRPC and gRPC-web see it in their trailers, Connect in its end-stream message. Unary calls are
//! not touched: they get the grace period to finish.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use commerce_api::commerce::common::v1::ErrorReason;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use prost_reflect::DescriptorPool;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::{Code, Status};

use super::around::{Around, Next};
use super::ends_when::EndsWhen;
use super::errors;
use super::policy::PLATFORM_ERROR_DOMAIN;

/// When a caller may come back (to another replica, usually).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Ends server streams when `draining` turns true.
#[derive(Clone)]
pub struct EndStreams {
    draining: watch::Receiver<bool>,
    /// Paths of every method with a streaming response.
    streaming: Arc<HashSet<String>>,
}

impl EndStreams {
    /// Watches `draining` for the server-streaming methods of `pool`.
    pub fn new(pool: &DescriptorPool, draining: watch::Receiver<bool>) -> Self {
        let streaming = pool
            .services()
            .flat_map(|service| {
                service
                    .methods()
                    .filter(|method| method.is_server_streaming())
                    .map(|method| format!("/{}/{}", service.full_name(), method.name()))
                    .collect::<Vec<_>>()
            })
            .collect();
        EndStreams {
            draining,
            streaming: Arc::new(streaming),
        }
    }
}

impl Around for EndStreams {
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        if !self.streaming.contains(request.uri().path()) {
            return next.run(request);
        }
        let draining = self.draining.clone();
        next.run(request)
            .map(move |response| {
                // Trailers-only: the call already ended.
                if response.headers().contains_key("grpc-status") {
                    return response;
                }
                response.map(|body| Body::new(end_on_drain(body, draining)))
            })
            .boxed()
    }
}

/// The status a stream ends with when the server drains.
fn shutting_down() -> Status {
    errors::retryable(
        Code::Unavailable,
        ErrorReason::ServerShuttingDown,
        PLATFORM_ERROR_DOMAIN,
        "the server is shutting down; retry, another replica will answer",
        RETRY_AFTER,
    )
}

/// `body`, ended with [`shutting_down`] trailers once draining begins.
fn end_on_drain(body: Body, mut draining: watch::Receiver<bool>) -> EndsWhen {
    let drained = async move {
        // Without a sender the server is gone with everything else: never fire.
        if draining.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    EndsWhen::new(body, drained, shutting_down)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::stream::{self, StreamExt as _};
    use http_body::Frame;
    use http_body_util::{BodyExt as _, StreamBody};

    #[tokio::test]
    async fn an_open_stream_ends_with_unavailable_and_a_retry_hint_when_draining_begins() {
        let (drain, draining) = watch::channel(false);
        let frames = stream::iter([Ok::<_, Status>(Frame::data(Bytes::from_static(b"one")))])
            .chain(stream::pending());
        let mut body = end_on_drain(Body::new(StreamBody::new(frames)), draining);
        assert!(body.frame().await.unwrap().unwrap().is_data());
        drain.send(true).unwrap();
        let last = body.frame().await.unwrap().unwrap();
        let trailers = last.trailers_ref().expect("trailers");
        let status = Status::from_header_map(trailers).unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        use tonic_types::StatusExt as _;
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().map(|info| info.reason.as_str()),
            Some("SERVER_SHUTTING_DOWN")
        );
        assert!(details.retry_info().is_some(), "RetryInfo");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_started_while_draining_ends_at_once() {
        let (drain, draining) = watch::channel(true);
        let mut body = end_on_drain(
            Body::new(StreamBody::new(stream::pending::<
                Result<Frame<Bytes>, Status>,
            >())),
            draining,
        );
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        drop(drain);
    }
}
