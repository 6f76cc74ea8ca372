use super::frame::{
    CONTINUATION, DATA, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, GOAWAY, HEADERS,
    RST_STREAM, SETTINGS,
};
use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Both directions of a connection as the peers would write them, HPACK-encoded with
/// each peer's own (dynamic-table) encoder.
struct Wire {
    client: loona_hpack::Encoder<'static>,
    server: loona_hpack::Encoder<'static>,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Wire {
    fn new() -> Wire {
        let mut request = PREFACE.to_vec();
        request.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        Wire {
            client: loona_hpack::Encoder::new(),
            server: loona_hpack::Encoder::new(),
            request,
            response: frame(SETTINGS, 0, 0, &[]),
        }
    }

    fn block(enc: &mut loona_hpack::Encoder<'static>, fields: &[(&str, &str)]) -> Vec<u8> {
        enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn request_headers(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) {
        let block = Self::block(&mut self.client, fields);
        let flags = FLAG_END_HEADERS | if end { FLAG_END_STREAM } else { 0 };
        self.request.extend(frame(HEADERS, flags, stream, &block));
    }

    fn grpc_call(&mut self, stream: u32, method: &str, extra: &[(&str, &str)]) {
        let mut fields = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "greeter:50051"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        fields.extend_from_slice(extra);
        self.request_headers(stream, &fields, false);
        self.request.extend(frame(
            DATA,
            FLAG_END_STREAM,
            stream,
            &[0, 0, 0, 0, 3, 1, 2, 3],
        ));
    }

    fn response_headers(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) {
        let block = Self::block(&mut self.server, fields);
        let flags = FLAG_END_HEADERS | if end { FLAG_END_STREAM } else { 0 };
        self.response.extend(frame(HEADERS, flags, stream, &block));
    }

    fn grpc_answer(&mut self, stream: u32, status: &str) {
        self.response_headers(
            stream,
            &[(":status", "200"), ("content-type", "application/grpc")],
            false,
        );
        self.response
            .extend(frame(DATA, 0, stream, &[0, 0, 0, 0, 2, 9, 9]));
        self.response_headers(stream, &[("grpc-status", status)], true);
    }
}

/// Feeds the request bytes (cut at `req_cut`) then the response bytes (cut at `resp_cut`).
fn run(wire: &Wire, req_cut: usize, resp_cut: usize) -> (H2Connection, Vec<Exchange>) {
    let mut c = H2Connection::new(&Http2Config::default());
    c.on_request_bytes(Chunk::whole(&wire.request[..req_cut], 10));
    c.on_request_bytes(Chunk::whole(&wire.request[req_cut..], 20));
    c.on_response_bytes(Chunk::whole(&wire.response[..resp_cut], 30));
    c.on_response_bytes(Chunk::whole(&wire.response[resp_cut..], 40));
    let mut out = Vec::new();
    c.drain_exchanges_into(&mut out);
    (c, out)
}

#[test]
fn a_grpc_call_is_one_exchange_with_its_trailers_at_every_split() {
    let mut wire = Wire::new();
    wire.grpc_call(
        1,
        "/demo.Greeter/Say",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
    );
    wire.grpc_answer(1, "0");
    for req_cut in 0..=wire.request.len() {
        let (c, out) = run(&wire, req_cut, wire.response.len() / 2);
        assert_eq!(out.len(), 1, "cut {req_cut}");
        assert_eq!(c.undecodable(), None);
        assert_eq!(out[0].seq, 1);
        assert_eq!(out[0].request.target, "/demo.Greeter/Say");
    }
    for resp_cut in 0..=wire.response.len() {
        let (_, out) = run(&wire, wire.request.len(), resp_cut);
        assert_eq!(out.len(), 1, "cut {resp_cut}");
        let x = &out[0];
        assert_eq!(x.request.method, "POST");
        assert_eq!(x.request.version, VERSION_2);
        assert_eq!(x.request.header("host"), Some("greeter:50051"));
        assert_eq!(x.request_body_bytes, 8);
        let resp = x.response.as_ref().unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("grpc-status"), Some("0"));
        assert_eq!(x.response_body_bytes, 7);
        assert_eq!(x.error, None);
    }
}

