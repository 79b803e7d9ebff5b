//! The body of a unary gRPC request, frame by frame: exactly one length-prefixed message (1 flag
//! byte, a big-endian u32 length, the message) and nothing after it. gRPC-web arrives here already
//! translated by tonic-web, Connect by the Connect layer, so one parser guards every protocol.
//!
//! What is refused, and why that code:
//! - no message, a frame shorter than its header says, bytes after the message that are not a
//!   whole frame, reserved flag bits, a compressed flag without an encoding, corrupt compressed
//!   data, a body that fails to arrive (bad gRPC-web-text base64): INVALID_ARGUMENT / `MALFORMED_REQUEST` — the bytes cannot be decoded;
//! - a second whole message, even an empty one: UNIMPLEMENTED / `MALFORMED_REQUEST` — gRPC's status
//!   code table calls more than one request message on a unary or server-streaming call a
//!   cardinality violation and answers it UNIMPLEMENTED (connect-go does the same);
//! - a `grpc-encoding` the server does not support: UNIMPLEMENTED (the gRPC spec's code), with
//!   `grpc-accept-encoding` naming what is;
//! - a message over the limit, before or after decompression: RESOURCE_EXHAUSTED /
//!   `MESSAGE_TOO_LARGE`.

use bytes::Bytes;
use commerce_api::commerce::common::v1::ErrorReason;
use tonic::{Code, Status};

use super::errors;

/// Bytes of the frame header.
pub const HEADER_BYTES: usize = 5;
/// Flag bit: the message is compressed with the call's `grpc-encoding`.
const FLAG_COMPRESSED: u8 = 0x01;
/// Encodings a request may use, for `grpc-accept-encoding`.
pub const ACCEPTED_ENCODINGS: &str = "gzip,identity";

/// How the request's messages are compressed (`grpc-encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Not compressed.
    Identity,
    /// gzip.
    Gzip,
}

impl Encoding {
    /// The encoding named by a `grpc-encoding` header value (absent: identity).
    pub fn from_header(value: Option<&[u8]>) -> Result<Self, FrameError> {
        match value {
            None | Some(b"identity") => Ok(Encoding::Identity),
            Some(b"gzip") => Ok(Encoding::Gzip),
            Some(other) => Err(FrameError::UnsupportedEncoding(
                String::from_utf8_lossy(other).into_owned(),
            )),
        }
    }
}

/// Why a unary request body is not exactly one acceptable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body is empty.
    #[error("a unary call needs exactly one request message; none was sent")]
    NoMessage,
    /// The body ends before the frame its header announced.
    #[error(
        "the request message is truncated: its header announces {announced} bytes, {available} arrived"
    )]
    Truncated {
        /// Length the header announced (0 when even the header is incomplete).
        announced: usize,
        /// Message bytes that arrived.
        available: usize,
    },
    /// Bytes after the message that do not form a whole frame.
    #[error("{0} bytes after the request message do not form a message")]
    TrailingBytes(usize),
    /// A second whole message.
    #[error("a unary call takes exactly one request message; more than one was sent")]
    SecondMessage,
    /// Flag bits other than the compressed bit.
    #[error("invalid message flags {0:#04x}")]
    ReservedFlags(u8),
    /// Compressed flag with no (or identity) `grpc-encoding`.
    #[error("the request message is marked compressed but the call names no grpc-encoding")]
    CompressedWithoutEncoding,
    /// `grpc-encoding` names an algorithm the server does not support.
    #[error("unsupported grpc-encoding {0:?}; supported: {ACCEPTED_ENCODINGS}")]
    UnsupportedEncoding(String),
    /// The body itself failed to arrive whole (bad gRPC-web-text base64, a broken stream).
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
    /// The compressed message does not inflate.
    #[error("the compressed request message is corrupt: {0}")]
    Corrupt(String),
    /// Larger than the limit, announced, sent or inflated.
    #[error("the request message is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

impl FrameError {
    /// The status a caller gets for this error, with an `ErrorInfo` in `domain`.
    pub fn status(&self, domain: &str) -> Status {
        let (code, reason) = match self {
            FrameError::SecondMessage => (Code::Unimplemented, ErrorReason::MalformedRequest),
            FrameError::UnsupportedEncoding(_) => {
                (Code::Unimplemented, ErrorReason::MalformedRequest)
            }
            FrameError::TooLarge { limit } => {
                return errors::status_with_metadata(
                    Code::ResourceExhausted,
                    ErrorReason::MessageTooLarge,
                    domain,
                    self.to_string(),
                    [("limit_bytes".to_owned(), limit.to_string())],
                );
            }
            _ => (Code::InvalidArgument, ErrorReason::MalformedRequest),
        };
        let mut status = errors::status(code, reason, domain, self.to_string());
        if matches!(self, FrameError::UnsupportedEncoding(_)) {
            status.metadata_mut().insert(
                "grpc-accept-encoding",
                tonic::metadata::MetadataValue::from_static(ACCEPTED_ENCODINGS),
            );
        }
        status
    }
}

