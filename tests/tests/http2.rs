//! Root integration suite: HTTP/2 and gRPC from real programs (grpcio, @grpc/grpc-js, Go
//! `net/http` h2c, curl), each client multiplexing its calls on one connection. Expected
//! values come from the clients' own reports (calls, status codes, messages, connections)
//! and ids (`x-request-id` metadata, `id=` queries): one CLIENT and one SERVER span per
//! stream, the SERVER span the child of the CLIENT span of the same call, gRPC attributes
//! and statuses by the RPC conventions.

use std::collections::BTreeMap;
use std::process::Command;

use tracer_testkit::spans::{
    WAIT, agent_exporting_to, collect, counts, receiver, span_pid, summary,
};
use tracer_testkit::workloads::python::python_app_server;
use tracer_testkit::workloads::{Server, curl};
use tracer_testkit::workloads::{TempDir, run_client};
use tracer_testkit::{ReceivedSpan, ports::unused_local_addr};
use tracer_tests::grpc::{
    BIG_BYTES, GrpcReport, STREAM_MESSAGES, go_grpc_client, go_grpc_server, go_h2c_client,
    go_h2c_relay, go_h2c_server, newer_go, node_grpc_client_mode, node_grpc_relay,
    node_grpc_server, parse_grpc_report, parse_h2c_report, python_grpc_client, python_grpc_relay,
    python_grpc_server,
};
use tracer_tests::nodes::{GatedClient, finish_two_agents, node_agent};

/// The spans of one traced client run against `server`, with the client's report and the
/// agent's metrics.
async fn traced(
    server: &Server,
    client: Command,
    what: &str,
) -> (Vec<ReceivedSpan>, String, u32, String) {
    let rx = receiver().await.unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let (pid, out) = run_client(client, what).unwrap();
    let calls = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("calls=").or(w.strip_prefix("requests=")))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("{what} printed no count: {out}"));
    let (spans, metrics) = collect(&rx, agent, &[pid, server.pid()], 2 * calls, WAIT)
        .await
        .unwrap();
    (spans, out, pid, metrics)
}

/// A call's pair of spans.
struct Pair<'a> {
    client: &'a ReceivedSpan,
    server: &'a ReceivedSpan,
}

/// Exactly `calls` CLIENT spans of `client` and SERVER spans of `server`, one of each per
/// id `1..=calls` (by `id_of`), every SERVER span the child of its call's CLIENT span and
/// enclosed by it, all of HTTP/2.
fn pairs<'a>(
    spans: &'a [ReceivedSpan],
    client: u32,
    server: u32,
    calls: usize,
    id_of: impl Fn(&ReceivedSpan) -> Option<u64>,
) -> BTreeMap<u64, Pair<'a>> {
    let expected = BTreeMap::from([
        ((client, "CLIENT".to_owned()), calls),
        ((server, "SERVER".to_owned()), calls),
    ]);
    assert_eq!(
        counts(spans),
        expected,
        "one span per stream per side:\n{}",
        summary(spans)
    );
    let mut by_id: BTreeMap<u64, (Option<&ReceivedSpan>, Option<&ReceivedSpan>)> = BTreeMap::new();
    for s in spans {
        let id = id_of(s).unwrap_or_else(|| panic!("span without its call's id: {s:#?}"));
        let slot = by_id.entry(id).or_default();
        let side = if span_pid(s) == client {
            &mut slot.0
        } else {
            &mut slot.1
        };
        assert!(side.is_none(), "two spans of call {id} on one side");
        *side = Some(s);
    }
    let ids: Vec<u64> = by_id.keys().copied().collect();
    assert_eq!(
        ids,
        (1..=calls as u64).collect::<Vec<_>>(),
        "every call, once"
    );
    by_id
        .into_iter()
        .map(|(id, (c, s))| {
            let (c, s) = (c.unwrap(), s.unwrap());
            assert_eq!(
                s.parent_span_id, c.span_id,
                "call {id}: SERVER span under its CLIENT span"
            );
            assert_eq!(s.trace_id, c.trace_id, "call {id}: one trace");
            // A call that ended in a reset or a missed deadline ends on each side when that
            // side saw it end (the server may answer DEADLINE_EXCEEDED after the client has
            // reset the stream): only the starts are ordered then.
            let cut_short =
                c.status_code == "ERROR" && c.attr_int("rpc.grpc.status_code").is_none();
            assert!(
                c.start_unix_nanos <= s.start_unix_nanos
                    && (cut_short || s.end_unix_nanos <= c.end_unix_nanos),
                "call {id}: the CLIENT span encloses the SERVER span\n{c:#?}\n{s:#?}"
            );
            for span in [c, s] {
                assert_eq!(
                    span.attr_str("network.protocol.version"),
                    Some("2"),
                    "{span:#?}"
                );
            }
            (
                id,
                Pair {
                    client: c,
                    server: s,
                },
            )
        })
        .collect()
}

