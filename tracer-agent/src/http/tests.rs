//! Connection-level tests: byte fixtures in, exact exchanges out.

use super::*;

/// Drives one connection; every chunk gets a fresh timestamp `t` (enter) / `t + 1` (exit).
struct T {
    c: HttpConnection,
    t: u64,
}

impl T {
    fn new() -> Self {
        Self::with(HttpConfig::default())
    }

    fn with(cfg: HttpConfig) -> Self {
        Self {
            c: HttpConnection::new(&cfg),
            t: 0,
        }
    }

    fn chunk(&mut self, stream: Stream, bytes: &[u8], syscall_len: usize) -> u64 {
        self.t += 10;
        let chunk = Chunk {
            bytes,
            syscall_len,
            ts_enter_ns: self.t,
            ts_exit_ns: self.t + 1,
            tcp_seq: None,
            opposite_seq: None,
        };
        match stream {
            Stream::Request => self.c.on_request_bytes(chunk),
            Stream::Response => self.c.on_response_bytes(chunk),
        }
        self.t
    }

    /// Feeds a request chunk; returns its timestamp.
    fn req(&mut self, b: &[u8]) -> u64 {
        self.chunk(Stream::Request, b, b.len())
    }

    fn resp(&mut self, b: &[u8]) -> u64 {
        self.chunk(Stream::Response, b, b.len())
    }

    fn take(&mut self) -> Vec<Exchange> {
        without_seq(self.c.take_exchanges())
    }

    fn take_one(&mut self) -> Exchange {
        let mut v = self.take();
        assert_eq!(v.len(), 1, "{v:#?}");
        v.pop().unwrap()
    }
}

/// Sequence numbers are checked by their own test; fixtures compare everything else.
fn without_seq(mut v: Vec<Exchange>) -> Vec<Exchange> {
    for e in &mut v {
        e.seq = 0;
    }
    v
}

fn timing(first: u64, last: u64) -> MessageTiming {
    MessageTiming {
        first_enter_ns: first,
        first_exit_ns: first + 1,
        last_enter_ns: last,
        last_exit_ns: last + 1,
        first_seq: None,
    }
}

fn headers(h: &[(&str, &str)]) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn rq(method: &str, target: &str, h: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        method: method.into(),
        target: target.into(),
        version: 1,
        headers: headers(h).into(),
    }
}

fn rs(status: u16, reason: &str, h: &[(&str, &str)]) -> ResponseHead {
    ResponseHead {
        status,
        version: 1,
        reason: reason.into(),
        headers: headers(h).into(),
    }
}

/// A complete, error-free exchange.
fn ok(
    req: RequestHead,
    req_body: u64,
    rt: MessageTiming,
    resp: ResponseHead,
    resp_body: u64,
    st: MessageTiming,
) -> Exchange {
    Exchange {
        seq: 0,
        request: req,
        request_body_bytes: req_body,
        request_timing: rt,
        response: Some(resp),
        response_body_bytes: resp_body,
        response_timing: Some(st),
        error: None,
        request_incomplete: false,
        response_incomplete: false,
        closed_at_ns: None,
    }
}

/// A request with no response and `error`.
fn failed(req: RequestHead, req_body: u64, rt: MessageTiming, error: ExchangeError) -> Exchange {
    Exchange {
        seq: 0,
        request: req,
        request_body_bytes: req_body,
        request_timing: rt,
        response: None,
        response_body_bytes: 0,
        response_timing: None,
        error: Some(error),
        request_incomplete: false,
        response_incomplete: false,
        closed_at_ns: None,
    }
}

// ---------------------------------------------------------------------------------------
// A keep-alive conversation covering most framing rules, fed with every possible split.