/// The one message of a unary request body, decompressed: `body` must hold exactly one frame of
/// at most `max_bytes` (before and after inflating).
pub fn single_message(
    body: &[u8],
    encoding: Encoding,
    max_bytes: usize,
) -> Result<Bytes, FrameError> {
    let (flags, message, rest) = match split_frame(body, max_bytes)? {
        Split::Empty => return Err(FrameError::NoMessage),
        Split::Partial { announced } => {
            return Err(FrameError::Truncated {
                announced,
                available: body.len().saturating_sub(HEADER_BYTES),
            });
        }
        Split::Whole {
            flags,
            message,
            rest,
        } => (flags, message, rest),
    };
    if !rest.is_empty() {
        return Err(match split_frame(rest, usize::MAX)? {
            Split::Whole { .. } => FrameError::SecondMessage,
            _ => FrameError::TrailingBytes(rest.len()),
        });
    }
    if flags & !FLAG_COMPRESSED != 0 {
        return Err(FrameError::ReservedFlags(flags));
    }
    if flags & FLAG_COMPRESSED == 0 {
        return Ok(Bytes::copy_from_slice(message));
    }
    match encoding {
        Encoding::Identity => Err(FrameError::CompressedWithoutEncoding),
        Encoding::Gzip => connect::Compression::Gzip
            .decompress(message, max_bytes)
            .map(Bytes::from)
            .map_err(|error| match error.code {
                connect::Code::ResourceExhausted => FrameError::TooLarge { limit: max_bytes },
                _ => FrameError::Corrupt(error.message),
            }),
    }
}

/// What a prefix of a body holds, for a reader that stopped early: the first frame announces more
/// than `max_bytes` (too large), or it is whole with bytes after it (more than one message).
pub fn classify_overflow(prefix: &[u8], max_bytes: usize) -> FrameError {
    match split_frame(prefix, max_bytes) {
        Ok(Split::Whole { .. }) => FrameError::SecondMessage,
        Err(error) => error,
        Ok(_) => FrameError::TooLarge { limit: max_bytes },
    }
}

/// A frame framed for the inner service: uncompressed, flag 0.
pub fn encode(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_BYTES + message.len());
    out.push(0);
    // Lengths come from a body already bounded by the (usize, far below 4 GiB) message limit.
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    Bytes::from(out)
}

enum Split<'a> {
    Empty,
    /// Header or message incomplete.
    Partial {
        announced: usize,
    },
    Whole {
        flags: u8,
        message: &'a [u8],
        rest: &'a [u8],
    },
}

