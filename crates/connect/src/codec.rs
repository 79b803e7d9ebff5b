//! Message codecs: binary protobuf passes through; JSON is transcoded with prost-reflect from the
//! method's descriptors (proto3 JSON mapping: json_name, int64 as strings, enum names, WKTs).

use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::{Code, ConnectError};

/// A Connect message codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `proto`: binary protobuf.
    Proto,
    /// `json`: proto3 JSON.
    Json,
}

impl Codec {
    /// The codec named by a unary content type (`application/json; charset=utf-8` → Json).
    pub fn from_unary_content_type(content_type: &str) -> Option<Self> {
        match media_type(content_type) {
            "application/proto" => Some(Codec::Proto),
            "application/json" => Some(Codec::Json),
            _ => None,
        }
    }

    /// The codec named by a streaming content type (`application/connect+json`).
    pub fn from_stream_content_type(content_type: &str) -> Option<Self> {
        match media_type(content_type) {
            "application/connect+proto" => Some(Codec::Proto),
            "application/connect+json" => Some(Codec::Json),
            _ => None,
        }
    }

    /// The codec named by a GET request's `encoding` parameter.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "proto" => Some(Codec::Proto),
            "json" => Some(Codec::Json),
            _ => None,
        }
    }

    /// The codec's name (`proto`, `json`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Proto => "proto",
            Codec::Json => "json",
        }
    }

    /// Turns a request message in this codec into binary protobuf.
    pub fn to_protobuf(
        self,
        data: &[u8],
        descriptor: &MessageDescriptor,
    ) -> Result<Vec<u8>, ConnectError> {
        match self {
            Codec::Proto => Ok(data.to_vec()),
            Codec::Json => {
                // Unknown fields are ignored, as connect-go does, so newer clients can talk to older servers.
                let options = DeserializeOptions::new().deny_unknown_fields(false);
                let mut deserializer = serde_json::Deserializer::from_slice(data);
                let message = DynamicMessage::deserialize_with_options(
                    descriptor.clone(),
                    &mut deserializer,
                    &options,
                )
                .and_then(|message| deserializer.end().map(|()| message))
                .map_err(|err| {
                    ConnectError::new(
                        Code::InvalidArgument,
                        format!("invalid JSON for {}: {err}", descriptor.full_name()),
                    )
                })?;
                Ok(prost::Message::encode_to_vec(&message))
            }
        }
    }

    /// Turns a binary protobuf response message into this codec.
    pub fn from_protobuf(
        self,
        data: &[u8],
        descriptor: &MessageDescriptor,
    ) -> Result<Vec<u8>, ConnectError> {
        match self {
            Codec::Proto => Ok(data.to_vec()),
            Codec::Json => {
                let message = DynamicMessage::decode(descriptor.clone(), data).map_err(|err| {
                    ConnectError::new(
                        Code::Internal,
                        format!(
                            "server sent an undecodable {}: {err}",
                            descriptor.full_name()
                        ),
                    )
                })?;
                let mut out = Vec::with_capacity(data.len() * 2);
                let mut serializer = serde_json::Serializer::new(&mut out);
                message
                    .serialize_with_options(&mut serializer, &SerializeOptions::new())
                    .map_err(|err| {
                        ConnectError::new(Code::Internal, format!("cannot encode JSON: {err}"))
                    })?;
                Ok(out)
            }
        }
    }
}

/// The media type without parameters, lower-cased comparison happens on canonical forms.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}
