//! One direction of a connection: splits the byte stream into messages.
//!
//! A pull parser: the connection hands it a chunk and calls [`StreamParser::next`] until it
//! returns `None`. After a [`Event::Head`] the connection must say how the body is framed
//! ([`StreamParser::begin_body`]) because a response's framing depends on its request.
//!
//! Only head bytes are ever copied (at most `max_header_bytes`); body bytes are counted.

use std::collections::VecDeque;

use super::chunked::ChunkedDecoder;
use super::message::{Framing, Head, Parsed, Sniff, find_head_end, parse_head, sniff};
use super::{Chunk, MessageTiming, Stream};

/// Most chunk boundaries remembered inside a head buffer or while paused: bounds the
/// bookkeeping when a peer writes a head a byte at a time.
const MAX_SEGMENTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ts {
    pub enter: u64,
    pub exit: u64,
    /// TCP sequence number of the first byte of the bytes these times go with.
    pub seq: Option<u32>,
}

impl Ts {
    /// The same times for the bytes from `pos` on.
    fn at(self, pos: usize) -> Ts {
        Ts {
            seq: self.seq.map(|s| s.wrapping_add(pos as u32)),
            ..self
        }
    }
}

/// A cursor over one syscall's bytes plus the uncaptured tail of that syscall.
#[derive(Debug)]
pub(crate) struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Bytes the syscall moved after `bytes` that were not captured.
    missing: usize,
    ts: Ts,
    /// `pos == 0` is the start of a syscall (a likely message boundary).
    chunk_start: bool,
}

impl<'a> Input<'a> {
    pub(crate) fn new(c: &Chunk<'a>) -> Self {
        Self {
            bytes: c.bytes,
            pos: 0,
            missing: c.syscall_len.saturating_sub(c.bytes.len()),
            ts: Ts {
                enter: c.ts_enter_ns,
                exit: c.ts_exit_ns,
                seq: c.tcp_seq,
            },
            chunk_start: true,
        }
    }

    pub(crate) fn empty() -> Input<'static> {
        Input {
            bytes: &[],
            pos: 0,
            missing: 0,
            ts: Ts {
                enter: 0,
                exit: 0,
                seq: None,
            },
            chunk_start: false,
        }
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    fn exhausted(&self) -> bool {
        self.pos == self.bytes.len() && self.missing == 0
    }
}

/// Bytes held back (rescanned after a false start, or replayed after a paused request).
#[derive(Debug)]
struct Segment {
    bytes: Vec<u8>,
    pos: usize,
    missing: usize,
    ts: Ts,
    chunk_start: bool,
}

/// Why bytes of a stream are unaccounted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LostCause {
    /// The caller reported lost events.
    Gap,
    /// A syscall's uncaptured tail fell inside a head or chunked framing.
    Truncated,
    /// Bytes that do not parse as HTTP/1 where a message had to be.
    Invalid,
    /// A head longer than `max_header_bytes`.
    Oversized,
}

/// Progress of a message whose body was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    pub body_bytes: u64,
    pub timing: MessageTiming,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A head, with the timing of the chunks that carried it so far.
    Head(Head, MessageTiming),
    End {
        body_bytes: u64,
        timing: MessageTiming,
    },
    /// The stream lost sync; it resynchronises at the next plausible message start. `cut`
    /// is the message whose head was reported and whose body was interrupted.
    Lost { cause: LostCause, cut: Option<Cut> },
}

/// How the stream ended at close.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CloseOutcome {
    /// Nothing in progress (or only bytes that never formed a head).
    Idle,
    /// A close-delimited body ended.
    End {
        body_bytes: u64,
        timing: MessageTiming,
    },
    /// Closed inside a body that had a length.
    MidBody(Cut),
}