fn split_frame(body: &[u8], max_bytes: usize) -> Result<Split<'_>, FrameError> {
    if body.is_empty() {
        return Ok(Split::Empty);
    }
    let Some((header, after)) = body.split_first_chunk::<HEADER_BYTES>() else {
        return Ok(Split::Partial { announced: 0 });
    };
    let announced = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if announced > max_bytes {
        return Err(FrameError::TooLarge { limit: max_bytes });
    }
    if after.len() < announced {
        return Ok(Split::Partial { announced });
    }
    let (message, rest) = after.split_at(announced);
    Ok(Split::Whole {
        flags: header[0],
        message,
        rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flags: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flags];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn exactly_one_frame_is_its_message() {
        let body = frame(0, b"hello");
        assert_eq!(
            single_message(&body, Encoding::Identity, 100).unwrap(),
            &b"hello"[..]
        );
        assert_eq!(
            single_message(&frame(0, b""), Encoding::Identity, 100).unwrap(),
            &b""[..]
        );
    }

    #[test]
    fn a_second_frame_even_empty_is_a_second_message() {
        let mut body = frame(0, b"hello");
        body.extend_from_slice(&frame(0, b""));
        assert_eq!(
            single_message(&body, Encoding::Identity, 100),
            Err(FrameError::SecondMessage)
        );
    }

    #[test]
    fn truncated_frames_lying_lengths_and_trailing_bytes_are_malformed() {
        assert_eq!(
            single_message(&[], Encoding::Identity, 100),
            Err(FrameError::NoMessage)
        );
        assert_eq!(
            single_message(&[0, 0, 0], Encoding::Identity, 100),
            Err(FrameError::Truncated {
                announced: 0,
                available: 0
            })
        );
        let mut lying = frame(0, b"hello");
        lying[4] = 9; // announces 9, carries 5
        assert_eq!(
            single_message(&lying, Encoding::Identity, 100),
            Err(FrameError::Truncated {
                announced: 9,
                available: 5
            })
        );
        let mut trailing = frame(0, b"hello");
        trailing.extend_from_slice(&[1, 2]);
        assert_eq!(
            single_message(&trailing, Encoding::Identity, 100),
            Err(FrameError::TrailingBytes(2))
        );
        let mut short = frame(0, b"hello");
        short[4] = 2; // announces 2: "llo" is left over, not a frame
        assert_eq!(
            single_message(&short, Encoding::Identity, 100),
            Err(FrameError::TrailingBytes(3))
        );
        assert_eq!(
            single_message(&frame(0x80, b"x"), Encoding::Identity, 100),
            Err(FrameError::ReservedFlags(0x80))
        );
    }

    #[test]
    fn compressed_frames_need_a_supported_encoding_and_stay_within_the_limit() {
        let packed = connect::Compression::Gzip.compress(&[b'a'; 1000]);
        let body = frame(1, &packed);
        assert_eq!(
            single_message(&body, Encoding::Identity, 2000),
            Err(FrameError::CompressedWithoutEncoding)
        );
        assert_eq!(
            single_message(&body, Encoding::Gzip, 2000).unwrap().len(),
            1000
        );
        assert_eq!(
            single_message(&body, Encoding::Gzip, 999),
            Err(FrameError::TooLarge { limit: 999 })
        );
        assert!(matches!(
            single_message(&frame(1, b"not gzip"), Encoding::Gzip, 100),
            Err(FrameError::Corrupt(_))
        ));
        assert_eq!(
            Encoding::from_header(Some(b"br")),
            Err(FrameError::UnsupportedEncoding("br".into()))
        );
    }

    #[test]
    fn a_frame_announcing_more_than_the_limit_is_too_large_from_its_header() {
        assert_eq!(
            single_message(&[0, 0, 0, 1, 0], Encoding::Identity, 100),
            Err(FrameError::TooLarge { limit: 100 })
        );
        assert_eq!(
            classify_overflow(&[0, 0, 0, 1, 0], 100),
            FrameError::TooLarge { limit: 100 }
        );
        let mut two = frame(0, b"hi");
        two.extend_from_slice(&[0, 0]);
        assert_eq!(classify_overflow(&two, 100), FrameError::SecondMessage);
    }

    mod properties {
        //! Arbitrary bodies: the parser never panics, and what it accepts is exactly one
        //! well-formed frame. CI runs proptest's default case count; by hand:
        //! `PROPTEST_CASES=100000 cargo test -p platform --lib frame::tests::properties`.
        use super::*;
        use proptest::prelude::*;

        const LIMIT: usize = 64;

        /// Random bytes mixed with well-formed frames of any flags.
        fn bodies() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..12),
                (
                    prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
                    proptest::collection::vec(any::<u8>(), 0..=LIMIT + 8)
                )
                    .prop_map(|(flags, data)| frame(flags, &data)),
            ];
            proptest::collection::vec(piece, 0..4).prop_map(|pieces| pieces.concat())
        }

        proptest! {
            #[test]
            fn whatever_is_accepted_is_exactly_one_uncompressed_frame(body in bodies()) {
                if let Ok(message) = single_message(&body, Encoding::Identity, LIMIT) {
                    prop_assert_eq!(body[0], 0);
                    prop_assert_eq!(body.len(), HEADER_BYTES + message.len());
                    prop_assert_eq!(
                        u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize,
                        message.len()
                    );
                    prop_assert_eq!(&body[HEADER_BYTES..], &message[..]);
                    prop_assert!(message.len() <= LIMIT);
                }
            }

            #[test]
            fn gzip_bodies_are_accepted_only_as_one_frame_that_inflates_within_the_limit(
                body in bodies(),
                message in proptest::collection::vec(any::<u8>(), 0..2 * LIMIT),
            ) {
                // Garbage under gzip: never a panic, never more than the limit.
                if let Ok(inflated) = single_message(&body, Encoding::Gzip, LIMIT) {
                    prop_assert!(inflated.len() <= LIMIT);
                }
                let packed = frame(1, &connect::Compression::Gzip.compress(&message));
                let verdict = single_message(&packed, Encoding::Gzip, LIMIT);
                if message.len() <= LIMIT && packed.len() <= LIMIT + HEADER_BYTES {
                    prop_assert_eq!(verdict, Ok(Bytes::from(message)));
                } else {
                    prop_assert_eq!(verdict, Err(FrameError::TooLarge { limit: LIMIT }));
                }
            }
        }
    }

    #[test]
    fn errors_carry_the_codes_the_protocols_document() {
        let domain = "test";
        assert_eq!(
            FrameError::NoMessage.status(domain).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            FrameError::SecondMessage.status(domain).code(),
            Code::Unimplemented
        );
        assert_eq!(
            FrameError::TooLarge { limit: 1 }.status(domain).code(),
            Code::ResourceExhausted
        );
        let unsupported = FrameError::UnsupportedEncoding("br".into()).status(domain);
        assert_eq!(unsupported.code(), Code::Unimplemented);
        assert_eq!(
            unsupported.metadata().get("grpc-accept-encoding").unwrap(),
            ACCEPTED_ENCODINGS
        );
    }
}
