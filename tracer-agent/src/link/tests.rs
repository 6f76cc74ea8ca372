//! Linker scenarios: the lesson's chain, races between the two sides of an exchange,
//! headers, event loops, orphans.

use std::net::SocketAddr;

use super::*;
use crate::spans::runtime::Runtime;

const WINDOW: u64 = 1_000;

fn linker() -> Linker {
    Linker::new(LinkConfig {
        window_ns: WINDOW,
        ..Default::default()
    })
}

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

fn span(kind: SpanKind, name: &str) -> SpanRecord {
    SpanRecord::for_test(kind, name)
}

struct Req {
    conn: u64,
    seq: u64,
    kind: SpanKind,
    tgid: u32,
    tid: u32,
    local: &'static str,
    peer: &'static str,
    context: Option<SpanContext>,
    runtime: Runtime,
    goid: Option<u64>,
    excluded: bool,
    multiplexed: bool,
}

impl Req {
    fn server(conn: u64, tgid: u32, tid: u32, local: &'static str, peer: &'static str) -> Req {
        Req {
            conn,
            seq: 0,
            kind: SpanKind::Server,
            tgid,
            tid,
            local,
            peer,
            context: None,
            runtime: Runtime::Native,
            goid: None,
            excluded: false,
            multiplexed: false,
        }
    }
    fn client(conn: u64, tgid: u32, tid: u32, local: &'static str, peer: &'static str) -> Req {
        Req {
            kind: SpanKind::Client,
            ..Req::server(conn, tgid, tid, local, peer)
        }
    }
    fn go(self) -> Req {
        Req {
            runtime: Runtime::Go,
            ..self
        }
    }
    /// In a followed Go process, by goroutine `goid`.
    fn goroutine(self, goid: u64) -> Req {
        Req {
            runtime: Runtime::Go,
            goid: Some(goid),
            ..self
        }
    }
    /// In a followed CPython process, written by asyncio task `task`.
    fn task(self, task: u64) -> Req {
        Req {
            runtime: Runtime::Python,
            goid: Some(task),
            ..self
        }
    }
    /// A stream of an HTTP/2 connection.
    fn h2(self) -> Req {
        Req {
            multiplexed: true,
            ..self
        }
    }
    fn seq(self, seq: u64) -> Req {
        Req { seq, ..self }
    }
    fn excluded(self) -> Req {
        Req {
            excluded: true,
            ..self
        }
    }
    fn ctx(self, context: SpanContext) -> Req {
        Req {
            context: Some(context),
            ..self
        }
    }
    fn start(&self, l: &mut Linker, now: u64) -> SpanId {
        l.request_started(
            StartedRequest {
                conn_id: self.conn,
                seq: self.seq,
                peer_seq: self.seq,
                kind: self.kind,
                tgid: self.tgid,
                tid: self.tid,
                local: addr(self.local),
                peer: addr(self.peer),
                context: self.context.clone(),
                runtime: self.runtime,
                goid: self.goid,
                excluded: self.excluded,
                multiplexed: self.multiplexed,
            },
            now,
        )
    }
    fn finish(&self, l: &mut Linker, now: u64) {
        l.span_finished(self.conn, self.seq, span(self.kind, "x"), now);
    }
}

fn find(spans: &[SpanRecord], id: SpanId) -> &SpanRecord {
    spans
        .iter()
        .find(|s| s.span_id == id)
        .unwrap_or_else(|| panic!("span {id:?} not released: {spans:#?}"))
}

fn header(trace: u8, span: u8) -> SpanContext {
    SpanContext {
        trace_id: [trace; 16],
        span_id: [span; 8],
        sampled: Some(true),
        trace_state: String::new(),
    }
}

/// The lesson: user → frontend → backend → database, each hop on its own connection,
/// frontend and backend calling out from the thread serving the request.
#[test]
fn lesson_chain_is_one_trace_with_correct_parents() {
    let mut l = linker();
    let user = Req::client(1, 10, 10, "10.0.0.9:40000", "10.0.0.1:3000");
    let fe_srv = Req::server(2, 20, 21, "10.0.0.1:3000", "10.0.0.9:40000");
    let fe_cli = Req::client(3, 20, 21, "10.0.0.1:41000", "10.96.0.2:8080");
    // The backend sees the frontend's pod address as peer: DNAT changed only the destination.
    let be_srv = Req::server(4, 30, 31, "10.0.0.2:8080", "10.0.0.1:41000");
    let be_cli = Req::client(5, 30, 31, "10.0.0.2:42000", "10.0.0.3:8080");
    let db_srv = Req::server(6, 40, 45, "10.0.0.3:8080", "10.0.0.2:42000");

    let ids: Vec<SpanId> = [&user, &fe_srv, &fe_cli, &be_srv, &be_cli, &db_srv]
        .iter()
        .enumerate()
        .map(|(i, r)| r.start(&mut l, i as u64))
        .collect();
    for (i, r) in [&db_srv, &be_cli, &be_srv, &fe_cli, &fe_srv, &user]
        .iter()
        .enumerate()
    {
        r.finish(&mut l, 10 + i as u64);
    }
    let spans = l.poll(20, false);
    assert_eq!(
        spans.len(),
        6,
        "all resolvable at once: the user's client is traced"
    );
    let trace = find(&spans, ids[0]).trace_id;
    assert!(spans.iter().all(|s| s.trace_id == trace));
    assert_eq!(find(&spans, ids[0]).parent_span_id, None);
    for child in 1..6 {
        assert_eq!(
            find(&spans, ids[child]).parent_span_id,
            Some(ids[child - 1]),
            "hop {child}"
        );
    }
    let stats = l.stats();
    assert_eq!((stats.by_peer, stats.by_thread, stats.roots), (3, 2, 1));
    assert_eq!(stats.waiting, 0);
}

