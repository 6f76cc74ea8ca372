//! A valid HTTP/1.1 conversation (generated from the input: methods, bodies with
//! Content-Length or chunked framing, `100 Continue`, `103 Early Hints`, HEAD, 204/304,
//! a close-delimited last response, pipelining) cut into syscalls at arbitrary offsets and
//! interleaved in any order a real client and server could produce.
//!
//! Clean runs (no loss) must give back exactly the generated exchanges: same requests,
//! statuses and body sizes, in order, once each. Lossy runs (uncaptured tails, dropped
//! syscalls reported as gaps, an early close) must keep the invariants: exchanges in
//! sequence order, once each, never more than request heads, bounded buffering.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tracer_agent::http::{Chunk, HttpConfig, HttpConnection, Stream};

#[derive(Debug, Clone)]
struct Expected {
    method: &'static str,
    target: String,
    status: u16,
    request_body: u64,
    response_body: u64,
}

/// Byte offsets in the two streams that bound exchange `i`.
#[derive(Debug, Clone, Copy)]
struct Marks {
    /// Request stream: end of the head and end of the body.
    req_head_end: usize,
    req_end: usize,
    /// Response stream: end of the interim responses (the final one starts there) and end.
    interim_end: usize,
    resp_end: usize,
}

fn body(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<u8>> {
    let n = u.int_in_range(0..=max)?;
    // Bytes are arbitrary on purpose: framing, not content, must delimit messages.
    let mut v = vec![0u8; n];
    for b in &mut v {
        *b = u.arbitrary()?;
    }
    Ok(v)
}

/// Writes `data` as chunked coding with arbitrary chunk sizes, extensions and trailers.
fn chunked(u: &mut Unstructured<'_>, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let n = u.int_in_range(1..=rest.len())?;
        if u.ratio(1u8, 6)? {
            out.extend_from_slice(format!("{n:X};ext=1\r\n").as_bytes());
        } else {
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        }
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n");
    if u.ratio(1u8, 5)? {
        out.extend_from_slice(b"X-Trailer: yes\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

struct Conversation {
    req: Vec<u8>,
    resp: Vec<u8>,
    marks: Vec<Marks>,
    expected: Vec<Expected>,
}

fn conversation(u: &mut Unstructured<'_>) -> Result<Conversation> {
    let n = u.int_in_range(1..=6)?;
    let mut c = Conversation {
        req: Vec::new(),
        resp: Vec::new(),
        marks: Vec::new(),
        expected: Vec::new(),
    };
    for i in 0..n {
        let last = i + 1 == n;
        let method = *u.choose(&["GET", "POST", "PUT", "HEAD", "DELETE"])?;
        let target = format!("/r{i}?x={}", u.int_in_range(0..=99u8)?);
        let req_body = if matches!(method, "POST" | "PUT") {
            body(u, 300)?
        } else {
            Vec::new()
        };
        let req_chunked = !req_body.is_empty() && u.arbitrary::<bool>()?;
        let expect_continue = !req_body.is_empty() && u.arbitrary::<bool>()?;
        c.req
            .extend_from_slice(format!("{method} {target} HTTP/1.1\r\nHost: h\r\n").as_bytes());
        if expect_continue {
            c.req.extend_from_slice(b"Expect: 100-continue\r\n");
        }
        if req_chunked {
            c.req
                .extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        } else if !req_body.is_empty() || method != "GET" {
            c.req.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", req_body.len()).as_bytes(),
            );
        } else {
            c.req.extend_from_slice(b"\r\n");
        }
        let req_head_end = c.req.len();
        if req_chunked {
            chunked(u, &req_body, &mut c.req)?;
        } else {
            c.req.extend_from_slice(&req_body);
        }
        let req_end = c.req.len();

        if expect_continue {
            c.resp.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        if u.ratio(1u8, 8)? {
            c.resp
                .extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n");
        }
        let interim_end = c.resp.len();
        let status = *u.choose(&[200u16, 201, 204, 304, 404, 500])?;
        let bodyless = method == "HEAD" || status == 204 || status == 304;
        let resp_body = if bodyless { Vec::new() } else { body(u, 600)? };
        c.resp
            .extend_from_slice(format!("HTTP/1.1 {status} X\r\nServer: s\r\n").as_bytes());
        let framing = u.int_in_range(0u8..=2)?;
        if bodyless {
            if method == "HEAD" && status != 204 && status != 304 {
                // A HEAD response announces the length of the body it does not carry.
                c.resp.extend_from_slice(b"Content-Length: 1234\r\n");
            }
            c.resp.extend_from_slice(b"\r\n");
        } else if framing == 0 && last {
            c.resp.extend_from_slice(b"Connection: close\r\n\r\n");
            c.resp.extend_from_slice(&resp_body);
        } else if framing == 1 {
            c.resp
                .extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            chunked(u, &resp_body, &mut c.resp)?;
        } else {
            c.resp.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", resp_body.len()).as_bytes(),
            );
            c.resp.extend_from_slice(&resp_body);
        }
        c.marks.push(Marks {
            req_head_end,
            req_end,
            interim_end,
            resp_end: c.resp.len(),
        });
        c.expected.push(Expected {
            method,
            target,
            status,
            request_body: req_body.len() as u64,
            response_body: resp_body.len() as u64,
        });
    }
    Ok(c)
}

/// How far the server may have written: not past what answers requests not yet read.
fn response_limit(marks: &[Marks], req_fed: usize) -> usize {
    let mut limit = 0;
    for m in marks {
        if req_fed >= m.req_end {
            limit = m.resp_end;
        } else {
            if req_fed >= m.req_head_end {
                limit = m.interim_end;
            }
            break;
        }
    }
    limit
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let conv = conversation(u)?;
    let lossy = u.ratio(1u8, 3)?;
    let cfg = HttpConfig {
        max_header_bytes: if lossy {
            *u.choose(&[64usize, 16 * 1024])?
        } else {
            16 * 1024
        },
        max_pending: if lossy { u.int_in_range(1..=8)? } else { 64 },
    };
    let mut c = HttpConnection::new(&cfg);
    let (mut req_fed, mut resp_fed) = (0usize, 0usize);
    let mut t = 0u64;
    let mut got = Vec::new();
    let mut started = 0usize;
    let mut last_seq: Option<u64> = None;
    let mut closed_early = false;
    loop {
        let resp_limit = response_limit(&conv.marks, req_fed);
        let can_req = req_fed < conv.req.len();
        let can_resp = resp_fed < resp_limit;
        if !can_req && !can_resp {
            break;
        }
        let stream = match (can_req, can_resp) {
            (true, true) => {
                if u.arbitrary::<bool>()? {
                    Stream::Request
                } else {
                    Stream::Response
                }
            }
            (true, false) => Stream::Request,
            _ => Stream::Response,
        };
        let (data, fed, end) = match stream {
            Stream::Request => (&conv.req, &mut req_fed, conv.req.len()),
            Stream::Response => (&conv.resp, &mut resp_fed, resp_limit),
        };
        let len = u.int_in_range(1..=end - *fed)?;
        let bytes = &data[*fed..*fed + len];
        *fed += len;
        t += 10;
        let mut captured = Some(bytes);
        if lossy {
            match u.int_in_range(0u8..=9)? {
                // The syscall happened but its event was lost (ring buffer full): the
                // next event carries the gap flag.
                0 => {
                    c.on_gap(stream);
                    captured = None;
                }
                // Only a prefix was copied (capture limit).
                1 => captured = Some(&bytes[..u.int_in_range(0..=bytes.len())?]),
                2 if u.ratio(1u8, 4)? => {
                    c.on_close(t);
                    closed_early = true;
                }
                _ => {}
            }
        }
        if let Some(captured) = captured {
            let chunk = Chunk {
                bytes: captured,
                syscall_len: len,
                ts_enter_ns: t,
                ts_exit_ns: t + 1,
                tcp_seq: None,
                opposite_seq: None,
            };
            match stream {
                Stream::Request => c.on_request_bytes(chunk),
                Stream::Response => c.on_response_bytes(chunk),
            }
        }
        started += c.take_started().len();
        for e in c.take_exchanges() {
            assert!(last_seq.is_none_or(|l| e.seq > l), "out of order: {e:?}");
            last_seq = Some(e.seq);
            got.push(e);
        }
        assert!(c.buffered_bytes() <= 2 * cfg.max_header_bytes);
        assert!(got.len() <= started);
        if closed_early {
            break;
        }
    }
    c.on_close(t + 10);
    started += c.take_started().len();
    for e in c.take_exchanges() {
        assert!(last_seq.is_none_or(|l| e.seq > l), "out of order: {e:?}");
        last_seq = Some(e.seq);
        got.push(e);
    }
    assert!(got.len() <= started);
    assert_eq!(c.stats().pending, 0);
    if lossy {
        return Ok(());
    }

    // No loss: exactly the conversation, once each, in order.
    assert_eq!(
        got.len(),
        conv.expected.len(),
        "{got:#?}\n{:#?}",
        conv.expected
    );
    assert_eq!(started, conv.expected.len());
    for (i, (e, want)) in got.iter().zip(&conv.expected).enumerate() {
        assert_eq!(e.seq, i as u64);
        assert_eq!(e.request.method, want.method);
        assert_eq!(e.request.target, want.target);
        assert_eq!(e.request_body_bytes, want.request_body, "request {i}");
        let resp = e.response.as_ref().expect("answered");
        assert_eq!(resp.status, want.status, "request {i}");
        assert_eq!(e.response_body_bytes, want.response_body, "response {i}");
        assert_eq!(e.error, None, "exchange {i}: {e:#?}");
        assert!(!e.incomplete, "exchange {i}: {e:#?}");
    }
    let stats = c.stats();
    assert_eq!(
        (stats.parse_errors, stats.gaps, stats.unpaired_responses),
        (0, 0, 0)
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
