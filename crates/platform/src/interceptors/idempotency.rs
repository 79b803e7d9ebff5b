//! Idempotency for every unary RPC whose contract asks for a key (`IDEMPOTENCY_KEY_REQUIRED`, or
//! `IDEMPOTENCY_KEY_OPTIONAL` when one is sent), after validation and before the handler:
//!
//! - the key comes from the `idempotency-key` header (gRPC metadata; Connect and gRPC-web carry it
//!   as an HTTP header) and is scoped by tenant and method;
//! - a key seen before replays the stored outcome byte for byte (marked `idempotent-replayed:
//!   true`), unless the request differs — then INVALID_ARGUMENT / `IDEMPOTENCY_KEY_REUSED`;
//! - a duplicate arriving while the first is still running gets ABORTED /
//!   `IDEMPOTENCY_KEY_IN_USE` with a retry delay (the in-flight lock lives on the fast path, so it
//!   holds across replicas when Redis is configured);
//! - the outcome is recorded in the store for the retention period (default 24 h): successes and
//!   final errors. Transient errors (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED,
//!   INTERNAL, UNKNOWN, CANCELLED, UNIMPLEMENTED) are not, so a retry runs again;
//! - a success that changed state is recorded by the handler itself: every keyed handler puts
//!   [`IdempotencyContext::record`] of its exact response into the atomic commit that makes, or
//!   completes, its effect (`store::Commit::idempotency`, honoured by both engines), and answers
//!   with what that commit wrote. A crash between that commit and the reply therefore leaves a
//!   replay, never a second run. This layer's own write after the handler then finds the key
//!   taken and keeps the handler's record; it only adds what no commit carried: errors, a call
//!   that found its work already done, carts kept in Redis (which cannot commit with the store;
//!   their ids derive from the key, so a re-run adds nothing);
//! - a call that fails transiently after its key was recorded by another (the loser of a race
//!   past the lock, while Redis is down and each replica holds only its own lock) answers with
//!   that record, so the caller sees the one outcome, not the loser's INTERNAL.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use bytes::{Bytes, BytesMut};
use commerce_api::commerce::common::v1::ErrorReason;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use store::{IdempotencyRecord, Store, StoreError, unix_now};
use tonic::body::Body;
use tonic::{Code, Status};

use super::around::{Around, Next};
use super::context::{Customer, Deadline, Tenant};
use super::errors;
use super::policy::MethodPolicy;

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest key accepted (Stripe's limit).
const MAX_KEY_LEN: usize = 255;
/// `commerce.api.v1.Idempotency` values.
const KEY_REQUIRED: i32 = 1;
const KEY_OPTIONAL: i32 = 2;

/// Idempotency settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long an outcome is kept and replayed.
    pub retention: Duration,
    /// Longest a call may hold its key in flight when it has no deadline.
    pub lock_ttl: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            retention: Duration::from_secs(24 * 3600),
            lock_ttl: Duration::from_secs(60),
        }
    }
}

/// What a handler needs to record its outcome inside its own commit: put
/// [`IdempotencyContext::record`] of the response into `Commit::idempotency`. A request
/// extension (`crate::request::idempotency`), present when the call carries a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyContext {
    tenant: String,
    method: String,
    key: String,
    request_digest: Bytes,
    expires_at: u64,
}

impl IdempotencyContext {
    /// The caller's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A stable id derived from tenant, method and key (e.g. for a downstream call's own
    /// idempotency key, so retries reach the callee with the same one).
    pub fn derived_id(&self) -> String {
        crate::request::derived_id(&self.tenant, &self.method, &self.key)
    }

    /// The record of a successful `response`, byte-identical to what this layer replays.
    pub fn record(&self, response: &impl prost::Message) -> IdempotencyRecord {
        let stored = StoredResponse {
            grpc_status: 0,
            body: frame(&response.encode_to_vec()),
            ..StoredResponse::default()
        };
        self.record_of(&stored)
    }

    fn record_of(&self, stored: &StoredResponse) -> IdempotencyRecord {
        IdempotencyRecord {
            tenant: self.tenant.clone(),
            method: self.method.clone(),
            key: self.key.clone(),
            request_digest: self.request_digest.clone(),
            response: stored.encode_to_vec().into(),
            expires_at: self.expires_at,
        }
    }
}