fn request_id(s: &ReceivedSpan) -> Option<u64> {
    s.attr_str("http.request.header.x-request-id")?.parse().ok()
}

/// The `id=N` of a span's URL (`url.query` on the server, `url.full` on the client).
fn query_id(s: &ReceivedSpan) -> Option<u64> {
    let url = s.attr_str("url.query").or(s.attr_str("url.full"))?;
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("id="))?
        .parse()
        .ok()
}

fn assert_grpc(p: &Pair<'_>, method: &str, code: Option<i64>) {
    for s in [p.client, p.server] {
        assert_eq!(s.name, format!("demo.Greeter/{method}"), "{s:#?}");
        assert_eq!(s.attr_str("rpc.system"), Some("grpc"));
        assert_eq!(s.attr_str("rpc.service"), Some("demo.Greeter"));
        assert_eq!(s.attr_str("rpc.method"), Some(method));
        assert_eq!(s.attr_int("rpc.grpc.status_code"), code, "{s:#?}");
    }
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
}

fn assert_nothing_undecodable(metrics: &str) {
    for reason in ["start_missed", "lost", "malformed"] {
        let name = format!("tracer_http2_undecodable_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(metrics, &name), 0, "{name}");
    }
}

async fn python_run(
    mode: &str,
    calls: u32,
    concurrency: u32,
) -> (Server, Vec<ReceivedSpan>, GrpcReport, u32, String) {
    let server = python_grpc_server().unwrap();
    let client = python_grpc_client(server.port, mode, calls, concurrency);
    let (spans, out, pid, metrics) =
        traced(&server, client, &format!("grpcio client ({mode})")).await;
    let report = parse_grpc_report(&out).unwrap();
    assert_eq!(report.calls, u64::from(calls));
    (server, spans, report, pid, metrics)
}

/// grpcio unary calls, 16 in flight on one connection: a span pair per call, status OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_unary_calls_one_span_pair_each() {
    let (server, spans, report, pid, metrics) = python_run("say", 200, 16).await;
    assert_eq!((report.ok, report.conns), (200, 1), "{report:?}");
    let pairs = pairs(&spans, pid, server.pid(), 200, request_id);
    for p in pairs.values() {
        assert_grpc(p, "Say", Some(0));
        assert_eq!(p.client.status_code, "UNSET");
        assert_eq!(p.server.status_code, "UNSET");
    }
    assert_nothing_undecodable(&metrics);
}

/// An error status in the trailers: the client's span is an error, the server's is not
/// (NOT_FOUND is the caller's problem by the RPC conventions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_error_status_from_the_trailers() {
    let (server, spans, report, pid, _) = python_run("fail", 50, 8).await;
    assert_eq!(report.code("NOT_FOUND"), 50, "{report:?}");
    for p in pairs(&spans, pid, server.pid(), 50, request_id).values() {
        assert_grpc(p, "Fail", Some(5));
        assert_eq!(p.client.status_code, "ERROR");
        assert_eq!(p.client.attr_str("error.type"), Some("5"));
        assert_eq!(p.client.status_message, "no such greeting");
        assert_eq!(p.server.status_code, "UNSET");
    }
}

