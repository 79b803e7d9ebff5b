//! A response body that a trigger can end early: when the trigger fires before the body has
//! ended, the handler's body is dropped (ending its stream) and the call ends with the given
//! status in its trailers, after the messages already sent. The deadline layer and the end of
//! server streams on drain both end calls this way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

/// `body`, ended with `status()` once `trigger` completes.
pub(crate) struct EndsWhen {
    body: Body,
    trigger: Pin<Box<dyn Future<Output = ()> + Send>>,
    status: fn() -> Status,
    /// The inner body sent its trailers or ended, or the trigger ended it: no more cutting.
    finished: bool,
}

impl EndsWhen {
    pub(crate) fn new(
        body: Body,
        trigger: impl Future<Output = ()> + Send + 'static,
        status: fn() -> Status,
    ) -> Self {
        EndsWhen {
            body,
            trigger: Box::pin(trigger),
            status,
            finished: false,
        }
    }
}

impl HttpBody for EndsWhen {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        // The trigger first: once it has fired nothing more is sent, even from a stream that is
        // always ready.
        if !self.finished && self.trigger.as_mut().poll(cx).is_ready() {
            self.finished = true;
            // Dropping the handler's body ends its stream.
            self.body = Body::empty();
            let mut trailers = HeaderMap::new();
            // Fails only on a message that is not a valid header value; ours are fixed text.
            let _ = (self.status)().add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.finished = true,
            Poll::Ready(None | Some(Err(_))) => self.finished = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The trigger may cut the body short, so no lower bound.
        let mut hint = SizeHint::new();
        if let Some(upper) = self.body.size_hint().upper() {
            hint.set_upper(upper);
        }
        hint
    }
}
