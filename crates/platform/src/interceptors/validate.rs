//! Request validation from the contract's `buf.validate` rules, with prost-protovalidate, before
//! the handler runs. Unary requests are read, checked and handed on unchanged; a bad one gets
//! INVALID_ARGUMENT with a `BadRequest` violation per field. (Streamed requests are not checked
//! here.)

use commerce_api::commerce::common::v1::ErrorReason;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use prost_protovalidate::Validator;
use prost_reflect::DynamicMessage;
use tonic::Code;
use tonic::body::Body;
use tonic_types::FieldViolation;

use super::around::{Around, Next};
use super::errors;
use super::policy::MethodPolicy;

/// Validates unary requests of methods with a policy.
#[derive(Clone)]
pub struct Validate {
    validator: Arc<Validator>,
    max_message_bytes: usize,
}

impl Validate {
    /// Reads at most `max_message_bytes` of a request.
    pub fn new(max_message_bytes: usize) -> Self {
        Validate {
            validator: Arc::new(Validator::new()),
            max_message_bytes,
        }
    }
}

impl Around for Validate {
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        let policy = request
            .extensions()
            .get::<Arc<MethodPolicy>>()
            .cloned()
            .filter(|p| p.unary_request && !p.infrastructure);
        let Some(policy) = policy else {
            return next.run(request);
        };
        let this = self.clone();
        async move {
            let (parts, body) = request.into_parts();
            let Some(bytes) = read(body, this.max_message_bytes).await else {
                // Unreadable or oversized: let tonic report it in its usual way.
                return next.run(Request::from_parts(parts, Body::empty())).await;
            };
            if let Some(status) = check(&this.validator, &policy, &bytes) {
                return errors::response(status);
            }
            next.run(Request::from_parts(parts, Body::new(Full::new(bytes))))
                .await
        }
        .boxed()
    }
}

/// The whole body of a unary request, or `None` when unreadable or over `max_bytes` (+ framing).
pub(super) async fn read(mut body: Body, max_bytes: usize) -> Option<Bytes> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if buffer.len() + data.len() > max_bytes + 5 {
                return None;
            }
            buffer.extend_from_slice(&data);
        }
    }
    Some(buffer.freeze())
}

/// The validation failure of a framed unary request, if any. Compressed or malformed frames are
/// left to tonic, which rejects them itself.
fn check(validator: &Validator, policy: &MethodPolicy, framed: &[u8]) -> Option<tonic::Status> {
    if framed.len() < 5 || framed[0] != 0 {
        return None;
    }
    let message = DynamicMessage::decode(policy.input.clone(), &framed[5..]).ok()?;
    match validator.validate(&message) {
        Ok(()) => None,
        Err(prost_protovalidate::Error::Validation(error)) => {
            let violations = error
                .violations()
                .iter()
                .map(|violation| FieldViolation::new(violation.field_path(), violation.message()))
                .collect();
            Some(errors::validation_failed(&policy.error_domain, violations))
        }
        Err(other) => Some(errors::status(
            Code::Internal,
            ErrorReason::Internal,
            &policy.error_domain,
            format!("validation rules of {} could not run: {other}", policy.name),
        )),
    }
}