#[test]
fn server_without_traced_client_waits_for_the_window_then_becomes_root() {
    let mut l = linker();
    let srv = Req::server(1, 20, 21, "10.0.0.1:3000", "192.0.2.7:5555");
    let cli = Req::client(2, 20, 21, "10.0.0.1:41000", "10.0.0.2:8080");
    let s = srv.start(&mut l, 0);
    let c = cli.start(&mut l, 5);
    cli.finish(&mut l, 10);
    srv.finish(&mut l, 20);
    assert!(
        l.poll(WINDOW - 1, false).is_empty(),
        "still waiting for a caller"
    );
    // Parked until its window ends: later polls do not try it again.
    assert_eq!((l.parked.len(), l.finished.len()), (1, 1));
    assert!(l.poll(WINDOW - 1, false).is_empty());
    let spans = l.poll(WINDOW, false);
    assert_eq!(spans.len(), 2);
    assert!(l.parked.is_empty());
    assert_eq!(find(&spans, s).parent_span_id, None);
    assert_eq!(find(&spans, c).parent_span_id, Some(s));
    assert_eq!(find(&spans, c).trace_id, find(&spans, s).trace_id);
    // Released nodes leave no index behind (a stale peer key would outlive its node).
    assert_eq!(l.stats().waiting, 0);
    assert!(l.servers_awaiting.is_empty() && l.clients_by_source.is_empty());
    assert!(l.by_request.values().all(Vec::is_empty));
}

/// The server's read can be delivered before the client's write event.
#[test]
fn server_head_seen_before_client_head_still_links() {
    let mut l = linker();
    let srv = Req::server(1, 2, 2, "127.0.0.1:8080", "127.0.0.1:50000");
    let cli = Req::client(2, 1, 1, "127.0.0.1:50000", "127.0.0.1:8080");
    let s = srv.start(&mut l, 0);
    let c = cli.start(&mut l, 1);
    srv.finish(&mut l, 2);
    cli.finish(&mut l, 3);
    let spans = l.poll(4, false);
    assert_eq!(find(&spans, s).parent_span_id, Some(c));
    assert_eq!(find(&spans, s).trace_id, find(&spans, c).trace_id);
}

/// A parked server span is woken by its client's late arrival, not left for its window.
#[test]
fn parked_server_is_woken_by_its_client() {
    let mut l = linker();
    let srv = Req::server(1, 2, 2, "127.0.0.1:8080", "127.0.0.1:50000");
    let cli = Req::client(2, 1, 1, "127.0.0.1:50000", "127.0.0.1:8080");
    let s = srv.start(&mut l, 0);
    srv.finish(&mut l, 2);
    assert!(l.poll(3, false).is_empty());
    assert_eq!(l.parked.len(), 1);
    let c = cli.start(&mut l, 4);
    cli.finish(&mut l, 5);
    let spans = l.poll(6, false);
    assert_eq!(spans.len(), 2);
    assert_eq!(find(&spans, s).parent_span_id, Some(c));
    // The stale entry is dropped when its time comes.
    assert!(l.poll(WINDOW, false).is_empty());
    assert!(l.parked.is_empty());
}

#[test]
fn keep_alive_requests_pair_by_position() {
    let mut l = linker();
    let mut pairs = Vec::new();
    for seq in 0..3 {
        let cli = Req::client(1, 1, 1, "127.0.0.1:50000", "127.0.0.1:8080").seq(seq);
        let srv = Req::server(2, 2, 2, "127.0.0.1:8080", "127.0.0.1:50000").seq(seq);
        let c = cli.start(&mut l, seq * 10);
        let s = srv.start(&mut l, seq * 10 + 1);
        srv.finish(&mut l, seq * 10 + 2);
        cli.finish(&mut l, seq * 10 + 3);
        pairs.push((c, s));
    }
    let spans = l.poll(100, false);
    assert_eq!(spans.len(), 6);
    for (c, s) in pairs {
        assert_eq!(find(&spans, s).parent_span_id, Some(c));
    }
}

#[test]
fn incoming_header_makes_server_a_child_of_remote_context() {
    let mut l = linker();
    let srv = Req::server(1, 2, 2, "10.0.0.1:80", "192.0.2.1:1000").ctx(header(7, 8));
    let s = srv.start(&mut l, 0);
    srv.finish(&mut l, 1);
    let spans = l.poll(WINDOW, false);
    assert_eq!(find(&spans, s).trace_id, [7; 16]);
    assert_eq!(find(&spans, s).parent_span_id, Some([8; 8]));
    assert_eq!(l.stats().by_header, 1);
}