/// A deadline the server misses. gRPC sends the deadline along (`grpc-timeout`): the
/// server ends the call with DEADLINE_EXCEEDED when it passes, and the client resets the
/// stream. Whichever each side saw first ends its span: an error either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_deadline_exceeded_is_an_error_on_both_sides() {
    let (server, spans, report, pid, _) = python_run("deadline", 20, 20).await;
    assert_eq!(report.code("DEADLINE_EXCEEDED"), 20, "{report:?}");
    for p in pairs(&spans, pid, server.pid(), 20, request_id).values() {
        for s in [p.client, p.server] {
            assert_eq!(s.name, "demo.Greeter/Slow");
            assert_eq!(s.status_code, "ERROR", "{s:#?}");
            match s.attr_str("error.type") {
                Some("stream_reset") => assert_eq!(s.attr_int("rpc.grpc.status_code"), None),
                Some("4") => assert_eq!(s.attr_int("rpc.grpc.status_code"), Some(4)),
                other => panic!("error.type {other:?}: {s:#?}"),
            }
        }
        let took = p.client.end_unix_nanos - p.client.start_unix_nanos;
        assert!(
            (250_000_000..1_500_000_000).contains(&took),
            "the client span lasts about the 0.3 s deadline: {took} ns"
        );
    }
}

/// Server streaming: one span per call whatever the number of messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_server_streaming_is_one_span_per_call() {
    let (server, spans, report, pid, _) = python_run("stream", 50, 8).await;
    assert_eq!(report.messages, 50 * STREAM_MESSAGES, "{report:?}");
    for p in pairs(&spans, pid, server.pid(), 50, request_id).values() {
        assert_grpc(p, "Count", Some(0));
        // Five length-prefixed messages `n=1`..`n=5`: 5 × (5 + 3) bytes.
        assert_eq!(p.client.attr_int("http.response.body.size"), Some(40));
    }
}

/// 300 KB answers, 4 in flight: many DATA frames, syscalls moving several hundred KiB
/// (captured as several records, every frame header kept); DATA is only counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_message_larger_than_a_frame() {
    let (server, spans, report, pid, metrics) = python_run("big", 20, 4).await;
    assert_eq!(report.ok, 20, "{report:?}");
    for p in pairs(&spans, pid, server.pid(), 20, request_id).values() {
        assert_grpc(p, "Big", Some(0));
        assert_eq!(
            p.client.attr_int("http.response.body.size"),
            Some(5 + BIG_BYTES as i64)
        );
    }
    assert_nothing_undecodable(&metrics);
}

/// A hundred calls in flight at once, multiplexed on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_on_one_connection() {
    let (server, spans, report, pid, _) = python_run("say", 100, 100).await;
    assert_eq!((report.ok, report.conns), (100, 1), "{report:?}");
    let pairs = pairs(&spans, pid, server.pid(), 100, request_id);
    let ports: std::collections::BTreeSet<_> = pairs
        .values()
        .map(|p| p.client.attr_int("network.local.port"))
        .collect();
    assert_eq!(ports.len(), 1, "one connection: {ports:?}");
}

/// @grpc/grpc-js (Node's nghttp2) on both sides, with 40 distinct indexed metadata per
/// call: the HPACK dynamic table evicts on every call, and every header still decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_with_dynamic_table_eviction() {
    let server = node_grpc_server().unwrap();
    for (mode, method) in [("say", "Say"), ("metadata", "Echo")] {
        let client = node_grpc_client_mode(server.port, mode, 100, 16);
        let (spans, out, pid, metrics) =
            traced(&server, client, &format!("grpc-js client ({mode})")).await;
        let report = parse_grpc_report(&out).unwrap();
        assert_eq!((report.ok, report.conns), (100, 1), "{report:?}");
        for p in pairs(&spans, pid, server.pid(), 100, request_id).values() {
            assert_grpc(p, method, Some(0));
        }
        assert_nothing_undecodable(&metrics);
    }
}

/// Go `net/http` h2c on both sides (500 requests, 64 in flight, one connection), and curl
/// with prior knowledge: plain HTTP/2 spans, the error status of a 503 included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_h2c_and_curl_prior_knowledge() {
    let go = newer_go().unwrap();
    let dir = TempDir::new("h2c").unwrap();
    let server = go_h2c_server(&go, &dir).unwrap();
    let client = go_h2c_client(&go, &dir, server.port, 500, 64).unwrap();
    let (spans, out, pid, _) = traced(&server, client, "go h2c client").await;
    let report = parse_h2c_report(&out).unwrap();
    assert_eq!((report.ok, report.conns), (500, 1), "{report:?}");
    for p in pairs(&spans, pid, server.pid(), 500, query_id).values() {
        assert_eq!(p.server.name, "GET /hello");
        assert_eq!(p.server.attr_int("http.response.status_code"), Some(200));
        assert_eq!(p.server.attr_str("rpc.system"), None);
    }

    let rx = receiver().await.unwrap();
    let agent = agent_exporting_to(&rx, &["--pid", &server.pid().to_string()])
        .await
        .unwrap();
    for path in ["/hello?id=1", "/status/503"] {
        curl(&[
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{}{path}", server.port),
        ])
        .unwrap();
    }
    let (spans, _) = collect(&rx, agent, &[server.pid()], 2, WAIT).await.unwrap();
    let statuses: BTreeMap<i64, &str> = spans
        .iter()
        .map(|s| {
            assert_eq!(s.attr_str("network.protocol.version"), Some("2"));
            (
                s.attr_int("http.response.status_code").unwrap(),
                s.status_code.as_str(),
            )
        })
        .collect();
    assert_eq!(statuses, BTreeMap::from([(200, "UNSET"), (503, "ERROR")]));
}

