//! One direction of an HTTP/2 connection cut into frames (RFC 9113 §4.1), across syscall
//! boundaries. Only the payloads the connection layer reads are kept (header blocks,
//! RST_STREAM, GOAWAY); DATA and the other frames are reported by their header and their
//! payload skipped, so a syscall whose copy was cut short inside a DATA payload costs
//! nothing.

/// The client connection preface (RFC 9113 §3.4), first on the client's side.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

/// The 9-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    fn parse(b: &[u8; 9]) -> FrameHeader {
        FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A frame read whole (kept payload) or by its header only (payload skipped, `payload`
/// empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Vec<u8>,
}

/// Why a direction can no longer be cut into frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the client preface is wrong")]
    BadPreface,
    #[error("a header-carrying frame is larger than the header limit")]
    TooLarge,
    #[error("bytes that were not captured held frame headers")]
    Lost,
}

/// How many payload bytes of a frame type are kept (the rest is skipped).
fn kept(kind: u8) -> Option<usize> {
    match kind {
        HEADERS | CONTINUATION | PUSH_PROMISE => None, // all of it, up to the limit
        RST_STREAM => Some(4),
        GOAWAY => Some(8), // last stream id and error code, not the debug data
        _ => Some(0),
    }
}

#[derive(Debug)]
struct Current {
    header: FrameHeader,
    /// Payload bytes not yet read (kept or skipped).
    left: usize,
    /// Payload bytes still to keep, from the front of `left`.
    keep: usize,
    /// Reported when its payload ends (it keeps some), not when its header was read.
    report_at_end: bool,
}

#[derive(Debug)]
pub struct FrameReader {
    preface_left: usize,
    head: [u8; 9],
    head_len: usize,
    current: Option<Current>,
    payload: Vec<u8>,
    max_block: usize,
}

impl FrameReader {
    /// `preface`: this direction starts with the client preface. `max_block`: the most
    /// payload kept for one header-carrying frame.
    pub fn new(preface: bool, max_block: usize) -> FrameReader {
        FrameReader {
            preface_left: if preface { PREFACE.len() } else { 0 },
            head: [0; 9],
            head_len: 0,
            current: None,
            payload: Vec::new(),
            max_block,
        }
    }

