//! Connect unary calls (POST with a bare message, or GET with the message in the query string),
//! answered with a bare message or a Connect error JSON; trailers travel as `trailer-` headers.

// A Failure (error + response metadata) is built at most once per call and moved out at once;
// boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use bytes::BytesMut;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt as _;

use crate::cache;
use crate::compression::{Compression, too_large};
use crate::envelope;
use crate::grpc::{self, full};
use crate::service::{ConnectConfig, MethodInfo, Upstream};
use crate::{BoxBody, Code, Codec, ConnectError};

/// URL-safe base64, padding optional (Connect GET `base64=1`).
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A failed call: the error plus whatever metadata the server sent with it.
struct Failure {
    error: ConnectError,
    headers: HeaderMap,
    trailers: HeaderMap,
}

impl From<ConnectError> for Failure {
    fn from(error: ConnectError) -> Self {
        Failure {
            error,
            headers: HeaderMap::new(),
            trailers: HeaderMap::new(),
        }
    }
}

/// A successful call.
struct Reply {
    message: Bytes,
    headers: HeaderMap,
    trailers: HeaderMap,
}

/// The shape of one unary call once its message has been read from the request.
struct UnaryCall<'a> {
    method: &'a MethodInfo,
    codec: Codec,
    request_compression: Compression,
    response_compression: Compression,
    timeout: Option<Duration>,
}

pub(crate) async fn serve_post(
    upstream: Upstream,
    config: &ConnectConfig,
    request: Request<BoxBody>,
    method: &MethodInfo,
    codec: Codec,
) -> Response<BoxBody> {
    let (parts, body) = request.into_parts();
    let call = match unary_call(
        &parts.headers,
        method,
        codec,
        header(&parts.headers, CONTENT_ENCODING.as_str()),
    ) {
        Ok(call) => call,
        Err(error) => {
            return error_response(call_compression(&parts.headers), Failure::from(error))
                .map(full);
        }
    };
    let response_compression = call.response_compression;
    let started = Instant::now();
    let exchange = async {
        let body = read_limited(body, config.max_message_bytes).await?;
        exchange(upstream, config, &parts, &body, &call, started).await
    };
    finish(
        codec,
        response_compression,
        config,
        with_deadline(call.timeout, exchange).await,
    )
    .map(full)
}

pub(crate) async fn serve_get(
    upstream: Upstream,
    config: &ConnectConfig,
    request: Request<BoxBody>,
    method: &MethodInfo,
) -> Response<BoxBody> {
    let (parts, _body) = request.into_parts();
    let response = match get_call(upstream, config, &parts, method).await {
        Ok(response) | Err(response) => response,
    };
    // Every GET answer, error or not, says how it may be cached.
    cache::apply(&parts.headers, method.caching, &config.vary, response).map(full)
}

/// A GET call's answer (`Err` for one refused before the service was called).
async fn get_call(
    upstream: Upstream,
    config: &ConnectConfig,
    parts: &http::request::Parts,
    method: &MethodInfo,
) -> Result<Response<Bytes>, Response<Bytes>> {
    let query = GetQuery::parse(
        parts.uri.query().unwrap_or_default(),
        config.max_message_bytes,
    )
    .map_err(|error| error_response(Compression::Identity, Failure::from(error)))?;
    let call = unary_call(
        &parts.headers,
        method,
        query.codec,
        query.compression.as_deref(),
    )
    .map_err(|error| error_response(Compression::Identity, Failure::from(error)))?;
    let started = Instant::now();
    let exchange = exchange(upstream, config, parts, &query.message, &call, started);
    Ok(finish(
        query.codec,
        call.response_compression,
        config,
        with_deadline(call.timeout, exchange).await,
    ))
}

/// Reads a whole request body, refusing it as soon as it grows past `max_bytes`.
async fn read_limited(mut body: BoxBody, max_bytes: usize) -> Result<Bytes, Failure> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            ConnectError::new(Code::Canceled, format!("request body failed: {err}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > max_bytes {
                return Err(too_large(max_bytes).into());
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

fn unary_call<'a>(
    headers: &HeaderMap,
    method: &'a MethodInfo,
    codec: Codec,
    request_encoding: Option<&str>,
) -> Result<UnaryCall<'a>, ConnectError> {
    check_protocol_version(headers)?;
    Ok(UnaryCall {
        method,
        codec,
        request_compression: Compression::from_header(request_encoding)?,
        response_compression: call_compression(headers),
        timeout: parse_timeout(headers)?,
    })
}