/// Which gRPC runtime serves a relay of the chain.
#[derive(Debug, Clone, Copy)]
enum Relay {
    /// @grpc/grpc-js: one event loop reads, handles and writes every call.
    Node,
    /// grpcio: the C core's threads read and write, a pool thread runs the handler.
    Python,
}

/// Per hop of a chain of spans (span i → span i+1), how many calls had the child under its
/// own parent, under another span, or under none.
#[derive(Debug, Default)]
struct ChainVerdict {
    right: Vec<usize>,
    wrong: Vec<usize>,
    unlinked: Vec<usize>,
    /// Calls whose spans are one trace, parent by parent.
    whole: usize,
}

impl std::fmt::Display for ChainVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "whole={} per hop right={:?} wrong={:?} unlinked={:?}",
            self.whole, self.right, self.wrong, self.unlinked
        )
    }
}

/// The spans of a gated client's run split over two agents, as two nodes would see them:
/// agent 1 traces the client and `node1`, agent 2 `node2`, joined by the exchange. Checks
/// the client's report (`ok`, one connection) and that exactly `want` spans came, and that
/// every HTTP/2 stream decoded.
async fn across_two_agents(
    client: GatedClient,
    node1: &[u32],
    node2: &[u32],
    want: usize,
) -> (Vec<ReceivedSpan>, String) {
    let rx = receiver().await.unwrap();
    let (ex1, ex2) = (unused_local_addr().unwrap(), unused_local_addr().unwrap());
    let agent2 = node_agent(&rx, node2, ex2, &[ex1], None).await;
    let mut pids1 = vec![client.pid()];
    pids1.extend(node1);
    let agent1 = node_agent(&rx, &pids1, ex1, &[ex2], None).await;
    let pids: Vec<u32> = pids1.iter().chain(node2).copied().collect();
    let out = client.run();
    let end = finish_two_agents(&rx, [agent1, agent2], &pids, want).await;
    assert!(
        end.complete && end.spans.len() == want,
        "want {want} spans, got {}:\n{}",
        end.spans.len(),
        summary(&end.spans)
    );
    for m in &end.metrics {
        assert_nothing_undecodable(m);
    }
    (end.spans, out)
}

/// Judges the chains of `calls` calls: each call's spans by `roles` (pid, kind, name) in
/// causal order, found by the call's own id (`id_of`), each exactly once.
fn judge_chains(
    spans: &[ReceivedSpan],
    roles: &[(u32, &str, &str)],
    calls: u32,
    id_of: impl Fn(&ReceivedSpan) -> Option<u64>,
) -> ChainVerdict {
    let mut by_call: BTreeMap<u64, Vec<Option<&ReceivedSpan>>> = BTreeMap::new();
    for s in spans {
        let id = id_of(s).unwrap_or_else(|| panic!("span without its call's id: {s:#?}"));
        let role = roles
            .iter()
            .position(|&(pid, kind, _)| span_pid(s) == pid && s.kind == kind)
            .unwrap_or_else(|| panic!("span of no role: {s:#?}"));
        let slot = &mut by_call.entry(id).or_insert_with(|| vec![None; roles.len()])[role];
        assert!(slot.is_none(), "call {id}: two spans as {:?}", roles[role]);
        *slot = Some(s);
    }
    assert_eq!(
        by_call.keys().copied().collect::<Vec<_>>(),
        (1..=u64::from(calls)).collect::<Vec<_>>(),
        "every call, once"
    );
    let hops = roles.len() - 1;
    let mut v = ChainVerdict {
        right: vec![0; hops],
        wrong: vec![0; hops],
        unlinked: vec![0; hops],
        whole: 0,
    };
    for (id, chain) in &by_call {
        let chain: Vec<&ReceivedSpan> = chain
            .iter()
            .map(|s| s.unwrap_or_else(|| panic!("call {id}: a span missing")))
            .collect();
        for (s, (_, _, name)) in chain.iter().zip(roles) {
            assert_eq!(s.name, *name, "{s:#?}");
        }
        let mut whole = chain[0].is_root();
        for hop in 0..hops {
            let (parent, child) = (chain[hop], chain[hop + 1]);
            if child.parent_span_id == parent.span_id && child.trace_id == parent.trace_id {
                v.right[hop] += 1;
            } else {
                whole = false;
                if child.is_root() {
                    v.unlinked[hop] += 1;
                } else {
                    v.wrong[hop] += 1;
                }
            }
        }
        v.whole += usize::from(whole);
    }
    v
}

