//! Finding where a body ends, incrementally, without buffering it: the proxy forwards body bytes
//! as they arrive and must know exactly which bytes of a read belong to the body and which are
//! the next pipelined message.

use thiserror::Error;

use super::fields::{is_field_vchar, is_tchar};

/// Longest chunk-size line accepted (hex size plus chunk extensions, CRLF excluded). Extensions
/// carry nothing the gateway or common backends use, yet each byte of them costs a forwarder work
/// without moving any body data; Go (CVE-2023-39326) and Node (CVE-2024-22019) capped them after
/// clients used endless extensions to keep connections busy. 4 KiB is far above any real use.
pub const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;

/// Most bytes accepted in the trailer section (after the last chunk, final CRLF excluded).
/// Trailers are field lines like a head's, so they get a head-sized budget: a half of the default
/// request-head limit, as trailers in practice are a checksum or a gRPC-style status.
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;

/// Most hex digits in a chunk size, leading zeros included: 16 hex digits hold any `u64`, and a
/// few leading zeros are tolerated; a longer run is either an overflow or a padding game.
const MAX_SIZE_DIGITS: usize = 20;

/// How much of the input was body, and whether the body is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkProgress {
    /// Bytes from the start of the input that belong to the body: forward exactly these.
    pub consumed: usize,
    /// The body ended within those bytes; the rest of the input is the next message.
    pub done: bool,
}

/// A chunked body the proxy must refuse (400 from a client, 502 from a backend). After an error
/// the decoder stays failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChunkedError {
    #[error("chunk size is not a hex number")]
    InvalidChunkSize,
    #[error("chunk size overflows 64 bits")]
    ChunkSizeOverflow,
    #[error("chunk-size line longer than {MAX_CHUNK_LINE_BYTES} bytes")]
    ChunkLineTooLong,
    #[error("invalid byte in a chunk extension")]
    InvalidChunkExtension,
    #[error("chunk framing line not terminated by CRLF")]
    MissingCrlf,
    #[error("trailer section longer than {MAX_TRAILER_BYTES} bytes")]
    TrailerTooLarge,
    #[error("malformed trailer field")]
    InvalidTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size,
    /// Whitespace after the size: only before a `;` extension (BWS, RFC 9112 §7.1.1).
    SizeSpace,
    /// Inside chunk extensions, until CR.
    Extension,
    /// CR of the size line seen, LF expected.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final empty line seen, LF expected.
    EndLf,
    Done,
    Failed(ChunkedError),
}

