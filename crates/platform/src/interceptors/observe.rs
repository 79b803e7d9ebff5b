//! RED metrics per method (rate, errors by code, duration), one structured log line per call,
//! and — when traces are exported ([`crate::telemetry`]) — the call's SERVER span.
//! Wraps the whole interceptor stack; a call ends when its response's trailers pass (or when the
//! body is dropped early, which is recorded as `canceled`).
//!
//! The span is named `package.Service/Method`, parented on the caller's `traceparent`, and
//! carries the RPC semantic conventions (`rpc.system` `grpc` or `connect_rpc`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code` or `rpc.connect_rpc.error_code`, `server.address`), the
//! request id, and on errors the `ErrorInfo` reason (`error.type`). The duration histogram
//! carries the trace id as an exemplar, so a latency spike on a dashboard leads to a trace.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use tonic::body::Body;

use super::around::{Around, Next};
use super::authenticate::Authenticate;
use super::context::{RequestId, TraceContext};
use crate::outbound::OutboundMetrics;
use crate::telemetry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// The exemplar a duration observation carries: the call's trace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceExemplar {
    trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallerLabels {
    method: String,
    caller: String,
}

/// The process's metrics, exported by the admin port's `/metrics`: the RPCs it serves and the
/// calls it makes ([`outbound`](crate::outbound)). Clones share the registry, so the one given to
/// the server ([`Server::metrics`](crate::Server::metrics)) is the one outbound callees use.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    calls: Family<CallLabels, Counter>,
    durations: Family<MethodLabels, HistogramWithExemplars<TraceExemplar>>,
    in_flight: Gauge,
    deprecated_calls: Family<CallerLabels, Counter>,
    outbound: OutboundMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        let durations =
            Family::<MethodLabels, HistogramWithExemplars<TraceExemplar>>::new_with_constructor(
                || HistogramWithExemplars::new(exponential_buckets(0.000_25, 2.0, 16)),
            );
        let in_flight = Gauge::default();
        registry.register(
            "rpc_calls",
            "Completed RPCs by method and status code",
            calls.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "RPC duration until the last byte of the response",
            durations.clone(),
        );
        registry.register("rpc_in_flight", "RPCs in progress", in_flight.clone());
        let deprecated_calls = Family::<CallerLabels, Counter>::default();
        registry.register(
            "rpc_deprecated_calls",
            "Calls of deprecated RPCs by method and caller (tenant/subject), to see who must migrate",
            deprecated_calls.clone(),
        );
        registry.register(
            "trace_spans",
            "Trace spans by outcome: ended, exported to the collector, or lost in a failed export",
            telemetry::TRACE_SPANS.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer's queue was full (stderr slower than the calls)",
            telemetry::LOG_LINES_DROPPED.clone(),
        );
        let outbound = OutboundMetrics::register(&mut registry);
        Metrics {
            registry: Arc::new(registry),
            calls,
            durations,
            in_flight,
            deprecated_calls,
            outbound,
        }
    }
}

impl Metrics {
    /// Counts one call of a deprecated method by `caller`.
    pub fn count_deprecated_call(&self, method: &str, caller: &str) {
        self.deprecated_calls
            .get_or_create(&CallerLabels {
                method: method.to_owned(),
                caller: caller.to_owned(),
            })
            .inc();
    }

