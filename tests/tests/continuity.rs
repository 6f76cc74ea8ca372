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
