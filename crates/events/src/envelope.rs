//! Wrapping a contract event (`proto/**/events.proto`) in `commerce.common.v1.EventEnvelope`, and
//! getting it back out. The envelope carries what every consumer needs without knowing the
//! payload: id (UUIDv7, so ids sort by time), type, tenant, time, the aggregate and its version,
//! and the trace context of the request that caused it.

use std::time::SystemTime;

use bytes::Bytes;
use commerce_api::commerce::common::v1::EventEnvelope;
use prost::Message as _;
use prost_reflect::ReflectMessage;
use store::{AggregateKey, OutboxEvent};

const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// Where an event comes from: the aggregate change that emitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource {
    /// The changed aggregate (its tenant is the event's tenant).
    pub aggregate: AggregateKey,
    /// The aggregate's version after the change.
    pub version: u64,
    /// When the change happened (the tenant's clock, for services that have one).
    pub occurred_at: SystemTime,
    /// W3C `traceparent` of the causing request, if any.
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the causing request, if any.
    pub tracestate: Option<String>,
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not an envelope.
    #[error("not an event envelope: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The payload is another type than asked for.
    #[error("payload is {found}, not {expected}")]
    WrongType {
        /// Type asked for.
        expected: String,
        /// Type in the envelope.
        found: String,
    },
}

/// Wraps `event` in an envelope with a new id. Without a trace context of its own, `source`
/// gets the current span's (when traces are exported), so the event's publish and handling join
/// the trace of the work that emitted it.
pub fn wrap<M: ReflectMessage>(source: &EventSource, event: &M) -> EventEnvelope {
    let (traceparent, tracestate) = match &source.traceparent {
        Some(traceparent) => (traceparent.clone(), source.tracestate.clone()),
        // The current span's context when it is sampled; otherwise the caller's own (its
        // unsampled flag then keeps the event's spans unsampled too).
        None => platform::telemetry::trace_context_of(&tracing::Span::current())
            .or_else(|| {
                let trace = platform::outbound::CallContext::current().trace;
                Some((trace.traceparent?, trace.tracestate))
            })
            .unwrap_or_default(),
    };
    let event_type = event.descriptor().full_name().to_owned();
    let occur_time = prost_types::Timestamp::from(source.occurred_at);
    EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: event_type.clone(),
        tenant_id: source.aggregate.tenant.clone(),
        occur_time: Some(occur_time),
        aggregate_type: source.aggregate.kind.clone(),
        aggregate_id: source.aggregate.id.clone(),
        aggregate_version: source.version as i64,
        traceparent,
        tracestate: tracestate.unwrap_or_default(),
        payload: Some(prost_types::Any {
            type_url: format!("{TYPE_URL_PREFIX}{event_type}"),
            value: event.encode_to_vec(),
        }),
    }
}

/// The outbox entry for `event`: put it into the `Commit` of the change that emits it.
pub fn outbox_event<M: ReflectMessage>(source: &EventSource, event: &M) -> OutboxEvent {
    let envelope = wrap(source, event);
    OutboxEvent {
        event_id: envelope.event_id.clone(),
        event_type: envelope.event_type.clone(),
        envelope: Bytes::from(envelope.encode_to_vec()),
    }
}

/// Decodes an envelope.
pub fn open(bytes: &[u8]) -> Result<EventEnvelope, EnvelopeError> {
    Ok(EventEnvelope::decode(bytes)?)
}

/// The envelope's payload as `M`, when it is one.
pub fn payload<M: ReflectMessage + Default>(envelope: &EventEnvelope) -> Result<M, EnvelopeError> {
    let expected = M::default().descriptor().full_name().to_owned();
    let any = envelope.payload.clone().unwrap_or_default();
    let found = any
        .type_url
        .strip_prefix(TYPE_URL_PREFIX)
        .unwrap_or(&any.type_url)
        .to_owned();
    if found != expected {
        return Err(EnvelopeError::WrongType { expected, found });
    }
    Ok(M::decode(any.value.as_slice())?)
}

/// The bus stream an event type travels on: one per contract package (e.g. every
/// `commerce.checkout.v1` event on `events:{commerce.checkout.v1}`), so one aggregate's events
/// share a stream and keep their order.
pub fn stream_of(event_type: &str) -> String {
    let package = event_type
        .rsplit_once('.')
        .map_or(event_type, |(package, _)| package);
    stream_of_package(package)
}

/// The bus stream of a contract package (`commerce.checkout.v1`). The package is a Redis Cluster
/// hash tag, so the stream and its dead-letter stream (`…:dead`) live in one hash slot, which a
/// cluster requires of the MULTI/EXEC that moves messages between them.
pub fn stream_of_package(package: &str) -> String {
    format!("events:{{{package}}}")
}
