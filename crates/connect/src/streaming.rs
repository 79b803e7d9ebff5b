//! Connect streaming calls (server, client and bidi): Connect envelopes in, gRPC frames to the
//! service; gRPC frames and trailers back, Connect envelopes and an end-stream message out. The
//! HTTP status is always 200; errors travel in the end-stream message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use tokio::time::Instant;

use crate::compression::{Compression, too_large};
use crate::envelope::{self, FLAG_COMPRESSED, FLAG_END_STREAM};
use crate::grpc;
use crate::service::{ConnectConfig, MethodInfo, Upstream};
use crate::unary::{check_protocol_version, header, parse_timeout};
use crate::{BoxBody, BoxError, Code, Codec, ConnectError};

/// The first error seen while translating the request stream; it outranks whatever the service
/// reports after its input broke off.
type ErrorSlot = Arc<Mutex<Option<ConnectError>>>;

struct StreamCall {
    method: MethodInfo,
    codec: Codec,
    request_compression: Compression,
    response_compression: Compression,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
}

pub(crate) async fn serve(
    upstream: Upstream,
    config: Arc<ConnectConfig>,
    request: Request<BoxBody>,
    method: MethodInfo,
    codec: Codec,
) -> Response<BoxBody> {
    let (parts, body) = request.into_parts();
    let response_compression =
        Compression::negotiate(header(&parts.headers, "connect-accept-encoding"));
    let setup = check_protocol_version(&parts.headers)
        .and_then(|()| Compression::from_header(header(&parts.headers, "connect-content-encoding")))
        .and_then(|request_compression| Ok((request_compression, parse_timeout(&parts.headers)?)));
    let (request_compression, timeout) = match setup {
        Ok(setup) => setup,
        Err(error) => {
            return response(
                codec,
                response_compression,
                HeaderMap::new(),
                end_only(Some(error), HeaderMap::new()),
            );
        }
    };
    let call = Arc::new(StreamCall {
        method,
        codec,
        request_compression,
        response_compression,
        deadline: timeout.map(|limit| Instant::now() + limit),
        timeout,
    });
    let slot = ErrorSlot::default();
    let grpc_body = StreamBody::new(request_frames(
        body,
        call.clone(),
        config.clone(),
        slot.clone(),
    ))
    .boxed_unsync();
    let grpc_request = grpc::request(&parts, grpc_body, call.timeout);

    let head = match call.deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, upstream(grpc_request))
            .await
            .ok(),
        None => Some(upstream(grpc_request).await),
    };
    let upstream = match head {
        None => {
            return response(
                codec,
                response_compression,
                HeaderMap::new(),
                end_only(Some(deadline_error()), HeaderMap::new()),
            );
        }
        Some(Err(err)) => {
            let error = ConnectError::new(Code::Unavailable, format!("service unavailable: {err}"));
            return response(
                codec,
                response_compression,
                HeaderMap::new(),
                end_only(Some(error), HeaderMap::new()),
            );
        }
        Some(Ok(upstream)) => upstream,
    };
    let (head, body) = upstream.into_parts();
    if head.headers.contains_key("grpc-status") {
        // Trailers-only response: the call ended before any message.
        let error = slot_error(&slot).or_else(|| ConnectError::from_grpc_metadata(&head.headers));
        return response(
            codec,
            response_compression,
            head.headers.clone(),
            end_only(error, head.headers),
        );
    }
    let frames = response_frames(body, call, config, slot);
    response(
        codec,
        response_compression,
        head.headers,
        frames.boxed_unsync(),
    )
}

fn response(
    codec: Codec,
    compression: Compression,
    metadata: HeaderMap,
    body: BoxBody,
) -> Response<BoxBody> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    grpc::copy_metadata(&metadata, headers, "");
    let content_type = match codec {
        Codec::Proto => "application/connect+proto",
        Codec::Json => "application/connect+json",
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if compression != Compression::Identity {
        headers.insert(
            "connect-content-encoding",
            HeaderValue::from_static(compression.name()),
        );
    }
    response
}

/// Connect request envelopes → gRPC frames.
fn request_frames(
    body: BoxBody,
    call: Arc<StreamCall>,
    config: Arc<ConnectConfig>,
    slot: ErrorSlot,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
    async_stream::stream! {
        let mut body = body;
        let mut decoder = envelope::Decoder::default();
        let mut messages = 0usize;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(err)) => {
                    yield Err(fail(&slot, ConnectError::new(Code::Canceled, format!("request stream failed: {err}"))));
                    return;
                }
            };
            let Ok(data) = frame.into_data() else { continue };
            decoder.push(&data);
            loop {
                match decoder.next(config.max_message_bytes) {
                    Ok(None) => break,
                    Err(_) => {
                        yield Err(fail(&slot, too_large(config.max_message_bytes)));
                        return;
                    }
                    // A server stream takes exactly one request message; gRPC calls more a
                    // cardinality violation (UNIMPLEMENTED), and the service would drop them.
                    Ok(Some(_)) if messages == 1 && !call.method.client_streaming => {
                        yield Err(fail(&slot, ConnectError::new(
                            Code::Unimplemented,
                            "a server-streaming call takes exactly one request message; more than one was sent",
                        )));
                        return;
                    }
                    Ok(Some(message)) => {
                        messages += 1;
                        match translate_request_message(&call, &config, message) {
                            Ok(grpc_frame) => yield Ok(Frame::data(grpc_frame)),
                            Err(error) => {
                                yield Err(fail(&slot, error));
                                return;
                            }
                        }
                    }
                }
            }
        }
        if decoder.has_partial() {
            yield Err(fail(&slot, ConnectError::new(Code::InvalidArgument, "request stream ended inside an envelope")));
        }
    }
}

