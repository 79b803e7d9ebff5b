//! Trace spans of events (OpenTelemetry messaging conventions): the relay's publish is a
//! PRODUCER span and each consumer's handling a CONSUMER span, both children of the span that
//! wrote the event — its context travels in the envelope's `traceparent`/`tracestate`, written
//! when the outbox row is written. A dead-lettered event keeps its envelope, so its replay's
//! handling joins the original trace too. Disabled (no cost) when traces are not exported.

use commerce_api::commerce::common::v1::EventEnvelope;
use platform::telemetry;
use store::OutboxEvent;

use crate::envelope;

fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

/// The relay's publish of `event` to `stream`.
pub(crate) fn publish_span(stream: &str, event: &OutboxEvent) -> tracing::Span {
    if !telemetry::enabled() {
        return tracing::Span::none();
    }
    let Ok(envelope) = envelope::open(&event.envelope) else {
        return tracing::Span::none();
    };
    // Sampled when the work that wrote the event was (an event without a context: the ratio).
    // The envelope's context is this platform's own: the server clears a caller's "sampled"
    // flag it did not honour before anything is written.
    if !telemetry::sample(non_empty(&envelope.traceparent), || true) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: "events",
        "publish",
        otel.name = format!("{stream} publish"),
        otel.kind = "producer",
        messaging.operation.type = "send",
        messaging.destination.name = stream,
        messaging.message.id = event.event_id.as_str(),
        commerce.event_type = event.event_type.as_str(),
    );
    telemetry::adopt_remote_parent(
        &span,
        non_empty(&envelope.traceparent),
        non_empty(&envelope.tracestate),
    );
    span
}

/// A consumer group's handling of `event` from `stream` (its `deliveries`-th delivery).
pub(crate) fn consumer_span(
    stream: &str,
    group: &str,
    event: &EventEnvelope,
    deliveries: u64,
) -> tracing::Span {
    if !telemetry::sample(non_empty(&event.traceparent), || true) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: "events",
        "process",
        otel.name = format!("{stream} process"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.operation.type = "process",
        messaging.destination.name = stream,
        messaging.consumer.group.name = group,
        messaging.message.id = event.event_id.as_str(),
        messaging.message.delivery_count = deliveries as i64,
        commerce.event_type = event.event_type.as_str(),
        commerce.tenant = event.tenant_id.as_str(),
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    telemetry::adopt_remote_parent(
        &span,
        non_empty(&event.traceparent),
        non_empty(&event.tracestate),
    );
    telemetry::record_ids(&span);
    span
}

/// Marks `span` failed with `error`.
pub(crate) fn failed(span: &tracing::Span, error: &str) {
    span.record("otel.status_code", "error");
    span.record("error.type", error);
}
