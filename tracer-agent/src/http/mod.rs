//! HTTP/1.x parsing and request/response pairing, per TCP connection.
//!
//! Pure: the connection layer feeds each direction's syscall chunks (bytes, real syscall
//! length, entry/exit timestamps) to an [`HttpConnection`], which returns [`Exchange`]s. No
//! I/O, no clocks. Heads are parsed with `httparse`; bodies are framed per RFC 9112 §6
//! (Content-Length, chunked, close-delimited; none for HEAD/1xx/204/304) and only counted,
//! never copied. At most `max_header_bytes` are buffered per stream.
//!
//! # Pairing
//!
//! FIFO: the n-th final response answers the n-th request (pipelining included). 1xx
//! interim responses (`100 Continue`, `103 Early Hints`) are skipped. After `101 Switching
//! Protocols` or a 2xx to `CONNECT` the exchange completes and the rest of the connection
//! is ignored; bytes a client sends after such a request are held (bounded) until the
//! response says whether the switch happened. At most `max_pending` requests wait for a
//! response; on overflow the oldest is dropped (counted) and its response, when it comes,
//! is discarded so the order stays right.
//!
//! # Lost bytes and resynchronisation
//!
//! A stream loses sync on a reported gap ([`HttpConnection::on_gap`]), when a syscall's
//! uncaptured tail falls inside a head or chunked framing (inside a body of known length it
//! is only counted), on a parse error and on a head over `max_header_bytes`. It then scans
//! for a plausible start line — `METHOD SP target SP HTTP/1.d CRLF` or `HTTP/1.d SP ddd`
//! — at a syscall start or a line start, and parses from there; false starts are skipped
//! silently. The rule for pairing across a loss, which never knowingly pairs a response
//! with the wrong request:
//!
//! * **Request stream**: requests parsed before the loss keep their place — responses are
//!   FIFO, so the next responses are theirs. A request whose body was cut is kept, marked
//!   `incomplete`. A request that failed to parse keeps a hidden place in the queue (the
//!   server answers it, usually with 400) and its response is discarded. A lost request
//!   is not known, so its response finds no waiting request and is discarded too (both
//!   counted in `unpaired_responses`). This is exact for clients that send one request
//!   at a time. If the client pipelines — seen before on this connection, or a request
//!   arrives after the loss while a pre-loss request is still unanswered — the number of
//!   responses owed to lost requests is unknown: the connection is *desynchronised* until
//!   it closes. Pre-loss requests still get their responses; later requests are emitted
//!   with [`ExchangeError::Gap`] and no response; later responses are discarded. Known
//!   limit: a client whose first pipelined request is the lost one, and which sends the
//!   next only after the earlier response arrived, goes undetected.
//!
//!   A request that arrives while an earlier one is unanswered is taken as pipelining only
//!   if the socket had moved no response byte this connection has not seen
//!   ([`Chunk::opposite_seq`], the kernel's other TCP counter at that syscall): otherwise
//!   the earlier response was moved and lost in the capture, the response stream reports
//!   that gap, and the connection stays in sync. Without the counters a lost response
//!   followed by the next request desynchronises the connection, as pipelining does.
//! * **Response stream**: the response being received is emitted with its head and
//!   [`ExchangeError::Gap`] (`incomplete`). Every other request still waiting is emitted
//!   with [`ExchangeError::Gap`] — its response may have been in the lost bytes. Responses
//!   that arrive for them later find no waiting request and are discarded. A response head
//!   that fails to parse gives the oldest waiting request [`ExchangeError::ParseError`]
//!   instead. If the client pipelines, the connection is desynchronised as above.
//!
//! For a connection whose start was not observed, call `on_gap` on both streams first.
//!
//! # Not HTTP
//!
//! If a stream's first message (no loss before it) does not even start like HTTP/1, or
//! `httparse` rejects it, [`HttpConnection::is_not_http`] turns true and every later byte
//! is ignored. Elsewhere garbage costs a parse error and a bounded scan.

mod chunked;
mod connection;
mod message;
mod stream;
#[cfg(test)]
mod tests;

pub use connection::HttpConnection;
pub use message::{Headers, RequestHead, ResponseHead};

/// Limits of the HTTP layer, per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Longest head (start line and fields) we buffer; longer ones are parse errors.
    pub max_header_bytes: usize,
    /// Most requests waiting for a response.
    pub max_pending: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_pending: 64,
        }
    }
}

/// The bytes one read/write syscall moved on a connection.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// Captured bytes: a prefix of what the syscall moved.
    pub bytes: &'a [u8],
    /// Bytes the syscall really moved; more than `bytes.len()` when the copy was truncated.
    pub syscall_len: usize,
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    /// TCP sequence number of the first byte, when the kernel reported it.
    pub tcp_seq: Option<u32>,
    /// The other stream's counter when the syscall returned: the end of every byte the
    /// socket had moved the other way, seen or not.
    pub opposite_seq: Option<u32>,
}

