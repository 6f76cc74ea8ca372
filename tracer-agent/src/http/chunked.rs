//! Incremental decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1).
//!
//! It only walks the framing and counts chunk-data bytes: body bytes are never copied, so a
//! message of any size costs a few words of state. Input may be split anywhere, including
//! inside the size line, an extension, a CRLF or the trailer section.

/// Longest size line, extension or trailer line we walk before calling it garbage. Nothing
/// is buffered, so this only bounds how long a non-chunked stream can pass for one.
const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkedError {
    #[error("invalid chunk size line")]
    SizeLine,
    #[error("chunk size overflows u64")]
    Overflow,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("chunked framing line too long")]
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `digits` so far.
    Size {
        digits: u8,
    },
    /// After the digits: optional whitespace, then `;ext` or the line end.
    SizeRest,
    /// Inside a chunk extension, up to the line end.
    Ext,
    /// Saw CR ending the size line.
    SizeLf,
    /// Inside chunk data; bytes left in this chunk.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw CR of the final empty line.
    EndLf,
    Done,
}

/// What one [`ChunkedDecoder::feed`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Input bytes consumed (framing and data). Less than the input only when `done`.
    pub consumed: usize,
    /// Chunk-data bytes among them.
    pub data: u64,
    /// The message body ended (last chunk and trailers seen).
    pub done: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
    line_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            line_len: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Walks `input` until it is used up or the body ends.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<Progress, ChunkedError> {
        let mut i = 0;
        let mut data = 0u64;
        while i < input.len() {
            if let State::Data(left) = self.state {
                // Whole runs of data at once: this is the hot path for large bodies.
                let n = left.min((input.len() - i) as u64);
                i += n as usize;
                data += n;
                self.state = if left == n {
                    State::DataCr
                } else {
                    State::Data(left - n)
                };
                continue;
            }
            if self.state == State::Done {
                break;
            }
            self.byte(input[i])?;
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            data,
            done: self.state == State::Done,
        })
    }

    /// Accounts for `n` bytes that passed on the wire but were not captured. Succeeds when
    /// they all fall inside the current chunk's data, or end exactly after the CRLF that
    /// closes it: a sender writing one whole chunk per syscall (curl's chunked uploads do)
    /// leaves the next syscall at a chunk-size line, which the next captured bytes confirm
    /// or refute. Otherwise framing was lost and the caller must resync (`None`).
    /// Returns the chunk-data bytes among them.
    pub(crate) fn skip_uncaptured(&mut self, n: u64) -> Option<u64> {
        // Bytes the current chunk still owes: data, then the CRLF after it.
        let (left, crlf) = match self.state {
            State::Data(left) => (left, 2),
            State::DataCr => (0, 2),
            State::DataLf => (0, 1),
            _ => return (n == 0).then_some(0),
        };
        if n == 0 {
            return Some(0);
        }
        if n < left {
            self.state = State::Data(left - n);
            return Some(n);
        }
        match (n - left, crlf) {
            (0, _) => self.state = State::DataCr,
            (1, 2) => self.state = State::DataLf,
            (k, c) if k == c => self.next_chunk(),
            _ => return None,
        }
        Some(left)
    }

    fn line_byte(&mut self) -> Result<(), ChunkedError> {
        self.line_len += 1;
        if self.line_len > MAX_LINE {
            return Err(ChunkedError::LineTooLong);
        }
        Ok(())
    }

    fn end_size_line(&mut self) {
        self.line_len = 0;
        self.state = if self.size == 0 {
            State::TrailerStart
        } else {
            State::Data(self.size)
        };
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkedError> {
        match self.state {
            State::Size { digits } => {
                if let Some(v) = hex_value(b) {
                    if digits >= 16 || self.size > u64::MAX >> 4 {
                        return Err(ChunkedError::Overflow);
                    }
                    self.size = (self.size << 4) | u64::from(v);
                    self.state = State::Size { digits: digits + 1 };
                    self.line_byte()?;
                } else if digits == 0 {
                    return Err(ChunkedError::SizeLine);
                } else {
                    self.state = State::SizeRest;
                    return self.byte(b);
                }
            }
            State::SizeRest => match b {
                // RFC 9112 allows "bad whitespace" before the extension; peers send it.
                b' ' | b'\t' => self.line_byte()?,
                b';' => {
                    self.state = State::Ext;
                    self.line_byte()?;
                }
                b'\r' => self.state = State::SizeLf,
                // A bare LF ends the line too: lenient like most servers.
                b'\n' => self.end_size_line(),
                _ => return Err(ChunkedError::SizeLine),
            },
            State::Ext => match b {
                b'\r' => self.state = State::SizeLf,
                b'\n' => self.end_size_line(),
                _ => self.line_byte()?,
            },
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkedError::SizeLine);
                }
                self.end_size_line();
            }
            State::DataCr => match b {
                b'\r' => self.state = State::DataLf,
                b'\n' => self.next_chunk(),
                _ => return Err(ChunkedError::DataEnd),
            },
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkedError::DataEnd);
                }
                self.next_chunk();
            }
            State::TrailerStart => match b {
                b'\r' => self.state = State::EndLf,
                b'\n' => self.state = State::Done,
                _ => {
                    self.state = State::TrailerLine;
                    self.line_len = 1;
                }
            },
            State::TrailerLine => {
                if b == b'\n' {
                    self.state = State::TrailerStart;
                    self.line_len = 0;
                } else {
                    self.line_byte()?;
                }
            }
            State::EndLf => {
                if b != b'\n' {
                    return Err(ChunkedError::SizeLine);
                }
                self.state = State::Done;
            }
            State::Data(_) | State::Done => unreachable!("handled by feed"),
        }
        Ok(())
    }

    fn next_chunk(&mut self) {
        self.size = 0;
        self.line_len = 0;
        self.state = State::Size { digits: 0 };
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

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"4;name=\"va;l\"\r\nWiki\r\n5 ; x\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX-T: 1\r\n\r\n";

    /// Feeds `parts` in order; returns (data bytes, bytes consumed, done).
    fn run(parts: &[&[u8]]) -> Result<(u64, usize, bool), ChunkedError> {
        let mut d = ChunkedDecoder::new();
        let (mut data, mut consumed) = (0, 0);
        for p in parts {
            let pr = d.feed(p)?;
            data += pr.data;
            consumed += pr.consumed;
            if pr.done {
                return Ok((data, consumed, true));
            }
            assert_eq!(pr.consumed, p.len());
        }
        Ok((data, consumed, d.is_done()))
    }

    #[test]
    fn whole_body_with_extensions_and_trailers() {
        assert_eq!(run(&[BODY]), Ok((23, BODY.len(), true)));
    }

    #[test]
    fn every_split_point_and_byte_at_a_time() {
        for at in 0..=BODY.len() {
            let (a, b) = BODY.split_at(at);
            assert_eq!(run(&[a, b]), Ok((23, BODY.len(), true)), "split at {at}");
        }
        let bytes: Vec<&[u8]> = BODY.chunks(1).collect();
        assert_eq!(run(&bytes), Ok((23, BODY.len(), true)));
    }

    #[test]
    fn stops_at_end_of_body() {
        let mut input = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(run(&[&input]), Ok((3, 13, true)));
    }

    #[test]
    fn bare_lf_and_uppercase_hex_accepted() {
        assert_eq!(run(&[b"A\nabcdefghij\n0\n\n"]), Ok((10, 16, true)));
    }

    #[test]
    fn malformed_framing_is_an_error() {
        assert_eq!(run(&[b"x\r\n"]), Err(ChunkedError::SizeLine));
        assert_eq!(run(&[b"\r\n"]), Err(ChunkedError::SizeLine));
        assert_eq!(run(&[b"3\r\nabcX"]), Err(ChunkedError::DataEnd));
        assert_eq!(run(&[b"3\r\nabc\rX"]), Err(ChunkedError::DataEnd));
        assert_eq!(run(&[b"3\rX"]), Err(ChunkedError::SizeLine));
        assert_eq!(
            run(&[b"11111111111111111\r\n"]),
            Err(ChunkedError::Overflow)
        );
        let long = [b"1;".as_slice(), &[b'x'; MAX_LINE]].concat();
        assert_eq!(run(&[&long]), Err(ChunkedError::LineTooLong));
    }

    #[test]
    fn uncaptured_bytes_inside_data_are_skipped() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"a\r\nabc").unwrap().data, 3);
        assert_eq!(d.skip_uncaptured(7), Some(7));
        assert!(d.feed(b"\r\n0\r\n\r\n").unwrap().done);

        let mut d = ChunkedDecoder::new();
        d.feed(b"a\r\nabc").unwrap();
        assert_eq!(
            d.skip_uncaptured(10),
            None,
            "runs past the chunk's CRLF into framing"
        );

        let mut d = ChunkedDecoder::new();
        d.feed(b"a\r").unwrap();
        assert_eq!(d.skip_uncaptured(1), None, "inside the size line");
        assert_eq!(d.skip_uncaptured(0), Some(0));
    }

    /// One chunk per syscall, only a prefix captured: the uncaptured tail ends with the
    /// chunk's CRLF, so the next syscall starts at a size line.
    #[test]
    fn uncaptured_tail_ending_at_the_chunks_crlf_keeps_sync() {
        for (captured, skipped, data) in [
            (b"a\r\nabc".as_slice(), 9, 7),
            (b"a\r\nabcdefghij", 2, 0),
            (b"a\r\nabcdefghij\r", 1, 0),
            (b"a\r\nabc", 8, 7),
        ] {
            let mut d = ChunkedDecoder::new();
            let before = d.feed(captured).unwrap().data;
            assert_eq!(
                d.skip_uncaptured(skipped),
                Some(data),
                "{captured:?} + {skipped}"
            );
            assert_eq!(before + data, 10, "the chunk's data, counted once");
            if skipped == 8 {
                // Ended between CR and LF: the LF is still to come.
                assert!(d.feed(b"\n").is_ok());
            }
            let p = d.feed(b"3\r\nxyz\r\n0\r\n\r\n").unwrap();
            assert!(p.done, "{captured:?} + {skipped}");
            assert_eq!(p.data, 3, "the next chunk is counted");
        }
        let mut d = ChunkedDecoder::new();
        d.feed(b"a\r\nabcdefghij\r\n").unwrap();
        assert_eq!(
            d.skip_uncaptured(1),
            None,
            "inside the next size line: unknown"
        );
    }
}
