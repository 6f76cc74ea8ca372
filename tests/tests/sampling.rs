//! Root integration suite: what is traced and how spans are named — kubelet probes and
//! excluded paths dropped with everything they cause downstream, span names by route.
//! Expected counts come from the requests the test makes, never from the agent.

use std::time::Duration;

use tracer_testkit::ReceivedSpan;
use tracer_testkit::spans::{agent_exporting_to, span_pid};
use tracer_testkit::workloads::python::python_app_server;
use tracer_testkit::workloads::{CurlRun, curl};

/// A Python server that, for every GET, calls the backend at `/back?from=<path>` (a new
/// connection each time, from the handler's thread) and answers 200.
fn middle_server(backend_port: u16) -> tracer_testkit::workloads::Server {
    let script = format!(
        r#"
import http.server, socketserver, urllib.request
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_GET(self):
        urllib.request.urlopen("http://127.0.0.1:{backend_port}/back?from=" + self.path.replace("?", "%3F")).read()
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
srv = Server(("127.0.0.1", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#
    );
    let mut cmd = tracer_testkit::workloads::python::python();
    cmd.arg("-c").arg(script);
    tracer_testkit::workloads::spawn_printing_port(cmd, "python3 middle server")
        .expect("middle server starts")
}

/// Probes from the kubelet and requests to excluded paths (prefix and glob) give no span at
/// all, neither theirs nor those of the calls they cause downstream; the same paths from
/// another client, and other paths, are traced whole. Spans are named by the configured
/// route, else by the guessed template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_excluded_paths_cost_no_spans_and_routes_name_spans() {
    let rx = tracer_testkit::spans::receiver().await.unwrap();
    let backend = python_app_server("127.0.0.1", false).unwrap();
    let middle = middle_server(backend.port);
    let agent = agent_exporting_to(
        &rx,
        &[
            "--exclude-path",
            "/stats",
            "--exclude-path",
            "/api/*/status",
            "--route",
            "/users/{id}",
        ],
    )
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{}", middle.port);
    let get =
        |path: &str, ua: &str| -> CurlRun { curl(&["-A", ua, &format!("{base}{path}")]).unwrap() };
    let mut excluded: Vec<CurlRun> = Vec::new();
    let mut traced: Vec<(CurlRun, &str, &str)> = Vec::new();
    for _ in 0..3 {
        excluded.push(get("/healthz", "kube-probe/1.31"));
    }
    for _ in 0..2 {
        traced.push((get("/healthz", "curl/8"), "/healthz", "url.template"));
        excluded.push(get("/statsz", "curl/8"));
        excluded.push(get("/api/orders/status", "curl/8"));
    }
    traced.push((get("/users/42", "curl/8"), "/users/{id}", "http.route"));
    traced.push((get("/items/7?x=1", "curl/8"), "/items/{id}", "url.template"));

    let mut pids: Vec<u32> = excluded
        .iter()
        .chain(traced.iter().map(|t| &t.0))
        .map(|r| r.pid)
        .collect();
    pids.extend([middle.pid(), backend.pid()]);
    // Each traced request: curl's CLIENT, the middle's SERVER and CLIENT, the backend's SERVER.
    let want = 4 * traced.len();
    let (spans, metrics) =
        tracer_testkit::spans::collect(&rx, agent, &pids, want, Duration::from_secs(30))
            .await
            .unwrap();
    let metric = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    };
    for run in &excluded {
        let theirs: Vec<&ReceivedSpan> = spans.iter().filter(|s| span_pid(s) == run.pid).collect();
        assert!(
            theirs.is_empty(),
            "an excluded request was traced: {theirs:#?}"
        );
    }
    assert_eq!(
        spans.len(),
        want,
        "only the traced requests' spans, downstream included:\n{}",
        tracer_testkit::spans::summary(&spans)
    );
    for (run, route, attr) in &traced {
        let client =
            tracer_testkit::spans::one(&spans, "curl's CLIENT span", |s| span_pid(s) == run.pid);
        let trace: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == client.trace_id)
            .collect();
        assert_eq!(trace.len(), 4, "one whole trace for {route}: {trace:#?}");
        let server = trace
            .iter()
            .find(|s| s.kind == "SERVER" && span_pid(s) == middle.pid())
            .expect("the middle's SERVER span");
        assert_eq!(server.name, format!("GET {route}"));
        assert_eq!(server.attr_str(attr), Some(*route));
        if *attr == "url.template" {
            assert_eq!(
                server.attr_str("http.route"),
                None,
                "a guess is never http.route"
            );
        }
        // curl's span is named by the same route (a CLIENT span has no http.route).
        assert_eq!(client.name, format!("GET {route}"));
        assert_eq!(client.attr_str("url.template"), Some(*route));
        let back = trace
            .iter()
            .find(|s| s.kind == "SERVER" && span_pid(s) == backend.pid())
            .expect("the backend's SERVER span");
        assert_eq!(back.name, "GET /back");
    }
    // Each excluded request is seen at both ends (curl and the middle); the rule counts
    // each end, and every span of its trace is counted as excluded.
    assert_eq!(
        metric("tracer_requests_excluded_total{rule=\"kube_probe\"}"),
        2 * 3
    );
    assert_eq!(
        metric("tracer_requests_excluded_total{rule=\"path\"}"),
        2 * 4
    );
    assert_eq!(
        metric("tracer_spans_excluded_total"),
        4 * excluded.len() as u64
    );
}

