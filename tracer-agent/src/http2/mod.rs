//! HTTP/2 (RFC 9113) per TCP connection: frames, HPACK header blocks and streams, turned
//! into the same [`Exchange`]s as HTTP/1 — one per stream.
//!
//! Pure, like [`crate::http`]: the connection layer feeds each direction's syscall chunks.
//! Each direction has its own frame reader and HPACK decoder (the dynamic table of the
//! peer that encodes it). Header blocks (HEADERS, CONTINUATION, PUSH_PROMISE) are decoded
//! in order, every one of them, or the table would drift; DATA payloads are only counted.
//!
//! * A stream's request is its first HEADERS from the client (pseudo-fields `:method`,
//!   `:path`, `:authority` become the method, target and `host`); its response the first
//!   final (non-1xx) HEADERS from the server; a later HEADERS is a trailer block, whose
//!   fields are appended to the response's (gRPC's `grpc-status` lives there).
//! * The exchange is emitted when the response ends (END_STREAM), the stream is reset
//!   (RST_STREAM: [`ExchangeError::StreamReset`]), the server's GOAWAY says it was never
//!   processed, or the connection closes.
//! * [`Exchange::seq`] is the stream id: both ends of the connection agree on it.
//!
//! # What cannot be decoded
//!
//! HPACK is stateful: a header block that was not seen leaves every later one
//! undecodable, and guessing would attach wrong names to wrong streams. So a connection
//! whose start was not observed, whose bytes were lost outside a DATA payload, or whose
//! header block fails to decode is *undecodable*: its streams in flight end with
//! [`ExchangeError::Gap`], and everything after is ignored ([`H2Connection::undecodable`]
//! says why; the pipeline counts it).

mod frame;
pub mod hpack;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::http::{
    Chunk, ConnStats, Exchange, ExchangeError, Headers, MessageTiming, RequestHead, ResponseHead,
    StartedRequest, Stream, is_trace_context_header,
};
use frame::{Frame, FrameError, FrameReader};

pub use frame::PREFACE;

/// `RequestHead::version` / `ResponseHead::version` of an HTTP/2 message.
pub const VERSION_2: u8 = 2;

/// Largest dynamic table a decoder accepts, whatever SETTINGS announced: bounds the memory
/// a hostile encoder can make the agent hold (the protocol's default is 4 KiB).
const MAX_TABLE_SIZE: usize = 64 * 1024;

/// Why a connection's headers can no longer be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Undecodable {
    /// Its start (preface, first header blocks) was not observed.
    StartMissed,
    /// Bytes were lost outside a DATA payload.
    Lost,
    /// A header block or frame sequence broke the protocol (or our limits).
    Malformed,
}

impl Undecodable {
    pub const ALL: [Undecodable; 3] = [
        Undecodable::StartMissed,
        Undecodable::Lost,
        Undecodable::Malformed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Undecodable::StartMissed => "start_missed",
            Undecodable::Lost => "lost",
            Undecodable::Malformed => "malformed",
        }
    }
}

/// Does this connection start like HTTP/2? `request`: the first bytes the client sent
/// (the preface); `response`: the server's (a SETTINGS frame header).
pub fn starts_like_http2(stream: Stream, bytes: &[u8]) -> bool {
    match stream {
        Stream::Request => bytes.len() >= 4 && bytes[..4] == PREFACE[..4],
        Stream::Response => bytes.len() >= 4 && bytes[0] == 0 && bytes[3] == frame::SETTINGS,
    }
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    /// PUSH_PROMISE: decoded for the table's sake, then dropped.
    discard: bool,
    fragment: Vec<u8>,
}

/// One direction: its frames and the HPACK table of the peer that writes it.
struct Direction {
    reader: FrameReader,
    hpack: hpack::Decoder,
    block: Option<PendingBlock>,
    /// No chunk yet.
    fresh: bool,
}

impl Direction {
    fn new(preface: bool, max_block: usize) -> Direction {
        let hpack = hpack::Decoder::new(MAX_TABLE_SIZE);
        Direction {
            reader: FrameReader::new(preface, max_block),
            hpack,
            block: None,
            fresh: true,
        }
    }
}