/// The lesson's "Problem 2" fix: frontend forwards its incoming traceparent. The backend's
/// caller is still the frontend's CLIENT span, and the trace stays the header's.
#[test]
fn forwarded_header_of_the_same_trace_keeps_the_precise_parent() {
    let mut l = linker();
    let fe_srv = Req::server(1, 20, 21, "10.0.0.1:3000", "192.0.2.1:1000").ctx(header(7, 8));
    let fe_cli = Req::client(2, 20, 21, "10.0.0.1:41000", "10.0.0.2:8080").ctx(header(7, 8));
    let be_srv = Req::server(3, 30, 31, "10.0.0.2:8080", "10.0.0.1:41000").ctx(header(7, 8));
    let ids = [&fe_srv, &fe_cli, &be_srv].map(|r| r.start(&mut l, 0));
    for r in [&be_srv, &fe_cli, &fe_srv] {
        r.finish(&mut l, 1);
    }
    let spans = l.poll(WINDOW, false);
    assert!(spans.iter().all(|s| s.trace_id == [7; 16]));
    assert_eq!(find(&spans, ids[0]).parent_span_id, Some([8; 8]));
    assert_eq!(find(&spans, ids[1]).parent_span_id, Some(ids[0]));
    assert_eq!(find(&spans, ids[2]).parent_span_id, Some(ids[1]));
}

/// An SDK-instrumented caller wrote its own context (another trace): the server follows the
/// header so the SDK's trace and ours agree.
#[test]
fn header_from_another_trace_wins_over_the_peer_match() {
    let mut l = linker();
    let cli = Req::client(1, 30, 31, "10.0.0.2:42000", "10.0.0.3:8080").ctx(header(9, 3));
    let srv = Req::server(2, 40, 41, "10.0.0.3:8080", "10.0.0.2:42000").ctx(header(9, 3));
    let outer = Req::server(3, 30, 31, "10.0.0.2:8080", "192.0.2.1:1").seq(0);
    let o = outer.start(&mut l, 0);
    let c = cli.start(&mut l, 1);
    let s = srv.start(&mut l, 2);
    for r in [&srv, &cli, &outer] {
        r.finish(&mut l, 3);
    }
    let spans = l.poll(WINDOW + 10, false);
    // Our client span follows its thread (trace of `outer`), the server follows the SDK.
    assert_eq!(find(&spans, c).parent_span_id, Some(o));
    assert_eq!(find(&spans, s).trace_id, [9; 16]);
    assert_eq!(find(&spans, s).parent_span_id, Some([3; 8]));
}

/// An event loop with two requests in flight: the handlers may call downstream in any
/// order (variable work first), so no call is given a parent; with one in flight, it is.
#[test]
fn event_loop_with_several_in_flight_abstains() {
    let mut l = linker();
    let a = Req::server(1, 5, 5, "10.0.0.1:3000", "192.0.2.1:1");
    let b = Req::server(2, 5, 5, "10.0.0.1:3000", "192.0.2.1:2");
    let call_b = Req::client(3, 5, 5, "10.0.0.1:41000", "10.0.0.2:8080");
    let call_a = Req::client(4, 5, 5, "10.0.0.1:41001", "10.0.0.2:8080");
    let sa = a.start(&mut l, 0);
    b.start(&mut l, 1);
    // b's handler was quicker: its call leaves the loop first.
    let cb = call_b.start(&mut l, 2);
    b.finish(&mut l, 3);
    // Only a is in flight now: its call is certainly a's.
    let ca = call_a.start(&mut l, 4);
    for r in [&call_a, &call_b, &a] {
        r.finish(&mut l, 5);
    }
    let spans = l.poll(WINDOW + 10, false);
    assert_eq!(find(&spans, cb).parent_span_id, None);
    assert_eq!(find(&spans, ca).parent_span_id, Some(sa));
    let stats = l.stats();
    assert_eq!(stats.by_thread, 1);
    assert_eq!(stats.abstained, [1, 0, 0, 0, 0, 0]);
}

/// A call written by a thread serving nothing while the process serves one request
/// (a pool thread, a background job) is not adopted: it may not be that request's.
#[test]
fn calls_from_other_threads_are_never_adopted() {
    let mut l = linker();
    let srv = Req::server(1, 7, 70, "10.0.0.1:8080", "192.0.2.1:1");
    let cli = Req::client(2, 7, 71, "10.0.0.1:41000", "10.0.0.2:80");
    srv.start(&mut l, 0);
    let c = cli.start(&mut l, 1);
    // The same process calling out while it serves nothing: an ordinary root.
    srv.finish(&mut l, 2);
    let idle = Req::client(3, 7, 71, "10.0.0.1:41001", "10.0.0.2:80");
    let i = idle.start(&mut l, 3);
    for r in [&cli, &idle] {
        r.finish(&mut l, 4);
    }
    let spans = l.poll(WINDOW + 10, false);
    assert_eq!(find(&spans, c).parent_span_id, None);
    assert_eq!(find(&spans, i).parent_span_id, None);
    let stats = l.stats();
    assert_eq!((stats.by_thread, stats.abstained), (0, [0, 1, 0, 0, 0, 0]));
}

/// Go moves goroutines between threads: even the thread that read the only request in
/// flight may be writing another goroutine's call, so Go processes get no thread links.
#[test]
fn go_processes_never_link_by_thread() {
    let mut l = linker();
    let srv = Req::server(1, 9, 90, "10.0.0.1:8080", "192.0.2.1:1").go();
    let cli = Req::client(2, 9, 90, "10.0.0.1:41000", "10.0.0.2:80").go();
    srv.start(&mut l, 0);
    let c = cli.start(&mut l, 1);
    cli.finish(&mut l, 2);
    srv.finish(&mut l, 3);
    let spans = l.poll(WINDOW + 10, false);
    assert_eq!(find(&spans, c).parent_span_id, None);
    assert_eq!(l.stats().abstained, [0, 0, 1, 0, 0, 0]);
}