    /// Cuts `bytes` (the next captured bytes of this direction) into frames, appended to
    /// `out` in order: a skipped frame as soon as its header is read, a kept one once its
    /// payload is complete.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Frame>) -> Result<(), FrameError> {
        if self.preface_left > 0 {
            let at = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(bytes.len());
            if bytes[..n] != PREFACE[at..at + n] {
                return Err(FrameError::BadPreface);
            }
            self.preface_left -= n;
            bytes = &bytes[n..];
        }
        while !bytes.is_empty() {
            let Some(cur) = self.current.as_mut() else {
                let n = (9 - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len == 9 {
                    self.head_len = 0;
                    self.start_frame(FrameHeader::parse(&self.head), out)?;
                }
                continue;
            };
            let n = cur.left.min(bytes.len());
            let keep = cur.keep.min(n);
            self.payload.extend_from_slice(&bytes[..keep]);
            cur.keep -= keep;
            cur.left -= n;
            bytes = &bytes[n..];
            if cur.left == 0 {
                self.end_frame(out);
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, header: FrameHeader, out: &mut Vec<Frame>) -> Result<(), FrameError> {
        let len = header.len as usize;
        let keep = match kept(header.kind) {
            None if len > self.max_block => return Err(FrameError::TooLarge),
            None => len,
            Some(k) => k.min(len),
        };
        if keep == 0 {
            // Reported now: a DATA frame's END_STREAM is known before its payload.
            out.push(Frame {
                header,
                payload: Vec::new(),
            });
        }
        self.current = Some(Current {
            header,
            left: len,
            keep,
            report_at_end: keep > 0,
        });
        if len == 0 {
            self.current = None;
        }
        Ok(())
    }

    fn end_frame(&mut self, out: &mut Vec<Frame>) {
        let Some(cur) = self.current.take() else {
            return;
        };
        if cur.report_at_end {
            out.push(Frame {
                header: cur.header,
                payload: std::mem::take(&mut self.payload),
            });
        }
    }

    /// The syscall moved `n` more bytes than were captured. Fine inside a skipped payload;
    /// anything else lost frame boundaries.
    pub fn skip_uncaptured(&mut self, n: usize) -> Result<(), FrameError> {
        if n == 0 {
            return Ok(());
        }
        match self.current.as_mut() {
            Some(cur) if cur.keep == 0 && cur.left >= n => {
                cur.left -= n;
                if cur.left == 0 {
                    self.current = None;
                }
                Ok(())
            }
            _ => Err(FrameError::Lost),
        }
    }

    /// Bytes held for an incomplete kept frame.
    pub fn buffered_bytes(&self) -> usize {
        self.payload.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn read_split(bytes: &[u8], cut: usize) -> Vec<Frame> {
        let mut r = FrameReader::new(true, 1024);
        let mut out = Vec::new();
        r.feed(&bytes[..cut], &mut out).unwrap();
        r.feed(&bytes[cut..], &mut out).unwrap();
        out
    }

    #[test]
    fn frames_split_at_every_offset_read_the_same() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        bytes.extend(frame(HEADERS, FLAG_END_HEADERS, 1, b"hdrs"));
        bytes.extend(frame(DATA, FLAG_END_STREAM, 1, &[7; 40]));
        bytes.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]));
        bytes.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0, b'x', b'y']));
        let whole = read_split(&bytes, 0);
        let kinds: Vec<_> = whole.iter().map(|f| f.header.kind).collect();
        assert_eq!(kinds, [SETTINGS, HEADERS, DATA, RST_STREAM, GOAWAY]);
        assert_eq!(whole[1].payload, b"hdrs");
        assert!(whole[2].payload.is_empty());
        assert_eq!(whole[2].header.len, 40);
        assert_eq!(whole[3].payload, [0, 0, 0, 8]);
        assert_eq!(whole[4].payload, [0, 0, 0, 5, 0, 0, 0, 0]);
        for cut in 0..=bytes.len() {
            assert_eq!(read_split(&bytes, cut), whole, "cut at {cut}");
        }
    }

    #[test]
    fn uncaptured_bytes_inside_data_are_skipped_elsewhere_lost() {
        let mut r = FrameReader::new(false, 1024);
        let mut out = Vec::new();
        let data = frame(DATA, 0, 1, &[0; 100]);
        r.feed(&data[..20], &mut out).unwrap();
        r.skip_uncaptured(89).unwrap();
        r.feed(&frame(HEADERS, FLAG_END_HEADERS, 1, b"t"), &mut out)
            .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(r.skip_uncaptured(1), Err(FrameError::Lost));
        // Cut inside a header block: its HPACK state is gone.
        let mut r = FrameReader::new(false, 1024);
        r.feed(&frame(HEADERS, 0, 1, b"abcdef")[..12], &mut out)
            .unwrap();
        assert_eq!(r.skip_uncaptured(3), Err(FrameError::Lost));
    }

    #[test]
    fn a_wrong_preface_or_a_huge_header_block_is_refused() {
        let mut out = Vec::new();
        assert_eq!(
            FrameReader::new(true, 1024).feed(b"GET / HTTP/1.1\r\n", &mut out),
            Err(FrameError::BadPreface)
        );
        let big = frame(HEADERS, FLAG_END_HEADERS, 1, &[0; 2000]);
        assert_eq!(
            FrameReader::new(false, 1024).feed(&big, &mut out),
            Err(FrameError::TooLarge)
        );
        // A large DATA frame is only skipped.
        let data = frame(DATA, 0, 1, &[0; 5000]);
        FrameReader::new(false, 1024).feed(&data, &mut out).unwrap();
    }
}