fn translate_request_message(
    call: &StreamCall,
    config: &ConnectConfig,
    message: envelope::Envelope,
) -> Result<Bytes, ConnectError> {
    if message.flags & FLAG_END_STREAM != 0 {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "clients must not send end-stream messages",
        ));
    }
    let data = if message.flags & FLAG_COMPRESSED != 0 {
        if call.request_compression == Compression::Identity {
            // The caller's mistake, not the server's: the bytes cannot be read.
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "compressed message without connect-content-encoding",
            ));
        }
        call.request_compression
            .decompress(&message.data, config.max_message_bytes)?
    } else {
        message.data.to_vec()
    };
    let protobuf = call.codec.to_protobuf(&data, &call.method.input)?;
    Ok(envelope::encode(0, &protobuf))
}

fn fail(slot: &ErrorSlot, error: ConnectError) -> BoxError {
    let message = error.message.clone();
    if let Ok(mut slot) = slot.lock() {
        slot.get_or_insert(error);
    }
    message.into()
}

fn slot_error(slot: &ErrorSlot) -> Option<ConnectError> {
    slot.lock().ok().and_then(|slot| slot.clone())
}

fn deadline_error() -> ConnectError {
    ConnectError::new(Code::DeadlineExceeded, "the call's deadline passed")
}

/// gRPC frames and trailers → Connect envelopes and the end-stream message.
fn response_frames(
    body: BoxBody,
    call: Arc<StreamCall>,
    config: Arc<ConnectConfig>,
    slot: ErrorSlot,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>>> {
    StreamBody::new(async_stream::stream! {
        let mut body = std::pin::pin!(body);
        let mut decoder = envelope::Decoder::default();
        let (error, trailers) = loop {
            let next = match call.deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, body.frame()).await {
                    Ok(next) => next,
                    Err(_) => break (Some(deadline_error()), HeaderMap::new()),
                },
                None => body.frame().await,
            };
            let frame = match next {
                None => break (Some(ConnectError::new(Code::Internal, "gRPC response ended without trailers")), HeaderMap::new()),
                Some(Err(err)) => break (Some(ConnectError::new(Code::Internal, format!("response stream failed: {err}"))), HeaderMap::new()),
                Some(Ok(frame)) => frame,
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    decoder.push(&data);
                    let mut failed = None;
                    loop {
                        match decoder.next(usize::MAX) {
                            Ok(None) => break,
                            Err(_) => { failed = Some(too_large(config.max_message_bytes)); break; }
                            Ok(Some(message)) => match translate_response_message(&call, &config, &message.data) {
                                Ok(envelope) => yield Ok(Frame::data(envelope)),
                                Err(error) => { failed = Some(error); break; }
                            },
                        }
                    }
                    if let Some(error) = failed { break (Some(error), HeaderMap::new()); }
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(trailers) = frame.into_trailers() {
                let mut error = ConnectError::from_grpc_metadata(&trailers);
                if error.as_ref().is_some_and(|e| e.code == Code::Canceled) && call.deadline.is_some_and(|d| Instant::now() >= d) {
                    error = Some(deadline_error());
                }
                break (error, trailers);
            }
        };
        let error = slot_error(&slot).or(error);
        yield Ok(Frame::data(end_stream(error.as_ref(), &trailers)));
    })
}

fn translate_response_message(
    call: &StreamCall,
    config: &ConnectConfig,
    data: &[u8],
) -> Result<Bytes, ConnectError> {
    let message = call.codec.from_protobuf(data, &call.method.output)?;
    if call.response_compression != Compression::Identity
        && message.len() >= config.compress_min_bytes
    {
        return Ok(envelope::encode(
            FLAG_COMPRESSED,
            &call.response_compression.compress(&message),
        ));
    }
    Ok(envelope::encode(0, &message))
}

/// The end-stream envelope: `{"error": {...}, "metadata": {"key": ["value"]}}`, `{}` on success.
fn end_stream(error: Option<&ConnectError>, trailers: &HeaderMap) -> Bytes {
    let mut object = serde_json::Map::new();
    if let Some(error) = error {
        object.insert("error".into(), error.to_json());
    }
    let mut metadata = serde_json::Map::new();
    for (name, value) in trailers {
        if grpc::GRPC_PROTOCOL_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let values = metadata
            .entry(name.as_str())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let (serde_json::Value::Array(values), Ok(text)) = (values, value.to_str()) {
            values.push(text.into());
        }
    }
    if !metadata.is_empty() {
        object.insert("metadata".into(), serde_json::Value::Object(metadata));
    }
    envelope::encode(
        FLAG_END_STREAM,
        serde_json::Value::Object(object).to_string().as_bytes(),
    )
}

/// A body that is only the end-stream message.
fn end_only(error: Option<ConnectError>, trailers: HeaderMap) -> BoxBody {
    grpc::full(end_stream(error.as_ref(), &trailers))
}