/// An incremental validator of a chunked body (RFC 9112 §7.1) for pass-through: it holds no
/// data, only where it is in the framing, so any read split gives the same answer. Only CRLF
/// ends a framing line; extensions are checked for forbidden bytes; trailer lines must be
/// `token ":" value` with no folding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: usize,
    line_len: usize,
    remaining: u64,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            remaining: 0,
            trailer_bytes: 0,
        }
    }

    /// Whether the whole body, trailers and final CRLF included, has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes. Returns how many belong to the body; once `done`, later calls
    /// consume nothing.
    pub fn advance(&mut self, input: &[u8]) -> Result<ChunkProgress, ChunkedError> {
        self.advance_with(input, |_| {})
    }

    /// Like [`advance`](Self::advance), and hands every piece of chunk data (framing and
    /// trailers excluded) to `on_data`: for de-chunking a response for an HTTP/1.0 client.
    pub fn advance_with(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<ChunkProgress, ChunkedError> {
        let mut pos = 0usize;
        while pos < input.len() {
            if let State::Failed(e) = self.state {
                return Err(e);
            }
            if self.state == State::Done {
                break;
            }
            if self.state == State::Data {
                let available = input.len().saturating_sub(pos);
                let take = usize::try_from(self.remaining).map_or(available, |r| r.min(available));
                let end = pos.saturating_add(take);
                if let Some(data) = input.get(pos..end) {
                    on_data(data);
                }
                pos = end;
                self.remaining = self.remaining.saturating_sub(take as u64);
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let Some(&b) = input.get(pos) else { break };
            pos = pos.saturating_add(1);
            if let Err(e) = self.step(b) {
                self.state = State::Failed(e);
                return Err(e);
            }
        }
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        Ok(ChunkProgress {
            consumed: pos,
            done: self.state == State::Done,
        })
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        match self.state {
            State::Size => {
                if let Some(d) = hex_value(b) {
                    self.digits = self.digits.saturating_add(1);
                    if self.digits > MAX_SIZE_DIGITS {
                        return Err(ChunkedError::ChunkSizeOverflow);
                    }
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(d)))
                        .ok_or(ChunkedError::ChunkSizeOverflow)?;
                    self.bump_line()?;
                } else if self.digits == 0 {
                    return Err(ChunkedError::InvalidChunkSize);
                } else {
                    match b {
                        b';' => self.state = State::Extension,
                        b' ' | b'\t' => self.state = State::SizeSpace,
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkedError::MissingCrlf),
                        _ => return Err(ChunkedError::InvalidChunkSize),
                    }
                    if b != b'\r' {
                        self.bump_line()?;
                    }
                }
            }
            State::SizeSpace => {
                match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Extension,
                    _ => return Err(ChunkedError::InvalidChunkSize),
                }
                self.bump_line()?;
            }
            State::Extension => match b {
                b'\r' => self.state = State::SizeLf,
                b'\t' | b' ' => self.bump_line()?,
                _ if is_field_vchar(b) => self.bump_line()?,
                _ => return Err(ChunkedError::InvalidChunkExtension),
            },
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkedError::MissingCrlf);
                }
                if self.size == 0 {
                    self.state = State::TrailerStart;
                } else {
                    self.remaining = self.size;
                    self.state = State::Data;
                }
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(ChunkedError::MissingCrlf);
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkedError::MissingCrlf);
                }
                self.size = 0;
                self.digits = 0;
                self.line_len = 0;
                self.state = State::Size;
            }
            State::TrailerStart => {
                if b == b'\r' {
                    self.state = State::EndLf;
                } else if is_tchar(b) {
                    self.bump_trailer(1)?;
                    self.state = State::TrailerName;
                } else {
                    // Includes SP/HTAB (obsolete folding) and a bare LF.
                    return Err(ChunkedError::InvalidTrailer);
                }
            }
            State::TrailerName => {
                self.bump_trailer(1)?;
                if b == b':' {
                    self.state = State::TrailerValue;
                } else if !is_tchar(b) {
                    return Err(ChunkedError::InvalidTrailer);
                }
            }
            State::TrailerValue => {
                if b == b'\r' {
                    self.state = State::TrailerLf;
                } else if b == b' ' || b == b'\t' || is_field_vchar(b) {
                    self.bump_trailer(1)?;
                } else {
                    return Err(ChunkedError::InvalidTrailer);
                }
            }
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkedError::MissingCrlf);
                }
                self.bump_trailer(2)?;
                self.state = State::TrailerStart;
            }
            State::EndLf => {
                if b != b'\n' {
                    return Err(ChunkedError::MissingCrlf);
                }
                self.state = State::Done;
            }
            // Handled by the caller; unreachable here.
            State::Data | State::Done | State::Failed(_) => {}
        }
        Ok(())
    }

    fn bump_line(&mut self) -> Result<(), ChunkedError> {
        self.line_len = self.line_len.saturating_add(1);
        if self.line_len > MAX_CHUNK_LINE_BYTES {
            return Err(ChunkedError::ChunkLineTooLong);
        }
        Ok(())
    }

    fn bump_trailer(&mut self, n: usize) -> Result<(), ChunkedError> {
        self.trailer_bytes = self.trailer_bytes.saturating_add(n);
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkedError::TrailerTooLarge);
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Counts down a `Content-Length` body: the same contract as [`ChunkedDecoder::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentLengthBody {
    remaining: u64,
}

impl ContentLengthBody {
    pub fn new(length: u64) -> Self {
        Self { remaining: length }
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }

    pub fn advance(&mut self, input: &[u8]) -> ChunkProgress {
        let take = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        self.remaining = self.remaining.saturating_sub(take as u64);
        ChunkProgress {
            consumed: take,
            done: self.remaining == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the whole input at once, then byte by byte; both must agree.
    fn run(input: &[u8]) -> Result<ChunkProgress, ChunkedError> {
        let whole = ChunkedDecoder::new().advance(input);
        let mut d = ChunkedDecoder::new();
        let mut consumed = 0;
        let mut bytewise = Ok(ChunkProgress {
            consumed: 0,
            done: false,
        });
        for b in input {
            match d.advance(std::slice::from_ref(b)) {
                Ok(p) => {
                    consumed += p.consumed;
                    bytewise = Ok(ChunkProgress {
                        consumed,
                        done: p.done,
                    });
                }
                Err(e) => {
                    bytewise = Err(e);
                    break;
                }
            }
        }
        assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(input));
        whole
    }

    fn done_at(input: &[u8], at: usize) {
        assert_eq!(
            run(input),
            Ok(ChunkProgress {
                consumed: at,
                done: true
            }),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn valid_bodies() {
        let cases: &[&[u8]] = &[
            b"0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\n\r\n",
            b"a\r\n0123456789\r\n0\r\n\r\n",
            b"0005\r\nhello\r\n000\r\n\r\n",
            b"5;name=value\r\nhello\r\n0;last\r\n\r\n",
            b"5 ;name=\"quoted value\"\r\nhello\r\n0\r\n\r\n",
            b"5\t; a ; b=c\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nChecksum: abc\r\nX-Other:\r\n\r\n",
            b"3\r\n\r\n\r\r\n0\r\n\r\n",
        ];
        for c in cases {
            done_at(c, c.len());
        }
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        done_at(&input, body.len());
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.advance(&input).unwrap().consumed, body.len());
        assert!(d.is_done());
        assert_eq!(
            d.advance(b"more").unwrap(),
            ChunkProgress {
                consumed: 0,
                done: true
            }
        );
    }

    #[test]
    fn incomplete_bodies_consume_everything() {
        for c in [
            &b""[..],
            b"5",
            b"5\r",
            b"5\r\nhel",
            b"5\r\nhello",
            b"5\r\nhello\r",
            b"5\r\nhello\r\n0\r\n",
            b"5\r\nhello\r\n0\r\nX: y",
            b"5\r\nhello\r\n0\r\nX: y\r\n",
            b"5\r\nhello\r\n0\r\n\r",
        ] {
            assert_eq!(
                run(c),
                Ok(ChunkProgress {
                    consumed: c.len(),
                    done: false
                }),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
    }

    #[test]
    fn invalid_bodies() {
        use ChunkedError as E;
        let cases: &[(&[u8], E)] = &[
            (b"\r\n", E::InvalidChunkSize),
            (b";ext\r\n", E::InvalidChunkSize),
            (b"x\r\n", E::InvalidChunkSize),
            (b"0x5\r\nhello\r\n", E::InvalidChunkSize),
            (b"+5\r\nhello\r\n", E::InvalidChunkSize),
            (b"-5\r\n", E::InvalidChunkSize),
            (b" 5\r\n", E::InvalidChunkSize),
            (b"5 \r\nhello\r\n", E::InvalidChunkSize),
            (b"5g\r\n", E::InvalidChunkSize),
            (b"5\nhello\r\n0\r\n\r\n", E::MissingCrlf),
            (b"5\rhello", E::MissingCrlf),
            (b"5\r\nhello\n0\r\n\r\n", E::MissingCrlf),
            (b"5\r\nhelloX\r\n", E::MissingCrlf),
            (b"5\r\nhello\r0", E::MissingCrlf),
            (b"5\r\nhello\r\n0\r\n\n", E::InvalidTrailer),
            (b"5\r\nhello\r\n0\r\n\rX", E::MissingCrlf),
            (b"5;a\nb\r\n", E::InvalidChunkExtension),
            (b"5;a\x00\r\n", E::InvalidChunkExtension),
            (b"5;a\x7f\r\n", E::InvalidChunkExtension),
            (b"10000000000000000\r\n", E::ChunkSizeOverflow),
            (b"fffffffffffffffff\r\n", E::ChunkSizeOverflow),
            (b"000000000000000000001\r\n", E::ChunkSizeOverflow),
            (b"0\r\n X: y\r\n\r\n", E::InvalidTrailer),
            (b"0\r\nX y: z\r\n\r\n", E::InvalidTrailer),
            (b"0\r\nX\r\n\r\n", E::InvalidTrailer),
            (b"0\r\nX: a\x00b\r\n\r\n", E::InvalidTrailer),
            (b"0\r\nX: a\nY: b\r\n\r\n", E::InvalidTrailer),
            (b"0\r\nX: a\rY\r\n\r\n", E::MissingCrlf),
        ];
        for (input, want) in cases {
            assert_eq!(
                run(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn largest_chunk_size_is_accepted() {
        let mut d = ChunkedDecoder::new();
        let p = d.advance(b"ffffffffffffffff\r\nabc").unwrap();
        assert_eq!(p.consumed, 21);
        assert!(!p.done);
    }

    #[test]
    fn limits() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE_BYTES, b'a');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        done_at(&line, line.len());
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE_BYTES + 1, b'a');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(run(&line), Err(ChunkedError::ChunkLineTooLong));

        // Trailer bytes counted with their CRLFs.
        // "0\r\n" is not counted; the line and its CRLF are.
        let mut body = b"0\r\nX: ".to_vec();
        body.resize(3 + MAX_TRAILER_BYTES - 2, b'v');
        body.extend_from_slice(b"\r\n\r\n");
        done_at(&body, body.len());
        let mut body = b"0\r\nX: ".to_vec();
        body.resize(3 + MAX_TRAILER_BYTES - 1, b'v');
        body.extend_from_slice(b"\r\n\r\n");
        assert_eq!(run(&body), Err(ChunkedError::TrailerTooLarge));
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new();
        assert!(d.advance(b"z").is_err());
        assert_eq!(d.advance(b"0\r\n\r\n"), Err(ChunkedError::InvalidChunkSize));
    }

    #[test]
    fn data_callback_sees_only_payload() {
        let input = b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: v\r\n\r\nNEXT";
        let mut whole = Vec::new();
        let p = ChunkedDecoder::new()
            .advance_with(input, |d| whole.extend_from_slice(d))
            .unwrap();
        assert_eq!(whole, b"hello world");
        assert_eq!(p.consumed, input.len() - 4);
        let mut split = Vec::new();
        let mut d = ChunkedDecoder::new();
        for b in input {
            d.advance_with(std::slice::from_ref(b), |x| split.extend_from_slice(x))
                .unwrap();
        }
        assert_eq!(split, b"hello world");
    }

    #[test]
    fn content_length_body() {
        let mut b = ContentLengthBody::new(5);
        assert_eq!(
            b.advance(b"abc"),
            ChunkProgress {
                consumed: 3,
                done: false
            }
        );
        assert_eq!(
            b.advance(b"defGET"),
            ChunkProgress {
                consumed: 2,
                done: true
            }
        );
        assert!(b.is_done());
        assert_eq!(b.advance(b"x").consumed, 0);
        let mut z = ContentLengthBody::new(0);
        assert!(z.is_done());
        assert_eq!(
            z.advance(b"x"),
            ChunkProgress {
                consumed: 0,
                done: true
            }
        );
        let mut big = ContentLengthBody::new(u64::MAX);
        assert_eq!(big.advance(b"abc").consumed, 3);
        assert_eq!(big.remaining(), u64::MAX - 3);
    }
}
