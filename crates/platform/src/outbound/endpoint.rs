//! One replica of a callee: a `tonic` channel behind the replica's own circuit breaker, counting
//! its in-flight calls (its load for the balancer).
//!
//! Readiness is the breaker: while it is open the endpoint is not ready, so the balancer picks
//! another; it becomes ready again when it half-opens (a timer) or its trial settles (a wake-up).
//! Every call's outcome settles the breaker through the request's [`AttemptRecord`]: the status
//! in the response headers (trailers-only) or trailers, a connection lost mid-call or a broken
//! body (one failure), an endpoint that refuses connections (the breaker opens at once), or the
//! attempt's timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::Service;

use super::attempt::AttemptRecord;
use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit, Refusal};

/// Errors from the channel stack (`tower::BoxError`).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How each endpoint's connection and breaker are set up.
#[derive(Debug, Clone)]
pub(crate) struct EndpointSettings {
    pub callee: String,
    pub connect_timeout: Duration,
    pub breaker: BreakerConfig,
    /// How long a caller refused during a half-open trial should wait.
    pub trial_retry_after: Duration,
}

/// What every clone of one endpoint shares.
#[derive(Debug)]
struct Shared {
    callee: String,
    address: String,
    breaker: Arc<CircuitBreaker>,
    in_flight: Arc<AtomicUsize>,
}

/// One endpoint as a `tower::Service`; clones share the breaker and the in-flight count.
#[derive(Debug)]
pub(crate) struct EndpointService {
    shared: Arc<Shared>,
    channel: tonic::transport::Channel,
    /// Taken in `poll_ready`, used by the next `call`.
    permit: Option<Permit>,
    /// Wakes an endpoint whose breaker is open when it half-opens.
    half_open_at: Option<Pin<Box<Sleep>>>,
}

impl Clone for EndpointService {
    fn clone(&self) -> Self {
        EndpointService {
            shared: self.shared.clone(),
            channel: self.channel.clone(),
            permit: None,
            half_open_at: None,
        }
    }
}

impl EndpointService {
    /// An endpoint at `address` (`http://host:port`); connects lazily, on its first call.
    pub(crate) fn new(address: &str, settings: &EndpointSettings) -> Result<Self, BoxError> {
        let channel = tonic::transport::Endpoint::from_shared(address.to_owned())?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let breaker = CircuitBreaker::new(
            settings.callee.clone(),
            Some(address.to_owned()),
            settings.breaker,
            settings.trial_retry_after,
        );
        Ok(EndpointService {
            shared: Arc::new(Shared {
                callee: settings.callee.clone(),
                address: address.to_owned(),
                breaker,
                in_flight: Arc::default(),
            }),
            channel,
            permit: None,
            half_open_at: None,
        })
    }

    /// `http://host:port`.
    pub(crate) fn address(&self) -> &str {
        &self.shared.address
    }

    /// The endpoint's breaker.
    #[cfg(test)]
    pub(crate) fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.shared.breaker
    }

    /// The breaker's state now.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.state()
    }

    /// Whether the breaker would admit a call now, or why not.
    pub(crate) fn would_admit(&self) -> Result<(), Refusal> {
        self.shared.breaker.would_admit()
    }

    /// How long a caller refused during a half-open trial should wait.
    pub(crate) fn trial_retry_after(&self) -> Duration {
        self.shared.breaker.trial_retry_after()
    }

    /// Calls in flight on this endpoint (from sending until the response body ends).
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn unavailable(&self, what: impl std::fmt::Display) -> Status {
        Status::unavailable(format!("{} endpoint {}: {what}", self.callee, self.address))
    }
}

impl tower::load::Load for EndpointService {
    type Metric = usize;

    fn load(&self) -> usize {
        self.in_flight()
    }
}

