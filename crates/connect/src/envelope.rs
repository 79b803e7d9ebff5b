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

    mod properties {
        //! Arbitrary bytes split arbitrarily: the decoder never panics, whatever it returns is
        //! exactly the envelopes the bytes hold, and how the bytes were split changes nothing.
        //! CI runs proptest's default case count; by hand:
        //! `PROPTEST_CASES=100000 cargo test -p connect envelope::tests::properties`.
        use super::*;
        use proptest::prelude::*;

        const LIMIT: usize = 64;

        /// Feeds `wire` in pieces cut at `cuts`; the envelopes out, then the first error.
        fn decode(wire: &[u8], cuts: &[usize]) -> (Vec<Envelope>, Option<TooLarge>, bool) {
            let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (wire.len() + 1)).collect();
            points.extend([0, wire.len()]);
            points.sort_unstable();
            let mut decoder = Decoder::default();
            let mut out = Vec::new();
            for piece in points.windows(2) {
                decoder.push(&wire[piece[0]..piece[1]]);
                loop {
                    match decoder.next(LIMIT) {
                        Ok(Some(envelope)) => out.push(envelope),
                        Ok(None) => break,
                        Err(error) => return (out, Some(error), decoder.has_partial()),
                    }
                }
            }
            (out, None, decoder.has_partial())
        }

        fn encoded(envelopes: &[Envelope]) -> Vec<u8> {
            envelopes
                .iter()
                .flat_map(|envelope| encode(envelope.flags, &envelope.data).to_vec())
                .collect()
        }

        /// Random bytes mixed with well-formed frames (pure noise would almost always announce
        /// a huge length and stop at the first header).
        fn garbage_and_frames() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..20),
                (
                    any::<u8>(),
                    proptest::collection::vec(any::<u8>(), 0..=LIMIT + 8)
                )
                    .prop_map(|(flags, data)| encode(flags, &data).to_vec()),
            ];
            proptest::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
        }

        proptest! {
            #[test]
            fn garbage_never_panics_and_what_is_accepted_is_a_prefix_of_whole_frames(
                wire in garbage_and_frames(),
                cuts in proptest::collection::vec(any::<usize>(), 0..8),
            ) {
                let (envelopes, error, partial) = decode(&wire, &cuts);
                let accepted = encoded(&envelopes);
                prop_assert_eq!(&wire[..accepted.len()], &accepted[..]);
                prop_assert!(envelopes.iter().all(|envelope| envelope.data.len() <= LIMIT));
                let rest = &wire[accepted.len()..];
                match error {
                    // Refused from the header of the next frame, as soon as it was whole.
                    Some(TooLarge { length }) => {
                        prop_assert!(length > LIMIT);
                        prop_assert_eq!(u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize, length);
                    }
                    // Whatever is left is an incomplete frame, reported as partial.
                    None => prop_assert_eq!(partial, !rest.is_empty()),
                }
            }

            #[test]
            fn well_formed_streams_decode_to_their_envelopes_however_they_are_split(
                messages in proptest::collection::vec(
                    (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..=LIMIT)),
                    0..6,
                ),
                cuts in proptest::collection::vec(any::<usize>(), 0..12),
            ) {
                let envelopes: Vec<Envelope> = messages
                    .into_iter()
                    .map(|(flags, data)| Envelope { flags, data: Bytes::from(data) })
                    .collect();
                let (decoded, error, partial) = decode(&encoded(&envelopes), &cuts);
                prop_assert_eq!(decoded, envelopes);
                prop_assert!(error.is_none());
                prop_assert!(!partial);
            }
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header() {
        let mut decoder = Decoder::default();
        decoder.push(&[0, 0, 0, 4, 1]);
        assert_eq!(decoder.next(1024), Err(TooLarge { length: 1025 }));
    }
}
