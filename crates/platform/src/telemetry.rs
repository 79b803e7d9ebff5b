//! Traces over OTLP: the `tracing` spans the platform opens (one per RPC, outbound call, store
//! operation, event and background round) become OpenTelemetry spans through
//! `tracing-opentelemetry`, batched and exported over OTLP/gRPC to a collector.
//!
//! Configured by the standard variables, read once at start: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (unset: no exporter, and no span is opened at all — [`enabled`] is false), `OTEL_SERVICE_NAME`
//! (default given by the process: `commerce` for the all-in-one, `commerce-checkout`, … for one
//! service), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
//! (default: parent-based, sampling every root). Export never slows a request: spans go to a
//! bounded queue drained by the SDK's own thread; when the collector is slow or gone, spans are
//! dropped and counted ([`TRACE_SPANS`] in `/metrics`).
//!
//! Propagation is W3C Trace Context (`traceparent`, `tracestate`): [`adopt_remote_parent`] makes
//! a caller's context the parent of a server or consumer span; [`trace_context_of`] is what an
//! outbound call or an event envelope carries.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{KeyValue, trace::SpanContext};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether spans are exported (set once, by [`Telemetry::install`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// How traces are sampled, decided **before** any span is opened: a call that is not sampled
/// opens no span at all (opening and dropping spans was most of the cost of tracing), and the
/// SDK samples every span that is opened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Follow a caller's (or an event producer's) sampled flag when there is one.
    pub parent_based: bool,
    /// The share of traces started here that are sampled (0 to 1).
    pub ratio: f64,
}

impl Sampling {
    /// From `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (the specification's values);
    /// default `parentbased_always_on`.
    fn from_env(sampler: Option<&str>, arg: Option<&str>) -> Sampling {
        let ratio = || {
            arg.and_then(|arg| arg.trim().parse::<f64>().ok())
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .unwrap_or(1.0)
        };
        match sampler.unwrap_or("parentbased_always_on") {
            "always_on" => Sampling {
                parent_based: false,
                ratio: 1.0,
            },
            "always_off" => Sampling {
                parent_based: false,
                ratio: 0.0,
            },
            "traceidratio" => Sampling {
                parent_based: false,
                ratio: ratio(),
            },
            "parentbased_always_off" => Sampling {
                parent_based: true,
                ratio: 0.0,
            },
            "parentbased_traceidratio" => Sampling {
                parent_based: true,
                ratio: ratio(),
            },
            _ => Sampling {
                parent_based: true,
                ratio: 1.0,
            },
        }
    }
}

static SAMPLING: std::sync::RwLock<Sampling> = std::sync::RwLock::new(Sampling {
    parent_based: true,
    ratio: 1.0,
});

/// Whether a trace continued from `traceparent` (or started here, without one) is sampled.
/// False whenever traces are off.
///
/// A caller's "sampled" flag is honoured only when `trusted()` says the caller may decide (a
/// service or staff token — see `Observe`): otherwise anyone could send `-01` on every call and
/// force each one to be traced and exported whatever the ratio, a cheap way to load the process
/// and the collector. An untrusted caller's call is sampled by the ratio, in the caller's trace.
/// A "not sampled" flag is always honoured (it only saves work). `trusted` runs only when the
/// flag would make the difference.
pub fn sample(traceparent: Option<&str>, trusted: impl FnOnce() -> bool) -> bool {
    if !enabled() {
        return false;
    }
    let sampling = *SAMPLING
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    decide(sampling, traceparent, fastrand::f64(), trusted)
}

/// The sampling decision for a trace continued from `traceparent` (or new), `draw` uniform in
/// [0, 1); `trusted` says whether the caller's "sampled" flag counts.
fn decide(
    sampling: Sampling,
    traceparent: Option<&str>,
    draw: f64,
    trusted: impl FnOnce() -> bool,
) -> bool {
    // `00-<trace id>-<span id>-<flags>`: bit 0 of the flags is "sampled".
    let parent_sampled = traceparent
        .filter(|_| sampling.parent_based)
        .and_then(|traceparent| traceparent.get(53..55))
        .and_then(|flags| u8::from_str_radix(flags, 16).ok())
        .map(|flags| flags & 1 == 1);
    let by_ratio = draw < sampling.ratio;
    match parent_sampled {
        Some(true) => by_ratio || trusted(),
        Some(false) => false,
        None => by_ratio,
    }
}