#[test]
fn started_requests_carry_the_stream_and_trace_context() {
    let mut wire = Wire::new();
    wire.grpc_call(
        3,
        "/demo.Greeter/Say",
        &[("traceparent", "00-aa-bb-01"), ("x-other", "1")],
    );
    let mut c = H2Connection::new(&Http2Config::default());
    c.on_request_bytes(Chunk::whole(&wire.request, 5));
    let mut started = Vec::new();
    c.drain_started_into(&mut started);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].seq, 3);
    assert_eq!(started[0].timing.first_enter_ns, 5);
    assert_eq!(
        started[0].context_headers,
        [("traceparent".to_owned(), "00-aa-bb-01".to_owned())]
    );
    assert_eq!(c.request_head(3).unwrap().target, "/demo.Greeter/Say");
}

#[test]
fn a_hundred_interleaved_streams_pair_by_stream_id() {
    let mut wire = Wire::new();
    let ids: Vec<u32> = (0..100).map(|i| 2 * i + 1).collect();
    for &id in &ids {
        wire.grpc_call(id, &format!("/demo.Greeter/M{id}"), &[]);
    }
    // Answered in reverse order: pairing is by stream, never by position.
    for &id in ids.iter().rev() {
        wire.grpc_answer(id, if id % 3 == 0 { "5" } else { "0" });
    }
    let (c, out) = run(&wire, 1000, 777);
    assert_eq!(out.len(), 100);
    for x in &out {
        assert_eq!(x.request.target, format!("/demo.Greeter/M{}", x.seq));
        let want = if x.seq % 3 == 0 { "5" } else { "0" };
        assert_eq!(
            x.response.as_ref().unwrap().header("grpc-status"),
            Some(want)
        );
    }
    assert_eq!(c.stats().pending, 0);
}

#[test]
fn dynamic_table_eviction_under_many_distinct_headers() {
    let mut wire = Wire::new();
    let mut expected = Vec::new();
    for call in 0..50u32 {
        let owned: Vec<(String, String)> = (0..40)
            .map(|k| {
                (
                    format!("x-meta-{call}-{k}"),
                    format!("value-{call}-{k}-{}", "v".repeat(20)),
                )
            })
            .collect();
        let extra: Vec<(&str, &str)> = owned
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        wire.grpc_call(2 * call + 1, "/demo.Greeter/Echo", &extra);
        wire.grpc_answer(2 * call + 1, "0");
        expected.push(owned);
    }
    let (c, out) = run(&wire, wire.request.len(), wire.response.len());
    assert_eq!(c.undecodable(), None);
    assert_eq!(out.len(), 50);
    for (x, fields) in out.iter().zip(&expected) {
        for (n, v) in fields {
            assert_eq!(x.request.header(n), Some(v.as_str()));
        }
    }
}

#[test]
fn continuation_and_padding_are_read() {
    let mut wire = Wire::new();
    let block = Wire::block(
        &mut wire.client,
        &[(":method", "GET"), (":path", "/a"), (":authority", "h")],
    );
    let (a, b) = block.split_at(block.len() / 2);
    let mut padded = vec![3u8];
    padded.extend_from_slice(a);
    padded.extend_from_slice(&[0, 0, 0]);
    wire.request
        .extend(frame(HEADERS, FLAG_PADDED | FLAG_END_STREAM, 1, &padded));
    wire.request
        .extend(frame(CONTINUATION, FLAG_END_HEADERS, 1, b));
    wire.response_headers(1, &[(":status", "204")], true);
    let (_, out) = run(&wire, 0, 0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].request.target, "/a");
    assert_eq!(out[0].response.as_ref().unwrap().status, 204);
}

#[test]
fn a_frame_between_a_header_block_and_its_continuation_is_malformed() {
    let mut wire = Wire::new();
    let block = Wire::block(&mut wire.client, &[(":method", "GET"), (":path", "/a")]);
    wire.request.extend(frame(HEADERS, 0, 1, &block));
    wire.request.extend(frame(DATA, 0, 1, b"x"));
    let (c, _) = run(&wire, 0, 0);
    assert_eq!(c.undecodable(), Some(Undecodable::Malformed));
}

