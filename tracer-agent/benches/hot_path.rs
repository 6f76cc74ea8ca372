//! The agent's user-space hot path on one core.
//!
//! `events_to_spans`: ring-buffer records, byte for byte as the eBPF programs write them,
//! for wrk-like keep-alive traffic against an nginx-like server, both sides traced; each
//! iteration decodes and handles every record, then takes the linked spans.
//! `otlp_encode`: one export batch of those spans to the protobuf bytes sent to a collector.
//!
//! `cargo bench -p tracer-agent --bench hot_path`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracer_agent::capture::events::{decode, encode_close, encode_conn, encode_data};
use tracer_agent::export::otlp::encode_request;
use tracer_agent::export::otlp_exporter::{SCOPE_NAME, SCOPE_VERSION};
use tracer_agent::link::LinkConfig;
use tracer_agent::metrics::Metrics;
use tracer_agent::pipeline::{Pipeline, PipelineConfig};
use tracer_agent::spans::SpanRecord;
use tracer_agent::spans::clock::Clock;
use tracer_common::{
    AF_INET, CONN_FLAG_ADDRS_KNOWN, ConnEvent, DataEventHeader, Direction, EventHeader, EventKind,
    Role,
};

/// Keep-alive connections per iteration (wrk `-c 64`).
const CONNS: u64 = 64;
/// Requests on each connection before it closes.
const REQUESTS_PER_CONN: u64 = 16;
/// One span per side of each request.
const EXCHANGES: u64 = CONNS * REQUESTS_PER_CONN * 2;
/// Simulated time between the starts of two iterations: more than an iteration's traffic
/// (about 4 ms) plus the link window, so every iteration starts after the last take.
const PERIOD_NS: u64 = 3_000_000_000;
/// Spans of the batch span processor's default batch size.
const EXPORT_BATCH: usize = 512;

const CLIENT_PID: u32 = 4_000_001;
const SERVER_PID: u32 = 4_000_002;
const CLIENT_IP: [u8; 4] = [10, 0, 0, 1];
const SERVER_IP: [u8; 4] = [10, 0, 0, 2];
const SERVER_PORT: u16 = 8080;

const REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\n\
Host: 10.0.0.2:8080\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
\r\n";

fn response() -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.24.0\r\n\
Date: Mon, 06 Jan 2025 10:00:00 GMT\r\n\
Content-Type: text/html\r\n\
Content-Length: 1024\r\n\
Last-Modified: Mon, 06 Jan 2025 09:00:00 GMT\r\n\
Connection: keep-alive\r\n\
ETag: \"677b9c10-400\"\r\n\
Accept-Ranges: bytes\r\n\
\r\n"
        .to_vec();
    r.resize(r.len() + 1024, b'x');
    r
}

/// Offsets of the `EventHeader` fields an iteration shifts.
const CONN_ID_AT: usize = 16;
const TS_ENTER_AT: usize = 24;
const TS_EXIT_AT: usize = 32;

/// One iteration's records; `advance` moves them to the next iteration (new connection
/// ids, later timestamps), as real traffic would look.
struct Workload {
    records: Vec<Vec<u8>>,
    /// A time after the last record plus the link window: every span is decided by then.
    take_at_ns: u64,
}

struct Side {
    tgid: u32,
    fd: u32,
    conn_id: u64,
}