/// Thread-per-request servers link every call, whatever the other threads do.
#[test]
fn thread_per_request_links_each_call_to_its_own_request() {
    let mut l = linker();
    let mut expect = Vec::new();
    let servers: Vec<Req> = (0..4)
        .map(|i| Req::server(i, 3, 30 + i as u32, "10.0.0.1:8080", "192.0.2.1:1"))
        .collect();
    let ids: Vec<SpanId> = servers
        .iter()
        .enumerate()
        .map(|(i, r)| r.start(&mut l, i as u64))
        .collect();
    // Calls leave in reverse order of arrival, each from its own thread.
    let calls: Vec<Req> = (0..4u64)
        .rev()
        .map(|i| Req::client(10 + i, 3, 30 + i as u32, "10.0.0.1:41000", "10.0.0.2:80"))
        .collect();
    for (n, c) in calls.iter().enumerate() {
        let id = c.start(&mut l, 10 + n as u64);
        expect.push((id, ids[(c.conn - 10) as usize]));
    }
    for r in calls.iter().chain(&servers) {
        r.finish(&mut l, 20);
    }
    let spans = l.poll(WINDOW + 30, false);
    for (call, parent) in expect {
        assert_eq!(find(&spans, call).parent_span_id, Some(parent));
    }
    assert_eq!(l.stats().abstained, [0, 0, 0, 0, 0, 0]);
}

#[test]
fn never_reuses_context_across_keep_alive_requests() {
    let mut l = linker();
    let first = Req::server(1, 2, 2, "10.0.0.1:80", "192.0.2.1:1000").ctx(header(7, 8));
    let second = Req::server(1, 2, 2, "10.0.0.1:80", "192.0.2.1:1000").seq(1);
    let a = first.start(&mut l, 0);
    first.finish(&mut l, 1);
    let b = second.start(&mut l, 2);
    second.finish(&mut l, 3);
    let spans = l.poll(WINDOW + 10, false);
    assert_eq!(find(&spans, a).trace_id, [7; 16]);
    assert_ne!(find(&spans, b).trace_id, [7; 16]);
    assert_eq!(find(&spans, b).parent_span_id, None);
}

#[test]
fn parent_that_never_finishes_leaves_a_valid_trace() {
    let mut l = linker();
    let srv = Req::server(1, 2, 2, "10.0.0.1:80", "192.0.2.1:1000");
    let cli = Req::client(2, 2, 2, "10.0.0.1:41000", "10.0.0.2:80");
    let s = srv.start(&mut l, 0);
    let c = cli.start(&mut l, 1);
    cli.finish(&mut l, 2);
    // The server's connection dies without an exchange.
    l.connection_closed(1, 3);
    let spans = l.poll(4, false);
    let child = find(&spans, c);
    assert_eq!(
        child.parent_span_id,
        Some(s),
        "still points at the real parent"
    );
    assert_ne!(child.trace_id, [0; 16]);
}

#[test]
fn shutdown_flush_releases_everything_once() {
    let mut l = linker();
    let srv = Req::server(1, 2, 2, "10.0.0.1:80", "192.0.2.1:1000");
    srv.start(&mut l, 0);
    srv.finish(&mut l, 1);
    Req::server(3, 2, 3, "10.0.0.1:80", "192.0.2.1:1001").start(&mut l, 1);
    let spans = l.poll(2, true);
    assert_eq!(spans.len(), 1);
    assert!(l.poll(u64::MAX, true).is_empty(), "nothing exported twice");
    assert_eq!(l.stats().waiting, 0);
}

#[test]
fn bounded_under_a_flood_of_unanswered_requests() {
    let mut l = Linker::new(LinkConfig {
        window_ns: WINDOW,
        max_spans: 100,
        remembered_traces: 50,
        ..Default::default()
    });
    for i in 0..10_000u64 {
        Req::server(i, 2, 2, "10.0.0.1:80", "192.0.2.1:1000").start(&mut l, i);
    }
    assert!(l.stats().waiting <= 100);
    assert_eq!(l.stats().evicted, 9_900);
    assert!(l.exported.len() <= 50);
}

/// A caller's `sampled` flag travels with its trace down every hop linked below it, so a
/// parent-based sampler decides the whole trace alike; the agent's own traces carry none.
#[test]
fn callers_sampling_decision_reaches_every_span_below() {
    for sampled in [Some(false), Some(true), None] {
        let mut l = linker();
        let ctx = SpanContext {
            sampled,
            ..header(7, 8)
        };
        let fe_srv = Req::server(1, 20, 21, "10.0.0.1:3000", "192.0.2.7:5555").ctx(ctx);
        let fe_cli = Req::client(2, 20, 21, "10.0.0.1:41000", "10.0.0.2:8080");
        let be_srv = Req::server(3, 30, 31, "10.0.0.2:8080", "10.0.0.1:41000");
        let own = Req::client(4, 50, 51, "10.0.0.5:43000", "10.0.0.6:80");
        for (i, r) in [&fe_srv, &fe_cli, &be_srv, &own].iter().enumerate() {
            r.start(&mut l, i as u64);
        }
        for (i, r) in [&be_srv, &fe_cli, &fe_srv, &own].iter().enumerate() {
            r.finish(&mut l, 10 + i as u64);
        }
        let spans = l.poll(2 * WINDOW, true);
        assert_eq!(spans.len(), 4);
        let (linked, own): (Vec<_>, Vec<_>) = spans.iter().partition(|s| s.trace_id == [7; 16]);
        assert_eq!(linked.len(), 3);
        assert!(
            linked.iter().all(|s| s.parent_sampled == sampled),
            "{sampled:?}"
        );
        assert_eq!(own[0].parent_sampled, None);
    }
}

