//! Message heads (parsed with `httparse`), the cheap start-line sniff used to reject garbage
//! and to resynchronise, and body framing (RFC 9112 §6.3).

use std::mem::MaybeUninit;

use super::Stream;

/// A request line and its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The raw request-target (origin-form path and query, absolute-form URL, authority for
    /// CONNECT, or `*`).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1, 2 for HTTP/2 ([`crate::http2::VERSION_2`]).
    pub version: u8,
    /// Header fields in wire order; names lower-cased, values as sent (lossy UTF-8).
    pub headers: Headers,
}

impl RequestHead {
    /// The first value of a header; `name` must be lower case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// A status line and its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1, 2 for HTTP/2 ([`crate::http2::VERSION_2`]).
    pub version: u8,
    pub reason: String,
    /// Header fields in wire order; names lower-cased, values as sent (lossy UTF-8).
    pub headers: Headers,
}

impl ResponseHead {
    /// The first value of a header; `name` must be lower case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// The header fields of one head, in wire order. All names and values share one string,
/// so a head costs two allocations instead of two per field (most of the parsing cost
/// under load was the allocator).
#[derive(Clone, Default)]
pub struct Headers {
    /// The head's header block as received with names lower-cased in place, or (built by
    /// [`Headers::push`], or from a head that is not UTF-8) the fields one after another.
    text: String,
    /// Byte ranges of each field's name and value in `text`.
    fields: Vec<Field>,
}

#[derive(Clone, Copy, Debug)]
struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a field as given (callers keep names lower case).
    pub fn push(&mut self, name: &str, value: &str) {
        let name_start = self.text.len();
        self.text.push_str(name);
        let value_start = self.text.len();
        self.text.push_str(value);
        self.fields.push(Field {
            name: (name_start, value_start),
            value: (value_start, self.text.len()),
        });
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// `(name, value)` pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        // Ranges are checked when a field is added; `get` only keeps this panic-free.
        let at = |(from, to): (usize, usize)| self.text.get(from..to).unwrap_or_default();
        self.fields.iter().map(move |f| (at(f.name), at(f.value)))
    }

    /// The first value of a header; `name` must be lower case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// Every value of a header, in wire order; `name` must be lower case. Compares bytes
    /// and slices only the values that match: framing looks up several names per head.
    pub fn get_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        let text = self.text.as_bytes();
        self.fields
            .iter()
            .filter(move |f| text.get(f.name.0..f.name.1) == Some(name.as_bytes()))
            .map(|f| self.text.get(f.value.0..f.value.1).unwrap_or_default())
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.push(n.as_ref(), v.as_ref());
        }
        headers
    }
}

