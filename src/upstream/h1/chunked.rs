//! The chunked transfer coding of a response body (RFC 9112 section 7.1), decoded strictly: hex
//! sizes with an overflow check, extensions skipped (bounded), trailers read and dropped, and
//! every line ended by CRLF (a bare LF is refused, as a backend could otherwise frame a body
//! differently for us than for a proxy in front of it).

use bytes::{Buf, Bytes, BytesMut};

/// How many bytes of extensions a chunk-size line may carry.
const MAX_EXTENSION: usize = 4 * 1024;
/// How many bytes of trailer fields a body may end with.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    Size,
    #[error("chunk size too large")]
    Overflow,
    #[error("chunk line not ended by CRLF")]
    LineEnd,
    #[error("chunk extensions too long")]
    Extension,
    #[error("trailers too long")]
    Trailers,
}

impl ChunkError {
    /// The reason as an invalid response names it.
    pub fn reason(self) -> &'static str {
        match self {
            ChunkError::Size => "invalid chunk size",
            ChunkError::Overflow => "chunk size too large",
            ChunkError::LineEnd => "chunk line not ended by CRLF",
            ChunkError::Extension => "chunk extensions too long",
            ChunkError::Trailers => "trailers too long",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first digit of a chunk size.
    SizeStart,
    Size,
    /// Whitespace after the size, before `;` or the line end.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Decoder state carried between reads; it holds no bytes itself.
#[derive(Debug, Clone)]
pub struct ChunkDecoder {
    state: State,
    /// The size being read, then what is left of the chunk's data.
    size: u64,
    /// Extension bytes on the current line, or trailer bytes so far.
    counted: usize,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        ChunkDecoder {
            state: State::SizeStart,
            size: 0,
            counted: 0,
        }
    }
}

impl ChunkDecoder {
    /// The last chunk and the trailers were read: the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from the front of `buf` and returns the next piece of chunk data, split
    /// off `buf` without a copy; `None` when `buf` ran out first or the body is complete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ChunkError> {
        self.framing(buf)?;
        if self.state != State::Data || buf.is_empty() {
            return Ok(None);
        }
        let take = usize::try_from(self.size).map_or(buf.len(), |size| size.min(buf.len()));
        self.size -= take as u64;
        if self.size == 0 {
            self.state = State::DataCr;
        }
        Ok(Some(buf.split_to(take).freeze()))
    }

    /// Consumes framing bytes only, up to the next chunk data, the end of the body or of `buf`:
    /// it finds the end of a body whose last chunk came with the data before it.
    pub fn framing(&mut self, buf: &mut BytesMut) -> Result<(), ChunkError> {
        let mut used = 0;
        let result = self.step_all(buf, &mut used);
        buf.advance(used);
        result
    }

