//! Root integration suite: what a user sees around interruptions, with the real agent at
//! its default export settings: a collector that goes away for a few seconds loses no span,
//! and SIGTERM delivers every span still queued before the agent exits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracer_tests::harness::{Agent, curl, python_http_server};
use tracer_tests::programs::{WAIT, span_pid};
use tracer_tests::{OtlpReceiver, ReceiverProtocol, unused_local_addr};

/// The agent exporting to `endpoint` with the default queue, batch size and export
/// timeout; a short schedule delay so batches are attempted while the collector is away.
async fn agent_exporting(endpoint: SocketAddr, protocol: ReceiverProtocol, delay_ms: u64) -> Agent {
    Agent::start(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}")),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                protocol.otel_name().to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", delay_ms.to_string()),
        ],
    )
    .await
    .expect("agent starts")
}

/// `n` curl requests to `port`; returns their pids.
fn requests(port: u16, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            curl(&[
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{port}/?n={i}"),
            ])
            .expect("curl")
            .pid
        })
        .collect()
}

async fn wait_metric(agent: &Agent, name: &str, at_least: u64) {
    let started = Instant::now();
    loop {
        if agent.metric(name).await.unwrap_or(0) >= at_least {
            return;
        }
        assert!(started.elapsed() < WAIT, "{name} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The collector is down (nothing listens on its port) for 5 s while spans are made, then
/// comes back: every span arrives, none is counted as dropped.
async fn collector_outage_loses_nothing(protocol: ReceiverProtocol) {
    const N: usize = 10;
    let server = python_http_server("127.0.0.1", false).unwrap();
    let endpoint = unused_local_addr().unwrap();
    let agent = agent_exporting(endpoint, protocol, 200).await;
    let down_since = Instant::now();
    let mut pids = requests(server.port, N);
    pids.push(server.child.id());
    // Exports are being refused: the outage is real, not just scheduled.
    wait_metric(&agent, "tracer_export_failures_total", 2).await;
    let outage = Duration::from_secs(5);
    if let Some(rest) = outage.checked_sub(down_since.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let rx = OtlpReceiver::start_on(protocol, endpoint).await.unwrap();
    let mine = |spans: &[tracer_tests::ReceivedSpan]| {
        spans.iter().filter(|s| pids.contains(&span_pid(s))).count()
    };
    let waited = rx.wait_for_spans(|s| mine(s) >= 2 * N, WAIT).await;
    let failures = agent.metric("tracer_export_failures_total").await.unwrap();
    let dropped = agent
        .metric("tracer_spans_dropped_export_failed_total")
        .await
        .unwrap();
    agent.stop().expect("clean stop");
    assert!(
        waited.is_ok(),
        "{} of {} spans arrived after a {outage:?} outage",
        mine(&rx.spans()),
        2 * N
    );
    assert_eq!(mine(&rx.spans()), 2 * N, "each span once");
    assert_eq!(dropped, 0, "nothing dropped ({failures} failed attempts)");
    println!(
        "{protocol:?}: {failures} failed attempts during the outage, {} spans delivered",
        2 * N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_of_5s_over_grpc_loses_no_span() {
    collector_outage_loses_nothing(ReceiverProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_of_5s_over_http_loses_no_span() {
    collector_outage_loses_nothing(ReceiverProtocol::HttpProtobuf).await;
}

/// Spans still queued when SIGTERM arrives (the schedule delay is a minute away) are all
/// delivered before the agent exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_every_queued_span() {
    const N: usize = 20;
    let server = python_http_server("127.0.0.1", false).unwrap();
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let agent = agent_exporting(rx.local_addr(), ReceiverProtocol::Grpc, 60_000).await;
    let mut pids = requests(server.port, N);
    pids.push(server.child.id());
    // Every span made (and held by the batch delay), none sent yet.
    wait_metric(&agent, "tracer_spans_created_total", 2 * N as u64).await;
    assert_eq!(rx.spans().len(), 0, "nothing exported before the signal");
    agent.stop().expect("exit 0 after SIGTERM");
    let got = rx
        .spans()
        .iter()
        .filter(|s| pids.contains(&span_pid(s)))
        .count();
    assert_eq!(got, 2 * N, "every queued span delivered before exit");
}

/// One keep-alive connection in a Python process (`http.client`), as a pooled client holds
/// it, used on command: a line `FIRST COUNT` on stdin sends `GET /pooled?id=N` for each id
/// on that same connection, then prints `done OK` (OK: the 200s it counted).
const POOLED_CLIENT: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
for line in sys.stdin:
    first, count = map(int, line.split())
    ok = 0
    for n in range(first, first + count):
        conn.request("GET", "/pooled?id=%d" % n)
        r = conn.getresponse()
        r.read()
        ok += r.status == 200
    print("done %d" % ok, flush=True)
"#;

struct PooledClient(tracer_tests::harness::LineChild);

impl PooledClient {
    fn start(port: u16) -> PooledClient {
        let mut cmd = tracer_tests::programs::python();
        cmd.arg("-c").arg(POOLED_CLIENT).arg(port.to_string());
        PooledClient(tracer_tests::harness::LineChild::spawn(&mut cmd).expect("pooled client"))
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Sends ids `first..first + count` on the one connection; asserts every one got 200.
    fn send(&mut self, first: u32, count: u32) {
        let out = self
            .0
            .ask(&format!("{first} {count}"), |l| l.starts_with("done "))
            .expect("client report");
        assert_eq!(
            out.trim(),
            format!("done {count}"),
            "every request answered 200"
        );
    }
}

/// `id=N` of a span's query.
fn id_of(span: &tracer_tests::ReceivedSpan) -> Option<u32> {
    let query = span.attr_str("url.query").map(str::to_owned).or_else(|| {
        span.attr_str("url.full")
            .and_then(|u| u.split_once('?').map(|(_, q)| q.to_owned()))
    })?;
    tracer_tests::linking::query_param(&query, "id")?
        .parse()
        .ok()
}

/// For each id in `ids`: exactly one CLIENT span of `client` and one SERVER span of
/// `server`, the SERVER span the CLIENT span's child. Returns the problems found.
fn pairs_linked(
    spans: &[tracer_tests::ReceivedSpan],
    client: u32,
    server: u32,
    ids: std::ops::Range<u32>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for id in ids {
        let of = |pid: u32, kind: &str| -> Vec<&tracer_tests::ReceivedSpan> {
            spans
                .iter()
                .filter(|s| span_pid(s) == pid && s.kind == kind && id_of(s) == Some(id))
                .collect()
        };
        match (
            of(client, "CLIENT").as_slice(),
            of(server, "SERVER").as_slice(),
        ) {
            ([c], [s]) if s.parent_span_id == c.span_id && s.trace_id == c.trace_id => {}
            ([_], [_]) => problems.push(format!("id {id}: SERVER not the CLIENT's child")),
            (c, s) => problems.push(format!(
                "id {id}: {} CLIENT and {} SERVER spans",
                c.len(),
                s.len()
            )),
        }
    }
    problems
}

/// A client holding one keep-alive connection opened before the agent started (as every
/// pooled client does) is traced from its next request on, at the default settings, both
/// ends linked; and again after the agent is restarted (the new agent finds the same
/// connection in the middle of its life). Requests made while no agent ran stay untraced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_before_the_agent_are_traced() {
    let server = tracer_tests::programs::python_app_server("127.0.0.1", false).unwrap();
    let mut client = PooledClient::start(server.port);
    client.send(1, 5);
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let pids = [client.pid(), server.pid()];
    let scope: Vec<String> = pids
        .iter()
        .flat_map(|p| ["--pid".to_owned(), p.to_string()])
        .collect();
    let scope: Vec<&str> = scope.iter().map(String::as_str).collect();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
    ];
    for (round, first) in [(1, 6u32), (2, 46)] {
        let agent = Agent::start(&scope, &env).await.expect("agent starts");
        let adopted = agent
            .metric("tracer_connections_adopted_total")
            .await
            .unwrap();
        assert!(
            adopted >= 2,
            "round {round}: both ends adopted, got {adopted}"
        );
        client.send(first, 20);
        let want = 2 * 20 * round;
        let waited = rx
            .wait_for_spans(
                |s| tracer_tests::programs::spans_of(s, &pids).len() >= want,
                WAIT,
            )
            .await;
        agent.stop().expect("agent stops cleanly");
        let spans = tracer_tests::programs::spans_of(&rx.spans(), &pids);
        assert!(
            waited.is_ok() && spans.len() == want,
            "round {round}: want {want} spans, got {}",
            spans.len()
        );
        let problems = pairs_linked(&spans, pids[0], pids[1], first..first + 20);
        assert!(problems.is_empty(), "round {round}: {problems:#?}");
        if round == 1 {
            // Sent while no agent runs: the next round must not see them.
            client.send(26, 20);
        }
    }
    let spans = tracer_tests::programs::spans_of(&rx.spans(), &pids);
    assert!(
        spans
            .iter()
            .all(|s| id_of(s).is_some_and(|id| (6..26).contains(&id) || (46..66).contains(&id))),
        "only requests made while an agent ran are traced"
    );
}