fn call_compression(headers: &HeaderMap) -> Compression {
    Compression::negotiate(header(headers, "accept-encoding"))
}

/// Sends the message to the gRPC service and reads its single reply.
async fn exchange(
    upstream: Upstream,
    config: &ConnectConfig,
    parts: &http::request::Parts,
    body: &[u8],
    call: &UnaryCall<'_>,
    started: Instant,
) -> Result<Reply, Failure> {
    let message = call
        .request_compression
        .decompress(body, config.max_message_bytes)?;
    let protobuf = call.codec.to_protobuf(&message, &call.method.input)?;
    let grpc_request = grpc::request(parts, full(envelope::encode(0, &protobuf)), call.timeout);
    let response = upstream(grpc_request).await.map_err(|err| {
        ConnectError::new(Code::Unavailable, format!("service unavailable: {err}"))
    })?;
    let (head, body) = response.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|err| ConnectError::new(Code::Internal, format!("response body failed: {err}")))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    let status_source = if trailers.contains_key("grpc-status") {
        &trailers
    } else {
        &head.headers
    };
    if let Some(mut error) = ConnectError::from_grpc_metadata(status_source) {
        // tonic ends an expired grpc-timeout with CANCELLED; Connect callers must see deadline_exceeded.
        if error.code == Code::Canceled
            && call.timeout.is_some_and(|limit| started.elapsed() >= limit)
        {
            error = ConnectError::new(Code::DeadlineExceeded, "the call's deadline passed");
        }
        return Err(Failure {
            error,
            headers: head.headers,
            trailers,
        });
    }
    let mut decoder = envelope::Decoder::default();
    decoder.push(&data);
    // Only what callers send is limited (as connect-go's ReadMaxBytes); the service's own reply is not.
    let frame = decoder
        .next(usize::MAX)
        .map_err(|_| too_large(config.max_message_bytes))?
        .filter(|frame| frame.flags & envelope::FLAG_COMPRESSED == 0 && !decoder.has_partial())
        .ok_or_else(|| {
            ConnectError::new(
                Code::Internal,
                "gRPC service sent no single uncompressed response message",
            )
        })?;
    let message = call.codec.from_protobuf(&frame.data, &call.method.output)?;
    Ok(Reply {
        message: Bytes::from(message),
        headers: head.headers,
        trailers,
    })
}

async fn with_deadline<F: Future<Output = Result<Reply, Failure>>>(
    timeout: Option<Duration>,
    exchange: F,
) -> Result<Reply, Failure> {
    match timeout {
        Some(limit) => tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ConnectError::new(Code::DeadlineExceeded, "the call's deadline passed").into())
            }),
        None => exchange.await,
    }
}

fn finish(
    codec: Codec,
    compression: Compression,
    config: &ConnectConfig,
    outcome: Result<Reply, Failure>,
) -> Response<Bytes> {
    let reply = match outcome {
        Ok(reply) => reply,
        Err(failure) => return error_response(compression, failure),
    };
    let compression = if reply.message.len() >= config.compress_min_bytes {
        compression
    } else {
        Compression::Identity
    };
    let mut response = Response::new(Bytes::from(compression.compress(&reply.message)));
    let headers = response.headers_mut();
    grpc::copy_metadata(&reply.headers, headers, "");
    grpc::copy_metadata(&reply.trailers, headers, "trailer-");
    headers.insert(CONTENT_TYPE, content_type(codec));
    if compression != Compression::Identity {
        headers.insert(
            CONTENT_ENCODING,
            HeaderValue::from_static(compression.name()),
        );
    }
    response
}

fn error_response(compression: Compression, failure: Failure) -> Response<Bytes> {
    let body = failure.error.to_json().to_string();
    let compression = if body.len() >= 1024 {
        compression
    } else {
        Compression::Identity
    };
    let mut response = Response::new(Bytes::from(compression.compress(body.as_bytes())));
    *response.status_mut() = failure.error.code.http_status();
    let headers = response.headers_mut();
    grpc::copy_metadata(&failure.headers, headers, "");
    grpc::copy_metadata(&failure.trailers, headers, "trailer-");
    // Errors are always JSON, whatever the request codec.
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if compression != Compression::Identity {
        headers.insert(
            CONTENT_ENCODING,
            HeaderValue::from_static(compression.name()),
        );
    }
    response
}