fn remote_linker() -> Linker {
    Linker::new(LinkConfig {
        window_ns: 1_000_000_000,
        remote: true,
        ..Default::default()
    })
}

/// Two agents, one per node: the caller's agent answers with its CLIENT span's context, and
/// the server's agent links its SERVER span to it; what the server calls next follows.
#[test]
fn chain_across_two_agents_is_one_trace() {
    const MS: u64 = 1_000_000;
    let (mut node1, mut node2) = (remote_linker(), remote_linker());
    // Node 1: a request from outside, served by the front, which calls back on node 2.
    let front = Req::server(1, 10, 10, "10.0.1.2:8080", "10.0.1.1:50000");
    let call = Req::client(2, 10, 10, "10.0.1.2:41000", "10.0.2.2:8080");
    // Node 2: back serves the call (peer: the caller's address), then calls a database.
    let back = Req::server(3, 20, 20, "10.0.2.2:8080", "10.0.1.2:41000");
    let db_call = Req::client(4, 20, 20, "10.0.2.2:42000", "10.0.2.9:5432");

    let f = front.start(&mut node1, 0);
    let c = call.start(&mut node1, MS);
    let b = back.start(&mut node2, 2 * MS);
    let d = db_call.start(&mut node2, 3 * MS);
    // Nothing local matched back's caller: it is due for a lookup after the grace delay.
    assert!(node2.due_lookups(3 * MS).is_empty());
    let due = node2.due_lookups(4 * MS);
    assert_eq!(due, vec![("10.0.1.2:41000".parse().unwrap(), 0)]);
    // Node 1's front is still waiting for its own (untraced) caller: node 1 says pending.
    assert_eq!(node1.answer(due[0], 4 * MS), Answer::Pending);
    // Asked again later, after the front's window ran out: found.
    for r in [&call, &front] {
        r.finish(&mut node1, 5 * MS);
    }
    let released = node1.poll(2_000 * MS, false);
    let front_span = find(&released, f);
    let Answer::Found(ctx) = node1.answer(due[0], 2_000 * MS) else {
        panic!("caller not found");
    };
    assert_eq!(ctx.span_id, c);
    assert_eq!(ctx.trace_id, front_span.trace_id);
    assert!(node2.remote_found(due[0], ctx.clone()));
    for r in [&db_call, &back] {
        r.finish(&mut node2, 6 * MS);
    }
    let spans = node2.poll(7 * MS, false);
    assert_eq!(find(&spans, b).parent_span_id, Some(c));
    assert_eq!(find(&spans, b).trace_id, front_span.trace_id);
    assert_eq!(find(&spans, d).parent_span_id, Some(b));
    assert_eq!(find(&spans, d).trace_id, front_span.trace_id);
    assert_eq!(node2.stats().by_remote_peer, 1);
    // A late answer for a span already linked changes nothing.
    assert!(!node2.remote_found(due[0], ctx));
}

/// Lookups are bounded: a caller nobody knows is asked a few times within the window, then
/// the SERVER span is exported on its own, as without peers.
#[test]
fn unanswered_lookups_stop_at_the_window() {
    const MS: u64 = 1_000_000;
    let mut l = remote_linker();
    let srv = Req::server(1, 5, 5, "10.0.0.1:80", "192.0.2.1:1000");
    let s = srv.start(&mut l, 0);
    let mut asked = 0;
    for t in (0..1_500).step_by(10) {
        asked += l.due_lookups(t * MS).len();
    }
    assert!((3..=5).contains(&asked), "asked {asked} times");
    srv.finish(&mut l, 10 * MS);
    let spans = l.poll(1_001 * MS, false);
    assert_eq!(find(&spans, s).parent_span_id, None);
    // A span matched locally is never looked up.
    let cli = Req::client(2, 6, 6, "192.0.2.1:2000", "10.0.0.1:80");
    let srv2 = Req::server(3, 5, 5, "10.0.0.1:80", "192.0.2.1:2000");
    cli.start(&mut l, 2_000 * MS);
    srv2.start(&mut l, 2_000 * MS);
    assert!(l.due_lookups(3_000 * MS).is_empty());
}

/// An SDK-made header of another trace still wins over a remote peer's answer, as it wins
/// over a local one; unknown keys answer `Unknown`; without `remote` nothing is answerable.
#[test]
fn remote_answers_follow_the_local_rules() {
    let mut l = remote_linker();
    let srv = Req::server(1, 5, 5, "10.0.0.1:80", "192.0.2.1:1000").ctx(header(7, 8));
    let s = srv.start(&mut l, 0);
    let key = ("192.0.2.1:1000".parse().unwrap(), 0);
    assert!(l.remote_found(key, header(9, 9)));
    srv.finish(&mut l, 1);
    let spans = l.poll(2, false);
    assert_eq!(find(&spans, s).trace_id, [7; 16]);
    assert_eq!(l.answer(key, 3), Answer::Unknown);

    let mut local_only = linker();
    let cli = Req::client(2, 6, 6, "192.0.2.1:2000", "10.0.0.1:80");
    cli.start(&mut local_only, 0);
    assert_eq!(
        local_only.answer(("192.0.2.1:2000".parse().unwrap(), 0), 1),
        Answer::Unknown
    );
}