/// `traceparent` with its "sampled" flag cleared (the rest unchanged), for passing on the
/// context of a call this process decided not to trace.
pub fn unsampled(traceparent: String) -> String {
    let Some(flags) = traceparent
        .get(53..55)
        .and_then(|flags| u8::from_str_radix(flags, 16).ok())
    else {
        return traceparent;
    };
    format!(
        "{}{:02x}{}",
        &traceparent[..53],
        flags & !1,
        &traceparent[55..]
    )
}

/// Whether the current task is inside a sampled trace: child spans (outbound calls, store,
/// Redis, steps) are opened only then.
pub fn in_trace() -> bool {
    enabled() && !tracing::Span::current().is_none()
}

/// The `tracing` target of child spans: the log layer leaves them out (only the spans that
/// carry `trace_id` matter to log lines), which keeps tracing's cost on the log side small.
pub const CHILD_SPANS: &str = "commerce_trace";

/// Whether traces are exported: callers open spans only then, so a process without a collector
/// pays nothing for them.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SpanOutcome {
    outcome: &'static str,
}

/// `trace_spans_total{outcome}`: spans ended (`ended`), handed to the collector (`exported`) or
/// lost because an export failed (`failed`). `ended − exported − failed` beyond what is still
/// queued were dropped because the queue was full.
pub(crate) static TRACE_SPANS: LazyLock<Family<SpanOutcome, Counter>> =
    LazyLock::new(Family::default);

/// Log lines the writer queue may hold before new lines are dropped.
const LOG_QUEUE_LINES: usize = 64 * 1024;

/// The log writer's count of lines it dropped because its queue was full.
static LOG_DROPS: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// `log_lines_dropped_total`: log lines dropped because the writer's queue was full (stderr
/// slower than the calls); brought up to date by [`sync_log_drops`] when metrics are read.
pub(crate) static LOG_LINES_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Brings `log_lines_dropped_total` up to the writer's own count.
pub(crate) fn sync_log_drops() {
    if let Some(drops) = LOG_DROPS.get() {
        let dropped = drops.dropped_lines() as u64;
        let counted = LOG_LINES_DROPPED.get();
        if dropped > counted {
            LOG_LINES_DROPPED.inc_by(dropped - counted);
        }
    }
}

fn count(outcome: &'static str, spans: u64) {
    TRACE_SPANS
        .get_or_create(&SpanOutcome { outcome })
        .inc_by(spans);
}

/// What the process was configured with, for the start-up print.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`).
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`, or the process's default.
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER` (+ `_ARG`), or the default, as printed.
    pub sampler: String,
    /// The sampling decision's rules.
    pub sampling: Sampling,
}

impl TelemetryConfig {
    /// Reads the standard variables; `default_service_name` when `OTEL_SERVICE_NAME` is unset.
    pub fn from_env(default_service_name: &str) -> TelemetryConfig {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|_| var("OTEL_TRACES_EXPORTER").as_deref() != Some("none"));
        let (sampler_var, sampler_arg) =
            (var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"));
        let sampling = Sampling::from_env(sampler_var.as_deref(), sampler_arg.as_deref());
        let sampler = format!(
            "{} (parent-based: {}, ratio for new traces: {})",
            sampler_var.as_deref().unwrap_or("parentbased_always_on"),
            sampling.parent_based,
            sampling.ratio
        );
        TelemetryConfig {
            endpoint,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service_name.into()),
            sampler,
            sampling,
        }
    }
}

impl std::fmt::Display for TelemetryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.endpoint {
            Some(endpoint) => write!(
                f,
                "OTLP/gRPC to {endpoint} as {}, sampler {}",
                self.service_name, self.sampler
            ),
            None => write!(f, "off (set OTEL_EXPORTER_OTLP_ENDPOINT to export traces)"),
        }
    }
}

/// The installed trace pipeline; [`Telemetry::shutdown`] flushes what is queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The log writer's worker: dropping it writes out the lines still queued.
    logs: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>>,
}

/// Why the trace pipeline could not be built.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct TelemetryError(String);