    /// The families outbound callees count into.
    pub(crate) fn outbound(&self) -> &OutboundMetrics {
        &self.outbound
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        telemetry::sync_log_drops();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Records every call.
#[derive(Clone)]
pub struct Observe {
    metrics: Metrics,
    /// Verifies the bearer token of a call whose caller asks for it to be traced: only service
    /// and staff callers may (see [`telemetry::sample`]). `None` in open mode (tests).
    verifier: Option<Authenticate>,
}

impl Observe {
    /// Records into `metrics`; `verifier` decides whose "sampled" flag counts.
    pub fn new(metrics: Metrics, verifier: Option<Authenticate>) -> Self {
        Observe { metrics, verifier }
    }

    /// Whether the caller may decide that its call is traced: it presents a valid service or
    /// staff token (not a customer token: anyone can become a customer). Runs only for calls
    /// that ask to be traced and that the ratio did not pick, so other calls pay nothing.
    fn may_force_sampling(&self, request: &Request<Body>) -> bool {
        let Some(verifier) = &self.verifier else {
            return false;
        };
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .and_then(|token| verifier.verify(token.trim()).ok())
            .is_some_and(|principal| principal.customer.is_none())
    }
}

impl Around for Observe {
    fn around(&self, mut request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        self.metrics.in_flight.inc();
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        let protocol = request
            .extensions()
            .get::<WireProtocol>()
            .copied()
            .unwrap_or(WireProtocol::Grpc);
        let traceparent = request
            .extensions()
            .get::<TraceContext>()
            .and_then(|trace| trace.traceparent.as_deref());
        // Sampled or not is decided first: an unsampled call opens no span at all.
        let span = if telemetry::sample(traceparent, || self.may_force_sampling(&request)) {
            server_span(&request, &method, &request_id, protocol)
        } else {
            // What this server decided is what travels on (to callees, into events' envelopes):
            // a caller's "sampled" flag that did not count here must not count further down. A
            // process that exports no traces passes the caller's context on untouched.
            if telemetry::enabled()
                && let Some(trace) = request.extensions_mut().get_mut::<TraceContext>()
            {
                trace.traceparent = trace.traceparent.take().map(telemetry::unsampled);
            }
            tracing::Span::none()
        };
        let mut call = CallRecord {
            metrics: self.metrics.clone(),
            method,
            request_id,
            // The deadline the caller sent (Connect's arrives translated), for tracing a slow
            // call across services.
            timeout: request
                .headers()
                .get("grpc-timeout")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            started: Instant::now(),
            done: false,
            protocol,
            span: span.clone(),
        };
        use tracing::Instrument as _;
        next.run(request)
            .instrument(span)
            .map(move |response| {
                if let Some(code) = grpc_code(response.headers()) {
                    // Trailers-only: the call is over.
                    call.finish_with(code, Some(response.headers()));
                }
                response.map(|body| Body::new(ObservedBody { body, call }))
            })
            .boxed()
    }
}

/// The protocol a call arrived in, noted before the Connect and gRPC-web translations turn every
/// call into gRPC (see [`WireProtocol::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireProtocol {
    /// gRPC over HTTP/2.
    Grpc,
    /// gRPC-web (binary or text).
    GrpcWeb,
    /// Connect: unary POST, unary GET or streaming.
    Connect,
}

impl WireProtocol {
    /// The protocol of a request as it arrived (by content type; a Connect GET has none).
    pub fn of<B>(request: &Request<B>) -> WireProtocol {
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if content_type.starts_with("application/grpc-web") {
            WireProtocol::GrpcWeb
        } else if content_type.starts_with("application/grpc") {
            WireProtocol::Grpc
        } else {
            WireProtocol::Connect
        }
    }

    /// `rpc.system` of the semantic conventions.
    fn system(self) -> &'static str {
        match self {
            WireProtocol::Grpc | WireProtocol::GrpcWeb => "grpc",
            WireProtocol::Connect => "connect_rpc",
        }
    }
}

/// The SERVER span of one call, parented on the caller's trace context.
fn server_span(
    request: &Request<Body>,
    method: &str,
    request_id: &str,
    protocol: WireProtocol,
) -> tracing::Span {
    let (service, name) = method.rsplit_once('/').unwrap_or((method, ""));
    // `commerce.checkout.v1.OrderService` → `checkout`: which service of an all-in-one answered.
    let area = service
        .strip_prefix("commerce.")
        .and_then(|rest| rest.split('.').next())
        .unwrap_or_default();
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().host().map(str::to_owned))
        .unwrap_or_default();
    let span = tracing::info_span!(
        target: "rpc",
        "rpc",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = protocol.system(),
        rpc.service = service,
        rpc.method = name,
        rpc.grpc.status_code = tracing::field::Empty,
        rpc.connect_rpc.error_code = tracing::field::Empty,
        network.protocol.name = tracing::field::Empty,
        server.address = host.as_str(),
        commerce.service = area,
        request_id = request_id,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if protocol == WireProtocol::GrpcWeb {
        span.record("network.protocol.name", "grpc-web");
    }
    let trace = request.extensions().get::<TraceContext>();
    telemetry::adopt_remote_parent(
        &span,
        trace.and_then(|trace| trace.traceparent.as_deref()),
        trace.and_then(|trace| trace.tracestate.as_deref()),
    );
    telemetry::record_ids(&span);
    span
}

fn grpc_code(metadata: &HeaderMap) -> Option<i32> {
    metadata.get("grpc-status")?.to_str().ok()?.parse().ok()
}