impl Workload {
    fn new() -> Self {
        let response = response();
        let mut records = Vec::new();
        let mut t = PERIOD_NS;
        let header = |kind: EventKind, side: &Side, t: &mut u64| {
            *t += 1_000;
            EventHeader {
                kind: kind as u32,
                tgid: side.tgid,
                tid: side.tgid,
                fd: side.fd,
                conn_id: side.conn_id,
                ts_enter_ns: *t,
                ts_exit_ns: *t + 500,
                cgroup_id: 1,
            }
        };
        let conns: Vec<(Side, Side, u16)> = (0..CONNS)
            .map(|i| {
                let client = Side {
                    tgid: CLIENT_PID,
                    fd: 10 + i as u32,
                    conn_id: 2 * i + 1,
                };
                let server = Side {
                    tgid: SERVER_PID,
                    fd: 100 + i as u32,
                    conn_id: 2 * i + 2,
                };
                (client, server, 40_000 + i as u16)
            })
            .collect();
        type Addr = ([u8; 4], u16);
        let open = |header: EventHeader, role: Role, comm: &[u8], local: Addr, peer: Addr| {
            let ((local_addr, local_port), (peer_addr, peer_port)) = (local, peer);
            let mut ev = ConnEvent {
                header,
                role: role as u32,
                flags: CONN_FLAG_ADDRS_KNOWN,
                family: AF_INET,
                local_port,
                peer_port,
                ..Default::default()
            };
            ev.local_addr[..4].copy_from_slice(&local_addr);
            ev.peer_addr[..4].copy_from_slice(&peer_addr);
            ev.comm[..comm.len()].copy_from_slice(comm);
            encode_conn(&ev)
        };
        let data = |header: EventHeader, direction: Direction, payload: &[u8]| {
            let h = DataEventHeader {
                header,
                direction: direction as u32,
                flags: 0,
                syscall_len: payload.len() as u32,
                captured_len: payload.len() as u32,
                goid: 0,
                tcp_seq: 0,
                opposite_seq: 0,
            };
            encode_data(&h, payload)
        };
        for (client, server, port) in &conns {
            let h = header(EventKind::ConnOpen, client, &mut t);
            records.push(open(
                h,
                Role::Client,
                b"wrk",
                (CLIENT_IP, *port),
                (SERVER_IP, SERVER_PORT),
            ));
            let h = header(EventKind::ConnOpen, server, &mut t);
            records.push(open(
                h,
                Role::Server,
                b"nginx",
                (SERVER_IP, SERVER_PORT),
                (CLIENT_IP, *port),
            ));
        }
        for _ in 0..REQUESTS_PER_CONN {
            for (client, server, _) in &conns {
                let h = header(EventKind::Data, client, &mut t);
                records.push(data(h, Direction::Egress, REQUEST));
                let h = header(EventKind::Data, server, &mut t);
                records.push(data(h, Direction::Ingress, REQUEST));
                let h = header(EventKind::Data, server, &mut t);
                records.push(data(h, Direction::Egress, &response));
                let h = header(EventKind::Data, client, &mut t);
                records.push(data(h, Direction::Ingress, &response));
            }
        }
        for (client, server, _) in &conns {
            records.push(encode_close(&header(EventKind::Close, client, &mut t)));
            records.push(encode_close(&header(EventKind::Close, server, &mut t)));
        }
        assert!(t < 2 * PERIOD_NS - LinkConfig::default().window_ns);
        Workload {
            records,
            take_at_ns: t + LinkConfig::default().window_ns + 1,
        }
    }

    fn advance(&mut self) {
        fn add(rec: &mut [u8], at: usize, delta: u64) {
            let field: &mut [u8; 8] = (&mut rec[at..at + 8]).try_into().expect("8 bytes");
            *field = (u64::from_ne_bytes(*field) + delta).to_ne_bytes();
        }
        for rec in &mut self.records {
            add(rec, CONN_ID_AT, 2 * CONNS);
            add(rec, TS_ENTER_AT, PERIOD_NS);
            add(rec, TS_EXIT_AT, PERIOD_NS);
        }
        self.take_at_ns += PERIOD_NS;
    }

    /// What the agent's drain loop and link tick do with one iteration's records. Not
    /// inlined so a profiler can count exactly this (`--toggle-collect=*Workload*run*`).
    #[inline(never)]
    fn run(&self, pipeline: &mut Pipeline) -> Vec<SpanRecord> {
        for rec in &self.records {
            if let Ok(event) = decode(rec) {
                pipeline.handle(event);
            }
        }
        pipeline.take_spans(self.take_at_ns)
    }
}

fn pipeline() -> Pipeline {
    let mut p = Pipeline::new(
        PipelineConfig {
            max_connections: 65_536,
            ..Default::default()
        },
        Arc::new(Metrics::default()),
    );
    p.set_clock(Clock::from_offset(1_700_000_000_000_000_000));
    p
}

/// Runs one iteration and checks it does what the benchmark claims: one span per
/// exchange and side, every SERVER span linked to its CLIENT span.
fn checked_spans(workload: &Workload, pipeline: &mut Pipeline) -> Vec<SpanRecord> {
    let spans = workload.run(pipeline);
    assert_eq!(spans.len() as u64, EXCHANGES);
    let linked = spans.iter().filter(|s| s.parent_span_id.is_some()).count();
    assert_eq!(
        linked as u64,
        EXCHANGES / 2,
        "server spans linked to clients"
    );
    spans
}

fn events_to_spans(c: &mut Criterion) {
    let mut workload = Workload::new();
    let mut pipeline = pipeline();
    checked_spans(&workload, &mut pipeline);
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(EXCHANGES));
    group.bench_function("events_to_spans", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Untimed: moving the records to the next connections and timestamps.
                workload.advance();
                let start = Instant::now();
                let spans = workload.run(&mut pipeline);
                total += start.elapsed();
                black_box(spans);
            }
            total
        })
    });
    group.finish();
    // The last iterations linked like the first.
    workload.advance();
    checked_spans(&workload, &mut pipeline);
}

/// One export request's bytes, as the OTLP exporter and transport make them. Not inlined so a
/// profiler can count exactly this.
#[inline(never)]
fn encode_batch(spans: &[SpanRecord]) -> Vec<u8> {
    encode_request(spans, SCOPE_NAME, SCOPE_VERSION)
}

fn otlp_encode(c: &mut Criterion) {
    let workload = Workload::new();
    let mut spans = checked_spans(&workload, &mut pipeline());
    spans.truncate(EXPORT_BATCH);
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(spans.len() as u64));
    group.bench_function("otlp_encode", |b| {
        b.iter(|| encode_batch(black_box(&spans)))
    });
    group.finish();
}

criterion_group!(benches, events_to_spans, otlp_encode);
criterion_main!(benches);