impl Telemetry {
    /// Builds the pipeline `config` describes (nothing when it names no endpoint) and returns
    /// the `tracing` layer that feeds it. Must run inside the Tokio runtime (the gRPC channel
    /// lives there). `attributes` are added to the resource (e.g. which services the process
    /// hosts).
    pub fn install<S>(
        config: &TelemetryConfig,
        attributes: Vec<KeyValue>,
    ) -> Result<(Telemetry, Option<impl tracing_subscriber::Layer<S>>), TelemetryError>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let Some(_endpoint) = &config.endpoint else {
            return Ok((
                Telemetry {
                    provider: None,
                    logs: std::sync::Mutex::default(),
                },
                None,
            ));
        };
        // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT / _TIMEOUT / _HEADERS itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|error| TelemetryError(error.to_string()))?;
        // The SDK reads OTEL_BSP_*; where they are unset, a larger queue and a shorter delay than
        // its defaults suit an API server (bursts; traces visible within a second).
        let mut batch = BatchConfigBuilder::default();
        if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
            batch = batch.with_max_queue_size(8192);
        }
        if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
            batch = batch.with_scheduled_delay(Duration::from_millis(500));
        }
        let processor = BatchSpanProcessor::builder(Counted(exporter))
            .with_batch_config(batch.build())
            .build();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes(attributes)
            .build();
        // The decision is made before a span is opened ([`sample`]): every span opened is sampled.
        *SAMPLING
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config.sampling;
        let provider = SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .with_span_processor(CountEnded)
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("commerce");
        ENABLED.store(true, Ordering::Relaxed);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false);
        Ok((
            Telemetry {
                provider: Some(provider),
                logs: std::sync::Mutex::default(),
            },
            Some(layer),
        ))
    }

    /// Exports what is queued (within a few seconds) and stops the exporter; writes out the log
    /// lines still queued.
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        }
        drop(
            self.logs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
    }
}

/// Counts every span that ends (before the batch queue, which may drop it).
#[derive(Debug)]
struct CountEnded;

impl opentelemetry_sdk::trace::SpanProcessor for CountEnded {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, _: SpanData) {
        count("ended", 1);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The OTLP exporter, counting what it exported and what it lost.
#[derive(Debug)]
struct Counted<E>(E);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let outcome = self.0.export(batch).await;
        count(
            if outcome.is_ok() {
                "exported"
            } else {
                "failed"
            },
            spans,
        );
        outcome
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Makes the W3C context in `traceparent`/`tracestate` (a caller's, or an event's producer's)
/// the parent of `span`. An absent or malformed `traceparent` leaves `span` a root.
pub fn adopt_remote_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(tracestate) = tracestate {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// The W3C `traceparent` (and `tracestate`, when it has one) naming `span` as the parent, for an
/// outbound call's headers or an event's envelope. `None` when `span` is not traced.
pub fn trace_context_of(span: &tracing::Span) -> Option<(String, Option<String>)> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    let traceparent = carrier.remove("traceparent")?;
    Some((
        traceparent,
        carrier.remove("tracestate").filter(|s| !s.is_empty()),
    ))
}

/// `span`'s trace and span ids (hex), for log lines; `None` when it is not traced.
pub fn ids_of(span: &tracing::Span) -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let span_context: SpanContext = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// Records `trace_id` and `span_id` on `span` (declared as empty fields when it was opened), so
/// every log line inside it carries them.
pub fn record_ids(span: &tracing::Span) {
    if let Some((trace_id, span_id)) = ids_of(span) {
        span.record("trace_id", trace_id.as_str());
        span.record("span_id", span_id.as_str());
    }
}

/// Installs the process's `tracing` subscriber: JSON log lines on stderr (`COMMERCE_LOG`, default
/// `info`), each inside a traced span carrying `trace_id` and `span_id` at the top level, and —
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set — the OTLP trace pipeline. `default_service_name`
/// names the process when `OTEL_SERVICE_NAME` does not; `attributes` go on the resource.
/// Call once, inside the Tokio runtime; returns the configuration (for the start-up print) and
/// the pipeline to shut down on exit.
pub fn init(
    default_service_name: &str,
    attributes: Vec<KeyValue>,
) -> Result<(TelemetryConfig, Telemetry), TelemetryError> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};

