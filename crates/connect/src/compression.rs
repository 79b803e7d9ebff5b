//! Message compression: gzip and identity, with size limits that hold before and after inflating.

use std::io::{Read as _, Write as _};

use flate2::Compression as Level;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::{Code, ConnectError};

/// A supported message encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    Identity,
    /// gzip (RFC 1952).
    Gzip,
}

/// Names listed in errors and `Accept-Encoding` answers.
pub const SUPPORTED: &str = "gzip, identity";

impl Compression {
    /// Parses an encoding name; `None` for unsupported ones.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim() {
            "" | "identity" => Some(Compression::Identity),
            "gzip" => Some(Compression::Gzip),
            _ => None,
        }
    }

    /// The name used in headers.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Identity => "identity",
            Compression::Gzip => "gzip",
        }
    }

    /// Parses a request's encoding header value; unsupported → `unimplemented` naming what is supported.
    pub fn from_header(value: Option<&str>) -> Result<Self, ConnectError> {
        let name = value.unwrap_or("identity");
        Compression::from_name(name).ok_or_else(|| {
            ConnectError::new(
                Code::Unimplemented,
                format!("unsupported compression {name:?}; supported: {SUPPORTED}"),
            )
        })
    }

    /// Chooses the response encoding from an `Accept-Encoding`-style list (first supported wins).
    pub fn negotiate(accept: Option<&str>) -> Self {
        accept
            .into_iter()
            .flat_map(|list| list.split(','))
            .filter_map(|name| Compression::from_name(name.split(';').next().unwrap_or_default()))
            .find(|compression| *compression != Compression::Identity)
            .unwrap_or(Compression::Identity)
    }

    /// Inflates `data`, failing with `resource_exhausted` past `max_bytes` and `invalid_argument`
    /// on corrupt input. A zero-length body is never decompressed.
    pub fn decompress(self, data: &[u8], max_bytes: usize) -> Result<Vec<u8>, ConnectError> {
        if self == Compression::Identity || data.is_empty() {
            return Ok(data.to_vec());
        }
        let mut out = Vec::new();
        let mut limited = GzDecoder::new(data).take(max_bytes as u64 + 1);
        limited.read_to_end(&mut out).map_err(|err| {
            ConnectError::new(
                Code::InvalidArgument,
                format!("corrupt gzip message: {err}"),
            )
        })?;
        if out.len() > max_bytes {
            return Err(too_large(max_bytes));
        }
        Ok(out)
    }

    /// Compresses `data`.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::Identity => data.to_vec(),
            Compression::Gzip => {
                let mut encoder =
                    GzEncoder::new(Vec::with_capacity(data.len() / 2 + 16), Level::fast());
                // Writing to a Vec cannot fail.
                let _ = encoder.write_all(data);
                encoder.finish().unwrap_or_default()
            }
        }
    }
}

/// The error for a message over the size limit.
pub fn too_large(max_bytes: usize) -> ConnectError {
    ConnectError::new(
        Code::ResourceExhausted,
        format!("message larger than the limit of {max_bytes} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips_and_limits_the_inflated_size() {
        let data = vec![b'a'; 10_000];
        let packed = Compression::Gzip.compress(&data);
        assert!(packed.len() < 200);
        assert_eq!(Compression::Gzip.decompress(&packed, 10_000).unwrap(), data);
        assert_eq!(
            Compression::Gzip
                .decompress(&packed, 9_999)
                .unwrap_err()
                .code,
            Code::ResourceExhausted
        );
        assert_eq!(
            Compression::Gzip
                .decompress(b"not gzip", 100)
                .unwrap_err()
                .code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn negotiation_takes_the_first_supported_encoding() {
        assert_eq!(Compression::negotiate(Some("br, gzip")), Compression::Gzip);
        assert_eq!(Compression::negotiate(Some("br")), Compression::Identity);
        assert_eq!(Compression::negotiate(None), Compression::Identity);
        assert_eq!(
            Compression::from_header(Some("br")).unwrap_err().code,
            Code::Unimplemented
        );
    }
}