fn round_trip(l: &mut Linker, goid: u64, conn: u64) {
    l.go_hand_off(
        9,
        crate::capture::events::GoHandOff::RoundTrip { goid, conn },
    );
}

fn conn_writer(l: &mut Linker, goid: u64, conn: u64) {
    l.go_hand_off(
        9,
        crate::capture::events::GoHandOff::ConnWriter { goid, conn },
    );
}

/// Followed Go: two requests served by goroutines 10 and 11 on whatever threads; each
/// handler's call goes out on a pooled connection whose writeLoop goroutine (20, 21)
/// writes it, on yet other threads. A goroutine started by handler 10 calls for it too.
/// Goroutine 30 (a pool started at boot) works for nobody: its call abstains. After
/// request 10 is answered, goroutine 10 works for nothing any more.
#[test]
fn go_calls_follow_goroutines_not_threads() {
    use crate::capture::events::GoHandOff::*;
    const P: u32 = 9;
    let mut l = linker();
    let a = Req::server(1, P, 91, "10.0.0.1:8080", "192.0.2.1:1").goroutine(10);
    let b = Req::server(2, P, 91, "10.0.0.1:8080", "192.0.2.1:2").goroutine(11);
    let sa = a.start(&mut l, 0);
    let sb = b.start(&mut l, 1);
    // b's handler calls first, on connection 0xb; a's on 0xa; the writers swap threads.
    round_trip(&mut l, 11, 0xb);
    conn_writer(&mut l, 21, 0xb);
    let call_b = Req::client(3, P, 92, "10.0.0.1:41001", "10.0.0.2:80").goroutine(21);
    let cb = call_b.start(&mut l, 2);
    round_trip(&mut l, 10, 0xa);
    conn_writer(&mut l, 20, 0xa);
    let call_a = Req::client(4, P, 91, "10.0.0.1:41000", "10.0.0.2:80").goroutine(20);
    let ca = call_a.start(&mut l, 3);
    // A goroutine a's handler started, calling on b's (now idle) connection.
    l.go_hand_off(
        P,
        Spawn {
            parent: 10,
            child: 12,
        },
    );
    round_trip(&mut l, 12, 0xb);
    let call_a2 = Req::client(5, P, 93, "10.0.0.1:41001", "10.0.0.2:80")
        .seq(1)
        .goroutine(21);
    let ca2 = call_a2.start(&mut l, 4);
    // The pool goroutine, on the connection a's handler used before.
    round_trip(&mut l, 30, 0xa);
    let pool = Req::client(6, P, 91, "10.0.0.1:41000", "10.0.0.2:80")
        .seq(1)
        .goroutine(20);
    let cp = pool.start(&mut l, 5);
    // a answered: its goroutine's next call (if any) is not a's.
    a.finish(&mut l, 6);
    round_trip(&mut l, 10, 0xa);
    let late = Req::client(7, P, 91, "10.0.0.1:41000", "10.0.0.2:80")
        .seq(2)
        .goroutine(20);
    let cl = late.start(&mut l, 7);
    for r in [&call_a, &call_b, &call_a2, &pool, &late, &b] {
        r.finish(&mut l, 8);
    }
    let spans = l.poll(WINDOW + 10, false);
    assert_eq!(find(&spans, ca).parent_span_id, Some(sa));
    assert_eq!(find(&spans, cb).parent_span_id, Some(sb));
    assert_eq!(
        find(&spans, ca2).parent_span_id,
        Some(sa),
        "the child goroutine's call"
    );
    assert_eq!(find(&spans, cp).parent_span_id, None, "the pool's call");
    assert_eq!(
        find(&spans, cl).parent_span_id,
        None,
        "after the request was answered"
    );
    let stats = l.stats();
    assert_eq!((stats.by_goroutine, stats.by_thread), (3, 0));
    assert_eq!(stats.abstained, [0, 0, 0, 2, 0, 0]);
}

/// A Go process whose goroutines are not followed (no goroutine in its events) never links
/// by thread; a replaced process's goroutine ids are forgotten.
#[test]
fn go_without_goroutines_abstains_and_reused_pids_start_afresh() {
    use crate::capture::events::GoHandOff::*;
    let mut l = linker();
    let srv = Req::server(1, 4, 40, "10.0.0.1:8080", "192.0.2.1:1").goroutine(7);
    srv.start(&mut l, 0);
    let unfollowed = Req::client(2, 4, 40, "10.0.0.1:41000", "10.0.0.2:80").go();
    let c = unfollowed.start(&mut l, 1);
    l.forget_process(4);
    l.go_hand_off(4, RoundTrip { goid: 7, conn: 0x1 });
    l.go_hand_off(4, ConnWriter { goid: 8, conn: 0x1 });
    let after = Req::client(3, 4, 40, "10.0.0.1:41001", "10.0.0.2:80").goroutine(8);
    let c2 = after.start(&mut l, 2);
    for r in [&unfollowed, &after, &srv] {
        r.finish(&mut l, 3);
    }
    let spans = l.poll(WINDOW + 10, false);
    assert_eq!(find(&spans, c).parent_span_id, None);
    assert_eq!(find(&spans, c2).parent_span_id, None);
    assert_eq!(l.stats().abstained, [0, 0, 1, 1, 0, 0]);
}