impl Service<Request<Body>> for EndpointService {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            if self
                .permit
                .as_ref()
                .is_some_and(|permit| !permit.still_valid())
            {
                // Picked while closed, but the breaker opened since: not ready after all.
                self.permit = None;
            }
            if self.permit.is_some() {
                break;
            }
            match self.shared.breaker.poll_admit(cx, 0) {
                Ok(permit) => {
                    self.permit = Some(permit);
                    self.half_open_at = None;
                }
                Err(Refusal::Open { until }) => {
                    let timer = self
                        .half_open_at
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                    if timer.deadline() != until {
                        timer.as_mut().reset(until);
                    }
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Half open now: admit the trial on the next turn.
                    self.half_open_at = None;
                }
                // Woken when the trial settles or gives up its slot.
                Err(Refusal::TrialInFlight) => return Poll::Pending,
            }
        }
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let record = match request.extensions().get::<AttemptRecord>() {
            Some(record) => record.clone(),
            None => {
                // Called directly (a stream, not the call loop): settle by what the wire says.
                let record = AttemptRecord::default();
                request.extensions_mut().insert(record.clone());
                record
            }
        };
        let permit = match self.permit.take() {
            Some(permit) => permit,
            // `call` without `poll_ready` breaks the `Service` contract; refuse rather than panic.
            None => match self.shared.breaker.admit(0) {
                Ok(permit) => permit,
                Err(refusal) => {
                    let status = self.shared.unavailable(format_args!(
                        "circuit breaker {}",
                        match refusal {
                            Refusal::Open { .. } => "open",
                            Refusal::TrialInFlight => "half open, trial in flight",
                        }
                    ));
                    return std::future::ready(Err(status.into())).boxed();
                }
            },
        };
        record.took(&self.shared.address, permit);
        let in_flight = InFlight::start(&self.shared.in_flight);
        let sent = self.channel.call(request);
        let shared = self.shared.clone();
        async move {
            match sent.await {
                Ok(response) => {
                    if let Some(code) = grpc_code(response.headers()) {
                        record.answered(code);
                        return Ok(response);
                    }
                    Ok(response.map(|body| {
                        Body::new(SettlingBody {
                            body,
                            record: Some(record),
                            _in_flight: in_flight,
                        })
                    }))
                }
                Err(error) if is_in_chain::<tonic::TimeoutExpired>(&error) => {
                    record.time_out();
                    Err(Status::deadline_exceeded(format!(
                        "{} endpoint {}: the attempt's time ran out",
                        shared.callee, shared.address
                    ))
                    .into())
                }
                Err(error) => {
                    if is_in_chain::<tonic::ConnectError>(&error) {
                        // Nothing accepted the connection: nothing is answering at that address.
                        record.unreachable();
                    } else {
                        // A connection lost mid-call: one failure, not proof the endpoint is gone.
                        record.broke();
                    }
                    Err(shared.unavailable(error_chain(&error)).into())
                }
            }
        }
        .boxed()
    }
}

/// Whether `error` or one of its sources is an `E`: tonic's channel fails with `TimeoutExpired`
/// when the `grpc-timeout` we sent runs out, and wraps connection failures in `ConnectError`.
fn is_in_chain<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// `transport error: connection refused (os error 111)`, one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        let next = error.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = error.source();
    }
    text
}

fn grpc_code(metadata: &HeaderMap) -> Option<Code> {
    let code: i32 = metadata.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(code))
}

/// Counts one call in flight until dropped.
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body, watched for the trailers that carry the call's status.
struct SettlingBody {
    body: Body,
    /// Taken when the outcome is known.
    record: Option<AttemptRecord>,
    _in_flight: InFlight,
}

impl HttpBody for SettlingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(record) = self.record.take()
                {
                    match grpc_code(trailers) {
                        Some(code) => record.answered(code),
                        None => record.broke(),
                    }
                }
            }
            Poll::Ready(Some(Err(_)) | None) => {
                if let Some(record) = self.record.take() {
                    record.broke();
                }
            }
            Poll::Pending => {}
        }
        polled
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
    fn a_timeout_is_found_anywhere_in_the_error_chain() {
        #[derive(Debug)]
        struct Wrapper(tonic::TimeoutExpired);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = Wrapper(tonic::TimeoutExpired(()));
        assert!(is_in_chain::<tonic::TimeoutExpired>(&wrapped));
        assert!(!is_in_chain::<tonic::ConnectError>(&wrapped));
        assert!(!is_in_chain::<tonic::TimeoutExpired>(
            &std::io::Error::other("refused")
        ));
    }
}
