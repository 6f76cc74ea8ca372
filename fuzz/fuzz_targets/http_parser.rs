//! Arbitrary bytes on both streams of one connection: split into syscalls of arbitrary
//! lengths, with uncaptured tails, reported gaps and a close, in any order.
//!
//! Invariants (checked after every call): no panic; every exchange was announced as a
//! started request first; exchanges come out once each, in sequence order; never more
//! exchanges than request heads; the bytes held stay within the configured head limit.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tracer_agent::http::{Chunk, HttpConfig, HttpConnection};

struct Checker {
    started: BTreeSet<u64>,
    last_seq: Option<u64>,
    exchanges: u64,
    max_head: usize,
}

impl Checker {
    fn check(&mut self, c: &mut HttpConnection) {
        for s in c.take_started() {
            assert!(
                self.started.insert(s.seq),
                "request {} started twice",
                s.seq
            );
        }
        for e in c.take_exchanges() {
            assert!(
                self.started.contains(&e.seq),
                "exchange {} was never announced",
                e.seq
            );
            assert!(
                self.last_seq.is_none_or(|last| e.seq > last),
                "exchange {} after {:?}: out of order or twice",
                e.seq,
                self.last_seq
            );
            self.last_seq = Some(e.seq);
            self.exchanges += 1;
        }
        let stats = c.stats();
        assert_eq!(stats.exchanges, self.exchanges);
        assert!(self.exchanges <= stats.requests);
        assert!(stats.requests as usize == self.started.len());
        // Each stream holds at most one head (or the bytes held while a protocol switch
        // is pending): bodies are never buffered.
        assert!(
            c.buffered_bytes() <= 2 * self.max_head,
            "{} bytes buffered with a {}-byte head limit",
            c.buffered_bytes(),
            self.max_head
        );
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let cfg = HttpConfig {
        max_header_bytes: *u.choose(&[64usize, 256, 4096, 16 * 1024])?,
        max_pending: u.int_in_range(1..=8)?,
    };
    let mut c = HttpConnection::new(&cfg);
    let mut check = Checker {
        started: BTreeSet::new(),
        last_seq: None,
        exchanges: 0,
        max_head: cfg.max_header_bytes,
    };
    let mut t = 0u64;
    while !u.is_empty() {
        t += 10;
        match u.int_in_range(0u8..=9)? {
            0..=7 => {
                let len = u.int_in_range(0..=u.len().min(4096))?;
                let bytes = u.bytes(len)?;
                // Usually whole; sometimes the syscall moved more than was captured.
                let missing = if u.ratio(1u8, 8)? {
                    u.int_in_range(0usize..=70_000)?
                } else {
                    0
                };
                let chunk = Chunk {
                    bytes,
                    syscall_len: bytes.len() + missing,
                    ts_enter_ns: t,
                    ts_exit_ns: t + 1,
                    tcp_seq: None,
                    opposite_seq: None,
                };
                if u.arbitrary::<bool>()? {
                    c.on_request_bytes(chunk);
                } else {
                    c.on_response_bytes(chunk);
                }
            }
            8 => {
                let stream = if u.arbitrary::<bool>()? {
                    tracer_agent::http::Stream::Request
                } else {
                    tracer_agent::http::Stream::Response
                };
                c.on_gap(stream);
            }
            _ => c.on_close(t),
        }
        check.check(&mut c);
    }
    c.on_close(t + 10);
    check.check(&mut c);
    // After the close nothing is left waiting: every announced request was emitted.
    assert_eq!(c.stats().pending, 0);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