/// An aiohttp-like event loop: requests a and b arrive, each handled by its own task (100,
/// 101) on the same thread. b's task calls first, then a's; each answers after its call.
/// A call's parent is the request its task answers, whatever the order of arrival or of
/// the calls. A gathered child task (102) never answers anything: its call abstains at the
/// deadline. A task whose address was reused (103 called before request c arrived, then
/// answered c) gets no parent for the call made before c arrived.
#[test]
fn asyncio_calls_follow_the_task_that_answers() {
    const P: u32 = 5;
    let mut l = linker();
    let a = Req::server(1, P, 50, "10.0.0.1:8080", "192.0.2.1:1").task(0);
    let b = Req::server(2, P, 50, "10.0.0.1:8080", "192.0.2.1:2").task(0);
    let stale = Req::client(9, P, 50, "10.0.0.1:41009", "10.0.0.2:80").task(103);
    let cs = stale.start(&mut l, 0);
    let sa = a.start(&mut l, 1);
    let sb = b.start(&mut l, 2);
    let call_b = Req::client(3, P, 50, "10.0.0.1:41001", "10.0.0.2:80").task(101);
    let cb = call_b.start(&mut l, 3);
    let call_a = Req::client(4, P, 50, "10.0.0.1:41002", "10.0.0.2:80").task(100);
    let ca = call_a.start(&mut l, 4);
    let gathered = Req::client(5, P, 50, "10.0.0.1:41003", "10.0.0.2:80").task(102);
    let cg = gathered.start(&mut l, 5);
    for r in [&call_b, &call_a, &gathered, &stale] {
        r.finish(&mut l, 6);
    }
    // Nothing is decided before the tasks answer.
    assert!(l.poll(7, false).is_empty());
    // a's task answers first (a partial write: the response head), then b's.
    l.task_responded(P, 100, 1);
    l.task_responded(P, 100, 1);
    a.finish(&mut l, 8);
    l.task_responded(P, 101, 2);
    b.finish(&mut l, 9);
    let c = Req::server(6, P, 50, "10.0.0.1:8080", "192.0.2.1:3").task(0);
    let sc = c.start(&mut l, 10);
    l.task_responded(P, 103, 6);
    c.finish(&mut l, 11);
    // The servers wait for their (untraced) clients, and the calls for them.
    let spans = l.poll(20 + WINDOW, false);
    assert_eq!(find(&spans, ca).parent_span_id, Some(sa));
    assert_eq!(find(&spans, cb).parent_span_id, Some(sb));
    assert_eq!(
        find(&spans, cs).parent_span_id,
        None,
        "written before request c arrived"
    );
    assert!(find(&spans, sc).parent_span_id.is_none());
    assert_eq!(find(&spans, cg).parent_span_id, None, "never answered");
    let stats = l.stats();
    assert_eq!((stats.by_task, stats.by_thread), (2, 0));
    assert_eq!(stats.abstained, [0, 0, 0, 0, 2, 0]);
    assert!(l.tasks_waiting.is_empty(), "nothing left waiting");
}

/// A task's call carrying its own trace context (an SDK in the process) keeps it when the
/// task answers nothing; a task answering on a connection with nothing in flight (its
/// request given up) links nothing.
#[test]
fn asyncio_unanswered_calls_fall_back_to_their_header() {
    const P: u32 = 6;
    let mut l = linker();
    let call = Req::client(1, P, 60, "10.0.0.1:41000", "10.0.0.2:80")
        .task(7)
        .ctx(header(3, 4));
    let c = call.start(&mut l, 0);
    call.finish(&mut l, 1);
    l.task_responded(P, 7, 99);
    let spans = l.poll(2, false);
    let s = find(&spans, c);
    assert_eq!((s.trace_id, s.parent_span_id), ([3; 16], Some([4; 8])));
    assert_eq!(l.stats().abstained, [0, 0, 0, 0, 1, 0]);
}

/// With a long link window (a slow node), a caller still pending late in the window is
/// asked again until the deadline, not only in the first second: a chain crossing several
/// nodes resolves top-down, and the upstream hop may take most of the window.
#[test]
fn lookups_continue_until_the_deadline() {
    const MS: u64 = 1_000_000;
    let mut l = Linker::new(LinkConfig {
        window_ns: 3_000 * MS,
        remote: true,
        ..Default::default()
    });
    let srv = Req::server(1, 5, 5, "10.0.0.1:80", "192.0.2.1:1000");
    let s = srv.start(&mut l, 0);
    let mut asked_at = Vec::new();
    for t in (0..4_000).step_by(10) {
        if !l.due_lookups(t * MS).is_empty() {
            asked_at.push(t);
        }
    }
    assert_eq!(asked_at.len(), 5 + 5, "asked at {asked_at:?} ms");
    assert!(
        asked_at
            .last()
            .is_some_and(|&t| (2_500..3_000).contains(&t)),
        "{asked_at:?}"
    );
    // The caller's agent finally answers late in the window: the span is linked.
    let key = ("192.0.2.1:1000".parse().unwrap(), 0);
    let ctx = SpanContext {
        trace_id: [7; 16],
        span_id: [9; 8],
        sampled: Some(true),
        trace_state: String::new(),
    };
    assert!(l.remote_found(key, ctx));
    srv.finish(&mut l, 2_900 * MS);
    let spans = l.poll(2_901 * MS, false);
    assert_eq!(find(&spans, s).parent_span_id, Some([9; 8]));
}