/// The lesson's chain over gRPC, split over two agents: a grpcio client calls
/// `frontend`'s Relay, which calls `backend`'s Relay, which calls the grpcio leaf's Say.
/// Agent 1 traces the client and the frontend, agent 2 the backend and the leaf: the
/// frontend → backend hop is seen half by each. `calls` calls, `concurrency` in flight; the
/// calls' own ids (x-request-id, forwarded by each relay) say which spans belong together.
/// Per call, in causal order: client CLIENT, frontend SERVER, frontend CLIENT, backend
/// SERVER, backend CLIENT, leaf SERVER.
async fn grpc_chain(frontend: Relay, backend: Relay, calls: u32, concurrency: u32) -> ChainVerdict {
    let relay = |kind: Relay, port: u16, method: &str| match kind {
        Relay::Node => node_grpc_relay(port, method),
        Relay::Python => python_grpc_relay(port, method),
    };
    let leaf = python_grpc_server().unwrap();
    let backend = relay(backend, leaf.port, "Say").unwrap();
    let frontend = relay(frontend, backend.port, "Relay").unwrap();
    let client = GatedClient::start(
        &python_grpc_client(frontend.port, "relay", calls, concurrency),
        "grpcio client",
    );
    let load = client.pid();
    let (spans, out) = across_two_agents(
        client,
        &[frontend.pid()],
        &[backend.pid(), leaf.pid()],
        6 * calls as usize,
    )
    .await;
    let report = parse_grpc_report(&out).unwrap();
    assert_eq!(
        (report.ok, report.conns),
        (u64::from(calls), 1),
        "every call answered through the chain: {out}"
    );
    let (relay, say) = ("demo.Greeter/Relay", "demo.Greeter/Say");
    let roles = [
        (load, "CLIENT", relay),
        (frontend.pid(), "SERVER", relay),
        (frontend.pid(), "CLIENT", relay),
        (backend.pid(), "SERVER", relay),
        (backend.pid(), "CLIENT", say),
        (leaf.pid(), "SERVER", say),
    ];
    for s in &spans {
        assert_eq!(s.attr_int("rpc.grpc.status_code"), Some(0), "{s:#?}");
    }
    let v = judge_chains(&spans, &roles, calls, request_id);
    println!("gRPC chain, {calls} calls, {concurrency} in flight: {v}");
    v
}

/// One call at a time through the chain of two @grpc/grpc-js relays: every call one whole
/// trace of six spans across the two agents (an event loop serving one call is that call's
/// cause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_chain_across_two_agents_gives_one_trace_per_call() {
    let v = grpc_chain(Relay::Node, Relay::Node, 100, 1).await;
    assert_eq!(v.whole, 100, "{v:?}");
}

/// 400 calls, 16 in flight, through a @grpc/grpc-js frontend and a grpcio backend: the
/// three peer hops (one across the agents) are exact; the in-process hops are right or
/// left unlinked, never wrong. The event loop has several calls in flight most of the time
/// (it abstains then); grpcio's I/O threads read every stream and write the calls of
/// handlers running on pool threads (it abstains unless a single call is in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_chain_under_concurrency_links_right_or_not_at_all() {
    let v = grpc_chain(Relay::Node, Relay::Python, 400, 16).await;
    for peer_hop in [0, 2, 4] {
        assert_eq!(v.right[peer_hop], 400, "hop {peer_hop}: {v:?}");
    }
    assert_eq!(v.wrong, [0; 5], "nothing linked wrong: {v:?}");
}

