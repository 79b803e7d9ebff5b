//! Early answers over HTTP/1.x. A call refused before its request body was read (no token, rate
//! limit, load shedding, unknown method…) is answered while the client may still be sending; hyper
//! then closes the connection, the client's next write fails (`EPIPE`, `ECONNRESET`) and it reports
//! that instead of the answer — connect-node says `internal: write EPIPE` and loses the
//! `ErrorInfo`. HTTP/2 has no such problem (the stream is reset on its own), so only HTTP/1.x
//! requests are watched.
//!
//! The request body is wrapped so that, when the stack drops it unfinished, it comes back here.
//! Before the response leaves, what is left is read and thrown away — bounded in bytes and time —
//! so the client finishes sending and then reads the real status. When the budget runs out the
//! response says `Connection: close` and hyper closes as before.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

/// How much of an unread request body is drained before an early answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DrainBudget {
    /// Bytes read and discarded at most.
    pub max_bytes: usize,
    /// Time spent at most.
    pub max_time: Duration,
}

impl DrainBudget {
    /// Room for the largest accepted message in any framing (gRPC-web-text's base64 is a third
    /// larger), for at most a few seconds.
    pub(crate) fn for_messages_of(max_message_bytes: usize) -> Self {
        DrainBudget {
            max_bytes: max_message_bytes
                .saturating_mul(2)
                .saturating_add(64 * 1024),
            max_time: Duration::from_secs(5),
        }
    }
}

/// Drains the unread body of HTTP/1.x requests answered early.
#[derive(Debug, Clone)]
pub(crate) struct DrainUnread<S> {
    inner: S,
    budget: DrainBudget,
}

impl<S> DrainUnread<S> {
    pub(crate) fn new(inner: S, budget: DrainBudget) -> Self {
        DrainUnread { inner, budget }
    }
}

type Slot = Arc<Mutex<Option<Incoming>>>;

impl<S, B> tower::Service<Request<Incoming>> for DrainUnread<S>
where
    S: tower::Service<Request<ReturnedBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        // HTTP/2 resets an unread stream by itself; a client waiting for `100 Continue` has sent
        // nothing yet and reads the answer first.
        let watch = request.version() < Version::HTTP_2
            && !request
                .headers()
                .get(http::header::EXPECT)
                .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let slot: Option<Slot> = watch.then(Slot::default);
        let request = request.map(|body| ReturnedBody {
            body: Some(body),
            slot: slot.clone(),
            ended: false,
        });
        let call = self.inner.call(request);
        let budget = self.budget;
        Box::pin(async move {
            let mut response = call.await?;
            let unread = slot.and_then(|slot| {
                slot.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take()
            });
            if let Some(body) = unread
                && !drain(body, budget).await
            {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}

/// Reads `body` to its end within `budget`; false when the budget ran out first.
async fn drain(mut body: Incoming, budget: DrainBudget) -> bool {
    let read = async {
        let mut left = budget.max_bytes;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return false;
            };
            if let Some(data) = frame.data_ref() {
                match left.checked_sub(data.len()) {
                    Some(rest) => left = rest,
                    None => return false,
                }
            }
        }
        true
    };
    tokio::time::timeout(budget.max_time, read)
        .await
        .unwrap_or(false)
}

/// A request body that, dropped before its end, hands itself back for draining.
pub(crate) struct ReturnedBody {
    body: Option<Incoming>,
    slot: Option<Slot>,
    ended: bool,
}

impl HttpBody for ReturnedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for ReturnedBody {
    fn drop(&mut self) {
        let (Some(slot), Some(body)) = (&self.slot, self.body.take()) else {
            return;
        };
        if self.ended || body.is_end_stream() {
            return;
        }
        *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(body);
    }
}