/// An excluded request (a kubelet probe) releases no span, and neither does what it
/// caused: the call its handler made, and that call's server on another process. A caller
/// on another node is told the trace is not sampled. Other requests are untouched.
#[test]
fn excluded_requests_take_their_trace_with_them() {
    let mut l = remote_linker();
    let probe = Req::server(1, 10, 11, "10.0.0.1:80", "10.0.0.9:5000").excluded();
    let call = Req::client(2, 10, 11, "10.0.0.1:40000", "10.0.0.2:5432");
    let db = Req::server(3, 20, 21, "10.0.0.2:5432", "10.0.0.1:40000");
    let other = Req::server(4, 10, 12, "10.0.0.1:80", "10.0.0.9:5001");
    let p = probe.start(&mut l, 0);
    let c = call.start(&mut l, 1);
    db.start(&mut l, 2);
    let o = other.start(&mut l, 3);
    for r in [&db, &call, &probe, &other] {
        r.finish(&mut l, 10);
    }
    let spans = l.poll(3_000_000_000, false);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].span_id, o);
    assert_eq!(l.stats().excluded, 3);
    assert_ne!(p, c);
    // Asked by the caller's node about the excluded call: not sampled.
    let key = ("10.0.0.1:40000".parse().unwrap(), 0);
    match l.answer(key, 3_000_000_001) {
        Answer::Found(ctx) => assert_eq!(ctx.sampled, Some(false)),
        other => panic!("{other:?}"),
    }
}

/// gRPC's C core reads every stream of a connection on its I/O threads and writes the
/// calls of handlers running on pool threads from the same I/O threads: the one stream a
/// thread read says nothing about the call it writes while its process serves others.
/// With a single request in the process, the thread rule holds as for an event loop.
#[test]
fn multiplexed_streams_link_by_thread_only_when_alone_in_their_process() {
    let mut l = linker();
    let a = Req::server(1, 5, 50, "10.0.0.1:8080", "192.0.2.1:1").h2();
    let b = Req::server(1, 5, 51, "10.0.0.1:8080", "192.0.2.1:1")
        .h2()
        .seq(1);
    let sa = a.start(&mut l, 0);
    b.start(&mut l, 1);
    // Thread 50 read a's stream, and writes b's handler's call.
    let call = Req::client(2, 5, 50, "10.0.0.1:41000", "10.0.0.2:80");
    let c = call.start(&mut l, 2);
    call.finish(&mut l, 3);
    b.finish(&mut l, 4);
    // a alone now: its call is a's.
    let alone = Req::client(2, 5, 50, "10.0.0.1:41000", "10.0.0.2:80").seq(1);
    let c2 = alone.start(&mut l, 5);
    alone.finish(&mut l, 6);
    a.finish(&mut l, 7);
    let spans = l.poll(WINDOW + 10, false);
    assert_eq!(find(&spans, c).parent_span_id, None);
    assert_eq!(find(&spans, c2).parent_span_id, Some(sa));
    let stats = l.stats();
    assert_eq!((stats.by_thread, stats.abstained), (1, [0, 0, 0, 0, 0, 1]));
}

/// Go's HTTP/2 server reads the first streams on the goroutine that then starts every
/// handler: a goroutine reading a multiplexed connection works for none of its streams,
/// so the handlers it starts inherit nothing.
#[test]
fn goroutines_reading_http2_work_for_no_stream() {
    use crate::capture::events::GoHandOff::*;
    const P: u32 = 9;
    let mut l = linker();
    let first = Req::server(1, P, 91, "10.0.0.1:8080", "192.0.2.1:1")
        .goroutine(10)
        .h2();
    first.start(&mut l, 0);
    // The serving goroutine starts the handler of a later stream.
    l.go_hand_off(
        P,
        Spawn {
            parent: 10,
            child: 30,
        },
    );
    let call = Req::client(2, P, 92, "10.0.0.1:41000", "10.0.0.2:80").goroutine(30);
    let c = call.start(&mut l, 1);
    call.finish(&mut l, 2);
    first.finish(&mut l, 3);
    let spans = l.poll(WINDOW + 10, false);
    assert_eq!(find(&spans, c).parent_span_id, None);
    let stats = l.stats();
    assert_eq!(
        (stats.by_goroutine, stats.abstained),
        (0, [0, 0, 0, 1, 0, 0])
    );
}

#[test]
fn recent_map_keeps_the_newest_half_at_least_and_the_cap_at_most() {
    let mut m = RecentMap::new(100);
    for i in 0..1_000u32 {
        m.insert(i, i * 2);
        assert!(m.len() <= 100, "{i}: {}", m.len());
        // The newest 50 keys are always there, with their values.
        for k in i.saturating_sub(49)..=i {
            assert_eq!(m.get(&k), Some(&(k * 2)), "{i}: {k}");
        }
    }
    assert_eq!(m.get(&0), None);
    assert_eq!(m.get(&899), None, "older than the two generations");
    // Re-inserting a key the younger generation holds updates it in place.
    m.insert(999, 7);
    assert_eq!(m.get(&999), Some(&7));
}
