//! RED metrics per method (rate, errors by code, duration) and one structured log line per call.
//! Wraps the whole interceptor stack; a call ends when its response's trailers pass (or when the
//! body is dropped early, which is recorded as `canceled`).

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
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::body::Body;

use super::around::{Around, Next};
use super::context::RequestId;
use crate::outbound::OutboundMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
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
    durations: Family<MethodLabels, Histogram>,
    in_flight: Gauge,
    deprecated_calls: Family<CallerLabels, Counter>,
    outbound: OutboundMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        let durations = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
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
}

impl Observe {
    /// Records into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Observe { metrics }
    }
}

impl Around for Observe {
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        self.metrics.in_flight.inc();
        let mut call = CallRecord {
            metrics: self.metrics.clone(),
            method: request.uri().path().trim_start_matches('/').to_owned(),
            request_id: request
                .extensions()
                .get::<RequestId>()
                .map(|id| id.0.clone())
                .unwrap_or_default(),
            started: Instant::now(),
            done: false,
        };
        next.run(request)
            .map(move |response| {
                if let Some(code) = grpc_code(response.headers()) {
                    call.finish(code); // trailers-only: the call is over
                }
                response.map(|body| Body::new(ObservedBody { body, call }))
            })
            .boxed()
    }
}

fn grpc_code(metadata: &HeaderMap) -> Option<i32> {
    metadata.get("grpc-status")?.to_str().ok()?.parse().ok()
}

struct CallRecord {
    metrics: Metrics,
    method: String,
    request_id: String,
    started: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = connect::Code::from_grpc(code).name();
        let elapsed = self.started.elapsed();
        self.metrics.in_flight.dec();
        self.metrics
            .calls
            .get_or_create(&CallLabels {
                method: self.method.clone(),
                code: code.to_owned(),
            })
            .inc();
        self.metrics
            .durations
            .get_or_create(&MethodLabels {
                method: self.method.clone(),
            })
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "rpc",
            method = %self.method,
            code,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id = %self.request_id,
            "rpc finished"
        );
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
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    self.call.finish(code);
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