#[derive(Debug)]
struct H2Stream {
    request: RequestHead,
    request_timing: MessageTiming,
    request_body_bytes: u64,
    request_ended: bool,
    response: Option<ResponseHead>,
    response_timing: Option<MessageTiming>,
    response_body_bytes: u64,
}

/// Limits of the HTTP/2 layer, per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Config {
    /// Largest header block kept (HEADERS and its CONTINUATIONs); larger is malformed.
    pub max_header_bytes: usize,
    /// Most streams in flight; beyond, new streams are dropped (counted).
    pub max_streams: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_header_bytes: 64 * 1024,
            max_streams: 1024,
        }
    }
}

pub struct H2Connection {
    cfg: Http2Config,
    request: Direction,
    response: Direction,
    streams: BTreeMap<u32, H2Stream>,
    started: Vec<StartedRequest>,
    ready: Vec<Exchange>,
    undecodable: Option<Undecodable>,
    closed: bool,
    stats: ConnStats,
    frames: Vec<Frame>,
    /// The highest client stream id seen.
    last_stream: u32,
}

fn timing_of(chunk: &Chunk<'_>) -> MessageTiming {
    MessageTiming {
        first_enter_ns: chunk.ts_enter_ns,
        first_exit_ns: chunk.ts_exit_ns,
        last_enter_ns: chunk.ts_enter_ns,
        last_exit_ns: chunk.ts_exit_ns,
        first_seq: None,
    }
}

fn extend(timing: &mut MessageTiming, chunk: &Chunk<'_>) {
    timing.last_enter_ns = chunk.ts_enter_ns;
    timing.last_exit_ns = chunk.ts_exit_ns;
}

impl H2Connection {
    pub fn new(cfg: &Http2Config) -> H2Connection {
        H2Connection {
            request: Direction::new(true, cfg.max_header_bytes),
            response: Direction::new(false, cfg.max_header_bytes),
            cfg: cfg.clone(),
            streams: BTreeMap::new(),
            started: Vec::new(),
            ready: Vec::new(),
            undecodable: None,
            closed: false,
            stats: ConnStats::default(),
            frames: Vec::new(),
            last_stream: 0,
        }
    }

    pub fn on_request_bytes(&mut self, chunk: Chunk<'_>) {
        self.on_bytes(Stream::Request, chunk);
    }

    pub fn on_response_bytes(&mut self, chunk: Chunk<'_>) {
        self.on_bytes(Stream::Response, chunk);
    }

    /// Bytes of `stream` were lost before the next chunk (or its start was missed).
    pub fn on_gap(&mut self, stream: Stream) {
        if self.undecodable.is_some() || self.closed {
            return;
        }
        self.stats.gaps += 1;
        let fresh = self.direction(stream).fresh;
        self.give_up(if fresh {
            Undecodable::StartMissed
        } else {
            Undecodable::Lost
        });
    }

    /// The connection closed at `ts_ns`: streams in flight end with it.
    pub fn on_close(&mut self, ts_ns: u64) {
        if self.closed {
            return;
        }
        self.closed = true;
        for (id, s) in std::mem::take(&mut self.streams) {
            let error = if s.response.is_some() {
                ExchangeError::ResponseTruncated
            } else {
                ExchangeError::ClosedBeforeResponse
            };
            self.emit(id, s, Some(error), Some(ts_ns));
        }
    }

    /// Why this connection's headers cannot be decoded, once that is so.
    pub fn undecodable(&self) -> Option<Undecodable> {
        self.undecodable
    }

    pub fn drain_started_into(&mut self, out: &mut Vec<StartedRequest>) {
        out.append(&mut self.started);
    }

    pub fn drain_exchanges_into(&mut self, out: &mut Vec<Exchange>) {
        out.append(&mut self.ready);
    }