#[cfg(test)]
impl<'a> Chunk<'a> {
    /// A syscall that moved `bytes`, all captured, entered at `ts_ns` and returned 1 ns
    /// later, without TCP counters: what most tests feed.
    pub(crate) fn whole(bytes: &'a [u8], ts_ns: u64) -> Chunk<'a> {
        Chunk {
            bytes,
            syscall_len: bytes.len(),
            ts_enter_ns: ts_ns,
            ts_exit_ns: ts_ns + 1,
            tcp_seq: None,
            opposite_seq: None,
        }
    }
}

/// Direction of a connection, by HTTP role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Request,
    Response,
}

impl Stream {
    pub fn other(self) -> Stream {
        match self {
            Stream::Request => Stream::Response,
            Stream::Response => Stream::Request,
        }
    }
}

/// Monotonic timestamps (ns) of the first and last syscall that carried bytes of a message
/// (head or body).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageTiming {
    pub first_enter_ns: u64,
    pub first_exit_ns: u64,
    pub last_enter_ns: u64,
    pub last_exit_ns: u64,
    /// TCP sequence number of the message's first byte, when the chunks carried one.
    pub first_seq: Option<u32>,
}

/// A request whose head was just parsed, announced before its exchange completes so spans
/// can be linked top-down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartedRequest {
    /// Position of the request on its connection; [`Exchange::seq`] repeats it.
    pub seq: u64,
    pub timing: MessageTiming,
    /// The head's trace-context fields (`traceparent`, `tracestate`, `b3`, `x-b3-*`).
    pub context_headers: Vec<(String, String)>,
}

/// Names of the fields kept in [`StartedRequest::context_headers`].
pub fn is_trace_context_header(name: &str) -> bool {
    matches!(name, "traceparent" | "tracestate" | "b3") || name.starts_with("x-b3-")
}

/// A request and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Position of the request on its connection (0-based, counting every request head).
    pub seq: u64,
    pub request: RequestHead,
    /// Content bytes (for chunked: chunk data, without framing).
    pub request_body_bytes: u64,
    pub request_timing: MessageTiming,
    /// The final response (1xx interim responses are not kept).
    pub response: Option<ResponseHead>,
    pub response_body_bytes: u64,
    pub response_timing: Option<MessageTiming>,
    pub error: Option<ExchangeError>,
    /// Some bytes of the request were not seen (lost, uncaptured chunked framing, or the
    /// connection closed mid-body): `request_body_bytes` is only a lower bound.
    pub request_incomplete: bool,
    /// Likewise for the response and `response_body_bytes`; always comes with an `error`.
    pub response_incomplete: bool,
    /// Set when the connection close ended this exchange (close-delimited response,
    /// [`ExchangeError::ClosedBeforeResponse`], [`ExchangeError::ResponseTruncated`]).
    pub closed_at_ns: Option<u64>,
}

/// Why an exchange is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ExchangeError {
    #[error("connection closed before the response")]
    ClosedBeforeResponse,
    #[error("connection closed in the middle of the response body")]
    ResponseTruncated,
    #[error("captured data was lost; the response is unknown or incomplete")]
    Gap,
    #[error("the response could not be parsed")]
    ParseError,
    #[error("the connection switched protocols before this request was answered")]
    Upgraded,
    /// HTTP/2: RST_STREAM with this error code (RFC 9113 §7), from either end.
    #[error("the stream was reset: {}", h2_error_name(*code))]
    StreamReset { code: u32 },
}

/// The name of an HTTP/2 error code (RFC 9113 §7).
pub fn h2_error_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "unknown",
    }
}

impl ExchangeError {
    /// Low-cardinality value for the `error.type` span attribute.
    pub fn error_type(&self) -> &'static str {
        match self {
            ExchangeError::ClosedBeforeResponse => "closed_before_response",
            ExchangeError::ResponseTruncated => "response_truncated",
            ExchangeError::Gap => "capture_gap",
            ExchangeError::ParseError => "parse_error",
            ExchangeError::Upgraded => "upgraded",
            ExchangeError::StreamReset { .. } => "stream_reset",
        }
    }
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Request heads parsed.
    pub requests: u64,
    /// Final response heads parsed.
    pub responses: u64,
    /// Exchanges completed (emitted).
    pub exchanges: u64,
    /// Malformed or oversized heads, bad framing.
    pub parse_errors: u64,
    /// Losses of sync from lost or uncaptured bytes.
    pub gaps: u64,
    /// Uncaptured bytes that were only counted as body bytes (no loss of sync).
    pub truncated_body_bytes: u64,
    pub interim_responses: u64,
    /// Responses discarded: no request could safely own them, or theirs was dropped or
    /// failed to parse.
    pub unpaired_responses: u64,
    /// Requests dropped because `max_pending` were already waiting.
    pub dropped_unpaired: u64,
    /// 1 once pairing was given up after a loss (a pipelining client), else 0.
    pub desynchronised: u64,
    /// Requests currently waiting (gauge).
    pub pending: usize,
}
