//! Serving one accepted connection (HTTP/1.1 or cleartext HTTP/2, told apart by hyper-util's auto
//! builder) within its [`ConnectionLimits`]. hyper brings the per-request limits (HTTP/1
//! header-read timeout and head size; HTTP/2 concurrent streams, header list size, keep-alive
//! pings); this adds what it lacks:
//!
//! - a deadline on the connection's *first* request: the auto builder waits for the first bytes
//!   to pick a protocol, and until then no hyper timer runs, so a client sending nothing (or
//!   trickling the HTTP/2 preface) would hold its descriptor forever;
//! - an idle timeout: no request in flight and no bytes either way for `idle_timeout` ends the
//!   connection gracefully (HTTP/2 GOAWAY);
//! - the server's shutdown signal, which asks the connection to finish gracefully.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::listener::ConnectionLimits;

/// The HTTP/2 connection preface: once a client has sent it, hyper's HTTP/2 timers take over.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_HTTP1_BUFFER: usize = 8192;

/// The connection builder with the limits hyper can enforce itself.
pub(crate) fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The head must fit the read buffer: this bounds the header section (431 beyond it).
        .max_buf_size((limits.max_header_bytes as usize).max(MIN_HTTP1_BUFFER));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes)
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_timeout);
    builder
}

/// Serves `stream` with `service` until the connection ends, its limits end it, or shutdown is
/// signalled (`true` on `shutdown`) and its calls finish.
pub(crate) async fn serve<S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    service: S,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(ActivityIo {
        inner: stream,
        activity: activity.clone(),
    });
    let service = TrackRequests {
        inner: service,
        activity: activity.clone(),
    };
    let connection = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    tokio::pin!(connection);
    let mut closing = false;
    if *shutdown.borrow_and_update() {
        connection.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        let check_at = activity.next_check(&limits);
        tokio::select! {
            _ = connection.as_mut() => return,
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() || *shutdown.borrow() {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            () = tokio::time::sleep_until(check_at) => match activity.verdict(&limits) {
                // Never got going: drop it, there is nothing to finish.
                Verdict::NoFirstRequest => return,
                Verdict::Idle if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                Verdict::Idle | Verdict::Fine => {}
            },
        }
    }
}

/// What a connection has been doing.
#[derive(Debug)]
struct Activity {
    accepted: Instant,
    /// Milliseconds after `accepted` of the last byte read or written.
    last_io_ms: AtomicU64,
    in_flight: AtomicUsize,
    started_a_request: AtomicBool,
    /// Leading bytes that matched the HTTP/2 preface (a mismatch stops counting below 24).
    preface_matched: AtomicUsize,
    preface_broken: AtomicBool,
}

enum Verdict {
    Fine,
    NoFirstRequest,
    Idle,
}

impl Activity {
    fn new() -> Self {
        Activity {
            accepted: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started_a_request: AtomicBool::new(false),
            preface_matched: AtomicUsize::new(0),
            preface_broken: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let now = self.accepted.elapsed().as_millis() as u64;
        self.last_io_ms.store(now, Ordering::Relaxed);
    }

    /// Follows the first bytes read, to notice a completed HTTP/2 preface.
    fn saw(&self, read: &[u8]) {
        let matched = self.preface_matched.load(Ordering::Relaxed);
        if matched >= HTTP2_PREFACE.len() || self.preface_broken.load(Ordering::Relaxed) {
            return;
        }
        let expected = &HTTP2_PREFACE[matched..];
        let compared = read.len().min(expected.len());
        if read[..compared] == expected[..compared] {
            self.preface_matched
                .store(matched + compared, Ordering::Relaxed);
        } else {
            self.preface_broken.store(true, Ordering::Relaxed);
        }
    }

    /// A request arrived, or the HTTP/2 handshake is under way (hyper's own timers run).
    fn got_going(&self) -> bool {
        self.started_a_request.load(Ordering::Relaxed)
            || self.preface_matched.load(Ordering::Relaxed) >= HTTP2_PREFACE.len()
    }

    fn last_io(&self) -> Instant {
        self.accepted + Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed))
    }

    fn next_check(&self, limits: &ConnectionLimits) -> Instant {
        let idle_at = self.last_io() + limits.idle_timeout;
        if self.got_going() {
            idle_at
        } else {
            idle_at.min(self.accepted + limits.header_read_timeout)
        }
    }

    fn verdict(&self, limits: &ConnectionLimits) -> Verdict {
        let now = Instant::now();
        if !self.got_going() && now >= self.accepted + limits.header_read_timeout {
            return Verdict::NoFirstRequest;
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && now >= self.last_io() + limits.idle_timeout
        {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

/// The socket, noting when bytes move.
struct ActivityIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
            self.activity.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a connection's requests in flight: from the call until its response body ends or is
/// dropped (a stream counts while it is open).
#[derive(Clone)]
struct TrackRequests<S> {
    inner: S,
    activity: Arc<Activity>,
}

struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.started_a_request.store(true, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        // The end of a call counts as activity: idleness is measured from here.
        self.0.touch();
    }
}

impl<S, ReqBody, B> tower::Service<Request<ReqBody>> for TrackRequests<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: HttpBody + Unpin,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let guard = InFlight::begin(&self.activity);
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|body| CountedBody {
                body,
                _in_flight: guard,
            }))
        })
    }
}

/// A response body that keeps its call counted as in flight until it ends or is dropped.
pub(crate) struct CountedBody<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: HttpBody + Unpin> HttpBody for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http2_preface_is_recognised_across_reads_and_anything_else_is_not() {
        let activity = Activity::new();
        activity.saw(&HTTP2_PREFACE[..5]);
        assert!(!activity.got_going());
        activity.saw(&HTTP2_PREFACE[5..]);
        assert!(activity.got_going());

        let http1 = Activity::new();
        http1.saw(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n");
        http1.saw(&HTTP2_PREFACE[..]);
        assert!(!http1.got_going(), "only the first bytes count");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_first_request_is_dropped_at_the_header_deadline() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        };
        let activity = Activity::new();
        assert_eq!(
            activity.next_check(&limits),
            activity.accepted + limits.header_read_timeout
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(activity.verdict(&limits), Verdict::NoFirstRequest));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_calls_in_flight() {
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        };
        let activity = Arc::new(Activity::new());
        let call = InFlight::begin(&activity);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(activity.verdict(&limits), Verdict::Fine));
        drop(call);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(activity.verdict(&limits), Verdict::Fine));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(activity.verdict(&limits), Verdict::Idle));
    }
}