/// (request, interim responses, final response, request body, response body)
type Msg = (&'static [u8], &'static [u8], &'static [u8], u64, u64);

const CONVERSATION: &[Msg] = &[
    (b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", b"", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0, 5),
    (
        b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=\"a;b\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        11,
        3,
    ),
    (b"HEAD /h HTTP/1.1\r\n\r\n", b"", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 0, 0),
    (
        b"PUT /p HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        4,
        2,
    ),
    (b"DELETE /d HTTP/1.1\r\n\r\n", b"", b"HTTP/1.1 204 No Content\r\n\r\n", 0, 0),
    (
        b"GET /c HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n",
        b"",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        0,
        0,
    ),
    (b"OPTIONS * HTTP/1.0\r\n\r\n", b"", b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 0, 0),
];

fn conversation_heads() -> Vec<(RequestHead, ResponseHead)> {
    let cl = |n: &'static str| vec![("content-length", n)];
    vec![
        (
            rq("GET", "/a?x=1", &[("host", "h")]),
            rs(200, "OK", &cl("5")),
        ),
        (
            rq("POST", "/up", &[("transfer-encoding", "chunked")]),
            rs(201, "Created", &[("transfer-encoding", "chunked")]),
        ),
        (rq("HEAD", "/h", &[]), rs(200, "OK", &cl("1000"))),
        (
            rq(
                "PUT",
                "/p",
                &[("content-length", "4"), ("expect", "100-continue")],
            ),
            rs(200, "OK", &cl("2")),
        ),
        (rq("DELETE", "/d", &[]), rs(204, "No Content", &[])),
        (
            rq("GET", "/c", &[("if-none-match", "\"x\"")]),
            rs(304, "Not Modified", &cl("99")),
        ),
        (
            RequestHead {
                version: 0,
                ..rq("OPTIONS", "*", &[])
            },
            ResponseHead {
                version: 0,
                ..rs(200, "OK", &cl("0"))
            },
        ),
    ]
}

/// The two streams and each message's byte range in its stream.
struct Streams {
    reqs: Vec<u8>,
    resps: Vec<u8>,
    req_ranges: Vec<(usize, usize)>,
    resp_ranges: Vec<(usize, usize)>,
}

fn conversation_streams() -> Streams {
    let mut s = Streams {
        reqs: vec![],
        resps: vec![],
        req_ranges: vec![],
        resp_ranges: vec![],
    };
    for (req, interim, resp, _, _) in CONVERSATION {
        s.req_ranges.push((s.reqs.len(), s.reqs.len() + req.len()));
        s.reqs.extend_from_slice(req);
        s.resps.extend_from_slice(interim);
        s.resp_ranges
            .push((s.resps.len(), s.resps.len() + resp.len()));
        s.resps.extend_from_slice(resp);
    }
    s
}

/// Feeds `bytes` cut at `cuts`; the chunk starting at offset `o` gets timestamp `base + o`.
fn feed_cut(c: &mut HttpConnection, stream: Stream, bytes: &[u8], cuts: &[usize], base: u64) {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(bytes.len());
    for w in bounds.windows(2) {
        let part = &bytes[w[0]..w[1]];
        let t = base + 10 * w[0] as u64;
        let chunk = Chunk::whole(part, t);
        match stream {
            Stream::Request => c.on_request_bytes(chunk),
            Stream::Response => c.on_response_bytes(chunk),
        }
    }
}

/// Timing of the message at `range` when the stream was cut at `cuts`.
fn cut_timing(range: (usize, usize), cuts: &[usize], base: u64) -> MessageTiming {
    let start_of = |b: usize| {
        let mut s = 0;
        for &c in cuts {
            if c <= b {
                s = c;
            }
        }
        base + 10 * s as u64
    };
    timing(start_of(range.0), start_of(range.1 - 1))
}

const RESP_BASE: u64 = 1_000_000;

fn run_conversation(req_cuts: &[usize], resp_cuts: &[usize]) {
    let s = conversation_streams();
    let mut c = HttpConnection::new(&HttpConfig::default());
    feed_cut(&mut c, Stream::Request, &s.reqs, req_cuts, 0);
    feed_cut(&mut c, Stream::Response, &s.resps, resp_cuts, RESP_BASE);
    let got = without_seq(c.take_exchanges());
    let want: Vec<Exchange> = conversation_heads()
        .into_iter()
        .enumerate()
        .map(|(i, (req, resp))| {
            let (_, _, _, qb, sb) = CONVERSATION[i];
            let rt = cut_timing(s.req_ranges[i], req_cuts, 0);
            let st = cut_timing(s.resp_ranges[i], resp_cuts, RESP_BASE);
            ok(req, qb, rt, resp, sb, st)
        })
        .collect();
    assert_eq!(
        got, want,
        "request cuts {req_cuts:?}, response cuts {resp_cuts:?}"
    );
    let st = c.stats();
    assert_eq!((st.parse_errors, st.gaps, st.unpaired_responses), (0, 0, 0));
    assert_eq!((st.interim_responses, st.exchanges, st.pending), (2, 7, 0));
    assert_eq!(c.buffered_bytes(), 0);
    assert!(!c.is_not_http());
}

#[test]
fn conversation_in_one_chunk_per_stream() {
    run_conversation(&[], &[]);
}

#[test]
fn conversation_split_at_every_offset() {
    let Streams { reqs, resps, .. } = conversation_streams();
    for at in 0..=reqs.len() {
        run_conversation(&[at], &[]);
    }
    for at in 0..=resps.len() {
        run_conversation(&[], &[at]);
    }
}

#[test]
fn conversation_one_byte_at_a_time() {
    let Streams { reqs, resps, .. } = conversation_streams();
    let every = |n: usize| (1..n).collect::<Vec<_>>();
    run_conversation(&every(reqs.len()), &[]);
    run_conversation(&[], &every(resps.len()));
    run_conversation(&every(reqs.len()), &every(resps.len()));
}

/// Each response follows its request (no pipelining), optionally one byte per syscall.
fn run_interleaved(byte_at_a_time: bool) {
    let s = conversation_streams();
    // Syscall boundaries of each stream: one per message (interim responses included), or
    // one per byte.
    let (req_cuts, resp_cuts): (Vec<usize>, Vec<usize>) = if byte_at_a_time {
        ((1..s.reqs.len()).collect(), (1..s.resps.len()).collect())
    } else {
        let interim = |i: usize| CONVERSATION[i].1.len();
        (
            s.req_ranges.iter().map(|r| r.0).collect(),
            (0..CONVERSATION.len())
                .map(|i| s.resp_ranges[i].0 - interim(i))
                .collect(),
        )
    };
    let local = |cuts: &[usize], from: usize, to: usize| -> Vec<usize> {
        cuts.iter()
            .filter(|&&c| c > from && c < to)
            .map(|c| c - from)
            .collect()
    };
    let mut c = HttpConnection::new(&HttpConfig::default());
    let (mut req_at, mut resp_at) = (0, 0);
    for (i, (req, resp)) in conversation_heads().into_iter().enumerate() {
        let (q, r) = (s.req_ranges[i].1, s.resp_ranges[i].1);
        let base = 10 * req_at as u64;
        feed_cut(
            &mut c,
            Stream::Request,
            &s.reqs[req_at..q],
            &local(&req_cuts, req_at, q),
            base,
        );
        let base = RESP_BASE + 10 * resp_at as u64;
        feed_cut(
            &mut c,
            Stream::Response,
            &s.resps[resp_at..r],
            &local(&resp_cuts, resp_at, r),
            base,
        );
        (req_at, resp_at) = (q, r);
        let (_, _, _, qb, sb) = CONVERSATION[i];
        let rt = cut_timing(s.req_ranges[i], &req_cuts, 0);
        let st = cut_timing(s.resp_ranges[i], &resp_cuts, RESP_BASE);
        assert_eq!(
            without_seq(c.take_exchanges()),
            vec![ok(req, qb, rt, resp, sb, st)],
            "exchange {i}"
        );
    }
    assert_eq!(c.stats().pending, 0);
}

#[test]
fn conversation_interleaved_keep_alive() {
    run_interleaved(false);
    run_interleaved(true);
}

// ---------------------------------------------------------------------------------------
// Keep-alive and pipelining with interleaved streams.

#[test]
fn keep_alive_one_request_at_a_time_with_exact_timing() {
    let mut t = T::new();
    let q1 = t.req(b"POST /x HTTP/1.1\r\nContent-Length: 6\r\n\r\nab");
    let q2 = t.req(b"cd");
    let q3 = t.req(b"ef");
    assert!(t.take().is_empty());
    let s1 = t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
    let s2 = t.resp(b"xyz");
    let e = t.take_one();
    assert_eq!(
        e,
        ok(
            rq("POST", "/x", &[("content-length", "6")]),
            6,
            timing(q1, q3),
            rs(200, "OK", &[("content-length", "3")]),
            3,
            timing(s1, s2),
        )
    );
    assert_ne!(q2, q1);
    // An empty line before the next request belongs to no message.
    let q4 = t.req(b"\r\nGET /y HTTP/1.1\r\n\r\n");
    let s3 = t.resp(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        t.take_one(),
        ok(
            rq("GET", "/y", &[]),
            0,
            timing(q4, q4),
            rs(404, "Not Found", &[("content-length", "0")]),
            0,
            timing(s3, s3),
        )
    );
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut t = T::new();
    t.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
    assert_eq!(t.c.stats().pending, 3);
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 201 A\r\nContent-Length: 2\r\n\r\nbb");
    let got = t.take();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].request.target, "/1");
    assert_eq!(
        (
            got[0].response.as_ref().unwrap().status,
            got[0].response_body_bytes
        ),
        (200, 1)
    );
    assert_eq!(got[1].request.target, "/2");
    assert_eq!(
        (
            got[1].response.as_ref().unwrap().status,
            got[1].response_body_bytes
        ),
        (201, 2)
    );
    t.resp(b"HTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\n");
    let e = t.take_one();
    assert_eq!(
        (e.request.target.as_str(), e.response.unwrap().status),
        ("/3", 500)
    );
}