fn content_type(codec: Codec) -> HeaderValue {
    match codec {
        Codec::Proto => HeaderValue::from_static("application/proto"),
        Codec::Json => HeaderValue::from_static("application/json"),
    }
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// `Connect-Protocol-Version` is optional, but when present it must be `1`.
pub(crate) fn check_protocol_version(headers: &HeaderMap) -> Result<(), ConnectError> {
    match header(headers, "connect-protocol-version") {
        None | Some("1") => Ok(()),
        Some(other) => Err(ConnectError::new(
            Code::InvalidArgument,
            format!("connect-protocol-version must be \"1\", got {other:?}"),
        )),
    }
}

/// `Connect-Timeout-Ms`: a positive integer of at most 10 digits; absent means no deadline.
pub(crate) fn parse_timeout(headers: &HeaderMap) -> Result<Option<Duration>, ConnectError> {
    let Some(value) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    match text.parse::<u64>() {
        Ok(millis)
            if millis > 0 && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(Some(Duration::from_millis(millis)))
        }
        _ => Err(ConnectError::new(
            Code::InvalidArgument,
            format!("invalid connect-timeout-ms {text:?}"),
        )),
    }
}

/// The query string of a Connect GET request.
struct GetQuery {
    message: Bytes,
    codec: Codec,
    compression: Option<String>,
}

impl GetQuery {
    fn parse(query: &str, max_bytes: usize) -> Result<Self, ConnectError> {
        let (mut message, mut encoding, mut base64, mut compression, mut connect) =
            (None, None, false, None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "message" => message = Some(value.into_owned()),
                "encoding" => encoding = Some(value.into_owned()),
                "base64" => base64 = value == "1",
                "compression" => compression = Some(value.into_owned()),
                "connect" => connect = Some(value.into_owned()),
                _ => {} // unknown parameters are ignored, as the spec requires
            }
        }
        if let Some(version) = connect.filter(|version| version != "v1") {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("connect must be \"v1\", got {version:?}"),
            ));
        }
        let encoding = encoding.ok_or_else(|| {
            ConnectError::new(Code::InvalidArgument, "missing encoding parameter")
        })?;
        let codec = Codec::from_name(&encoding).ok_or_else(|| {
            ConnectError::new(
                Code::InvalidArgument,
                format!("unsupported encoding {encoding:?}; use json or proto"),
            )
        })?;
        let message = message.unwrap_or_default();
        let message = if base64 {
            URL_SAFE_LENIENT.decode(message.as_bytes()).map_err(|err| {
                ConnectError::new(
                    Code::InvalidArgument,
                    format!("message is not URL-safe base64: {err}"),
                )
            })?
        } else {
            message.into_bytes()
        };
        if message.len() > max_bytes {
            return Err(too_large(max_bytes));
        }
        Ok(GetQuery {
            message: Bytes::from(message),
            codec,
            compression,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn timeouts_must_be_positive_and_at_most_ten_digits() {
        let mut headers = HeaderMap::new();
        assert_eq!(parse_timeout(&headers).unwrap(), None);
        headers.insert("connect-timeout-ms", "250".parse().unwrap());
        assert_eq!(
            parse_timeout(&headers).unwrap(),
            Some(Duration::from_millis(250))
        );
        for bad in ["0", "-5", "12345678901", "1.5", "soon"] {
            headers.insert("connect-timeout-ms", bad.parse().unwrap());
            assert_eq!(
                parse_timeout(&headers).unwrap_err().code,
                Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn get_queries_accept_parameters_in_any_order_and_ignore_unknown_ones() {
        let query = GetQuery::parse(
            "zzz=1&base64=1&message=eyJhIjoxfQ&connect=v1&encoding=json",
            100,
        )
        .unwrap();
        assert_eq!(&query.message[..], br#"{"a":1}"#);
        assert_eq!(query.codec, Codec::Json);
        let plain = GetQuery::parse("encoding=json&message=%7B%7D", 100).unwrap();
        assert_eq!(&plain.message[..], b"{}");
        assert_eq!(
            GetQuery::parse("message=e30", 100).err().map(|e| e.code),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            GetQuery::parse("encoding=xml", 100).err().map(|e| e.code),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            GetQuery::parse("encoding=json&connect=v2", 100)
                .err()
                .map(|e| e.code),
            Some(Code::InvalidArgument)
        );
    }

    #[test]
    fn errors_carry_the_connect_http_status_and_json() {
        let response = error_response(
            Compression::Identity,
            ConnectError::new(Code::ResourceExhausted, "slow down").into(),
        );
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
}