#[test]
fn a_reset_stream_ends_with_its_error_code() {
    let mut wire = Wire::new();
    wire.grpc_call(1, "/demo.Greeter/Slow", &[]);
    wire.request
        .extend(frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    let (_, out) = run(&wire, 0, 0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].error, Some(ExchangeError::StreamReset { code: 8 }));
    assert_eq!(
        out[0].error.unwrap().to_string(),
        "the stream was reset: CANCEL"
    );
    assert!(out[0].response.is_none());
}

#[test]
fn trailers_only_response_and_interim_headers() {
    let mut wire = Wire::new();
    wire.grpc_call(1, "/demo.Greeter/Fail", &[]);
    wire.response_headers(1, &[(":status", "100")], false);
    wire.response_headers(
        1,
        &[
            (":status", "200"),
            ("grpc-status", "5"),
            ("grpc-message", "no"),
        ],
        true,
    );
    let (c, out) = run(&wire, 0, 0);
    assert_eq!(out.len(), 1);
    let resp = out[0].response.as_ref().unwrap();
    assert_eq!((resp.status, resp.header("grpc-status")), (200, Some("5")));
    assert_eq!(c.stats().interim_responses, 1);
}

#[test]
fn goaway_ends_the_streams_the_server_never_processed() {
    let mut wire = Wire::new();
    wire.grpc_call(1, "/demo.Greeter/Say", &[]);
    wire.grpc_call(3, "/demo.Greeter/Say", &[]);
    let mut goaway = 1u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    wire.response.extend(frame(GOAWAY, 0, 0, &goaway));
    wire.grpc_answer(1, "0");
    let (_, out) = run(&wire, 0, 0);
    let by_id: Vec<_> = out.iter().map(|x| (x.seq, x.error)).collect();
    assert_eq!(
        by_id,
        [(3, Some(ExchangeError::ClosedBeforeResponse)), (1, None)]
    );
}

#[test]
fn close_ends_streams_in_flight() {
    let mut wire = Wire::new();
    wire.grpc_call(1, "/demo.Greeter/Say", &[]);
    wire.grpc_call(3, "/demo.Greeter/Count", &[]);
    wire.response_headers(3, &[(":status", "200")], false);
    let (mut c, _) = run(&wire, 0, 0);
    c.on_close(99);
    let mut out = Vec::new();
    c.drain_exchanges_into(&mut out);
    let got: Vec<_> = out
        .iter()
        .map(|x| (x.seq, x.error, x.closed_at_ns))
        .collect();
    assert_eq!(
        got,
        [
            (1, Some(ExchangeError::ClosedBeforeResponse), Some(99)),
            (3, Some(ExchangeError::ResponseTruncated), Some(99)),
        ]
    );
}

#[test]
fn uncaptured_data_is_counted_but_lost_headers_make_it_undecodable() {
    let mut wire = Wire::new();
    wire.grpc_call(1, "/demo.Greeter/Big", &[]);
    let mut c = H2Connection::new(&Http2Config::default());
    c.on_request_bytes(Chunk::whole(&wire.request, 1));
    // A 100 KB DATA frame of which only the first 4 KiB were captured.
    let mut big = frame(
        HEADERS,
        FLAG_END_HEADERS,
        1,
        &Wire::block(&mut wire.server, &[(":status", "200")]),
    );
    let data = frame(DATA, 0, 1, &vec![0u8; 100_000]);
    big.extend_from_slice(&data[..4096]);
    let captured = big.len();
    c.on_response_bytes(Chunk {
        syscall_len: captured + data.len() - 4096,
        ..Chunk::whole(&big, 2)
    });
    let trailers = frame(
        HEADERS,
        FLAG_END_HEADERS | FLAG_END_STREAM,
        1,
        &Wire::block(&mut wire.server, &[("grpc-status", "0")]),
    );
    c.on_response_bytes(Chunk::whole(&trailers, 3));
    let mut out = Vec::new();
    c.drain_exchanges_into(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response_body_bytes, 100_000);
    assert_eq!(out[0].error, None);

    // Now a cut that swallows a frame header: the table state is unknown from here.
    wire.grpc_call(3, "/demo.Greeter/Say", &[]);
    let mut c2 = H2Connection::new(&Http2Config::default());
    c2.on_request_bytes(Chunk {
        syscall_len: wire.request.len() + 50,
        ..Chunk::whole(&wire.request, 1)
    });
    assert_eq!(c2.undecodable(), Some(Undecodable::Lost));
    let mut out = Vec::new();
    c2.drain_exchanges_into(&mut out);
    assert!(out.iter().all(|x| x.error == Some(ExchangeError::Gap)));
    assert_eq!(out.len(), 2);
}

