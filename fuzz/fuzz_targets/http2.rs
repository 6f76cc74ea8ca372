//! The HTTP/2 layer fed arbitrary input: either raw bytes, or a valid conversation (client
//! preface, HPACK-encoded header blocks from real encoders, DATA, trailers, resets) that the
//! fuzzer cuts into syscalls at arbitrary offsets, corrupts, truncates and interrupts with
//! gaps and a close.
//!
//! Invariants (checked after every call): no panic; every exchange was announced as a
//! started request first, and comes out once; never more exchanges than requests; the
//! bytes held stay within the header-block limit; after the close nothing is in flight.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tracer_agent::http::{Chunk, Stream};
use tracer_agent::http2::{H2Connection, Http2Config, PREFACE};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A valid conversation of a few streams, shaped by the fuzzer.
fn conversation(u: &mut Unstructured<'_>) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut client = loona_hpack::Encoder::new();
    let mut server = loona_hpack::Encoder::new();
    let mut req = PREFACE.to_vec();
    req.extend(frame(4, 0, 0, &[]));
    let mut resp = frame(4, 0, 0, &[]);
    for i in 0..u.int_in_range(1u32..=12)? {
        let id = 2 * i + 1;
        let path = format!("/pkg.Svc/M{}", u.int_in_range(0u8..=255)?);
        let extra = format!("v{}", u.int_in_range(0u32..=100_000)?);
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", path.as_bytes()),
            (b":authority", b"svc"),
            (b"content-type", b"application/grpc"),
            (b"x-k", extra.as_bytes()),
        ];
        let block = client.encode(fields);
        let split = u.int_in_range(0..=block.len())?;
        if u.arbitrary()? {
            req.extend(frame(1, 0, id, &block[..split]));
            req.extend(frame(9, 4, id, &block[split..]));
        } else {
            req.extend(frame(1, 4, id, &block));
        }
        let body = vec![0u8; u.int_in_range(0usize..=300)?];
        req.extend(frame(0, 1, id, &body));
        match u.int_in_range(0u8..=3)? {
            0 => resp.extend(frame(3, 0, id, &8u32.to_be_bytes())),
            _ => {
                let head: Vec<(&[u8], &[u8])> = vec![(b":status", b"200")];
                resp.extend(frame(1, 4, id, &server.encode(head)));
                resp.extend(frame(0, 0, id, &body));
                let trailers: Vec<(&[u8], &[u8])> = vec![(b"grpc-status", b"0")];
                resp.extend(frame(1, 5, id, &server.encode(trailers)));
            }
        }
    }
    Ok((req, resp))
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let cfg = Http2Config {
        max_header_bytes: *u.choose(&[64usize, 1024, 64 * 1024])?,
        max_streams: u.int_in_range(1..=64)?,
    };
    let mut c = H2Connection::new(&cfg);
    let (mut req, mut resp) = if u.arbitrary()? {
        conversation(u)?
    } else {
        let n = u.int_in_range(0..=u.len().min(8192))?;
        let bytes = u.bytes(n)?.to_vec();
        let mut req = PREFACE.to_vec();
        req.extend_from_slice(&bytes);
        (req, bytes)
    };
    for _ in 0..u.int_in_range(0u8..=4)? {
        for side in [&mut req, &mut resp] {
            if !side.is_empty() {
                let i = u.int_in_range(0..=side.len() - 1)?;
                side[i] = u.arbitrary()?;
            }
        }
    }
    let (mut at_req, mut at_resp) = (0, 0);
    let mut started = BTreeSet::new();
    let mut emitted = BTreeSet::new();
    let mut t = 0;
    while at_req < req.len() || at_resp < resp.len() {
        t += 10;
        let (stream, bytes, at) = if at_resp >= resp.len() || (at_req < req.len() && u.arbitrary()?) {
            (Stream::Request, &req, &mut at_req)
        } else {
            (Stream::Response, &resp, &mut at_resp)
        };
        let n = u.int_in_range(1..=(bytes.len() - *at).min(5000))?;
        let slice = &bytes[*at..*at + n];
        *at += n;
        // Sometimes only a prefix was captured.
        let captured = if u.ratio(1u8, 10)? {
            u.int_in_range(0..=slice.len())?
        } else {
            slice.len()
        };
        let chunk = Chunk {
            bytes: &slice[..captured],
            syscall_len: slice.len(),
            ts_enter_ns: t,
            ts_exit_ns: t + 1,
            tcp_seq: None,
            opposite_seq: None,
        };
        match stream {
            Stream::Request => c.on_request_bytes(chunk),
            Stream::Response => c.on_response_bytes(chunk),
        }
        if u.ratio(1u8, 50)? {
            c.on_gap(stream);
        }
        check(&mut c, &mut started, &mut emitted, &cfg);
    }
    c.on_close(t + 10);
    check(&mut c, &mut started, &mut emitted, &cfg);
    assert_eq!(c.stats().pending, 0, "streams left after the close");
    Ok(())
}

fn check(
    c: &mut H2Connection,
    started: &mut BTreeSet<u64>,
    emitted: &mut BTreeSet<u64>,
    cfg: &Http2Config,
) {
    let mut s = Vec::new();
    c.drain_started_into(&mut s);
    for r in s {
        // A stream id is announced once (ids never repeat on a connection).
        assert!(started.insert(r.seq), "stream {} started twice", r.seq);
    }
    let mut x = Vec::new();
    c.drain_exchanges_into(&mut x);
    for e in x {
        assert!(started.contains(&e.seq), "stream {} never announced", e.seq);
        assert!(emitted.insert(e.seq), "stream {} emitted twice", e.seq);
    }
    let stats = c.stats();
    assert!(stats.exchanges <= stats.requests);
    assert!(stats.pending <= cfg.max_streams);
    // Per direction: a frame's header block being read and one being gathered from
    // CONTINUATIONs, each at most the limit (with a vector's growth slack).
    assert!(
        c.buffered_bytes() <= 8 * cfg.max_header_bytes + 1024,
        "{} bytes buffered with a {}-byte limit",
        c.buffered_bytes(),
        cfg.max_header_bytes
    );
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