#[derive(Debug)]
enum Body {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

#[derive(Debug)]
enum State {
    /// Accumulating a head in `buf`. `tentative`: started by resync, so failure is silent.
    Head {
        tentative: bool,
        sniffed: bool,
    },
    /// A head was reported; waiting for `begin_body`.
    NeedFraming,
    Body(Body),
    /// Scanning for a plausible start line.
    Resync,
    /// After a request that may switch protocols, until its response decides.
    Paused,
    Tunnel,
    /// Not HTTP/1: everything is ignored.
    Dead,
    Closed,
}

#[derive(Debug)]
struct Progress {
    timing: MessageTiming,
    body_bytes: u64,
}

#[derive(Debug)]
pub(crate) struct StreamParser {
    kind: Stream,
    max_head: usize,
    state: State,
    /// Partial head; `marks` remember which chunk each part came from.
    buf: Vec<u8>,
    marks: Vec<(usize, Ts, bool)>,
    msg: Option<Progress>,
    replay: VecDeque<Segment>,
    rescan: Vec<Segment>,
    queued: Option<Event>,
    /// Resync: the next byte starts a line (or a syscall).
    line_start: bool,
    /// No message has been parsed, failed or lost yet: a failure now means "not HTTP".
    first: bool,
    pause_after: bool,
    /// Bytes that arrived while paused, and whether some were dropped.
    held: Vec<Segment>,
    held_bytes: usize,
    held_lost: bool,
    truncated_body_bytes: u64,
}

impl StreamParser {
    pub(crate) fn new(kind: Stream, max_head: usize) -> Self {
        Self {
            kind,
            max_head: max_head.max(1),
            state: State::Head {
                tentative: false,
                sniffed: false,
            },
            buf: Vec::new(),
            marks: Vec::new(),
            msg: None,
            replay: VecDeque::new(),
            rescan: Vec::new(),
            queued: None,
            line_start: false,
            first: true,
            pause_after: false,
            held: Vec::new(),
            held_bytes: 0,
            held_lost: false,
            truncated_body_bytes: 0,
        }
    }

    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.state, State::Dead)
    }

    /// Uncaptured bytes that were accounted as body bytes.
    pub(crate) fn truncated_body_bytes(&self) -> u64 {
        self.truncated_body_bytes
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        let segs = |s: &Segment| s.bytes.len() - s.pos;
        self.buf.len() + self.held_bytes + self.replay.iter().map(segs).sum::<usize>()
    }

    /// Next event from held-back bytes, then from `inp`. `None` once both are used up.
    pub(crate) fn next(&mut self, inp: &mut Input<'_>) -> Option<Event> {
        loop {
            // Checked first: `take` copies the whole (large, usually empty) slot.
            if self.queued.is_some() {
                return self.queued.take();
            }
            let ev = if let Some(mut seg) = self.replay.pop_front() {
                let mut src = Input {
                    bytes: &seg.bytes,
                    pos: seg.pos,
                    missing: seg.missing,
                    ts: seg.ts,
                    chunk_start: seg.chunk_start,
                };
                let ev = self.step(&mut src);
                (seg.pos, seg.missing) = (src.pos, src.missing);
                if !(seg.pos == seg.bytes.len() && seg.missing == 0) {
                    self.replay.push_front(seg);
                }
                ev
            } else if inp.exhausted() {
                return None;
            } else {
                self.step(inp)
            };
            // Bytes to rescan precede whatever is left of the current source.
            for s in self.rescan.drain(..).rev() {
                self.replay.push_front(s);
            }
            if ev.is_some() {
                return ev;
            }
        }
    }

    /// Sets the body framing of the message whose head was just reported. `pause_after`:
    /// stop parsing after this message until [`Self::resume`] (protocol switch pending).
    pub(crate) fn begin_body(&mut self, framing: Framing, pause_after: bool) {
        self.pause_after = pause_after;
        self.state = match framing {
            Framing::Empty | Framing::Length(0) => {
                self.queued = self.end_message();
                return;
            }
            Framing::Length(n) => State::Body(Body::Length(n)),
            Framing::Chunked => State::Body(Body::Chunked(ChunkedDecoder::new())),
            Framing::UntilClose => State::Body(Body::UntilClose),
            Framing::Tunnel => {
                self.enter_tunnel();
                return;
            }
        };
    }

    /// The head just reported cannot be framed: skip to the next message start.
    pub(crate) fn reject_head(&mut self) {
        self.reset_to_resync();
    }

    /// The connection switched protocols: ignore everything from now on.
    pub(crate) fn enter_tunnel(&mut self) {
        self.clear();
        self.state = State::Tunnel;
    }

    /// The pending protocol switch did not happen: parse what arrived meanwhile.
    pub(crate) fn resume(&mut self) {
        self.pause_after = false;
        if !matches!(self.state, State::Paused) {
            return;
        }
        self.state = State::Head {
            tentative: false,
            sniffed: false,
        };
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        if std::mem::take(&mut self.held_lost) {
            self.queued = self.lose(LostCause::Gap);
        } else {
            self.replay.extend(held);
        }
    }

    /// Bytes of this stream were lost before the next chunk.
    pub(crate) fn gap(&mut self) -> Option<Event> {
        match self.state {
            State::Tunnel | State::Dead | State::Closed => None,
            State::Paused => {
                self.held_lost = true;
                None
            }
            _ => self.lose(LostCause::Gap),
        }
    }

    pub(crate) fn close(&mut self) -> CloseOutcome {
        let out = match &self.state {
            State::Body(Body::UntilClose) => match self.end_message() {
                Some(Event::End { body_bytes, timing }) => CloseOutcome::End { body_bytes, timing },
                _ => CloseOutcome::Idle,
            },
            State::Body(_) => self.cut().map_or(CloseOutcome::Idle, CloseOutcome::MidBody),
            _ => CloseOutcome::Idle,
        };
        self.clear();
        self.state = State::Closed;
        out
    }

    fn clear(&mut self) {
        self.queued = None;
        self.buf.clear();
        self.marks.clear();
        self.msg = None;
        self.replay.clear();
        self.rescan.clear();
        self.held.clear();
        self.held_bytes = 0;
        self.pause_after = false;
    }

    fn step(&mut self, inp: &mut Input<'_>) -> Option<Event> {
        match self.state {
            State::Head { tentative, sniffed } => self.step_head(inp, tentative, sniffed),
            State::Body(_) => self.step_body(inp),
            State::Resync => self.step_resync(inp),
            State::NeedFraming => {
                debug_assert!(false, "begin_body not called after a head");
                self.begin_body(Framing::Empty, false);
                None
            }
            State::Paused => {
                let n = inp.bytes.len() - inp.pos;
                if self.held_lost
                    || self.held_bytes + n > self.max_head
                    || self.held.len() >= MAX_SEGMENTS
                {
                    self.held_lost = true;
                } else if n > 0 || inp.missing > 0 {
                    self.held_bytes += n;
                    self.held.push(Segment {
                        bytes: inp.rest().to_vec(),
                        pos: 0,
                        missing: inp.missing,
                        ts: inp.ts.at(inp.pos),
                        chunk_start: inp.chunk_start && inp.pos == 0,
                    });
                }
                inp.pos = inp.bytes.len();
                inp.missing = 0;
                None
            }
            State::Tunnel | State::Dead | State::Closed => {
                inp.pos = inp.bytes.len();
                inp.missing = 0;
                None
            }
        }
    }

    fn touch(&mut self, ts: Ts) {
        match &mut self.msg {
            Some(p) => {
                p.timing.last_enter_ns = ts.enter;
                p.timing.last_exit_ns = ts.exit;
            }
            None => {
                self.msg = Some(Progress {
                    timing: MessageTiming {
                        first_enter_ns: ts.enter,
                        first_exit_ns: ts.exit,
                        last_enter_ns: ts.enter,
                        last_exit_ns: ts.exit,
                        first_seq: ts.seq,
                    },
                    body_bytes: 0,
                })
            }
        }
    }

    fn step_head(&mut self, inp: &mut Input<'_>, tentative: bool, sniffed: bool) -> Option<Event> {
        if self.buf.is_empty() && !tentative {
            // Empty lines between messages are allowed (RFC 9112 §2.2) and belong to none.
            while inp.pos < inp.bytes.len() && matches!(inp.bytes[inp.pos], b'\r' | b'\n') {
                inp.pos += 1;
            }
        }
        if inp.pos == inp.bytes.len() {
            if inp.missing == 0 {
                return None;
            }
            inp.missing = 0;
            // Uncaptured bytes where a head (or the next one) should be.
            return self.lose(LostCause::Truncated);
        }
        let rest = inp.rest();
        let prev = match self.buf.as_slice() {
            [.., a, b] => [*a, *b],
            [b] => [0, *b],
            [] => [0, 0],
        };
        let end = find_head_end(prev, rest);
        let take = end.unwrap_or(rest.len());
        if self.buf.len() + take > self.max_head {
            // Garbage with a blank line far away is still garbage, not a big head.
            let start = if self.buf.is_empty() {
                &rest[..self.max_head]
            } else {
                &self.buf
            };
            let cause = if !sniffed && sniff(self.kind, start) == Sniff::No {
                LostCause::Invalid
            } else {
                LostCause::Oversized
            };
            return self.fail(inp, cause, tentative);
        }
        self.touch(inp.ts.at(inp.pos));
        let buffered = !self.buf.is_empty();
        if buffered {
            self.append(inp, take);
        }
        let view: &[u8] = if buffered { &self.buf } else { &rest[..take] };
        let mut verdict = if sniffed {
            Sniff::Yes
        } else {
            sniff(self.kind, view)
        };
        let mut parsed = None;
        if verdict == Sniff::Yes && end.is_some() {
            match parse_head(self.kind, view) {
                Parsed::Complete(h) => parsed = Some(h),
                Parsed::Invalid => verdict = Sniff::No,
                // Cannot happen for a view ending in a blank line; keep reading if it does.
                Parsed::Partial => {}
            }
        }
        if verdict == Sniff::No {
            return self.fail(inp, LostCause::Invalid, tentative);
        }
        if let Some(head) = parsed {
            if !buffered {
                inp.pos += take;
            }
            self.buf.clear();
            self.marks.clear();
            self.first = false;
            self.state = State::NeedFraming;
            let timing = self.msg.as_ref().map(|p| p.timing).unwrap_or_default();
            return Some(Event::Head(head, timing));
        }
        if !buffered {
            self.append(inp, take);
        }
        self.state = State::Head {
            tentative,
            sniffed: verdict == Sniff::Yes,
        };
        None
    }

    fn append(&mut self, inp: &mut Input<'_>, n: usize) {
        // Past the cap, bytes join the last segment: only rescans lose timestamp precision.
        if self.marks.len() < MAX_SEGMENTS {
            self.marks.push((
                self.buf.len(),
                inp.ts.at(inp.pos),
                inp.chunk_start && inp.pos == 0,
            ));
        }
        self.buf.extend_from_slice(&inp.bytes[inp.pos..inp.pos + n]);
        inp.pos += n;
    }

    /// The message starting at the head buffer (or at `inp.pos` when nothing is buffered)
    /// is not HTTP. Rescan from its second byte: a real start may hide inside.
    fn fail(&mut self, inp: &mut Input<'_>, cause: LostCause, tentative: bool) -> Option<Event> {
        if self.buf.is_empty() {
            inp.pos += 1;
        } else {
            let buf = std::mem::take(&mut self.buf);
            let marks = std::mem::take(&mut self.marks);
            for (i, &(mark, ts, chunk_start)) in marks.iter().enumerate() {
                let end = marks.get(i + 1).map_or(buf.len(), |m| m.0);
                let start = mark.max(1);
                if start < end {
                    self.rescan.push(Segment {
                        bytes: buf[start..end].to_vec(),
                        pos: 0,
                        missing: 0,
                        ts: ts.at(start - mark),
                        chunk_start: chunk_start && i > 0,
                    });
                }
            }
        }
        self.reset_to_resync();
        if tentative {
            return None;
        }
        if self.first && cause == LostCause::Invalid {
            // The very first bytes of the stream are not HTTP/1: give up on it.
            self.clear();
            self.state = State::Dead;
        }
        self.first = false;
        Some(Event::Lost { cause, cut: None })
    }

    fn reset_to_resync(&mut self) {
        self.buf.clear();
        self.marks.clear();
        self.msg = None;
        self.pause_after = false;
        self.line_start = false;
        self.state = State::Resync;
    }

    fn cut(&mut self) -> Option<Cut> {
        self.msg.take().map(|p| Cut {
            body_bytes: p.body_bytes,
            timing: p.timing,
        })
    }

    /// Sync is lost (gap, truncation, bad framing): report it and resynchronise.
    fn lose(&mut self, cause: LostCause) -> Option<Event> {
        let cut = if matches!(self.state, State::Body(_)) {
            self.cut()
        } else {
            None
        };
        self.reset_to_resync();
        self.first = false;
        Some(Event::Lost { cause, cut })
    }

    fn end_message(&mut self) -> Option<Event> {
        let p = self.msg.take();
        self.state = if std::mem::take(&mut self.pause_after) {
            State::Paused
        } else {
            State::Head {
                tentative: false,
                sniffed: false,
            }
        };
        p.map(|p| Event::End {
            body_bytes: p.body_bytes,
            timing: p.timing,
        })
    }

    fn count_body(&mut self, n: u64, ts: Ts) {
        if n > 0 {
            self.touch(ts);
            if let Some(p) = &mut self.msg {
                p.body_bytes += n;
            }
        }
    }

    fn step_body(&mut self, inp: &mut Input<'_>) -> Option<Event> {
        let State::Body(body) = &mut self.state else {
            unreachable!()
        };
        let avail = (inp.bytes.len() - inp.pos) as u64;
        let ts = inp.ts;
        match body {
            Body::Length(left) => {
                let n = (*left).min(avail);
                *left -= n;
                inp.pos += n as usize;
                // Uncaptured bytes inside a body of known length are only counted.
                let m = if inp.pos == inp.bytes.len() {
                    (*left).min(inp.missing as u64)
                } else {
                    0
                };
                *left -= m;
                inp.missing -= m as usize;
                let done = *left == 0;
                self.truncated_body_bytes += m;
                self.count_body(n + m, ts);
                if done {
                    return self.end_message();
                }
                None
            }
            Body::Chunked(dec) => {
                if avail > 0 {
                    match dec.feed(inp.rest()) {
                        Ok(p) => {
                            inp.pos += p.consumed;
                            if p.consumed > 0 {
                                self.touch(ts);
                            }
                            self.count_body(p.data, ts);
                            if p.done {
                                return self.end_message();
                            }
                        }
                        Err(_) => return self.lose(LostCause::Invalid),
                    }
                    return None;
                }
                let m = std::mem::take(&mut inp.missing);
                if let Some(data) = dec.skip_uncaptured(m as u64) {
                    self.truncated_body_bytes += data;
                    self.count_body(data, ts);
                    None
                } else {
                    self.lose(LostCause::Truncated)
                }
            }
            Body::UntilClose => {
                let m = std::mem::take(&mut inp.missing) as u64;
                inp.pos = inp.bytes.len();
                self.truncated_body_bytes += m;
                self.count_body(avail + m, ts);
                None
            }
        }
    }

    fn step_resync(&mut self, inp: &mut Input<'_>) -> Option<Event> {
        if inp.pos == 0 && inp.chunk_start {
            self.line_start = true;
        }
        let bytes = inp.bytes;
        let mut i = inp.pos;
        while i < bytes.len() {
            if self.line_start && sniff(self.kind, &bytes[i..]) != Sniff::No {
                inp.pos = i;
                self.state = State::Head {
                    tentative: true,
                    sniffed: false,
                };
                return None;
            }
            match bytes[i..].iter().position(|&b| b == b'\n') {
                Some(k) => {
                    i += k + 1;
                    self.line_start = true;
                }
                None => {
                    i = bytes.len();
                    self.line_start = false;
                }
            }
        }
        inp.pos = bytes.len();
        if std::mem::take(&mut inp.missing) > 0 {
            // The lost bytes may hold whole messages: tell the connection again.
            self.line_start = false;
            return Some(Event::Lost {
                cause: LostCause::Truncated,
                cut: None,
            });
        }
        None
    }
}