#[test]
fn a_missed_start_is_never_guessed() {
    let mut c = H2Connection::new(&Http2Config::default());
    c.on_gap(Stream::Request);
    assert_eq!(c.undecodable(), Some(Undecodable::StartMissed));
    let mut wire = Wire::new();
    wire.grpc_call(1, "/demo.Greeter/Say", &[]);
    c.on_request_bytes(Chunk::whole(&wire.request, 1));
    let mut started = Vec::new();
    c.drain_started_into(&mut started);
    assert!(started.is_empty());
}

#[test]
fn streams_beyond_the_limit_are_dropped_and_counted() {
    let mut wire = Wire::new();
    for i in 0..10 {
        wire.grpc_call(2 * i + 1, "/demo.Greeter/Say", &[]);
    }
    let mut c = H2Connection::new(&Http2Config {
        max_streams: 4,
        ..Http2Config::default()
    });
    c.on_request_bytes(Chunk::whole(&wire.request, 1));
    assert_eq!(c.stats().pending, 4);
    assert_eq!(c.stats().dropped_unpaired, 6);
}

/// Deterministic pseudo-random bytes (xorshift): garbage, and real traffic with bytes
/// flipped, never panic and hold bounded memory.
#[test]
fn garbage_and_corrupted_traffic_never_panic() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut wire = Wire::new();
    for i in 0..20 {
        wire.grpc_call(2 * i + 1, "/demo.Greeter/Say", &[("x-k", "v")]);
        wire.grpc_answer(2 * i + 1, "0");
    }
    for round in 0..2000 {
        let mut req = wire.request.clone();
        let mut resp = wire.response.clone();
        if round % 2 == 0 {
            for _ in 0..(next() % 8 + 1) {
                let i = next() as usize % req.len();
                req[i] = next() as u8;
                let j = next() as usize % resp.len();
                resp[j] = next() as u8;
            }
        } else {
            let n = next() as usize % 3000;
            req = PREFACE.to_vec();
            req.extend((0..n).map(|_| next() as u8));
            resp = (0..n).map(|_| next() as u8).collect();
        }
        let mut c = H2Connection::new(&Http2Config::default());
        let mut at = 0;
        while at < req.len() {
            let n = (next() as usize % 700 + 1).min(req.len() - at);
            c.on_request_bytes(Chunk::whole(&req[at..at + n], at as u64));
            at += n;
        }
        c.on_response_bytes(Chunk::whole(&resp, 1));
        c.on_close(2);
        assert!(c.buffered_bytes() <= 2 * Http2Config::default().max_header_bytes + 4096);
        let mut out = Vec::new();
        c.drain_exchanges_into(&mut out);
        assert!(out.len() <= 40);
    }
}

#[test]
fn first_bytes_tell_http2_from_http1() {
    assert!(starts_like_http2(Stream::Request, PREFACE));
    assert!(starts_like_http2(
        Stream::Response,
        &frame(SETTINGS, 0, 0, &[])
    ));
    assert!(!starts_like_http2(Stream::Request, b"GET / HTTP/1.1\r\n"));
    assert!(!starts_like_http2(Stream::Response, b"HTTP/1.1 200 OK\r\n"));
}

#[test]
fn a_reused_or_even_stream_id_starts_nothing() {
    let mut wire = Wire::new();
    wire.grpc_call(3, "/demo.Greeter/Say", &[]);
    wire.grpc_answer(3, "0");
    let (mut c, out) = run(&wire, 0, 0);
    assert_eq!(out.len(), 1);
    c.drain_started_into(&mut Vec::new());
    let mut again = Wire::new();
    again.client = wire.client;
    again.request.clear();
    again.grpc_call(3, "/demo.Greeter/Say", &[]);
    again.grpc_call(1, "/demo.Greeter/Say", &[]);
    again.grpc_call(4, "/demo.Greeter/Say", &[]);
    c.on_request_bytes(Chunk::whole(&again.request, 50));
    let mut started = Vec::new();
    c.drain_started_into(&mut started);
    assert!(started.is_empty(), "{started:?}");
    assert_eq!(c.stats().parse_errors, 3);
}
