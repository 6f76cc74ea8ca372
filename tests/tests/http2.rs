//! Root integration suite: HTTP/2 and gRPC from real programs (grpcio, @grpc/grpc-js, Go
//! `net/http` h2c, curl), each client multiplexing its calls on one connection. Expected
//! values come from the clients' own reports (calls, status codes, messages, connections)
//! and ids (`x-request-id` metadata, `id=` queries): one CLIENT and one SERVER span per
//! stream, the SERVER span the child of the CLIENT span of the same call, gRPC attributes
//! and statuses by the RPC conventions.

use std::collections::BTreeMap;
use std::process::Command;

use tracer_tests::ReceivedSpan;
use tracer_tests::grpc::{
    BIG_BYTES, GrpcReport, STREAM_MESSAGES, go_h2c_client, go_h2c_server, newer_go,
    node_grpc_client_mode, node_grpc_server, parse_grpc_report, parse_h2c_report,
    python_grpc_client, python_grpc_server,
};
use tracer_tests::harness::{Server, curl};
use tracer_tests::programs::{
    TempDir, WAIT, agent_exporting_to, collect, counts, receiver, run_client, span_pid, summary,
};

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

/// A 40 KB answer, over several DATA frames: DATA is only counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_message_larger_than_a_frame() {
    let (server, spans, report, pid, metrics) = python_run("big", 20, 1).await;
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