#[test]
fn response_before_any_request_is_discarded() {
    let mut t = T::new();
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    t.req(b"GET / HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(t.take_one().response.unwrap().status, 204);
    assert_eq!(t.c.stats().unpaired_responses, 1);
}

#[test]
fn max_pending_overflow_drops_oldest_and_keeps_order() {
    let mut t = T::with(HttpConfig {
        max_pending: 2,
        ..HttpConfig::default()
    });
    for p in ["/1", "/2", "/3", "/4"] {
        t.req(format!("GET {p} HTTP/1.1\r\n\r\n").as_bytes());
    }
    assert_eq!(t.c.stats().dropped_unpaired, 2);
    assert_eq!(t.c.stats().pending, 2);
    for s in [201, 202, 203, 204] {
        t.resp(format!("HTTP/1.1 {s} X\r\nContent-Length: 0\r\n\r\n").as_bytes());
    }
    let got: Vec<_> = t
        .take()
        .into_iter()
        .map(|e| (e.request.target, e.response.unwrap().status))
        .collect();
    assert_eq!(got, vec![("/3".to_string(), 203), ("/4".to_string(), 204)]);
    assert_eq!(t.c.stats().unpaired_responses, 2);
}

// ---------------------------------------------------------------------------------------
// Close.

#[test]
fn close_delimited_response_at_every_split() {
    let resp = b"HTTP/1.0 200 OK\r\nServer: s\r\n\r\nthe body runs to the close";
    for at in 0..=resp.len() {
        let mut c = HttpConnection::new(&HttpConfig::default());
        feed_cut(
            &mut c,
            Stream::Request,
            b"GET /old HTTP/1.0\r\n\r\n",
            &[],
            0,
        );
        feed_cut(&mut c, Stream::Response, resp, &[at], RESP_BASE);
        assert!(without_seq(c.take_exchanges()).is_empty());
        c.on_close(5_000_000);
        let got = without_seq(c.take_exchanges());
        let want = Exchange {
            closed_at_ns: Some(5_000_000),
            ..ok(
                RequestHead {
                    version: 0,
                    ..rq("GET", "/old", &[])
                },
                0,
                timing(0, 0),
                ResponseHead {
                    version: 0,
                    ..rs(200, "OK", &[("server", "s")])
                },
                26,
                cut_timing((0, resp.len()), &[at], RESP_BASE),
            )
        };
        assert_eq!(got, vec![want], "split at {at}");
    }
}

#[test]
fn close_mid_body_truncates_response() {
    let mut t = T::new();
    let q = t.req(b"GET / HTTP/1.1\r\n\r\n");
    let s = t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n1234");
    t.c.on_close(999);
    assert_eq!(
        t.take_one(),
        Exchange {
            error: Some(ExchangeError::ResponseTruncated),
            response_incomplete: true,
            closed_at_ns: Some(999),
            ..ok(
                rq("GET", "/", &[]),
                0,
                timing(q, q),
                rs(200, "OK", &[("content-length", "10")]),
                4,
                timing(s, s)
            )
        }
    );

    let mut t = T::new();
    t.req(b"GET / HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
    t.c.on_close(999);
    let e = t.take_one();
    assert_eq!(e.error, Some(ExchangeError::ResponseTruncated));
    assert_eq!(e.response_body_bytes, 2);
}

#[test]
fn close_before_response() {
    let mut t = T::new();
    let q1 = t.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Le");
    assert_eq!(t.take().len(), 1);
    t.c.on_close(777);
    assert_eq!(
        t.take_one(),
        Exchange {
            closed_at_ns: Some(777),
            ..failed(
                rq("GET", "/2", &[]),
                0,
                timing(q1, q1),
                ExchangeError::ClosedBeforeResponse
            )
        }
    );
    // Nothing more after close.
    t.req(b"GET /3 HTTP/1.1\r\n\r\n");
    t.c.on_close(778);
    assert!(t.take().is_empty());
}

#[test]
fn close_mid_request_body_marks_incomplete() {
    let mut t = T::new();
    t.req(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc");
    // The server refuses early, then closes.
    t.resp(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n");
    assert!(t.take().is_empty(), "request still in progress");
    t.c.on_close(1);
    let e = t.take_one();
    assert_eq!(
        (e.request_body_bytes, e.request_incomplete, e.error),
        (3, true, None)
    );
    assert_eq!(e.response.unwrap().status, 413);
}

// ---------------------------------------------------------------------------------------
// Truncated captures.

fn trunc(t: &mut T, stream: Stream, captured: &[u8], syscall_len: usize) -> u64 {
    t.chunk(stream, captured, syscall_len)
}

#[test]
fn truncation_inside_known_length_body_is_only_counted() {
    let mut t = T::new();
    let q = t.req(b"GET / HTTP/1.1\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\nabcd";
    let s1 = trunc(&mut t, Stream::Response, head, head.len() + 5000);
    let s2 = trunc(&mut t, Stream::Response, b"xy", 4996);
    assert_eq!(
        t.take_one(),
        ok(
            rq("GET", "/", &[]),
            0,
            timing(q, q),
            rs(200, "OK", &[("content-length", "10000")]),
            10000,
            timing(s1, s2)
        )
    );
    assert_eq!(t.c.stats().truncated_body_bytes, 5000 + 4994);
    assert_eq!(t.c.stats().gaps, 0);
    // The connection is still in sync.
    t.req(b"GET /next HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(t.take_one().response.unwrap().status, 204);
}

#[test]
fn truncation_inside_chunk_data_and_request_body_is_only_counted() {
    let mut t = T::new();
    let r = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\nab";
    trunc(&mut t, Stream::Request, r, r.len() + 4084);
    t.req(b"cdefghijkl\r\n0\r\n\r\n");
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n";
    trunc(&mut t, Stream::Response, s, s.len() + 300);
    let e = t.take_one();
    assert_eq!((e.request_body_bytes, e.response_body_bytes), (4096, 300));
    assert_eq!(
        (e.error, e.request_incomplete, e.response_incomplete),
        (None, false, false)
    );
    assert_eq!(t.c.stats().truncated_body_bytes, 4384);
}

#[test]
fn truncation_in_head_loses_the_response() {
    let mut t = T::new();
    let q = t.req(b"GET /a HTTP/1.1\r\n\r\n");
    trunc(
        &mut t,
        Stream::Response,
        b"HTTP/1.1 200 OK\r\nContent-Le",
        60,
    );
    assert_eq!(
        t.take_one(),
        failed(rq("GET", "/a", &[]), 0, timing(q, q), ExchangeError::Gap)
    );
    assert_eq!(t.c.stats().gaps, 1);
    // Resynchronises at the next response.
    t.resp(b"ngth: 3\r\n\r\nabc");
    t.req(b"GET /b HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    let e = t.take_one();
    assert_eq!(
        (e.request.target.as_str(), e.response.unwrap().status),
        ("/b", 202)
    );
}

#[test]
fn truncation_in_chunked_framing_is_a_gap() {
    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\n\r\n");
    let s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
    trunc(&mut t, Stream::Response, s, s.len() + 5);
    let e = t.take_one();
    assert_eq!(e.error, Some(ExchangeError::Gap));
    assert_eq!(
        (
            e.response.unwrap().status,
            e.response_body_bytes,
            e.response_incomplete
        ),
        (200, 3, true)
    );
}

#[test]
fn truncation_past_end_of_body_into_next_head_is_a_gap() {
    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab";
    // The uncaptured tail holds "cd" and the start of /b's response.
    trunc(&mut t, Stream::Response, s, s.len() + 20);
    let got = t.take();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].response_body_bytes, got[0].error), (4, None));
    assert_eq!(
        (got[1].request.target.as_str(), got[1].error),
        ("/b", Some(ExchangeError::Gap))
    );
}

// ---------------------------------------------------------------------------------------
// Gaps.

#[test]
fn request_gap_without_pipelining_keeps_pairing() {
    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(t.take().len(), 1);
    // Request /lost vanished; its response still arrives and must not be paired.
    t.c.on_gap(Stream::Request);
    t.resp(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    t.req(b"GET /b HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let e = t.take_one();
    assert_eq!(
        (e.request.target.as_str(), e.response.unwrap().status),
        ("/b", 201)
    );
    let s = t.c.stats();
    assert_eq!((s.gaps, s.unpaired_responses), (1, 1));
}

#[test]
fn request_gap_mid_body_keeps_the_request_incomplete() {
    let mut t = T::new();
    let q = t.req(b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789");
    t.c.on_gap(Stream::Request);
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    // The rest of the body, then a new request in the same syscall.
    let q2 = t.req(b"more body\r\nGET /b HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let got = t.take();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0],
        Exchange {
            request_incomplete: true,
            ..ok(
                rq("POST", "/a", &[("content-length", "100")]),
                10,
                timing(q, q),
                rs(200, "OK", &[("content-length", "0")]),
                0,
                got[0].response_timing.unwrap()
            )
        }
    );
    assert_eq!(got[1].request_timing, timing(q2, q2));
    assert_eq!((got[1].request.target.as_str(), got[1].error), ("/b", None));
}

#[test]
fn request_gap_with_pipelining_desynchronises() {
    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    t.c.on_gap(Stream::Request); // /lost
    t.req(b"GET /c HTTP/1.1\r\n\r\n");
    for s in [200, 201, 404, 202] {
        t.resp(format!("HTTP/1.1 {s} X\r\nContent-Length: 0\r\n\r\n").as_bytes());
    }
    let got: Vec<_> = t
        .take()
        .into_iter()
        .map(|e| (e.request.target, e.response.map(|r| r.status), e.error))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a".into(), Some(200), None),
            ("/b".into(), Some(201), None),
            ("/c".into(), None, Some(ExchangeError::Gap)),
        ]
    );
    assert_eq!(t.c.stats().unpaired_responses, 2);
    // Desynchronised for good: later requests get no response either.
    t.req(b"GET /d HTTP/1.1\r\n\r\n");
    assert_eq!(t.take_one().error, Some(ExchangeError::Gap));
}

#[test]
fn request_after_gap_while_previous_unanswered_desynchronises() {
    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\n\r\n");
    t.c.on_gap(Stream::Request);
    t.req(b"GET /c HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    t.resp(b"HTTP/1.1 404 X\r\nContent-Length: 0\r\n\r\n");
    let got: Vec<_> = t
        .take()
        .into_iter()
        .map(|e| (e.request.target, e.response.map(|r| r.status)))
        .collect();
    assert_eq!(got, vec![("/a".into(), Some(200)), ("/c".into(), None)]);
}

#[test]
fn response_gap_in_head_fails_waiting_requests() {
    let mut t = T::new();
    let q = t.req(b"GET /a HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-");
    t.c.on_gap(Stream::Response);
    assert_eq!(
        t.take_one(),
        failed(rq("GET", "/a", &[]), 0, timing(q, q), ExchangeError::Gap)
    );
    // The rest of that response is skipped; the next pairs normally.
    t.resp(b"Length: 5\r\n\r\nhello");
    t.req(b"GET /b HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nworld");
    let e = t.take_one();
    assert_eq!(
        (e.request.target.as_str(), e.response_body_bytes, e.error),
        ("/b", 5, None)
    );
}

#[test]
fn response_gap_in_body_keeps_the_head() {
    let mut t = T::new();
    let q = t.req(b"GET /a HTTP/1.1\r\n\r\n");
    let s = t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n0123456789");
    t.c.on_gap(Stream::Response);
    assert_eq!(
        t.take_one(),
        Exchange {
            error: Some(ExchangeError::Gap),
            response_incomplete: true,
            ..ok(
                rq("GET", "/a", &[]),
                0,
                timing(q, q),
                rs(200, "OK", &[("content-length", "50")]),
                10,
                timing(s, s)
            )
        }
    );
}

#[test]
fn response_gap_with_pipelining_fails_all_and_desynchronises() {
    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    t.c.on_gap(Stream::Response);
    t.req(b"GET /c HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let got: Vec<_> = t
        .take()
        .into_iter()
        .map(|e| (e.request.target, e.error))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/a".into(), Some(ExchangeError::Gap)),
            ("/b".into(), Some(ExchangeError::Gap)),
            ("/c".into(), Some(ExchangeError::Gap)),
        ]
    );
    assert_eq!(t.c.stats().unpaired_responses, 1);
}

/// A connection whose chunks carry both TCP counters, as the kernel reports them: each
/// stream's bytes are numbered, and a chunk that is "lost" advances its stream's counter
/// without being fed (the next chunk of that stream carries the gap).
struct Seq {
    c: HttpConnection,
    t: u64,
    /// Next sequence number of the request and response streams.
    next: [u32; 2],
    lost: [bool; 2],
}

impl Seq {
    fn new() -> Self {
        Seq {
            c: HttpConnection::new(&HttpConfig::default()),
            t: 0,
            // Both counters start near the wrap, as real initial sequence numbers may.
            next: [u32::MAX - 3, u32::MAX - 30],
            lost: [false; 2],
        }
    }

    fn send(&mut self, stream: Stream, bytes: &[u8], delivered: bool) {
        let i = stream as usize;
        let seq = self.next[i];
        self.next[i] = seq.wrapping_add(bytes.len() as u32);
        if !delivered {
            self.lost[i] = true;
            return;
        }
        if std::mem::take(&mut self.lost[i]) {
            self.c.on_gap(stream);
        }
        self.t += 10;
        let chunk = Chunk {
            bytes,
            syscall_len: bytes.len(),
            ts_enter_ns: self.t,
            ts_exit_ns: self.t + 1,
            tcp_seq: Some(seq),
            opposite_seq: Some(self.next[1 - i]),
        };
        match stream {
            Stream::Request => self.c.on_request_bytes(chunk),
            Stream::Response => self.c.on_response_bytes(chunk),
        }
    }

    /// One exchange of a client that waits for each response; `lose` drops its request or
    /// response chunk in the capture.
    fn exchange(&mut self, n: u32, lose: Option<Stream>) {
        let req = format!("GET /r{n} HTTP/1.1\r\nHost: h\r\n\r\n");
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-N: {n}\r\n\r\nok");
        self.send(
            Stream::Request,
            req.as_bytes(),
            lose != Some(Stream::Request),
        );
        self.send(
            Stream::Response,
            resp.as_bytes(),
            lose != Some(Stream::Response),
        );
    }

    /// (target, the X-N of the response it was paired with, error) of every exchange out.
    fn take(&mut self) -> Vec<(String, Option<String>, Option<ExchangeError>)> {
        self.c
            .take_exchanges()
            .into_iter()
            .map(|e| {
                let n = e.response.and_then(|r| r.header("x-n").map(str::to_owned));
                (e.request.target, n, e.error)
            })
            .collect()
    }
}

/// A client that sends one request at a time, and the capture loses a response: the next
/// request arrives while the lost one is still unanswered, which looks like pipelining.
/// The response counter the kernel reports with that request shows the response was moved
/// (just not seen), so the connection stays in sync: the exchanges around the loss fail
/// with `Gap` and every later one pairs again.
#[test]
fn lost_response_is_not_taken_for_pipelining() {
    for lost in 0..4 {
        let mut t = Seq::new();
        for n in 0..6 {
            t.exchange(n, (n == lost).then_some(Stream::Response));
        }
        let got = t.take();
        assert_eq!(got.len(), 6, "{got:?}");
        for (n, (target, paired, error)) in got.iter().enumerate() {
            assert_eq!(target, &format!("/r{n}"));
            let n = n as u32;
            if n == lost || n == lost + 1 {
                // The lost response's exchange, and the one whose response carried the gap.
                assert_eq!(
                    (paired, error),
                    (&None, &Some(ExchangeError::Gap)),
                    "lost {lost}"
                );
            } else {
                assert_eq!(
                    (paired.as_deref(), error),
                    (Some(n.to_string().as_str()), &None),
                    "lost {lost}: {got:?}"
                );
            }
        }
    }
}

/// The same with requests and responses lost in turn, several times, and both lost in one
/// exchange: whatever is paired is paired right, and the connection always recovers.
#[test]
fn losses_on_both_streams_recover_and_never_mispair() {
    let patterns: [&[(u32, Stream)]; 4] = [
        &[(1, Stream::Request), (3, Stream::Response)],
        &[(1, Stream::Response), (2, Stream::Request)],
        &[(2, Stream::Response), (2, Stream::Request)],
        &[
            (0, Stream::Response),
            (1, Stream::Response),
            (2, Stream::Request),
            (4, Stream::Response),
        ],
    ];
    for pattern in patterns {
        let mut t = Seq::new();
        for n in 0..9u32 {
            let req = format!("GET /r{n} HTTP/1.1\r\n\r\n");
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-N: {n}\r\n\r\n");
            let lost = |s| pattern.contains(&(n, s));
            t.send(Stream::Request, req.as_bytes(), !lost(Stream::Request));
            t.send(Stream::Response, resp.as_bytes(), !lost(Stream::Response));
        }
        let got = t.take();
        for (target, paired, _) in &got {
            if let Some(p) = paired {
                assert_eq!(target, &format!("/r{p}"), "{pattern:?}: {got:?}");
            }
        }
        // The last exchanges, after every loss, are paired.
        let tail: Vec<_> = got.iter().rev().take(3).collect();
        assert!(
            tail.iter().all(|(_, p, e)| p.is_some() && e.is_none()),
            "{pattern:?}: {got:?}"
        );
    }
}

/// A client that really pipelines: the server reads the second request before writing
/// the first response (the response counter shows nothing unseen). After a loss the
/// connection desynchronises, as without sequence numbers.
#[test]
fn pipelining_shown_by_the_counters_still_desynchronises() {
    let mut t = Seq::new();
    t.send(Stream::Request, b"GET /a HTTP/1.1\r\n\r\n", true);
    t.send(Stream::Request, b"GET /b HTTP/1.1\r\n\r\n", true);
    t.send(
        Stream::Response,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-N: a\r\n\r\n",
        false,
    );
    t.send(
        Stream::Response,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-N: b\r\n\r\n",
        true,
    );
    t.send(Stream::Request, b"GET /c HTTP/1.1\r\n\r\n", true);
    t.send(
        Stream::Response,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-N: c\r\n\r\n",
        true,
    );
    let got = t.take();
    assert_eq!(
        got,
        vec![
            ("/a".into(), None, Some(ExchangeError::Gap)),
            ("/b".into(), None, Some(ExchangeError::Gap)),
            ("/c".into(), None, Some(ExchangeError::Gap)),
        ]
    );
}

#[test]
fn resync_skips_body_text_that_only_looks_like_http() {
    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\n\r\n");
    t.c.on_gap(Stream::Response);
    // Mid-line "HTTP/1.1 200" and a line without a status code are not message starts.
    t.resp(b"log: HTTP/1.1 200 OK\nHTTP/1.1 OK\n");
    t.req(b"GET /b HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 203 X\r\nContent-Length: 0\r\n\r\n");
    let got: Vec<_> = t
        .take()
        .into_iter()
        .map(|e| (e.request.target, e.response.map(|r| r.status)))
        .collect();
    assert_eq!(got, vec![("/a".into(), None), ("/b".into(), Some(203))]);
    assert_eq!(t.c.stats().parse_errors, 0);
}

#[test]
fn attach_mid_connection_via_gap() {
    let mut t = T::new();
    t.c.on_gap(Stream::Request);
    t.c.on_gap(Stream::Response);
    t.req(b"tail of an earlier body");
    t.resp(b"more of an earlier response");
    assert!(!t.c.is_not_http());
    t.req(b"GET /a HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let e = t.take_one();
    assert_eq!((e.request.target.as_str(), e.error), ("/a", None));
}

// ---------------------------------------------------------------------------------------
// Garbage and limits.

#[test]
fn garbage_first_bytes_mean_not_http() {
    let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    let mut t = T::new();
    t.req(tls);
    assert!(t.c.is_not_http());
    assert_eq!(t.c.stats().parse_errors, 1);
    for _ in 0..100 {
        t.req(&[0xAB; 4096]);
    }
    assert_eq!(t.c.buffered_bytes(), 0);
    assert_eq!(t.c.stats().parse_errors, 1);

    // Even when a blank line turns up beyond the head limit.
    let mut t = T::new();
    let mut junk = vec![0xAB; 20_000];
    junk[19_000..19_002].copy_from_slice(b"\n\n");
    t.req(&junk);
    assert!(t.c.is_not_http());

    // A server that speaks first (SMTP banner).
    let mut t = T::new();
    t.resp(b"220 mail.example ESMTP\r\n");
    assert!(t.c.is_not_http());

    // Decided as soon as the start line cannot be HTTP, even split byte by byte.
    let mut t = T::new();
    for b in b"PRI * HTTP/2.0\r\n" {
        t.req(&[*b]);
    }
    assert!(t.c.is_not_http());
}

#[test]
fn garbage_after_a_good_message_resyncs_with_bounded_memory() {
    let mut t = T::with(HttpConfig {
        max_header_bytes: 1024,
        ..HttpConfig::default()
    });
    t.req(b"GET /a HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    t.req(b"NOT HTTP AT ALL\r\n");
    assert!(!t.c.is_not_http());
    assert_eq!(t.c.stats().parse_errors, 1);
    let mut junk = Vec::new();
    for i in 0..200_000u32 {
        junk.push((i.wrapping_mul(2_654_435_761) >> 24) as u8);
    }
    for part in junk.chunks(3000) {
        t.req(part);
        assert!(t.c.buffered_bytes() <= 1024);
    }
    // Tokens that pass the sniff but never end must not grow the buffer either.
    t.req(b"GET /");
    for _ in 0..100 {
        t.req(&[b'a'; 100]);
        assert!(t.c.buffered_bytes() <= 1024);
    }
    t.req(b"\r\nGET /b HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let got: Vec<_> = t.take().into_iter().map(|e| e.request.target).collect();
    assert_eq!(got, vec!["/a", "/b"]);
    assert_eq!(t.c.stats().parse_errors, 1);
}

#[test]
fn oversized_head_is_a_parse_error_and_resyncs() {
    let cfg = HttpConfig {
        max_header_bytes: 256,
        ..HttpConfig::default()
    };
    let mut big = b"GET /big HTTP/1.1\r\nCookie: ".to_vec();
    big.extend_from_slice(&[b'c'; 1000]);
    big.extend_from_slice(b"\r\n\r\n");
    for split in [None, Some(100)] {
        let mut t = T::with(cfg.clone());
        match split {
            None => {
                t.req(&big);
            }
            Some(at) => {
                t.req(&big[..at]);
                assert_eq!(t.c.buffered_bytes(), at);
                t.req(&big[at..]);
            }
        }
        assert!(t.c.buffered_bytes() <= 256);
        assert!(
            !t.c.is_not_http(),
            "a valid start line is HTTP even if too big"
        );
        assert_eq!(t.c.stats().parse_errors, 1);
        // The server may accept what we could not: its answer is discarded.
        t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        t.req(b"GET /small HTTP/1.1\r\n\r\n");
        t.resp(b"HTTP/1.1 201 OK\r\nContent-Length: 0\r\n\r\n");
        let e = t.take_one();
        assert_eq!(
            (e.request.target.as_str(), e.response.unwrap().status),
            ("/small", 201)
        );
        assert_eq!(t.c.stats().unpaired_responses, 1);
    }

    // Pipelined behind the failed head: /small must not take the answer meant for it.
    let mut t = T::with(cfg.clone());
    t.req(&[big.as_slice(), b"GET /small HTTP/1.1\r\n\r\n"].concat());
    t.resp(b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(t.take_one().error, Some(ExchangeError::Gap));
    assert_eq!(t.c.stats().unpaired_responses, 1);

    let mut t = T::with(cfg);
    t.req(b"GET / HTTP/1.1\r\n\r\n");
    let mut resp = b"HTTP/1.1 200 OK\r\nSet-Cookie: ".to_vec();
    resp.extend_from_slice(&[b'c'; 1000]);
    t.resp(&resp);
    assert_eq!(t.take_one().error, Some(ExchangeError::ParseError));
}

#[test]
fn bad_framing_is_a_parse_error() {
    let mut t = T::new();
    t.req(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx");
    t.resp(b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n");
    t.req(b"GET /b HTTP/1.1\r\n\r\n");
    assert_eq!(t.c.stats().parse_errors, 1);
    assert_eq!(t.c.stats().unpaired_responses, 1);
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(t.take_one().request.target, "/b");

    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n");
    assert_eq!(t.take_one().error, Some(ExchangeError::ParseError));
}

#[test]
fn partial_head_is_buffered_and_counted() {
    let mut t = T::new();
    t.req(b"GET /a HTTP/1.1\r\nHost: ");
    assert_eq!(t.c.buffered_bytes(), 23);
    t.req(b"x\r\n\r\n");
    assert_eq!(t.c.buffered_bytes(), 0);
    assert_eq!(t.c.stats().requests, 1);
}

// ---------------------------------------------------------------------------------------
// Protocol switches.

#[test]
fn websocket_upgrade_stops_parsing() {
    let mut t = T::new();
    let q = t.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    // Frames the client sends before it has read the 101 are held, then dropped.
    t.req(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    let s = t.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
    assert_eq!(
        t.take_one(),
        ok(
            rq(
                "GET",
                "/ws",
                &[("upgrade", "websocket"), ("connection", "Upgrade")]
            ),
            0,
            timing(q, q),
            rs(101, "Switching Protocols", &[("upgrade", "websocket")]),
            0,
            timing(s, s)
        )
    );
    t.req(b"GET /not-parsed HTTP/1.1\r\n\r\n");
    t.resp(b"\x81\x05hello");
    t.c.on_close(1);
    assert!(t.take().is_empty());
    let st = t.c.stats();
    assert_eq!((st.parse_errors, st.gaps, st.pending), (0, 0, 0));
    assert!(!t.c.is_not_http());
    assert_eq!(t.c.buffered_bytes(), 0);
}

#[test]
fn refused_upgrade_continues_with_held_bytes() {
    let mut t = T::new();
    t.req(b"GET /ws HTTP/1.1\r\nUpgrade: h2c\r\n\r\n");
    // Pipelined behind the upgrade request: held until the server decides.
    let q2 = t.req(b"GET /next HTTP/1.1\r\n\r\n");
    assert_eq!(t.c.stats().requests, 1);
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno");
    assert_eq!(t.c.stats().requests, 2);
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes");
    let got = t.take();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].response_body_bytes, got[0].error), (2, None));
    assert_eq!(got[1].request.target, "/next");
    assert_eq!(got[1].request_timing, timing(q2, q2));
    assert_eq!(got[1].response_body_bytes, 3);
}

#[test]
fn gap_while_waiting_for_upgrade_decision() {
    let mut t = T::new();
    t.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
    t.c.on_gap(Stream::Request);
    t.resp(b"HTTP/1.1 400 No\r\nContent-Length: 0\r\n\r\n");
    let e = t.take_one();
    assert_eq!((e.response.unwrap().status, e.error), (400, None));
    assert_eq!(t.c.stats().gaps, 1);
    t.req(b"GET /b HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(t.take_one().request.target, "/b");
}

#[test]
fn connect_tunnel_and_refused_connect() {
    let mut t = T::new();
    t.req(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n");
    t.resp(b"HTTP/1.1 200 Connection Established\r\n\r\n");
    let e = t.take_one();
    assert_eq!(
        (e.request.target.as_str(), e.response.unwrap().status),
        ("db:5432", 200)
    );
    t.req(b"\x00\x00\x00\x08\x04\xd2\x16\x2f");
    t.resp(b"N");
    assert_eq!(t.c.stats().parse_errors, 0);
    assert!(t.take().is_empty());

    let mut t = T::new();
    t.req(b"CONNECT db:5432 HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 1\r\n\r\nx");
    t.req(b"GET /after HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let got: Vec<_> = t
        .take()
        .into_iter()
        .map(|e| (e.request.method, e.response.unwrap().status))
        .collect();
    assert_eq!(got, vec![("CONNECT".into(), 407), ("GET".into(), 200)]);
}

#[test]
fn error_types_are_stable() {
    assert_eq!(ExchangeError::Gap.error_type(), "capture_gap");
    assert_eq!(
        ExchangeError::ClosedBeforeResponse.to_string(),
        "connection closed before the response"
    );
}

#[test]
fn started_requests_announce_heads_before_their_exchanges() {
    let mut c = HttpConnection::new(&HttpConfig::default());
    let chunk = Chunk::whole;
    c.on_request_bytes(chunk(
        b"GET /a HTTP/1.1\r\ntraceparent: tp\r\nTraceState: ts\r\nX-B3-Sampled: 1\r\nCookie: c\r\n\r\n",
        10,
    ));
    c.on_request_bytes(chunk(b"GET /b HTTP/1.1\r\n\r\n", 20));
    let started = c.take_started();
    assert_eq!(started.len(), 2);
    assert_eq!((started[0].seq, started[1].seq), (0, 1));
    assert_eq!(started[0].timing.first_enter_ns, 10);
    assert_eq!(
        started[0].context_headers,
        headers(&[
            ("traceparent", "tp"),
            ("tracestate", "ts"),
            ("x-b3-sampled", "1")
        ])
    );
    assert!(started[1].context_headers.is_empty());
    assert!(c.take_started().is_empty());
    assert!(c.take_exchanges().is_empty());
    c.on_response_bytes(chunk(b"HTTP/1.1 204 No Content\r\n\r\n", 30));
    c.on_response_bytes(chunk(b"HTTP/1.1 204 No Content\r\n\r\n", 40));
    let done = c.take_exchanges();
    assert_eq!(done.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1]);
}

/// curl's chunked upload: one whole chunk (size line, data, CRLF) per write, of which only
/// the first 4096 bytes are captured. The uncaptured tails end at chunk boundaries, so the
/// body is counted exactly and the stream stays in sync.
#[test]
fn chunked_upload_with_one_truncated_chunk_per_syscall() {
    let mut t = T::new();
    t.req(b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    let data = vec![b'x'; 65_000];
    let mut sent = 0;
    for size in [65_000usize, 65_000, 34_000] {
        let mut wire = format!("{size:x}\r\n").into_bytes();
        wire.extend_from_slice(&data[..size]);
        wire.extend_from_slice(b"\r\n");
        t.chunk(Stream::Request, &wire[..4096], wire.len());
        sent += size;
    }
    t.req(b"0\r\n\r\n");
    t.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let e = t.take_one();
    assert_eq!(e.request_body_bytes, sent as u64);
    assert_eq!(e.error, None);
    assert!(!e.request_incomplete);
    assert_eq!(e.response.unwrap().status, 201);
    assert_eq!(t.c.stats().gaps, 0);
}

/// A server reading a chunked body through an 8 KiB buffer (Python's `BufferedReader`)
/// receives the next chunk's size line in the middle of a read; with 4096 bytes captured
/// it can fall in the uncaptured tail. The body size is then unknown: the exchange is still
/// paired and marked `request_incomplete`, and the next request is traced normally.
#[test]
fn chunked_size_line_in_uncaptured_tail_marks_request_incomplete() {
    let mut t = T::new();
    t.req(b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut wire = Vec::new();
    for size in [61_434usize, 38_566] {
        wire.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        wire.extend(std::iter::repeat_n(b'c', size));
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    // Reads of 8192 bytes from offset 5000: the second size line lands at offset 7290
    // of one read, past the 4096 captured bytes.
    let mut at = 0;
    for len in std::iter::once(5000).chain(std::iter::repeat(8192)) {
        let end = (at + len).min(wire.len());
        let captured = &wire[at..end.min(at + 4096)];
        t.chunk(Stream::Request, captured, end - at);
        at = end;
        if at == wire.len() {
            break;
        }
    }
    t.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 16\r\n\r\nreceived 100000\n");
    let e = t.take_one();
    assert!(e.request_incomplete, "{e:?}");
    assert!(e.request_body_bytes < 100_000);
    assert_eq!((e.error, e.response_incomplete), (None, false));
    assert_eq!(e.response.unwrap().status, 201);
    // Every uncaptured tail read while resynchronising is reported again.
    assert!(t.c.stats().gaps >= 1);

    t.req(b"GET /next HTTP/1.1\r\n\r\n");
    t.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
    let next = t.take_one();
    assert_eq!(next.request.target, "/next");
    assert!(!next.request_incomplete);
}

/// The TCP sequence number of each request's first byte, whatever the syscall boundaries:
/// pipelined requests after blank lines and a body, split at every pair of offsets, the
/// sequence space wrapping in the middle.
#[test]
fn requests_know_the_sequence_number_of_their_first_byte() {
    let stream: &[u8] =
        b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /d HTTP/1.1\r\n\r\n";
    let starts: Vec<u32> = [b"GET /a", b"GET /b", b"POST /", b"GET /d"]
        .iter()
        .map(|p| stream.windows(6).position(|w| w == *p).unwrap() as u32)
        .collect();
    let base = u32::MAX - 40;
    for cut in 0..=stream.len() {
        for second in [cut, (cut + 7).min(stream.len())] {
            let mut c = HttpConnection::new(&HttpConfig::default());
            let mut at = 0;
            for end in [cut, second, stream.len()] {
                if end <= at {
                    continue;
                }
                let part = &stream[at..end];
                c.on_request_bytes(Chunk {
                    bytes: part,
                    syscall_len: part.len(),
                    ts_enter_ns: at as u64,
                    ts_exit_ns: at as u64 + 1,
                    tcp_seq: Some(base.wrapping_add(at as u32)),
                    opposite_seq: None,
                });
                at = end;
            }
            let seqs: Vec<Option<u32>> = c
                .take_started()
                .iter()
                .map(|s| s.timing.first_seq)
                .collect();
            let want: Vec<Option<u32>> =
                starts.iter().map(|&s| Some(base.wrapping_add(s))).collect();
            assert_eq!(seqs, want, "cut at {cut} and {second}");
        }
    }
    // Without sequence numbers, none is made up.
    let mut c = HttpConnection::new(&HttpConfig::default());
    c.on_request_bytes(Chunk {
        bytes: b"GET / HTTP/1.1\r\n\r\n",
        syscall_len: 18,
        ts_enter_ns: 1,
        ts_exit_ns: 2,
        tcp_seq: None,
        opposite_seq: None,
    });
    assert_eq!(c.take_started()[0].timing.first_seq, None);
}