/// Go's HTTP/2 server reads a connection's first streams on the goroutine that then starts
/// every stream's handler: 500 requests, 64 in flight on one h2c connection, through a Go
/// relay whose handlers call an HTTP/1.1 server (under the other agent). The handlers'
/// calls are never attached to another stream's request; the peer hops are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_h2c_relay_never_links_a_call_to_another_stream() {
    let go = newer_go().unwrap();
    let dir = TempDir::new("h2c-relay").unwrap();
    let down = python_app_server("127.0.0.1", false).unwrap();
    let relay = go_h2c_relay(&go, &dir, down.port).unwrap();
    let client = GatedClient::start(
        &go_h2c_client(&go, &dir, relay.port, 500, 64).unwrap(),
        "go h2c client",
    );
    let load = client.pid();
    let (spans, out) = across_two_agents(client, &[relay.pid()], &[down.pid()], 2000).await;
    let report = parse_h2c_report(&out).unwrap();
    assert_eq!((report.ok, report.conns), (500, 1), "{report:?}");
    let roles = [
        (load, "CLIENT", "GET /hello"),
        (relay.pid(), "SERVER", "GET /hello"),
        (relay.pid(), "CLIENT", "GET /down"),
        (down.pid(), "SERVER", "GET /down"),
    ];
    let v = judge_chains(&spans, &roles, 500, query_id);
    println!("Go h2c relay, 500 requests, 64 in flight: {v}");
    assert_eq!((v.right[0], v.right[2]), (500, 500), "peer hops: {v:?}");
    assert_eq!(v.wrong, [0; 3], "nothing linked wrong: {v:?}");
}

/// grpc-go on both sides (Debian's golang-google-grpc-dev): 300 calls, 32 in flight on one
/// connection, a span pair each with the gRPC attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_grpc_client_and_server() {
    let dir = TempDir::new("go-grpc").unwrap();
    let server = go_grpc_server(&dir, None).unwrap();
    let client = go_grpc_client(&dir, server.port, "say", 300, 32).unwrap();
    let (spans, out, pid, metrics) = traced(&server, client, "go grpc client").await;
    let report = parse_grpc_report(&out).unwrap();
    assert_eq!((report.ok, report.conns), (300, 1), "{report:?}");
    for p in pairs(&spans, pid, server.pid(), 300, request_id).values() {
        assert_grpc(p, "Say", Some(0));
    }
    assert_nothing_undecodable(&metrics);
}

/// A grpc-go relay between a grpcio client and a @grpc/grpc-js server, split over two
/// agents, 400 calls with 16 in flight: grpc-go reads every stream of a connection on one
/// goroutine, which starts each stream's handler goroutine. The handlers' calls are never
/// attached to another call's request; the peer hops (one across the agents) are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_grpc_relay_never_links_a_call_to_another_stream() {
    let dir = TempDir::new("go-grpc-relay").unwrap();
    let leaf = node_grpc_server().unwrap();
    let relay = go_grpc_server(&dir, Some((leaf.port, "Say"))).unwrap();
    let client = GatedClient::start(
        &python_grpc_client(relay.port, "relay", 400, 16),
        "grpcio client",
    );
    let load = client.pid();
    let (spans, out) = across_two_agents(client, &[relay.pid()], &[leaf.pid()], 1600).await;
    let report = parse_grpc_report(&out).unwrap();
    assert_eq!((report.ok, report.conns), (400, 1), "{report:?}");
    let (relay_name, say) = ("demo.Greeter/Relay", "demo.Greeter/Say");
    let roles = [
        (load, "CLIENT", relay_name),
        (relay.pid(), "SERVER", relay_name),
        (relay.pid(), "CLIENT", say),
        (leaf.pid(), "SERVER", say),
    ];
    let v = judge_chains(&spans, &roles, 400, request_id);
    println!("grpc-go relay, 400 calls, 16 in flight: {v}");
    assert_eq!((v.right[0], v.right[2]), (400, 400), "peer hops: {v:?}");
    assert_eq!(v.wrong, [0; 3], "nothing linked wrong: {v:?}");
}