    /// The request of stream `seq` while it is in flight or its exchange not yet taken.
    pub fn request_head(&self, seq: u64) -> Option<&RequestHead> {
        let id = u32::try_from(seq).ok()?;
        self.streams
            .get(&id)
            .map(|s| &s.request)
            .or_else(|| self.ready.iter().find(|x| x.seq == seq).map(|x| &x.request))
    }

    pub fn stats(&self) -> ConnStats {
        ConnStats {
            pending: self.streams.len(),
            ..self.stats
        }
    }

    /// Bytes held for incomplete frames and header blocks.
    pub fn buffered_bytes(&self) -> usize {
        [&self.request, &self.response]
            .iter()
            .map(|d| {
                d.reader.buffered_bytes() + d.block.as_ref().map_or(0, |b| b.fragment.capacity())
            })
            .sum()
    }

    fn direction(&mut self, stream: Stream) -> &mut Direction {
        match stream {
            Stream::Request => &mut self.request,
            Stream::Response => &mut self.response,
        }
    }

    fn on_bytes(&mut self, stream: Stream, chunk: Chunk<'_>) {
        if self.undecodable.is_some() || self.closed {
            return;
        }
        let mut frames = std::mem::take(&mut self.frames);
        let dir = self.direction(stream);
        dir.fresh = false;
        let mut result = dir.reader.feed(chunk.bytes, &mut frames);
        let uncaptured = chunk.syscall_len.saturating_sub(chunk.bytes.len());
        for f in frames.drain(..) {
            if self.undecodable.is_some() {
                break;
            }
            self.on_frame(stream, f, &chunk);
        }
        self.frames = frames;
        if result.is_ok() && uncaptured > 0 {
            result = self.direction(stream).reader.skip_uncaptured(uncaptured);
            if result.is_ok() {
                self.stats.truncated_body_bytes += uncaptured as u64;
            }
        }
        match result {
            Ok(()) => {}
            Err(FrameError::Lost) => {
                tracing::debug!(
                    ?stream,
                    moved = chunk.syscall_len,
                    captured = chunk.bytes.len(),
                    "HTTP/2 frame boundaries lost in bytes not captured"
                );
                self.stats.gaps += 1;
                self.give_up(Undecodable::Lost);
            }
            Err(e @ (FrameError::BadPreface | FrameError::TooLarge)) => {
                tracing::debug!(%e, "HTTP/2 connection undecodable");
                self.stats.parse_errors += 1;
                self.give_up(Undecodable::Malformed);
            }
        }
    }

