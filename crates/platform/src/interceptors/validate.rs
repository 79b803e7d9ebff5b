//! Request validation before the handler runs. A unary request (or the one request of a server
//! stream) is read whole, must be exactly one well-formed message ([`frame`](super::frame)), must
//! decode as the method's input type, and must pass the contract's `buf.validate` rules
//! (prost-protovalidate). Only then is it handed on — as the very message that was checked,
//! uncompressed and re-framed, so the handler can never decode anything else. Anything that cannot
//! be read, framed or decoded is refused; nothing is passed on unchecked.
//!
//! Client-streaming methods and the infrastructure services (health, reflection) are left to
//! tonic.

use commerce_api::commerce::common::v1::ErrorReason;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use prost_protovalidate::Validator;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::FieldViolation;

use super::around::{Around, Next};
use super::errors;
use super::frame::{self, Encoding, FrameError};
use super::policy::{INFRASTRUCTURE_SERVICES, MethodPolicy, PLATFORM_ERROR_DOMAIN};

/// Validates every unary-request method of the served contracts.
#[derive(Clone)]
pub struct Validate {
    validator: Arc<Validator>,
    max_message_bytes: usize,
    /// Input type of every non-infrastructure method whose request is one message, by path.
    inputs: Arc<HashMap<String, MessageDescriptor>>,
}

impl Validate {
    /// Validates the methods of `pool`, reading at most `max_message_bytes` of a message.
    pub fn new(pool: &DescriptorPool, max_message_bytes: usize) -> Self {
        let inputs = pool
            .services()
            .filter(|service| !INFRASTRUCTURE_SERVICES.contains(&service.full_name()))
            .flat_map(|service| {
                service
                    .methods()
                    .filter(|method| !method.is_client_streaming())
                    .map(|method| {
                        (
                            format!("/{}/{}", service.full_name(), method.name()),
                            method.input(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Validate {
            validator: Arc::new(Validator::new()),
            max_message_bytes,
            inputs: Arc::new(inputs),
        }
    }
}

impl Around for Validate {
    fn around(&self, request: Request<Body>, next: Next) -> BoxFuture<'static, Response<Body>> {
        let Some(input) = self.inputs.get(request.uri().path()).cloned() else {
            return next.run(request);
        };
        // Methods without a policy (refused by authorization when it runs) are still checked.
        let policy = request.extensions().get::<Arc<MethodPolicy>>().cloned();
        let domain = policy
            .as_ref()
            .map_or(PLATFORM_ERROR_DOMAIN.to_owned(), |policy| {
                policy.error_domain.clone()
            });
        let this = self.clone();
        async move {
            let (mut parts, body) = request.into_parts();
            let message = match this.message(&parts.headers, body).await {
                Ok(message) => message,
                Err(error) => return errors::response(error.status(&domain)),
            };
            if let Some(status) = this.check(&input, &domain, &message) {
                return errors::response(status);
            }
            // The inner service gets the message that was checked, uncompressed.
            parts.headers.remove("grpc-encoding");
            parts.headers.remove(http::header::CONTENT_LENGTH);
            next.run(Request::from_parts(
                parts,
                Body::new(Full::new(frame::encode(&message))),
            ))
            .await
        }
        .boxed()
    }
}

impl Validate {
    /// The request's one message, decompressed.
    async fn message(&self, headers: &http::HeaderMap, body: Body) -> Result<Bytes, FrameError> {
        let encoding =
            Encoding::from_header(headers.get("grpc-encoding").map(|value| value.as_bytes()))?;
        let body = read(body, self.max_message_bytes).await?;
        frame::single_message(&body, encoding, self.max_message_bytes)
    }

    /// The refusal of a message that does not decode or breaks the contract's rules, if any.
    fn check(&self, input: &MessageDescriptor, domain: &str, message: &[u8]) -> Option<Status> {
        let message = match DynamicMessage::decode(input.clone(), message) {
            Ok(message) => message,
            Err(error) => {
                return Some(errors::status(
                    Code::InvalidArgument,
                    ErrorReason::MalformedRequest,
                    domain,
                    format!("the request is not a valid {}: {error}", input.full_name()),
                ));
            }
        };
        match self.validator.validate(&message) {
            Ok(()) => None,
            Err(prost_protovalidate::Error::Validation(error)) => {
                let violations = error
                    .violations()
                    .iter()
                    .map(|violation| {
                        FieldViolation::new(violation.field_path(), violation.message())
                    })
                    .collect();
                Some(errors::validation_failed(domain, violations))
            }
            Err(other) => Some(errors::status(
                Code::Internal,
                ErrorReason::Internal,
                domain,
                format!(
                    "validation rules of {} could not run: {other}",
                    input.full_name()
                ),
            )),
        }
    }
}

/// The whole body of a unary request. Stops reading once it holds more than one frame of
/// `max_bytes` and a second header could follow — enough to tell "too large" from "a second
/// message"; a body that fails to arrive (bad gRPC-web-text base64, a broken stream) is malformed.
pub(super) async fn read(mut body: Body, max_bytes: usize) -> Result<Bytes, FrameError> {
    let limit = max_bytes.saturating_add(2 * frame::HEADER_BYTES);
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| FrameError::Unreadable(error.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                let room = limit - buffer.len();
                buffer.extend_from_slice(&data[..room]);
                return Err(frame::classify_overflow(&buffer, max_bytes));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

#[cfg(test)]
mod tests {
    //! The validation layer's reading and framing together: how a body arrives in chunks never
    //! changes the verdict. By hand, longer:
    //! `PROPTEST_CASES=100000 cargo test -p platform --lib validate::tests`.
    use super::*;
    use futures_util::stream;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use proptest::prelude::*;

    const LIMIT: usize = 64;

    fn verdict(chunks: Vec<Vec<u8>>) -> Result<Bytes, FrameError> {
        let frames = stream::iter(
            chunks
                .into_iter()
                .map(|chunk| Ok::<_, Status>(Frame::data(Bytes::from(chunk)))),
        );
        let body = Body::new(StreamBody::new(frames));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let whole = read(body, LIMIT).await?;
            frame::single_message(&whole, Encoding::Identity, LIMIT)
        })
    }

    fn bodies() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..12),
            (
                prop_oneof![Just(0u8), any::<u8>()],
                proptest::collection::vec(any::<u8>(), 0..=LIMIT + 8)
            )
                .prop_map(|(flags, data)| {
                    let mut framed = vec![flags];
                    framed.extend_from_slice(&(data.len() as u32).to_be_bytes());
                    framed.extend_from_slice(&data);
                    framed
                }),
        ];
        proptest::collection::vec(piece, 0..4).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn the_verdict_on_a_body_does_not_depend_on_how_it_was_split(
            body in bodies(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (body.len() + 1)).collect();
            points.extend([0, body.len()]);
            points.sort_unstable();
            let chunks: Vec<Vec<u8>> =
                points.windows(2).map(|piece| body[piece[0]..piece[1]].to_vec()).collect();
            let split = verdict(chunks);
            let whole = verdict(vec![body.clone()]);
            prop_assert_eq!(&split, &whole);
            if let Ok(message) = split {
                prop_assert_eq!(body.len(), frame::HEADER_BYTES + message.len());
            }
        }
    }
}