impl From<Vec<(String, String)>> for Headers {
    fn from(fields: Vec<(String, String)>) -> Self {
        fields.into_iter().collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    Complete(Head),
    Partial,
    Invalid,
}

/// Header slots on the stack: enough for nearly every real head, so parsing one does not
/// allocate for them.
const STACK_HEADER_SLOTS: usize = 48;

/// Parses a complete head (start line through the blank line).
pub(crate) fn parse_head(stream: Stream, bytes: &[u8]) -> Parsed {
    // Uninitialised: httparse writes the slots it uses, so none is zeroed in vain.
    let mut slots = [MaybeUninit::uninit(); STACK_HEADER_SLOTS];
    match parse_head_with(stream, bytes, &mut slots) {
        Err(httparse::Error::TooManyHeaders) => {
            // One slot per line is always enough, so httparse cannot fail this way again.
            let lines = memchr::memchr_iter(b'\n', bytes).count().max(1);
            let mut slots = vec![MaybeUninit::uninit(); lines];
            parse_head_with(stream, bytes, &mut slots).unwrap_or(Parsed::Invalid)
        }
        Err(_) => Parsed::Invalid,
        Ok(parsed) => parsed,
    }
}

fn parse_head_with<'b>(
    stream: Stream,
    bytes: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Parsed, httparse::Error> {
    // We observe traffic the peers already accepted: be as lenient as httparse allows.
    let mut cfg = httparse::ParserConfig::default();
    match stream {
        Stream::Request => {
            cfg.allow_multiple_spaces_in_request_line_delimiters(true)
                .ignore_invalid_headers_in_requests(true);
            let mut req = httparse::Request::new(&mut []);
            Ok(
                match cfg.parse_request_with_uninit_headers(&mut req, bytes, slots)? {
                    httparse::Status::Complete(_) => Parsed::Complete(Head::Request(RequestHead {
                        method: req.method.unwrap_or_default().to_owned(),
                        target: req.path.unwrap_or_default().to_owned(),
                        version: req.version.unwrap_or(1),
                        headers: owned_headers(req.headers, bytes),
                    })),
                    httparse::Status::Partial => Parsed::Partial,
                },
            )
        }
        Stream::Response => {
            cfg.allow_multiple_spaces_in_response_status_delimiters(true)
                .allow_spaces_after_header_name_in_responses(true)
                .allow_obsolete_multiline_headers_in_responses(true)
                .ignore_invalid_headers_in_responses(true);
            let mut resp = httparse::Response::new(&mut []);
            Ok(
                match cfg.parse_response_with_uninit_headers(&mut resp, bytes, slots)? {
                    httparse::Status::Complete(_) => {
                        Parsed::Complete(Head::Response(ResponseHead {
                            status: resp.code.unwrap_or_default(),
                            version: resp.version.unwrap_or(1),
                            reason: resp.reason.unwrap_or_default().to_owned(),
                            headers: owned_headers(resp.headers, bytes),
                        }))
                    }
                    httparse::Status::Partial => Parsed::Partial,
                },
            )
        }
    }
}

/// Names lower-cased, values as lossy UTF-8. `head` is the buffer httparse parsed.
fn owned_headers(headers: &[httparse::Header<'_>], head: &[u8]) -> Headers {
    copy_header_block(headers, head).unwrap_or_else(|| {
        let mut out = Headers::new();
        for h in headers {
            out.push(
                &h.name.to_ascii_lowercase(),
                &String::from_utf8_lossy(h.value),
            );
        }
        out
    })
}

/// The fields lie one after another in `head`: copies their block in one piece and
/// lower-cases the names in place. `None` when the block is not valid UTF-8 (values then
/// need the lossy conversion one by one) or a field is not inside it.
fn copy_header_block(headers: &[httparse::Header<'_>], head: &[u8]) -> Option<Headers> {
    let (Some(first), Some(last)) = (headers.first(), headers.last()) else {
        return Some(Headers::new());
    };
    let base = head.as_ptr() as usize;
    let start = (first.name.as_ptr() as usize).checked_sub(base)?;
    let end = (last.value.as_ptr() as usize)
        .checked_sub(base)?
        .checked_add(last.value.len())?;
    let mut text = head.get(start..end)?.to_vec();
    // Where a slice of `head` lies in `text`.
    let range = |b: &[u8]| {
        let from = (b.as_ptr() as usize).checked_sub(base + start)?;
        let to = from.checked_add(b.len())?;
        (to <= text.len()).then_some((from, to))
    };
    let mut fields = Vec::with_capacity(headers.len());
    for h in headers {
        fields.push(Field {
            name: range(h.name.as_bytes())?,
            value: range(h.value)?,
        });
    }
    // Bytes first, one UTF-8 check at the end: lower-casing ASCII letters keeps valid text
    // valid and invalid text invalid.
    for f in &fields {
        text.get_mut(f.name.0..f.name.1)?.make_ascii_lowercase();
    }
    let text = String::from_utf8(text).ok()?;
    // `iter` slices at these offsets: they must be character boundaries (always, for what
    // httparse returns; otherwise the slow path takes over).
    let boundaries = |f: &Field| [f.name.0, f.name.1, f.value.0, f.value.1];
    fields
        .iter()
        .flat_map(boundaries)
        .all(|i| text.is_char_boundary(i))
        .then_some(Headers { text, fields })
}

/// Index just past the blank line that ends a head, if `rest` holds it. `prev` are the two
/// bytes before `rest` (oldest first; zero when absent), so a CRLFCRLF split anywhere
/// across chunks is found.
pub(crate) fn find_head_end(prev: [u8; 2], rest: &[u8]) -> Option<usize> {
    let at = |i: usize, back: usize| -> u8 {
        if i >= back {
            rest[i - back]
        } else {
            prev[2 + i - back]
        }
    };
    // memchr: heads are scanned line by line, and a byte loop per line adds up.
    memchr::memchr_iter(b'\n', rest)
        .find(|&i| at(i, 1) == b'\n' || (at(i, 1) == b'\r' && at(i, 2) == b'\n'))
        .map(|i| i + 1)
}

/// Verdict of [`sniff`] on the start of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniff {
    Yes,
    No,
    NeedMore,
}

/// Methods in the wild are short upper-case tokens; longer or lower-case "methods" are far
/// likelier to be garbage (or the inside of a body while resynchronising).
const MAX_METHOD_LEN: usize = 20;

/// Does `b` start like an HTTP/1.x start line? Requests: `METHOD SP target SP HTTP/1.d
/// CRLF`; responses: `HTTP/1.d SP ddd (SP|CRLF)`. Stricter than httparse on purpose: it
/// decides whether a stream is HTTP at all and where a message may start after a gap.
pub(crate) fn sniff(stream: Stream, b: &[u8]) -> Sniff {
    let mut c = Cursor { b, i: 0 };
    let r = match stream {
        Stream::Request => sniff_request(&mut c),
        Stream::Response => sniff_response(&mut c),
    };
    match r {
        Ok(()) => Sniff::Yes,
        Err(Stop::No) => Sniff::No,
        Err(Stop::More) => Sniff::NeedMore,
    }
}

enum Stop {
    No,
    More,
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Result<u8, Stop> {
        self.b.get(self.i).copied().ok_or(Stop::More)
    }
    /// Consumes one or more bytes matching `f`, at most `max`.
    fn many(&mut self, max: usize, f: impl Fn(u8) -> bool) -> Result<(), Stop> {
        let start = self.i;
        while f(self.peek()?) {
            self.i += 1;
            if self.i - start > max {
                return Err(Stop::No);
            }
        }
        if self.i == start {
            return Err(Stop::No);
        }
        Ok(())
    }
    fn one(&mut self, f: impl Fn(u8) -> bool) -> Result<(), Stop> {
        if !f(self.peek()?) {
            return Err(Stop::No);
        }
        self.i += 1;
        Ok(())
    }
    fn literal(&mut self, lit: &[u8]) -> Result<(), Stop> {
        for &l in lit {
            if self.peek()? != l {
                return Err(Stop::No);
            }
            self.i += 1;
        }
        Ok(())
    }
    fn version(&mut self) -> Result<(), Stop> {
        self.literal(b"HTTP/1.")?;
        self.one(|b| b.is_ascii_digit())
    }
}

fn sniff_request(c: &mut Cursor<'_>) -> Result<(), Stop> {
    c.many(MAX_METHOD_LEN, |b| {
        b.is_ascii_uppercase() || b == b'-' || b == b'_'
    })?;
    c.many(usize::MAX, |b| b == b' ')?;
    c.many(usize::MAX, |b| b > b' ' && b != 0x7f)?;
    c.many(usize::MAX, |b| b == b' ')?;
    c.version()?;
    if c.peek()? == b'\r' {
        c.i += 1;
    }
    c.literal(b"\n")
}

fn sniff_response(c: &mut Cursor<'_>) -> Result<(), Stop> {
    c.version()?;
    c.many(usize::MAX, |b| b == b' ')?;
    for _ in 0..3 {
        c.one(|b| b.is_ascii_digit())?;
    }
    match c.peek()? {
        b' ' | b'\r' | b'\n' => Ok(()),
        _ => Err(Stop::No),
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Response body running to the connection close.
    UntilClose,
    /// The connection switches protocols after this head (101, successful CONNECT).
    Tunnel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingError {
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("request transfer coding does not end in chunked")]
    TransferCoding,
}

/// Request body framing (RFC 9112 §6.3 rules 4–6): no length means no body.
pub(crate) fn request_framing(h: &RequestHead) -> Result<Framing, FramingError> {
    match transfer_coding(&h.headers) {
        Some(true) => return Ok(Framing::Chunked),
        // A server must reject this (400); we cannot know where the body ends either.
        Some(false) => return Err(FramingError::TransferCoding),
        None => {}
    }
    Ok(match content_length(&h.headers)? {
        Some(0) | None => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// Response body framing (RFC 9112 §6.3 rules 1–7). `request_method` is the method of the
/// request this response answers, when known.
pub(crate) fn response_framing(
    h: &ResponseHead,
    request_method: Option<&str>,
) -> Result<Framing, FramingError> {
    let status = h.status;
    if status == 101 || (request_method == Some("CONNECT") && (200..300).contains(&status)) {
        return Ok(Framing::Tunnel);
    }
    if request_method == Some("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Ok(Framing::Empty);
    }
    match transfer_coding(&h.headers) {
        Some(true) => return Ok(Framing::Chunked),
        Some(false) => return Ok(Framing::UntilClose),
        None => {}
    }
    Ok(match content_length(&h.headers)? {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// `Some(chunked is the final coding)` when Transfer-Encoding is present.
fn transfer_coding(headers: &Headers) -> Option<bool> {
    let mut last = None;
    for v in headers.get_all("transfer-encoding") {
        for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            last = Some(coding.eq_ignore_ascii_case("chunked"));
        }
    }
    last
}

/// All Content-Length values (repeated fields or lists) must agree (RFC 9110 §8.6).
fn content_length(headers: &Headers) -> Result<Option<u64>, FramingError> {
    let mut len = None;
    for v in headers.get_all("content-length") {
        for item in v.split(',').map(str::trim) {
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::ContentLength);
            }
            let n: u64 = item.parse().map_err(|_| FramingError::ContentLength)?;
            if len.is_some_and(|l| l != n) {
                return Err(FramingError::ContentLength);
            }
            len = Some(n);
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bytes: &[u8]) -> RequestHead {
        match parse_head(Stream::Request, bytes) {
            Parsed::Complete(Head::Request(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    fn resp(bytes: &[u8]) -> ResponseHead {
        match parse_head(Stream::Response, bytes) {
            Parsed::Complete(Head::Response(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_request_head_exactly() {
        let h = req(b"POST /a/b?x=1 HTTP/1.0\r\nHost: example\r\nX-Mixed-Case: V a l\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(
            h,
            RequestHead {
                method: "POST".into(),
                target: "/a/b?x=1".into(),
                version: 0,
                headers: with(&[
                    ("host", "example"),
                    ("x-mixed-case", "V a l"),
                    ("content-length", "3"),
                ]),
            }
        );
        assert_eq!(h.header("x-mixed-case"), Some("V a l"));
        assert_eq!(h.header("missing"), None);
        assert_eq!(request_framing(&h), Ok(Framing::Length(3)));
    }

    #[test]
    fn header_values_are_lossy_utf8_and_names_lower_case() {
        // Valid UTF-8: the header block is copied in one piece.
        let h = req(b"GET / HTTP/1.1\r\nHost: a\r\nX-Utf: caf\xc3\xa9\r\nEmpty:\r\n\r\n");
        assert_eq!(
            h.headers,
            with(&[("host", "a"), ("x-utf", "caf\u{e9}"), ("empty", "")])
        );
        // Not UTF-8: field by field.
        let h = req(b"GET / HTTP/1.1\r\nHost: a\r\nX-Bin: \xff!\r\n\r\n");
        assert_eq!(h.headers, with(&[("host", "a"), ("x-bin", "\u{fffd}!")]));
        let pairs = [("host", "a"), ("x-bin", "\u{fffd}!")];
        assert_eq!(format!("{:?}", h.headers), format!("{pairs:?}"));
    }

    #[test]
    fn parses_response_head_exactly() {
        let h = resp(b"HTTP/1.1 404 Not Found\r\nServer: t\r\n\r\n");
        assert_eq!(
            h,
            ResponseHead {
                status: 404,
                version: 1,
                reason: "Not Found".into(),
                headers: with(&[("server", "t")]),
            }
        );
        assert_eq!(resp(b"HTTP/1.0 200\r\n\r\n").reason, "");
    }

    #[test]
    fn partial_and_invalid_heads() {
        assert_eq!(
            parse_head(Stream::Request, b"GET / HTTP/1.1\r\nHo"),
            Parsed::Partial
        );
        assert_eq!(
            parse_head(Stream::Request, b"GET / HTTP/9.1\r\n\r\n"),
            Parsed::Invalid
        );
        assert_eq!(
            parse_head(Stream::Response, b"HTTP/1.1 abc\r\n\r\n"),
            Parsed::Invalid
        );
    }

    #[test]
    fn head_end_found_across_any_split() {
        let head = b"GET / HTTP/1.1\r\nA: b\r\n\r\nBODY";
        for at in 0..=head.len() {
            let (a, b) = head.split_at(at);
            let mut prev = [0u8; 2];
            for (i, &x) in a.iter().rev().take(2).enumerate() {
                prev[1 - i] = x;
            }
            let in_a = find_head_end([0, 0], a);
            let expect = if at >= 24 { None } else { Some(24 - at) };
            if in_a.is_none() {
                assert_eq!(find_head_end(prev, b), expect, "split at {at}");
            }
        }
        assert_eq!(find_head_end([0, 0], b"GET / HTTP/1.1\nA: b\n\n"), Some(21));
        assert_eq!(find_head_end([b'\r', b'\n'], b"\r\n"), Some(2));
        assert_eq!(find_head_end([0, b'\n'], b"\n"), Some(1));
        assert_eq!(find_head_end([0, 0], b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn sniff_request_lines() {
        use Sniff::*;
        let s = |b: &[u8]| sniff(Stream::Request, b);
        assert_eq!(s(b"GET / HTTP/1.1\r\n"), Yes);
        assert_eq!(s(b"M-SEARCH * HTTP/1.1\n"), Yes);
        assert_eq!(s(b"CONNECT example:443 HTTP/1.1\r\n"), Yes);
        for i in 0..16 {
            assert_eq!(s(&b"GET / HTTP/1.1\r\n"[..i]), NeedMore, "prefix {i}");
        }
        assert_eq!(s(b"get / HTTP/1.1\r\n"), No);
        assert_eq!(s(b"GET / HTTP/2.0\r\n"), No);
        assert_eq!(s(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), No);
        assert_eq!(s(b"GET /\r\n"), No);
        assert_eq!(s(b"GET / HTTP/1.1 x\r\n"), No);
        assert_eq!(s(b"\x16\x03\x01\x02\x00"), No);
        assert_eq!(s(b"AAAAAAAAAAAAAAAAAAAAAAAAA"), No);
        assert_eq!(s(b"{\"json\": 1}"), No);
    }

    #[test]
    fn sniff_status_lines() {
        use Sniff::*;
        let s = |b: &[u8]| sniff(Stream::Response, b);
        assert_eq!(s(b"HTTP/1.1 200 OK\r\n"), Yes);
        assert_eq!(s(b"HTTP/1.0 204\r\n"), Yes);
        for i in 0..12 {
            assert_eq!(s(&b"HTTP/1.1 200 OK"[..i]), NeedMore, "prefix {i}");
        }
        assert_eq!(s(b"HTTP/2 200 OK\r\n"), No);
        assert_eq!(s(b"HTTP/1.1 20 OK\r\n"), No);
        assert_eq!(s(b"HTTP/1.1 2000 OK\r\n"), No);
        assert_eq!(s(b"220 smtp.example ESMTP\r\n"), No);
    }

    fn with(headers: &[(&str, &str)]) -> Headers {
        headers.iter().copied().collect()
    }

    fn rq(method: &str, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.into(),
            target: "/".into(),
            version: 1,
            headers: with(headers),
        }
    }

    fn rs(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        ResponseHead {
            status,
            version: 1,
            reason: String::new(),
            headers: with(headers),
        }
    }

    #[test]
    fn request_framing_rules() {
        use Framing::*;
        assert_eq!(request_framing(&rq("GET", &[])), Ok(Empty));
        assert_eq!(
            request_framing(&rq("POST", &[("content-length", "0")])),
            Ok(Empty)
        );
        assert_eq!(
            request_framing(&rq("POST", &[("content-length", "7, 7")])),
            Ok(Length(7))
        );
        let te = [
            ("transfer-encoding", "gzip, chunked"),
            ("content-length", "5"),
        ];
        assert_eq!(request_framing(&rq("POST", &te)), Ok(Chunked));
        assert_eq!(
            request_framing(&rq("POST", &[("transfer-encoding", "gzip")])),
            Err(FramingError::TransferCoding)
        );
        let two = [("content-length", "1"), ("content-length", "2")];
        assert_eq!(
            request_framing(&rq("POST", &two)),
            Err(FramingError::ContentLength)
        );
        assert_eq!(
            request_framing(&rq("POST", &[("content-length", "+1")])),
            Err(FramingError::ContentLength)
        );
    }

    #[test]
    fn response_framing_rules() {
        use Framing::*;
        let cl = [("content-length", "10")];
        assert_eq!(response_framing(&rs(200, &cl), Some("GET")), Ok(Length(10)));
        assert_eq!(response_framing(&rs(200, &cl), Some("HEAD")), Ok(Empty));
        assert_eq!(response_framing(&rs(204, &cl), None), Ok(Empty));
        assert_eq!(response_framing(&rs(304, &cl), None), Ok(Empty));
        assert_eq!(response_framing(&rs(100, &[]), None), Ok(Empty));
        assert_eq!(response_framing(&rs(101, &[]), Some("GET")), Ok(Tunnel));
        assert_eq!(response_framing(&rs(200, &[]), Some("CONNECT")), Ok(Tunnel));
        assert_eq!(
            response_framing(&rs(407, &cl), Some("CONNECT")),
            Ok(Length(10))
        );
        assert_eq!(response_framing(&rs(200, &[]), None), Ok(UntilClose));
        let te = [("transfer-encoding", "chunked"), ("content-length", "10")];
        assert_eq!(response_framing(&rs(200, &te), None), Ok(Chunked));
        let gz = [("transfer-encoding", "chunked, gzip")];
        assert_eq!(response_framing(&rs(200, &gz), None), Ok(UntilClose));
        let bad = [("content-length", "ten")];
        assert_eq!(
            response_framing(&rs(200, &bad), None),
            Err(FramingError::ContentLength)
        );
    }
}
