//! What an outbound call carries from the inbound request it serves — its request id, W3C trace
//! context, deadline and tenant — and the metadata every attempt sends.
//!
//! The inbound `authorization` header is never forwarded: a callee that needs scopes the end user
//! lacks must not be reachable with the user's token. A service authenticates as itself through
//! a [`MetadataHook`] (the service-identity token goes there).

use std::sync::Arc;
use std::time::Instant;

use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::interceptors::{Deadline, IDEMPOTENCY_KEY_HEADER, RequestId, Tenant, TraceContext};

/// The inbound side of an outbound call.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// Sent as `x-request-id`.
    pub request_id: Option<String>,
    /// Sent as `traceparent` / `tracestate`.
    pub trace: TraceContext,
    /// When the inbound call must be finished: bounds every attempt and is sent on as
    /// `grpc-timeout`. `None` (a background job): only the per-attempt timeout applies.
    pub deadline: Option<Instant>,
    /// The tenant the inbound call acts for (for the [`MetadataHook`]; not sent by itself).
    pub tenant: Option<String>,
    /// Metadata the caller adds to every attempt.
    pub metadata: MetadataMap,
}

impl CallContext {
    /// The context of an inbound call, from what the interceptor stack left in its extensions.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Self {
        let extensions = request.extensions();
        CallContext {
            request_id: extensions.get::<RequestId>().map(|id| id.0.clone()),
            trace: extensions
                .get::<TraceContext>()
                .cloned()
                .unwrap_or_default(),
            deadline: extensions.get::<Deadline>().map(|deadline| deadline.0),
            tenant: extensions.get::<Tenant>().map(|tenant| tenant.0.clone()),
            metadata: MetadataMap::new(),
        }
    }

    /// The same context, finished by `deadline` at the latest.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(self.deadline.map_or(deadline, |own| own.min(deadline)));
        self
    }
}

/// One outbound call, as a [`MetadataHook`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct OutboundCall<'a> {
    /// The callee's name (`loyalty`).
    pub callee: &'a str,
    /// The request path, `/pkg.Service/Method`.
    pub method: &'a str,
    /// The inbound side.
    pub context: &'a CallContext,
}

/// Adds metadata to every call to a callee, once per call (every attempt sends the same): where
/// a service-identity token goes. An error fails the call before anything is sent.
pub trait MetadataHook: Send + Sync + 'static {
    /// Adds to `metadata` what `call` needs.
    fn add(&self, call: &OutboundCall<'_>, metadata: &mut MetadataMap) -> Result<(), Status>;
}

impl<F> MetadataHook for F
where
    F: Fn(&OutboundCall<'_>, &mut MetadataMap) -> Result<(), Status> + Send + Sync + 'static,
{
    fn add(&self, call: &OutboundCall<'_>, metadata: &mut MetadataMap) -> Result<(), Status> {
        self(call, metadata)
    }
}

/// The metadata every attempt of `call` sends: the caller's own, then the request id, trace
/// context and idempotency key, then the hook's.
pub(crate) fn outbound_metadata(
    call: &OutboundCall<'_>,
    idempotency_key: Option<&str>,
    hook: Option<&Arc<dyn MetadataHook>>,
) -> Result<MetadataMap, Status> {
    let context = call.context;
    let mut metadata = context.metadata.clone();
    let propagated = [
        ("x-request-id", context.request_id.as_deref()),
        ("traceparent", context.trace.traceparent.as_deref()),
        ("tracestate", context.trace.tracestate.as_deref()),
    ];
    for (name, value) in propagated {
        // The interceptor stack only keeps header values, so they are valid metadata again.
        if let Some(value) = value.and_then(|value| AsciiMetadataValue::try_from(value).ok()) {
            metadata.insert(name, value);
        }
    }
    if let Some(key) = idempotency_key {
        let value = AsciiMetadataValue::try_from(key).map_err(|_| {
            Status::invalid_argument("the idempotency key is not a valid header value")
        })?;
        metadata.insert(IDEMPOTENCY_KEY_HEADER, value);
    }
    if let Some(hook) = hook {
        hook.add(call, &mut metadata)?;
    }
    Ok(metadata)
}
