//! The 5-byte length-prefixed framing shared by gRPC and Connect streaming: one flag byte, a
//! big-endian u32 length, then the message.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Flag bit: the message is compressed.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flag bit (Connect): this is the end-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;

/// One framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Flag byte.
    pub flags: u8,
    /// Message bytes.
    pub data: Bytes,
}

/// Frames `data` with `flags`.
pub fn encode(flags: u8, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + data.len());
    out.put_u8(flags);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

/// Incremental decoder: feed body chunks, take whole envelopes out.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: BytesMut,
}

/// A frame longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// Length the frame announced.
    pub length: usize,
}

impl Decoder {
    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete envelope, if one is buffered; fails as soon as a header announces more than
    /// `max_length` bytes, before buffering them.
    pub fn next(&mut self, max_length: usize) -> Result<Option<Envelope>, TooLarge> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if length > max_length {
            return Err(TooLarge { length });
        }
        if self.buffer.len() < 5 + length {
            return Ok(None);
        }
        let flags = self.buffer.get_u8();
        self.buffer.advance(4);
        let data = self.buffer.split_to(length).freeze();
        Ok(Some(Envelope { flags, data }))
    }

    /// True when bytes of an incomplete envelope remain.
    pub fn has_partial(&self) -> bool {
        !self.buffer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_split_across_chunks_are_reassembled() {
        let mut wire = encode(0, b"hello").to_vec();
        wire.extend_from_slice(&encode(FLAG_END_STREAM, b"{}"));
        let mut decoder = Decoder::default();
        let mut seen = Vec::new();
        for byte in wire {
            decoder.push(&[byte]);
            while let Some(envelope) = decoder.next(1024).unwrap() {
                seen.push(envelope);
            }
        }
        assert_eq!(
            seen,
            [
                Envelope {
                    flags: 0,
                    data: Bytes::from_static(b"hello")
                },
                Envelope {
                    flags: FLAG_END_STREAM,
                    data: Bytes::from_static(b"{}")
                }
            ]
        );
        assert!(!decoder.has_partial());
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header() {
        let mut decoder = Decoder::default();
        decoder.push(&[0, 0, 0, 4, 1]);
        assert_eq!(decoder.next(1024), Err(TooLarge { length: 1025 }));
    }
}
