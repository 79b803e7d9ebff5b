//! Connect errors: the JSON body of a failed unary call and the `error` of an end-stream message,
//! built from a gRPC status and its `grpc-status-details-bin` details.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::Bytes;
use http::HeaderMap;
use prost::Message as _;

use crate::Code;

/// `google.rpc.Status`, as carried base64-encoded in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// The gRPC code number.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details (`google.rpc.ErrorInfo`, `BadRequest`, ...).
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// One typed error detail.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorDetail {
    /// Fully-qualified protobuf type name, without the `type.googleapis.com/` prefix.
    pub type_name: String,
    /// The encoded message.
    pub value: Bytes,
}

/// An error as Connect reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectError {
    /// The code.
    pub code: Code,
    /// Developer-facing message; may be empty.
    pub message: String,
    /// Typed details.
    pub details: Vec<ErrorDetail>,
}

impl ConnectError {
    /// An error with a code and message and no details.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ConnectError {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The error a gRPC response reports in its headers or trailers, or `None` when its status is OK.
    /// A response without `grpc-status` is an `internal` error (the server broke the protocol).
    pub fn from_grpc_metadata(metadata: &HeaderMap) -> Option<Self> {
        let code = match metadata.get("grpc-status").and_then(|v| v.to_str().ok()) {
            Some(number) => Code::from_grpc(number.trim().parse().unwrap_or(2)),
            None => {
                return Some(ConnectError::new(
                    Code::Internal,
                    "gRPC response carried no grpc-status",
                ));
            }
        };
        if code == Code::Ok {
            return None;
        }
        let message = metadata
            .get("grpc-message")
            .map(|value| percent_decode(value.as_bytes()))
            .unwrap_or_default();
        let details = metadata
            .get("grpc-status-details-bin")
            .and_then(|value| decode_base64(value.as_bytes()))
            .and_then(|bytes| RpcStatus::decode(bytes.as_slice()).ok())
            .map(|status| {
                status
                    .details
                    .into_iter()
                    .map(|any| ErrorDetail {
                        type_name: any
                            .type_url
                            .rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                        value: Bytes::from(any.value),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(ConnectError {
            code,
            message,
            details,
        })
    }

    /// The Connect error JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("code".into(), self.code.name().into());
        if !self.message.is_empty() {
            object.insert("message".into(), self.message.clone().into());
        }
        if !self.details.is_empty() {
            let details = self
                .details
                .iter()
                .map(|detail| {
                    serde_json::json!({"type": detail.type_name, "value": STANDARD_NO_PAD.encode(&detail.value)})
                })
                .collect::<Vec<_>>();
            object.insert("details".into(), details.into());
        }
        serde_json::Value::Object(object)
    }
}

/// Decodes base64 as used in `-bin` metadata: padded or not.
pub(crate) fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    let trimmed: Vec<u8> = text.iter().copied().filter(|byte| *byte != b'=').collect();
    STANDARD_NO_PAD
        .decode(&trimmed)
        .ok()
        .or_else(|| STANDARD.decode(text).ok())
}

/// Decodes gRPC's percent-encoding of `grpc-message`.
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
            if let Some(byte) = hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                out.push(byte);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_with_details_becomes_connect_json() {
        let status = RpcStatus {
            code: 5,
            message: "order 42 not found".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                value: vec![1, 2, 3],
            }],
        };
        let mut metadata = HeaderMap::new();
        metadata.insert("grpc-status", "5".parse().unwrap());
        metadata.insert("grpc-message", "order%2042%20not%20found".parse().unwrap());
        metadata.insert(
            "grpc-status-details-bin",
            STANDARD_NO_PAD
                .encode(status.encode_to_vec())
                .parse()
                .unwrap(),
        );
        let error = ConnectError::from_grpc_metadata(&metadata).expect("an error");
        assert_eq!(
            error.to_json(),
            serde_json::json!({
                "code": "not_found",
                "message": "order 42 not found",
                "details": [{"type": "google.rpc.ErrorInfo", "value": "AQID"}]
            })
        );
    }

    #[test]
    fn ok_status_is_no_error_and_missing_status_is_internal() {
        let mut metadata = HeaderMap::new();
        assert_eq!(
            ConnectError::from_grpc_metadata(&metadata).map(|e| e.code),
            Some(Code::Internal)
        );
        metadata.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(ConnectError::from_grpc_metadata(&metadata), None);
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode(b"50%25 off%"), "50% off%");
        assert_eq!(percent_decode(b"caf%C3%A9"), "café");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }
}