    fn step_all(&mut self, buf: &[u8], used: &mut usize) -> Result<(), ChunkError> {
        while let Some(&byte) = buf.get(*used) {
            if matches!(self.state, State::Data | State::Done) {
                return Ok(());
            }
            self.step(byte)?;
            *used += 1;
        }
        Ok(())
    }

    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        self.state = match (self.state, byte) {
            (State::SizeStart | State::Size, _) if hex(byte).is_some() => {
                let digit = u64::from(hex(byte).unwrap_or(0));
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(ChunkError::Overflow)?;
                State::Size
            }
            (State::SizeStart, _) => return Err(ChunkError::Size),
            (State::Size | State::SizeSpace, b' ' | b'\t') => State::SizeSpace,
            (State::Size | State::SizeSpace, b';') => {
                self.counted = 0;
                State::Extension
            }
            (State::Size | State::SizeSpace | State::Extension, b'\r') => State::SizeLf,
            (State::Size | State::SizeSpace, b'\n') => return Err(ChunkError::LineEnd),
            (State::Size | State::SizeSpace, _) => return Err(ChunkError::Size),
            (State::Extension, b'\n') => return Err(ChunkError::LineEnd),
            (State::Extension, _) => {
                self.counted += 1;
                if self.counted > MAX_EXTENSION {
                    return Err(ChunkError::Extension);
                }
                State::Extension
            }
            (State::SizeLf, b'\n') if self.size == 0 => {
                self.counted = 0;
                State::TrailerStart
            }
            (State::SizeLf, b'\n') => State::Data,
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::SizeStart,
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::Trailer, b'\n') => return Err(ChunkError::LineEnd),
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::Trailer, _) => {
                self.counted += 1;
                if self.counted > MAX_TRAILERS {
                    return Err(ChunkError::Trailers);
                }
                State::Trailer
            }
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            (
                State::SizeLf | State::DataCr | State::DataLf | State::TrailerLf | State::EndLf,
                _,
            ) => {
                return Err(ChunkError::LineEnd);
            }
            (State::Data | State::Done, _) => self.state,
        };
        Ok(())
    }
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Decodes `wire` fed in two parts split at `at`: the data, and whether the body completed.
    fn decode_split(wire: &[u8], at: usize) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut decoder = ChunkDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in [&wire[..at], &wire[at..]] {
            buf.extend_from_slice(part);
            while let Some(data) = decoder.decode(&mut buf)? {
                out.extend_from_slice(&data);
            }
        }
        Ok((out, decoder.is_done()))
    }

    fn every_split(wire: &[u8]) -> Vec<Result<(Vec<u8>, bool), ChunkError>> {
        (0..=wire.len()).map(|at| decode_split(wire, at)).collect()
    }

    #[test]
    fn decodes_at_every_split_point() {
        let wire = b"5\r\nhello\r\n1;name=value;x\r\n \r\nA \t;e\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        for result in every_split(wire) {
            assert_eq!(result, Ok((b"hello 0123456789".to_vec(), true)));
        }
    }

    #[test]
    fn incomplete_bodies_are_not_done() {
        for wire in [
            &b"5\r\nhel"[..],
            b"5\r\nhello\r\n0\r\n",
            b"5\r\nhello\r\n0\r\nx: y\r\n",
        ] {
            let (_, done) = decode_split(wire, wire.len()).unwrap();
            assert!(!done, "{}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn refuses_bad_framing_at_every_split_point() {
        let cases: [(&[u8], ChunkError); 9] = [
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::LineEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::LineEnd),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkError::LineEnd),
            (b"5\r\nhello\r\n0\r\n\n", ChunkError::LineEnd),
            (b"5\r\nhello\r\n0\r\nx: y\n\r\n", ChunkError::LineEnd),
            (b"ffffffffffffffffff\r\n", ChunkError::Overflow),
            (b"-5\r\nhello\r\n", ChunkError::Size),
            (b"\r\nhello\r\n", ChunkError::Size),
            (b"5x\r\nhello\r\n", ChunkError::Size),
        ];
        for (wire, expected) in cases {
            for result in every_split(wire) {
                assert_eq!(result, Err(expected), "{}", String::from_utf8_lossy(wire));
            }
        }
    }

    #[test]
    fn bounds_extensions_and_trailers() {
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'e', MAX_EXTENSION + 1));
        long.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(decode_split(&long, 0), Err(ChunkError::Extension));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..=MAX_TRAILERS / 10 {
            trailers.extend_from_slice(b"x: 1234567\r\n");
        }
        assert_eq!(decode_split(&trailers, 0), Err(ChunkError::Trailers));
    }

    #[test]
    fn largest_size_that_fits_is_accepted() {
        let mut decoder = ChunkDecoder::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap().as_deref(),
            Some(&b"ab"[..])
        );
        assert_eq!(decoder.size, u64::MAX - 2);
    }

    #[test]
    fn framing_finds_the_end_without_taking_data() {
        let mut decoder = ChunkDecoder::default();
        let mut buf = BytesMut::from(&b"2\r\nhi\r\n0\r\n\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap().as_deref(),
            Some(&b"hi"[..])
        );
        decoder.framing(&mut buf).unwrap();
        assert!(decoder.is_done());
        assert!(buf.is_empty());
    }
}