    fn on_frame(&mut self, stream: Stream, f: Frame, chunk: &Chunk<'_>) {
        let h = f.header;
        let max_header_bytes = self.cfg.max_header_bytes;
        let dir = self.direction(stream);
        if let Some(block) = dir.block.as_mut() {
            // Nothing may come between a header block's frames (RFC 9113 §6.10).
            if h.kind != frame::CONTINUATION || h.stream != block.stream {
                return self.malformed("a frame inside a header block");
            }
            if block.fragment.len() + f.payload.len() > max_header_bytes {
                return self.malformed("a header block over the limit");
            }
            block.fragment.extend_from_slice(&f.payload);
            if h.has(frame::FLAG_END_HEADERS) {
                let block = dir.block.take().expect("checked above");
                self.decode_block(stream, block, chunk);
            }
            return;
        }
        match h.kind {
            frame::HEADERS | frame::PUSH_PROMISE => {
                let mut p = &f.payload[..];
                if h.has(frame::FLAG_PADDED) {
                    let Some((&pad, rest)) = p.split_first() else {
                        return self.malformed("padding without its length");
                    };
                    let Some(end) = rest.len().checked_sub(pad as usize) else {
                        return self.malformed("padding longer than the frame");
                    };
                    p = &rest[..end];
                }
                let skip = match h.kind {
                    frame::PUSH_PROMISE => 4,
                    _ if h.has(frame::FLAG_PRIORITY) => 5,
                    _ => 0,
                };
                let Some(fragment) = p.get(skip..) else {
                    return self.malformed("a header frame shorter than its fields");
                };
                let block = PendingBlock {
                    stream: h.stream,
                    end_stream: h.kind == frame::HEADERS && h.has(frame::FLAG_END_STREAM),
                    discard: h.kind == frame::PUSH_PROMISE,
                    fragment: fragment.to_vec(),
                };
                if h.has(frame::FLAG_END_HEADERS) {
                    self.decode_block(stream, block, chunk);
                } else {
                    self.direction(stream).block = Some(block);
                }
            }
            frame::CONTINUATION => self.malformed("CONTINUATION without a header block"),
            frame::DATA => {
                let end = h.has(frame::FLAG_END_STREAM);
                let Some(s) = self.streams.get_mut(&h.stream) else {
                    return;
                };
                match stream {
                    Stream::Request => {
                        s.request_body_bytes += u64::from(h.len);
                        extend(&mut s.request_timing, chunk);
                        s.request_ended |= end;
                    }
                    Stream::Response => {
                        s.response_body_bytes += u64::from(h.len);
                        if let Some(t) = s.response_timing.as_mut() {
                            extend(t, chunk);
                        }
                        if end {
                            self.complete(h.stream, None);
                        }
                    }
                }
            }
            frame::RST_STREAM => {
                let code = f
                    .payload
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if let Some(s) = self.streams.get_mut(&h.stream) {
                    // The reset's own moment ends the span: it is when the stream stopped.
                    match (stream, s.response_timing.as_mut()) {
                        (Stream::Response, Some(t)) => extend(t, chunk),
                        (Stream::Response, None) => s.response_timing = Some(timing_of(chunk)),
                        (Stream::Request, _) => extend(&mut s.request_timing, chunk),
                    }
                    self.complete(h.stream, Some(ExchangeError::StreamReset { code }));
                }
            }
            frame::GOAWAY if stream == Stream::Response => {
                // Client streams above the last one the server processed never will be.
                let Some(b) = f.payload.get(..4) else {
                    return;
                };
                let last = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
                let unprocessed: Vec<u32> =
                    self.streams.range(last + 1..).map(|(&id, _)| id).collect();
                for id in unprocessed {
                    self.complete(id, Some(ExchangeError::ClosedBeforeResponse));
                }
            }
            _ => {}
        }
    }

    fn decode_block(&mut self, stream: Stream, block: PendingBlock, chunk: &Chunk<'_>) {
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut size = 0usize;
        let dir = self.direction(stream);
        let decoded = dir.hpack.decode(&block.fragment, |name, value| {
            // RFC 9113 §6.5.2's accounting: 32 octets of overhead per field.
            size += name.len() + value.len() + 32;
            fields.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
        });
        if let Err(e) = decoded {
            tracing::debug!(?e, "HPACK");
            return self.malformed("a header block that fails to decode");
        }
        if size > 4 * self.cfg.max_header_bytes {
            return self.malformed("a header list over the limit");
        }
        if block.discard || block.stream == 0 {
            return;
        }
        match stream {
            Stream::Request => {
                self.on_request_headers(block.stream, fields, block.end_stream, chunk)
            }
            Stream::Response => {
                self.on_response_headers(block.stream, fields, block.end_stream, chunk)
            }
        }
    }