/// An outcome as stored: enough to rebuild the gRPC response exactly.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredResponse {
    #[prost(int32, tag = "1")]
    grpc_status: i32,
    #[prost(string, tag = "2")]
    grpc_message: String,
    /// `grpc-status-details-bin` (google.rpc.Status), decoded.
    #[prost(bytes = "bytes", tag = "3")]
    status_details: Bytes,
    /// The framed response message(s) of a success.
    #[prost(bytes = "bytes", tag = "4")]
    body: Bytes,
    /// `grpc-encoding` of `body`, when compressed.
    #[prost(string, tag = "5")]
    grpc_encoding: String,
}

/// A recorded outcome as an operator sees it (`commerce idempotency show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOutcome {
    /// gRPC status code (0 for success).
    pub code: Code,
    /// Status message of an error.
    pub message: String,
    /// The framed response message of a success.
    pub body: Bytes,
}

impl RecordedOutcome {
    /// Reads the `response` of an idempotency record this layer wrote.
    pub fn decode(response: &[u8]) -> Result<Self, prost::DecodeError> {
        let stored = StoredResponse::decode(response)?;
        Ok(RecordedOutcome {
            code: Code::from_i32(stored.grpc_status),
            message: stored.grpc_message,
            body: stored.body,
        })
    }
}

/// The idempotency interceptor.
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn Store>,
    locks: fastpath::Locks,
    /// Used while the shared lock backend fails: duplicates on this replica are still held off,
    /// and the store's unique record refuses a second commit across replicas.
    local_locks: fastpath::Locks,
    config: IdempotencyConfig,
    max_message_bytes: usize,
}

impl Idempotency {
    /// Records outcomes in `store`, locks keys with `locks`.
    pub fn new(
        store: Arc<dyn Store>,
        locks: fastpath::Locks,
        config: IdempotencyConfig,
        max_message_bytes: usize,
    ) -> Self {
        Idempotency {
            store,
            locks,
            local_locks: fastpath::Locks::new(None, fastpath::Degraded::default()),
            config,
            max_message_bytes,
        }
    }
}

impl Around for Idempotency {
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        let policy = request
            .extensions()
            .get::<Arc<MethodPolicy>>()
            .cloned()
            .filter(|p| p.unary_request && !p.infrastructure)
            .filter(|p| matches!(p.idempotency, KEY_REQUIRED | KEY_OPTIONAL));
        let Some(policy) = policy else {
            return next.run(request);
        };
        let key = match request_key(request.headers(), &policy) {
            Ok(Some(key)) => key,
            Ok(None) => return next.run(request),
            Err(status) => return futures_util::future::ready(errors::response(status)).boxed(),
        };
        let this = self.clone();
        async move { this.call(request, next, policy, key).await }.boxed()
    }
}