/// A server answering `/fail` with 500 and `/slow` after 300 ms, anything else at once.
fn failing_server() -> tracer_testkit::workloads::Server {
    let script = r#"
import http.server, socketserver, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_GET(self):
        status = 500 if self.path.startswith("/fail") else 200
        if self.path.startswith("/slow"):
            time.sleep(0.3)
        body = b"done\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
srv = Server(("127.0.0.1", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
    let mut cmd = tracer_testkit::workloads::python::python();
    cmd.arg("-c").arg(script);
    tracer_testkit::workloads::spawn_printing_port(cmd, "python3 failing server")
        .expect("server starts")
}

/// Tail sampling at 1%: every trace with an error (5xx), every slow trace (300 ms against a
/// 200 ms threshold) and every trace on `/checkout*` (a per-route rule at 100%) is exported
/// whole; of 201 ordinary traces a share within four standard deviations of the ratio is,
/// each whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sampling_at_one_percent_keeps_every_error_slow_and_checkout_trace() {
    tail_sampling_at(0.01).await;
}

/// The same at 50%, where the ratio's share is large enough to check closely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sampling_at_half_keeps_a_ratio_of_the_rest() {
    tail_sampling_at(0.5).await;
}

async fn tail_sampling_at(ratio: f64) {
    const FAILS: usize = 5;
    const CHECKOUTS: usize = 4;
    const SLOWS: usize = 3;
    const ORDINARY: usize = 201;
    tracer_testkit::workloads::python::require_python_requests().unwrap();
    let rx = tracer_testkit::spans::receiver().await.unwrap();
    let special = failing_server();
    let ordinary = python_app_server("127.0.0.1", false).unwrap();
    let agent = agent_exporting_to(
        &rx,
        &[
            "--sample-ratio",
            &ratio.to_string(),
            "--sample-route",
            "/checkout*=1",
            "--sample-errors",
            "--sample-slower-than-ms",
            "200",
            "--tail-wait-ms",
            "500",
        ],
    )
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{}", special.port);
    let mut kept_runs = Vec::new();
    for i in 0..FAILS {
        kept_runs.push(curl(&[&format!("{base}/fail/{i}")]).unwrap());
    }
    for i in 0..SLOWS {
        kept_runs.push(curl(&[&format!("{base}/slow/{i}")]).unwrap());
    }
    for i in 0..CHECKOUTS {
        kept_runs.push(curl(&[&format!("{base}/checkout/{i}")]).unwrap());
    }
    let (client, out) = tracer_testkit::workloads::run_client(
        tracer_testkit::workloads::python::python_requests_client(ordinary.port, ORDINARY - 1, 0),
        "python requests client",
    )
    .unwrap();
    assert_eq!(
        tracer_testkit::workloads::reported(&out, "requests").unwrap(),
        ORDINARY as u64
    );

    let mut pids: Vec<u32> = kept_runs.iter().map(|r| r.pid).collect();
    pids.extend([special.pid(), client, ordinary.pid()]);
    // At least the error and slow traces; the agent's stop then decides the rest.
    let want = 2 * (FAILS + SLOWS + CHECKOUTS);
    let (spans, metrics) =
        tracer_testkit::spans::collect(&rx, agent, &pids, want, Duration::from_secs(30))
            .await
            .unwrap();
    for run in &kept_runs {
        let c =
            tracer_testkit::spans::one(&spans, "curl's CLIENT span", |s| span_pid(s) == run.pid);
        let trace = spans.iter().filter(|s| s.trace_id == c.trace_id).count();
        assert_eq!(trace, 2, "the kept trace of curl {} is whole", run.pid);
    }
    let special_spans = spans
        .iter()
        .filter(|s| span_pid(s) == special.pid())
        .count();
    assert_eq!(special_spans, FAILS + SLOWS + CHECKOUTS);
    let mut traces: std::collections::HashMap<&str, usize> = Default::default();
    for s in spans
        .iter()
        .filter(|s| span_pid(s) == client || span_pid(s) == ordinary.pid())
    {
        *traces.entry(s.trace_id.as_str()).or_default() += 1;
    }
    assert!(
        traces.values().all(|&n| n == 2),
        "every kept ordinary trace is whole: {traces:?}"
    );
    let kept = traces.len() as f64;
    let (mean, sd) = (
        ORDINARY as f64 * ratio,
        (ORDINARY as f64 * ratio * (1.0 - ratio)).sqrt(),
    );
    assert!(
        (kept - mean).abs() <= 4.0 * sd,
        "{kept} of {ORDINARY} ordinary traces kept at ratio {ratio} (expected {mean} ± {:.1})",
        4.0 * sd
    );
    let metric = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    };
    // The agent traces the whole machine: the test's own readiness polls of the agent
    // (503 until ready) are error traces too, so these count at least ours. The exact
    // counts are the spans' above.
    assert!(metric("tracer_tail_traces_total{decision=\"error\"}") >= FAILS as u64);
    assert!(metric("tracer_tail_traces_total{decision=\"slow\"}") >= SLOWS as u64);
    assert_eq!(
        metric("tracer_tail_traces_total{decision=\"route\"}"),
        CHECKOUTS as u64
    );
    println!(
        "ratio {ratio}: kept {kept} of {ORDINARY} ordinary traces; metrics: error {}, slow {}, sampled {}, dropped {}",
        metric("tracer_tail_traces_total{decision=\"error\"}"),
        metric("tracer_tail_traces_total{decision=\"slow\"}"),
        metric("tracer_tail_traces_total{decision=\"sampled\"}"),
        metric("tracer_tail_traces_total{decision=\"dropped\"}"),
    );
}