    let config = TelemetryConfig::from_env(default_service_name);
    // Log lines go through a queue to a writer thread, so a slow or blocked stderr (a full pipe,
    // a stalled log shipper) never holds up a request; when the queue is full, lines are dropped
    // and counted (`log_lines_dropped_total`) rather than waited for.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("commerce-log")
        .finish(std::io::stderr());
    let _ = LOG_DROPS.set(writer.error_counter());
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .event_format(WithTraceIds(tracing_subscriber::fmt::format().json()))
        .with_writer(writer)
        .with_filter({
            let wanted = std::env::var("COMMERCE_LOG").unwrap_or_else(|_| "info".to_owned());
            EnvFilter::try_new(format!("{wanted},{CHILD_SPANS}=off"))
                .unwrap_or_else(|_| EnvFilter::new(format!("info,{CHILD_SPANS}=off")))
        });
    let (telemetry, traces) = Telemetry::install(&config, attributes)?;
    *telemetry
        .logs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(guard);
    // Spans are filtered for the exporter on their own: quieter logs (COMMERCE_LOG=warn) must
    // not thin out the traces.
    let traces = traces.map(|layer| layer.with_filter(tracing::level_filters::LevelFilter::INFO));
    // A second init (tests that run the binary's code in process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(logs)
        .try_init();
    Ok((config, telemetry))
}

/// The JSON event format with the nearest traced span's `trace_id` and `span_id` moved to the
/// top level of the line, where log search expects them.
struct WithTraceIds<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    N: for<'writer> tracing_subscriber::fmt::FormatFields<'writer> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.event_scope().and_then(|scope| {
            scope.into_iter().find_map(|span| {
                let extensions = span.extensions();
                let fields = extensions.get::<tracing_subscriber::fmt::FormattedFields<N>>()?;
                let trace_id = json_string_field(&fields.fields, "trace_id")?;
                let span_id = json_string_field(&fields.fields, "span_id")?;
                Some(format!(r#""trace_id":"{trace_id}","span_id":"{span_id}","#))
            })
        });
        let Some(ids) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{{ids}{rest}"),
            None => writer.write_str(&line),
        }
    }
}

/// The value of `"name":"…"` in a JSON object's text (hex ids: no escapes to handle).
fn json_string_field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let start = json.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let end = start + json[start..].find('"')?;
    Some(&json[start..end])
}

/// The span of one logical outbound call to `callee` (INTERNAL: its attempts are the CLIENT
/// spans). Disabled when traces are off.
pub fn call_span(callee: &str, method: &str) -> tracing::Span {
    if !in_trace() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: CHILD_SPANS,
        "outbound call",
        otel.name = format!("{callee} {method}"),
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        commerce.callee = callee,
        rpc.method = method,
        error.type = tracing::field::Empty,
    )
}

/// Ends a logical call's span with its outcome.
pub fn end_call_span(span: &tracing::Span, outcome: &Result<(), tonic::Code>) {
    if let Err(code) = outcome {
        span.record("otel.status_code", "error");
        span.record("error.type", connect::Code::from_grpc(*code as i32).name());
    }
}

/// One attempt of an outbound call (CLIENT): `number` counts retries, `hedge` marks the second
/// attempt of a hedged round. `system` is `grpc` for a callee, or the dependency's own name (the
/// PSP adapter, the tax hook) when it is not a gRPC call.
pub fn attempt_span(
    callee: &str,
    method: &str,
    system: &str,
    number: u32,
    hedge: bool,
) -> tracing::Span {
    if !in_trace() {
        return tracing::Span::none();
    }
    // A gRPC method is `/package.Service/Method`; a dependency's operation (`authorize`) is the
    // method of the dependency itself.
    let (service, name) = match method.trim_start_matches('/').rsplit_once('/') {
        Some((service, name)) => (service, name),
        None => (callee, method),
    };
    tracing::info_span!(
        target: CHILD_SPANS,
        "outbound attempt",
        otel.name = method.trim_start_matches('/'),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = system,
        rpc.service = service,
        rpc.method = name,
        rpc.grpc.status_code = tracing::field::Empty,
        commerce.callee = callee,
        commerce.attempt = i64::from(number),
        commerce.hedge = hedge,
        error.type = tracing::field::Empty,
    )
}

/// Ends an attempt's span with its status.
pub fn end_attempt_span(span: &tracing::Span, outcome: Result<(), tonic::Code>) {
    if span.is_none() {
        return;
    }
    let code = match outcome {
        Ok(()) => tonic::Code::Ok,
        Err(code) => code,
    };
    span.record("rpc.grpc.status_code", code as i32);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "error");
        span.record("error.type", connect::Code::from_grpc(code as i32).name());
    }
}

/// `store` with a span (CLIENT, `db.system`) around every operation, when traces are exported;
/// `store` itself otherwise (no cost). `system` is `mongodb` or the embedded engine's name.
pub fn traced_store(
    store: std::sync::Arc<dyn store::Store>,
    system: &'static str,
) -> std::sync::Arc<dyn store::Store> {
    if enabled() {
        // Operations outside a sampled trace pass straight through (see `TracedStore::traced`).
        std::sync::Arc::new(TracedStore {
            inner: store,
            system,
        })
    } else {
        store
    }
}