impl Idempotency {
    async fn call(
        self,
        request: Request<Body>,
        next: Next,
        policy: Arc<MethodPolicy>,
        key: String,
    ) -> Response<Body> {
        let domain = policy.error_domain.clone();
        let tenant = request
            .extensions()
            .get::<Tenant>()
            .map(|tenant| tenant.0.clone())
            .unwrap_or_default();
        let deadline = request.extensions().get::<Deadline>().copied();
        // A customer's keys are their own: one customer's key never replays, blocks or collides
        // with another customer's call (which would hand them the other's answer).
        let key = match request.extensions().get::<Customer>() {
            Some(Customer(customer)) => format!("{key}\u{1f}customer:{customer}"),
            None => key,
        };
        let (mut parts, body) = request.into_parts();
        // Validation already read and re-framed this body; a failure here is refused the same
        // way (nothing ran, so nothing is recorded).
        let body = match super::validate::read(body, self.max_message_bytes).await {
            Ok(body) => body,
            Err(error) => return errors::response(error.status(&domain)),
        };
        let context = IdempotencyContext {
            request_digest: Sha256::digest(&body).to_vec().into(),
            tenant,
            method: policy.name.clone(),
            key,
            expires_at: unix_now() + self.config.retention.as_secs(),
        };

        match self.recorded(&context, &domain).await {
            Ok(Some(replay)) => return replay,
            Ok(None) => {}
            Err(status) => return errors::response(status),
        }
        let lock_ttl = deadline
            .map(|Deadline(at)| at.saturating_duration_since(Instant::now()))
            .map_or(self.config.lock_ttl, |left| left.min(self.config.lock_ttl))
            + Duration::from_secs(1);
        let lock_name = format!(
            "idempotency:{}:{}:{}",
            context.tenant, context.method, context.key
        );
        let lock = match self
            .locks
            .try_acquire(&lock_name, lock_ttl)
            .instrument(crate::telemetry::fast_path_span("lock"))
            .await
        {
            Ok(lock) => lock.map(|guard| Held::new(self.locks.clone(), guard)),
            Err(_) => self
                .local_locks
                .try_acquire(&lock_name, lock_ttl)
                .await
                .ok()
                .flatten()
                .map(|guard| Held::new(self.local_locks.clone(), guard)),
        };
        let Some(lock) = lock else {
            return errors::response(in_use(&domain));
        };
        // The first call may have finished between the look-up and the lock.
        match self.recorded(&context, &domain).await {
            Ok(Some(replay)) => return replay,
            Ok(None) => {}
            Err(status) => return errors::response(status),
        }

        parts.extensions.insert(context.clone());
        let response = next
            .run(Request::from_parts(parts, Body::new(Full::new(body))))
            .await;
        let response = self.record(&context, response, &domain).await;
        lock.release().await;
        response
    }

    /// The replay of a recorded outcome, an error when the key was used for another request, or
    /// `None` when nothing is recorded.
    async fn recorded(
        &self,
        context: &IdempotencyContext,
        domain: &str,
    ) -> Result<Option<Response<Body>>, Status> {
        let record = self
            .store
            .idempotency_record(&context.tenant, &context.method, &context.key)
            .await
            .map_err(|error| unavailable(domain, &error))?;
        let Some(record) = record else {
            return Ok(None);
        };
        if record.request_digest != context.request_digest {
            return Err(errors::status_with_metadata(
                Code::InvalidArgument,
                ErrorReason::IdempotencyKeyReused,
                domain,
                "this idempotency key was used with a different request; use a new key",
                [("idempotency_key".to_owned(), context.key.clone())],
            ));
        }
        let stored = StoredResponse::decode(record.response).map_err(|error| {
            errors::status(
                Code::Internal,
                ErrorReason::Internal,
                domain,
                format!("stored outcome unreadable: {error}"),
            )
        })?;
        Ok(Some(replay(stored)))
    }

    /// Stores the outcome of `response` (when it is final) and hands the response on unchanged.
    async fn record(
        &self,
        context: &IdempotencyContext,
        response: Response<Body>,
        domain: &str,
    ) -> Response<Body> {
        let (parts, body) = response.into_parts();
        let Ok(collected) = body.collect().await else {
            return errors::response(errors::status(
                Code::Internal,
                ErrorReason::Internal,
                domain,
                "response body failed",
            ));
        };
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        let status = Status::from_header_map(&parts.headers)
            .or_else(|| trailers.as_ref().and_then(Status::from_header_map));
        let stored = StoredResponse {
            grpc_status: status.as_ref().map_or(0, |status| status.code() as i32),
            grpc_message: status
                .as_ref()
                .map(|status| status.message().to_owned())
                .unwrap_or_default(),
            status_details: status
                .as_ref()
                .map(|status| Bytes::copy_from_slice(status.details()))
                .unwrap_or_default(),
            body: data.clone(),
            grpc_encoding: header(&parts.headers, "grpc-encoding"),
        };
        if !final_outcome(Code::from_i32(stored.grpc_status)) {
            // A transient failure may be the loser of a race past the lock (Redis down, each
            // replica on its own local lock): the winner committed this key's answer with its
            // effect, and this call's own commit was refused for it. That answer is the outcome.
            if let Ok(Some(replay)) = self.recorded(context, domain).await {
                return replay;
            }
        } else {
            match self
                .store
                .save_idempotency_record(context.record_of(&stored))
                .await
            {
                // Taken: the handler recorded it in its own commit, which is the stronger write.
                Ok(()) | Err(StoreError::IdempotencyKeyTaken(_)) => {}
                // The call ran; only its replay is lost. The caller sees the real outcome, and a
                // retry re-runs a handler that recorded any change it made in its commit.
                Err(error) => {
                    tracing::warn!(%error, method = %context.method, "idempotency record not saved")
                }
            }
        }
        Response::from_parts(parts, Body::new(framed(data, trailers)))
    }
}