/// A flood of traces nobody keeps (ratio 0, errors only, a wait longer than the test)
/// against a buffer of 500 spans: the buffer never holds more, the oldest traces are decided early instead, none
/// of them is exported, and the agent's memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_buffer_stays_bounded_under_a_flood_of_unsampled_traces() {
    const WARM_UP: usize = 500;
    const REQUESTS: usize = 3000;
    const MAX_SPANS: u64 = 500;
    let rx = tracer_testkit::spans::receiver().await.unwrap();
    let server = tracer_testkit::workloads::node::node_server().unwrap();
    let agent = agent_exporting_to(
        &rx,
        &[
            "--sample-ratio",
            "0",
            "--sample-errors",
            "--tail-wait-ms",
            "600000",
            "--tail-max-spans",
            &MAX_SPANS.to_string(),
        ],
    )
    .await
    .unwrap();
    let flood = |requests: usize| {
        let (client, out) = tracer_testkit::workloads::run_client(
            tracer_testkit::workloads::node::node_client(server.port, requests, 4, 0),
            "node client",
        )
        .unwrap();
        assert_eq!(
            tracer_testkit::workloads::reported(&out, "requests").unwrap(),
            requests as u64
        );
        client
    };
    // A first flood brings the agent to its working size under this load (the heap it
    // returned after startup grows back with its first traffic); the memory check is on
    // the second, which a bounded buffer holds in the same room.
    let warm_client = flood(WARM_UP);
    let rss_before = tracer_testkit::workloads::rss_kib(agent.pid()).unwrap();
    let client = flood(REQUESTS);
    // Every exchange built (both ends), then look at the buffer.
    let pids = [warm_client, client, server.pid()];
    let started = std::time::Instant::now();
    while agent.metric("tracer_spans_created_total").await.unwrap()
        < 2 * (WARM_UP + REQUESTS) as u64
    {
        assert!(
            started.elapsed() < tracer_testkit::spans::WAIT,
            "spans were not built in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let buffered = agent.metric("tracer_tail_buffered_spans").await.unwrap();
    let early = agent
        .metric("tracer_tail_decided_early_total")
        .await
        .unwrap();
    let rss_after = tracer_testkit::workloads::rss_kib(agent.pid()).unwrap();
    agent.stop().expect("agent stops cleanly");
    let exported = tracer_testkit::spans::spans_of(&rx.spans(), &pids).len();
    println!(
        "buffered {buffered} of at most {MAX_SPANS}, {early} traces decided early, RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(buffered <= MAX_SPANS, "{buffered} spans buffered");
    // Traces of two spans through 500 places: all but the last ~250 decided early.
    assert!(
        early >= (REQUESTS as u64) - MAX_SPANS,
        "only {early} traces decided early"
    );
    assert_eq!(exported, 0, "nothing of an unsampled flood is exported");
    // A release agent grows by 1-3 MiB here, a debug build by about 9.
    assert!(
        rss_after.saturating_sub(rss_before) < 16 * 1024,
        "agent RSS grew from {rss_before} to {rss_after} KiB"
    );
}