    fn on_request_headers(
        &mut self,
        id: u32,
        fields: Vec<(String, String)>,
        end_stream: bool,
        chunk: &Chunk<'_>,
    ) {
        if let Some(s) = self.streams.get_mut(&id) {
            // Request trailers.
            extend(&mut s.request_timing, chunk);
            s.request_ended |= end_stream;
            return;
        }
        // Client streams are odd and only ever increase (RFC 9113 §5.1.1): a HEADERS on a
        // stream that ended, or a server-side id, starts nothing.
        if id.is_multiple_of(2) || id <= self.last_stream {
            self.stats.parse_errors += 1;
            return;
        }
        self.last_stream = id;
        if self.streams.len() >= self.cfg.max_streams {
            self.stats.dropped_unpaired += 1;
            return;
        }
        let (mut method, mut target, mut authority) = (String::new(), String::new(), None);
        let mut headers = Headers::new();
        let mut context_headers = Vec::new();
        for (name, value) in fields {
            match name.as_str() {
                ":method" => method = value,
                ":path" => target = value,
                ":authority" => authority = Some(value),
                n if n.starts_with(':') => {}
                n => {
                    if is_trace_context_header(n) {
                        context_headers.push((name.clone(), value.clone()));
                    }
                    headers.push(&name, &value);
                }
            }
        }
        if method.is_empty() {
            self.stats.parse_errors += 1;
            return;
        }
        if let Some(a) = authority
            && headers.get("host").is_none()
        {
            headers.push("host", &a);
        }
        self.stats.requests += 1;
        let timing = timing_of(chunk);
        self.started.push(StartedRequest {
            seq: u64::from(id),
            timing,
            context_headers,
        });
        self.streams.insert(
            id,
            H2Stream {
                request: RequestHead {
                    method,
                    target,
                    version: VERSION_2,
                    headers,
                },
                request_timing: timing,
                request_body_bytes: 0,
                request_ended: end_stream,
                response: None,
                response_timing: None,
                response_body_bytes: 0,
            },
        );
    }

    fn on_response_headers(
        &mut self,
        id: u32,
        fields: Vec<(String, String)>,
        end_stream: bool,
        chunk: &Chunk<'_>,
    ) {
        let Some(s) = self.streams.get_mut(&id) else {
            self.stats.unpaired_responses += 1;
            return;
        };
        match s.response.as_mut() {
            Some(head) => {
                // Trailers: gRPC's status is here.
                for (name, value) in &fields {
                    if !name.starts_with(':') {
                        head.headers.push(name, value);
                    }
                }
                if let Some(t) = s.response_timing.as_mut() {
                    extend(t, chunk);
                }
            }
            None => {
                let status = fields
                    .iter()
                    .find(|(n, _)| n == ":status")
                    .and_then(|(_, v)| v.parse::<u16>().ok());
                let Some(status) = status else {
                    self.stats.parse_errors += 1;
                    return self.complete(id, Some(ExchangeError::ParseError));
                };
                if (100..200).contains(&status) {
                    self.stats.interim_responses += 1;
                    return;
                }
                let mut headers = Headers::new();
                for (name, value) in &fields {
                    if !name.starts_with(':') {
                        headers.push(name, value);
                    }
                }
                self.stats.responses += 1;
                s.response = Some(ResponseHead {
                    status,
                    version: VERSION_2,
                    reason: String::new(),
                    headers,
                });
                s.response_timing = Some(timing_of(chunk));
            }
        }
        if end_stream {
            self.complete(id, None);
        }
    }

    /// Ends stream `id` (its response complete, or `error`).
    fn complete(&mut self, id: u32, error: Option<ExchangeError>) {
        if let Some(s) = self.streams.remove(&id) {
            self.emit(id, s, error, None);
        }
    }

    fn emit(&mut self, id: u32, s: H2Stream, error: Option<ExchangeError>, closed_at: Option<u64>) {
        let failed = error.is_some();
        self.stats.exchanges += 1;
        self.ready.push(Exchange {
            seq: u64::from(id),
            request: s.request,
            request_body_bytes: s.request_body_bytes,
            request_timing: s.request_timing,
            response: s.response,
            response_body_bytes: s.response_body_bytes,
            response_timing: s.response_timing,
            error,
            request_incomplete: !s.request_ended && failed,
            response_incomplete: failed,
            closed_at_ns: closed_at,
        });
    }

    fn malformed(&mut self, what: &'static str) {
        tracing::debug!(what, "HTTP/2 connection undecodable");
        self.stats.parse_errors += 1;
        self.give_up(Undecodable::Malformed);
    }

    /// Headers can no longer be decoded: streams in flight end with a gap, and every later
    /// byte is ignored.
    fn give_up(&mut self, why: Undecodable) {
        if self.undecodable.is_some() {
            return;
        }
        self.undecodable = Some(why);
        for (id, s) in std::mem::take(&mut self.streams) {
            self.emit(id, s, Some(ExchangeError::Gap), None);
        }
        self.request.block = None;
        self.response.block = None;
    }
}