struct CallRecord {
    metrics: Metrics,
    method: String,
    request_id: String,
    timeout: String,
    started: Instant,
    done: bool,
    protocol: WireProtocol,
    /// The SERVER span (disabled when traces are off); it ends with the call.
    span: tracing::Span,
}

/// The share of successful calls that get an `rpc finished` line: `COMMERCE_LOG_SUCCESS_RATIO`
/// (0–1; default 1, every call). Errors are always logged; metrics count every call whatever this
/// says, so a busy deployment can log 1% of its successes and lose no signal.
static SUCCESS_LOG_RATIO: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
    std::env::var("COMMERCE_LOG_SUCCESS_RATIO")
        .ok()
        .and_then(|ratio| ratio.parse::<f64>().ok())
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .unwrap_or(1.0)
});

fn log_this_success() -> bool {
    let ratio = *SUCCESS_LOG_RATIO;
    ratio >= 1.0 || fastrand::f64() < ratio
}

impl CallRecord {
    fn finish(&mut self, code: i32) {
        self.finish_with(code, None);
    }

    /// Ends the call with gRPC status `code`; `metadata` (headers or trailers) holds the error
    /// details, whose `ErrorInfo` reason the span records.
    fn finish_with(&mut self, grpc_code: i32, metadata: Option<&HeaderMap>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = connect::Code::from_grpc(grpc_code).name();
        let trace_ids = telemetry::ids_of(&self.span);
        if !self.span.is_disabled() {
            self.record_outcome(grpc_code, code, metadata);
        }
        let elapsed = self.started.elapsed();
        self.metrics.in_flight.dec();
        self.metrics
            .calls
            .get_or_create(&CallLabels {
                method: self.method.clone(),
                code: code.to_owned(),
            })
            .inc();
        let trace_id = trace_ids.map(|(trace_id, _)| trace_id).unwrap_or_default();
        self.metrics
            .durations
            .get_or_create(&MethodLabels {
                method: self.method.clone(),
            })
            .observe(
                elapsed.as_secs_f64(),
                (!trace_id.is_empty()).then_some(TraceExemplar { trace_id }),
                None,
            );
        // Inside the span (when there is one), so the line carries its trace and span ids. Every
        // failed call gets its line; successful ones as `COMMERCE_LOG_SUCCESS_RATIO` says.
        if grpc_code != 0 || log_this_success() {
            let _inside = self.span.enter();
            tracing::info!(
                target: "rpc",
                method = %self.method,
                code,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = %self.request_id,
                grpc_timeout = %self.timeout,
                "rpc finished"
            );
        }
        // The span ends here, with the call: its end time is its last exit (tracing-opentelemetry),
        // which for a stream is long after the handler returned, so exit it once more now.
        drop(self.span.enter());
        self.span = tracing::Span::none();
    }

    /// The span's status attributes: the code in the protocol's own terms, the error status
    /// for codes that mean the server failed (the semantic conventions' rule for SERVER spans),
    /// and the `ErrorInfo` reason.
    fn record_outcome(&self, grpc_code: i32, code: &str, metadata: Option<&HeaderMap>) {
        match self.protocol {
            WireProtocol::Connect if grpc_code != 0 => {
                self.span.record("rpc.connect_rpc.error_code", code);
            }
            WireProtocol::Connect => {}
            WireProtocol::Grpc | WireProtocol::GrpcWeb => {
                self.span.record("rpc.grpc.status_code", grpc_code);
            }
        }
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
        if matches!(grpc_code, 2 | 4 | 12 | 13 | 14 | 15) {
            self.span.record("otel.status_code", "error");
        }
        if grpc_code != 0 {
            let reason = metadata
                .map(tonic::Status::from_header_map)
                .and_then(|status| {
                    use tonic_types::StatusExt as _;
                    status?.get_details_error_info().map(|info| info.reason)
                });
            self.span
                .record("error.type", reason.as_deref().unwrap_or(code));
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // The body was dropped before its trailers: the caller went away.
        self.finish(1);
    }
}

/// The response body, watched for the trailers that end the call.
struct ObservedBody {
    body: Body,
    call: CallRecord,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = grpc_code(trailers)
                {
                    self.call.finish_with(code, Some(trailers));
                }
            }
            Poll::Ready(Some(Err(_))) => self.call.finish(2),
            Poll::Ready(None) => self.call.finish(0),
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