/// The key sent with the call: `None` when an optional key is absent; an error when a required
/// one is missing or a key is malformed.
fn request_key(headers: &HeaderMap, policy: &MethodPolicy) -> Result<Option<String>, Status> {
    let domain = &policy.error_domain;
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        if policy.idempotency == KEY_REQUIRED {
            return Err(errors::status(
                Code::InvalidArgument,
                ErrorReason::IdempotencyKeyRequired,
                domain,
                format!(
                    "{} needs an `{IDEMPOTENCY_KEY_HEADER}` header: a unique value per operation (e.g. a UUID), reused for its retries",
                    policy.name
                ),
            ));
        }
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(errors::validation_failed(
            domain,
            vec![tonic_types::FieldViolation::new(
                IDEMPOTENCY_KEY_HEADER,
                format!("must be 1 to {MAX_KEY_LEN} printable ASCII characters"),
            )],
        ));
    }
    Ok(Some(key.to_owned()))
}

/// Outcomes a retry should see again; transient ones let the retry run (UNIMPLEMENTED too: nothing
/// ran, and a newer deployment may implement the method).
fn final_outcome(code: Code) -> bool {
    !matches!(
        code,
        Code::Unimplemented
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

fn in_use(domain: &str) -> Status {
    errors::retryable(
        Code::Aborted,
        ErrorReason::IdempotencyKeyInUse,
        domain,
        "a request with this idempotency key is still in progress; retry after it finishes",
        Duration::from_millis(500),
    )
}

fn unavailable(domain: &str, error: &StoreError) -> Status {
    errors::retryable(
        Code::Unavailable,
        ErrorReason::DependencyUnavailable,
        domain,
        format!("idempotency records unavailable: {error}"),
        Duration::from_secs(1),
    )
}

/// Rebuilds the recorded response.
fn replay(stored: StoredResponse) -> Response<Body> {
    let mut response = if stored.grpc_status == 0 {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut response = Response::new(Body::new(framed(stored.body, Some(trailers))));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        if let Ok(encoding) = HeaderValue::from_str(&stored.grpc_encoding)
            && !stored.grpc_encoding.is_empty()
        {
            response.headers_mut().insert("grpc-encoding", encoding);
        }
        response
    } else {
        Status::with_details(
            Code::from_i32(stored.grpc_status),
            stored.grpc_message,
            stored.status_details,
        )
        .into_http()
    };
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

type UnsyncBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A body of `data` then `trailers`, of unknown length: a body that announced its exact length
/// would let the gRPC-web edge's HTTP/1.1 response end after the data, cutting off the trailers
/// frame it appends to the body.
fn framed(data: Bytes, trailers: Option<HeaderMap>) -> UnsyncBody {
    let frames = [
        Some(http_body::Frame::data(data)),
        trailers.map(http_body::Frame::trailers),
    ];
    http_body_util::StreamBody::new(futures_util::stream::iter(
        frames.into_iter().flatten().map(Ok),
    ))
    .boxed_unsync()
}

/// A held lock, released when the call ends — or, if the call is dropped (deadline, caller gone),
/// by a task, so the key is not blocked until the lock expires.
struct Held {
    locks: fastpath::Locks,
    guard: Option<fastpath::LockGuard>,
}

impl Held {
    fn new(locks: fastpath::Locks, guard: fastpath::LockGuard) -> Self {
        Held {
            locks,
            guard: Some(guard),
        }
    }

    async fn release(mut self) {
        if let Some(guard) = self.guard.take() {
            let _ = self.locks.release(&guard).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            let locks = self.locks.clone();
            tokio::spawn(async move {
                let _ = locks.release(&guard).await;
            });
        }
    }
}

/// One uncompressed gRPC frame around `message`.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed.freeze()
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