struct TracedStore {
    inner: std::sync::Arc<dyn store::Store>,
    system: &'static str,
}

impl TracedStore {
    /// The span of one operation on aggregates of `kind` (`""` when it spans kinds).
    fn span(&self, operation: &'static str, kind: &str, batch: usize) -> tracing::Span {
        if !in_trace() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            target: CHILD_SPANS,
            "store",
            otel.name = format!("{operation} {kind}").trim_end().to_owned(),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system = self.system,
            db.operation.name = operation,
            db.collection.name = kind,
            db.operation.batch.size = batch as i64,
            db.group_commit.size = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    }
}

/// Runs `operation` inside `span`, marking the span failed when it fails (a version conflict is
/// an answer, not a failure: `error.type` only).
async fn traced<T>(
    span: tracing::Span,
    operation: impl std::future::Future<Output = Result<T, store::StoreError>>,
) -> Result<T, store::StoreError> {
    use tracing::Instrument as _;
    let result = operation.instrument(span.clone()).await;
    if let Err(error) = &result {
        let kind = match error {
            // Answers, not failures: a lost race, a key another call recorded first.
            store::StoreError::Conflict { .. } => "conflict",
            store::StoreError::IdempotencyKeyTaken(_) => "idempotency_key_taken",
            _ => {
                span.record("otel.status_code", "error");
                "backend"
            }
        };
        span.record("error.type", kind);
    }
    result
}

#[async_trait::async_trait]
impl store::Store for TracedStore {
    async fn load(
        &self,
        key: &store::AggregateKey,
    ) -> Result<Option<store::Versioned>, store::StoreError> {
        traced(self.span("load", &key.kind, 1), self.inner.load(key)).await
    }

    async fn commit(&self, commit: store::Commit) -> Result<u64, store::StoreError> {
        let span = self.span("commit", &commit.key.kind, 1);
        traced(span, self.inner.commit(commit)).await
    }

    async fn commit_all(&self, commits: Vec<store::Commit>) -> Result<Vec<u64>, store::StoreError> {
        let kind = commits
            .first()
            .map(|c| c.key.kind.clone())
            .unwrap_or_default();
        let span = self.span("commit_all", &kind, commits.len());
        traced(span, self.inner.commit_all(commits)).await
    }

    async fn commit_each(
        &self,
        jobs: Vec<Vec<store::Commit>>,
    ) -> Vec<Result<Vec<u64>, store::StoreError>> {
        use tracing::Instrument as _;
        let kind = jobs
            .first()
            .and_then(|job| job.first())
            .map(|c| c.key.kind.clone())
            .unwrap_or_default();
        let span = self.span("commit_each", &kind, jobs.len());
        let outcomes = self.inner.commit_each(jobs).instrument(span.clone()).await;
        if let Some(Err(error)) = outcomes.iter().find(|outcome| outcome.is_err()) {
            let error = error.clone();
            // Recorded the way a failed single commit is.
            let _ = traced(span, async { Err::<(), _>(error) }).await;
        }
        outcomes
    }

    async fn find(
        &self,
        tenant: &str,
        kind: &str,
        index: &store::IndexEntry,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, store::Versioned)>, store::StoreError> {
        let span = self.span("find", kind, limit);
        traced(span, self.inner.find(tenant, kind, index, after_id, limit)).await
    }

    // The outbox relay and the idempotency purge run all the time; their own round spans say
    // what they did, so these pass through without a span each.
    async fn pending_events(
        &self,
        limit: usize,
    ) -> Result<Vec<store::PendingEvent>, store::StoreError> {
        self.inner.pending_events(limit).await
    }

    async fn mark_delivered(
        &self,
        events: &[store::PendingEvent],
    ) -> Result<(), store::StoreError> {
        self.inner.mark_delivered(events).await
    }

    async fn idempotency_record(
        &self,
        tenant: &str,
        method: &str,
        key: &str,
    ) -> Result<Option<store::IdempotencyRecord>, store::StoreError> {
        let span = self.span("idempotency_record", "", 1);
        traced(span, self.inner.idempotency_record(tenant, method, key)).await
    }

    async fn save_idempotency_record(
        &self,
        record: store::IdempotencyRecord,
    ) -> Result<(), store::StoreError> {
        let span = self.span("save_idempotency_record", "", 1);
        traced(span, self.inner.save_idempotency_record(record)).await
    }

