//! Root integration suite: the real agent traces a real server (Python http.server) and a
//! real client (curl), and exports to an OTLP receiver run by the test, over gRPC and over
//! HTTP/protobuf.

use std::time::Duration;

use tracer_tests::harness::{Agent, CurlRun, Server, curl, python_http_server};
use tracer_tests::programs::{self, agent_exporting_to, one, span_pid};
use tracer_tests::{OtlpReceiver, ReceivedSpan, ReceiverProtocol};

async fn collect(rx: &OtlpReceiver, agent: Agent, pids: &[u32], want: usize) -> Vec<ReceivedSpan> {
    programs::collect(rx, agent, pids, want, Duration::from_secs(20))
        .await
        .unwrap()
        .0
}

/// For one curl run: exactly one CLIENT span (curl's pid) and exactly one SERVER span (the
/// server's pid) on the same connection, with the expected attributes and timing.
fn assert_pair(
    spans: &[ReceivedSpan],
    run: &CurlRun,
    server: &Server,
    path: &str,
    status: i64,
) -> (ReceivedSpan, ReceivedSpan) {
    let client = one(
        spans,
        &format!("CLIENT span of curl {} for {path}", run.pid),
        |s| {
            s.kind == "CLIENT"
                && span_pid(s) == run.pid
                && s.attr_str("url.full").is_some_and(|u| u.contains(path))
        },
    );
    let local_port = client
        .attr_int("network.local.port")
        .expect("client local port");
    let server_span = one(
        spans,
        &format!("SERVER span for {path} from port {local_port}"),
        |s| {
            s.kind == "SERVER"
                && span_pid(s) == server.pid()
                && s.attr_int("network.peer.port") == Some(local_port)
                && s.attr_str("url.path") == Some(path)
        },
    );

    assert_eq!(client.service_name(), Some("curl"));
    assert_eq!(client.attr_str("http.request.method"), Some("GET"));
    assert_eq!(client.attr_int("http.response.status_code"), Some(status));
    assert_eq!(client.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(client.attr_int("server.port"), Some(server.port as i64));
    assert_eq!(client.attr_str("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(
        client.attr_int("network.peer.port"),
        Some(server.port as i64)
    );
    assert_eq!(client.attr_str("network.protocol.version"), Some("1.1"));
    assert!(
        client
            .attr_str("user_agent.original")
            .is_some_and(|ua| ua.starts_with("curl/"))
    );
    assert_eq!(
        client.status_code,
        if status >= 400 { "ERROR" } else { "UNSET" }
    );

    assert_eq!(server_span.name, "GET");
    assert_eq!(server_span.attr_str("http.request.method"), Some("GET"));
    assert_eq!(
        server_span.attr_int("http.response.status_code"),
        Some(status)
    );
    assert_eq!(server_span.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(
        server_span.attr_str("network.peer.address"),
        Some("127.0.0.1")
    );
    assert_eq!(
        server_span.attr_int("server.port"),
        Some(server.port as i64)
    );
    assert_eq!(server_span.attr_str("url.scheme"), Some("http"));
    assert!(
        server_span
            .service_name()
            .is_some_and(|s| s.starts_with("python"))
    );
    // 4xx is the client's problem: not an error on the server side.
    assert_eq!(
        server_span.status_code,
        if status >= 500 { "ERROR" } else { "UNSET" }
    );

    assert!(
        client.start_unix_nanos <= server_span.start_unix_nanos
            && server_span.end_unix_nanos <= client.end_unix_nanos,
        "client span [{}, {}] must enclose server span [{}, {}]",
        client.start_unix_nanos,
        client.end_unix_nanos,
        server_span.start_unix_nanos,
        server_span.end_unix_nanos
    );
    assert!(server_span.start_unix_nanos < server_span.end_unix_nanos);
    // Both ends are traced: one trace, the server span a child of the client span.
    assert_eq!(server_span.trace_id, client.trace_id);
    assert_eq!(server_span.parent_span_id, client.span_id);
    assert!(
        client.is_root(),
        "curl was not serving anything: {client:#?}"
    );
    (client.clone(), server_span.clone())
}

async fn requests_on_separate_connections(protocol: ReceiverProtocol) {
    let rx = OtlpReceiver::start(protocol)
        .await
        .expect("receiver starts");
    let server = python_http_server("127.0.0.1", false).expect("python server starts");
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);

    let ok = curl(&[&format!("{base}/")]).unwrap();
    let missing = curl(&[&format!("{base}/missing?token=s3cr3t&x=1")]).unwrap();
    let again = curl(&[&format!("{base}/")]).unwrap();
    let pids = [ok.pid, missing.pid, again.pid, server.pid()];
    let spans = collect(&rx, agent, &pids, 6).await;

    assert_eq!(
        spans.len(),
        6,
        "3 requests give exactly 3 CLIENT + 3 SERVER spans: {spans:#?}"
    );
    assert_pair(&spans, &ok, &server, "/", 200);
    assert_pair(&spans, &again, &server, "/", 200);
    let (client, server_span) = assert_pair(&spans, &missing, &server, "/missing", 404);
    // Credentials in the query never leave the agent.
    assert_eq!(
        server_span.attr_str("url.query"),
        Some("token=REDACTED&x=1")
    );
    assert!(!client.attr_str("url.full").unwrap().contains("s3cr3t"));
    // Each process is its own resource.
    assert_ne!(client.resource, server_span.resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_python_over_otlp_grpc() {
    requests_on_separate_connections(ReceiverProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_python_over_otlp_http_protobuf() {
    requests_on_separate_connections(ReceiverProtocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_gives_one_pair_per_request() {
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let server = python_http_server("127.0.0.1", true).unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);
    // One curl, three URLs: curl reuses the connection.
    let run = curl(&[
        &format!("{base}/?n=1"),
        &format!("{base}/?n=2"),
        &format!("{base}/?n=3"),
    ])
    .unwrap();
    let spans = collect(&rx, agent, &[run.pid, server.pid()], 6).await;
    assert_eq!(spans.len(), 6, "{spans:#?}");

    let clients: Vec<_> = spans.iter().filter(|s| s.kind == "CLIENT").collect();
    let servers: Vec<_> = spans.iter().filter(|s| s.kind == "SERVER").collect();
    assert_eq!((clients.len(), servers.len()), (3, 3));
    let port = clients[0].attr_int("network.local.port");
    assert!(
        clients
            .iter()
            .all(|c| c.attr_int("network.local.port") == port),
        "one connection"
    );
    for n in 1..=3 {
        let query = format!("n={n}");
        let client = one(&spans, "client", |s| {
            s.kind == "CLIENT" && s.attr_str("url.full").is_some_and(|u| u.ends_with(&query))
        });
        let server_span = one(&spans, "server", |s| {
            s.kind == "SERVER" && s.attr_str("url.query") == Some(query.as_str())
        });
        assert_eq!(server_span.attr_int("network.peer.port"), port);
        assert_eq!(server_span.parent_span_id, client.span_id, "request {n}");
        assert_eq!(client.attr_int("http.response.status_code"), Some(200));
        assert!(client.start_unix_nanos <= server_span.start_unix_nanos);
        assert!(server_span.end_unix_nanos <= client.end_unix_nanos);
    }
}

/// The default a developer sees first: no endpoint, a trace tree on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_mode_prints_trace_trees() {
    let server = python_http_server("127.0.0.1", false).unwrap();
    let agent = Agent::start(&["--pid", &server.pid().to_string()], &[])
        .await
        .unwrap();
    curl(&[&format!("http://127.0.0.1:{}/hello", server.port)]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agent.metric("tracer_spans_exported_total").await.unwrap() < 1 {
        assert!(std::time::Instant::now() < deadline, "no span printed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stdout, _) = agent.stop().unwrap();
    assert!(stdout.contains("trace "), "{stdout}");
    assert!(stdout.contains("SERVER GET 404"), "{stdout}");
    // --pid restricts tracing to the server: curl's CLIENT span is absent.
    assert!(!stdout.contains("CLIENT"), "{stdout}");
}