    async fn purge_expired_idempotency(&self, now: u64) -> Result<u64, store::StoreError> {
        self.inner.purge_expired_idempotency(now).await
    }
}

/// The ROOT span of one round of background work (`billing run`, `loyalty sweep`, …): it has no
/// request to belong to, so it starts a trace of its own.
pub fn round_span(what: &'static str) -> tracing::Span {
    if !sample(None, || false) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: "background",
        parent: None,
        "round",
        otel.name = what,
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    record_ids(&span);
    span
}

/// A step of background work worth seeing in its round's trace: one tenant's share, one
/// renewal, one settled payment (`what` names it; `id` says which).
pub fn step_span(what: &'static str, id: &str) -> tracing::Span {
    if !in_trace() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: CHILD_SPANS,
        "step",
        otel.name = format!("{what} {id}"),
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        commerce.step = what,
        commerce.id = id,
    )
}

/// Marks a span failed with `error`.
pub fn mark_failed(span: &tracing::Span, error: &dyn std::fmt::Display) {
    if !span.is_disabled() {
        span.record("otel.status_code", "error");
        span.record("error.type", error.to_string().as_str());
    }
}

/// A fast-path operation on the request path (CLIENT, `db.system` `redis`): one span per logical
/// operation — a rate-limit charge, a lock, a cache read — not per command.
pub fn fast_path_span(operation: &'static str) -> tracing::Span {
    if !in_trace() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: CHILD_SPANS,
        "fast path",
        otel.name = format!("redis {operation}"),
        otel.kind = "client",
        db.system = "redis",
        db.operation.name = operation,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[test]
    fn the_standard_sampler_variables_are_understood() {
        let parse = |sampler, arg| Sampling::from_env(sampler, arg);
        assert_eq!(
            parse(None, None),
            Sampling {
                parent_based: true,
                ratio: 1.0
            }
        );
        assert_eq!(
            parse(Some("always_off"), None),
            Sampling {
                parent_based: false,
                ratio: 0.0
            }
        );
        assert_eq!(
            parse(Some("parentbased_traceidratio"), Some("0.01")),
            Sampling {
                parent_based: true,
                ratio: 0.01
            }
        );
        assert_eq!(
            parse(Some("traceidratio"), Some("7")),
            Sampling {
                parent_based: false,
                ratio: 1.0
            },
            "an out-of-range ratio falls back to 1"
        );
    }

    #[test]
    fn a_parent_decides_when_sampling_is_parent_based_and_the_ratio_decides_roots() {
        let one_percent = Sampling {
            parent_based: true,
            ratio: 0.01,
        };
        let trusted = || true;
        assert!(decide(one_percent, Some(SAMPLED), 0.99, trusted));
        assert!(!decide(one_percent, Some(UNSAMPLED), 0.0, trusted));
        assert!(decide(one_percent, None, 0.005, trusted));
        assert!(!decide(one_percent, None, 0.5, trusted));
        // An untrusted caller's "sampled" flag does not force a trace: the ratio decides.
        assert!(!decide(one_percent, Some(SAMPLED), 0.99, || false));
        assert!(decide(one_percent, Some(SAMPLED), 0.005, || false));
        let ratio_only = Sampling {
            parent_based: false,
            ratio: 0.0,
        };
        assert!(
            !decide(ratio_only, Some(SAMPLED), 0.0, trusted),
            "traceidratio ignores the parent"
        );
        assert!(!decide(
            Sampling {
                parent_based: true,
                ratio: 0.0
            },
            None,
            0.0,
            trusted
        ));
    }

    #[test]
    fn an_unsampled_copy_of_a_traceparent_keeps_its_ids_and_clears_only_the_flag() {
        assert_eq!(
            unsampled(SAMPLED.to_owned()),
            format!("{}00", &SAMPLED[..53])
        );
        assert_eq!(unsampled(UNSAMPLED.to_owned()), UNSAMPLED);
        assert_eq!(unsampled("garbage".to_owned()), "garbage");
    }

    #[test]
    fn ids_are_read_from_a_spans_json_fields() {
        let fields = r#"{"request_id":"r-1","trace_id":"abc","span_id":"def"}"#;
        assert_eq!(json_string_field(fields, "trace_id"), Some("abc"));
        assert_eq!(json_string_field(fields, "span_id"), Some("def"));
        assert_eq!(json_string_field(fields, "missing"), None);
    }
}
