//! The agent's OTLP exporter against the in-process receiver: both protocols, retries,
//! partial success, shutdown flush, and a dead collector.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracer_agent::export::config::{self, RetryConfig};
use tracer_agent::export::{ExportConfig, ExportOverrides, Exporter, Protocol, start_processor};
use tracer_agent::metrics::Metrics;
use tracer_agent::spans::{AttrValue, Resource, SpanKind, SpanRecord, SpanStatus};
use tracer_testkit::{OtlpReceiver, ReceiverProtocol, ports::unused_local_addr};

const WAIT: Duration = Duration::from_secs(10);

fn resource(service: &str, pid: i64) -> Arc<Resource> {
    Arc::new(Resource {
        attributes: vec![
            ("service.name".into(), service.into()),
            ("process.pid".into(), AttrValue::Int(pid)),
        ],
    })
}

fn span(resource: &Arc<Resource>, id: u8, parent: Option<u8>, kind: SpanKind) -> SpanRecord {
    SpanRecord {
        trace_id: [0xab; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|p| [p; 8]),
        trace_state: String::new(),
        parent_sampled: None,
        name: format!("GET /s{id}"),
        kind,
        start_unix_nanos: 1_700_000_000_000_000_000 + id as u64,
        end_unix_nanos: 1_700_000_000_000_000_000 + id as u64 + 1_000_000,
        attributes: vec![
            ("http.request.method", "GET".into()),
            ("http.response.status_code", AttrValue::Int(200)),
        ],
        status: SpanStatus::Unset,
        resource: resource.clone(),
    }
}

fn protocol_of(receiver: &OtlpReceiver) -> Protocol {
    match receiver.protocol() {
        ReceiverProtocol::Grpc => Protocol::Grpc,
        ReceiverProtocol::HttpProtobuf => Protocol::HttpProtobuf,
    }
}

/// Retries fast enough for tests; the policy's shape is what is under test.
fn fast_retry(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        max_attempts,
    }
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn deadline() -> Instant {
    Instant::now() + WAIT
}

/// The full path a user takes: `OTEL_*` variables → config → sink → receiver.
async fn two_resources_in_one_request(protocol: ReceiverProtocol) {
    let receiver = OtlpReceiver::start(protocol).await.unwrap();
    let env: HashMap<&str, String> = HashMap::from([
        (config::ENV_ENDPOINT, receiver.endpoint()),
        (config::ENV_PROTOCOL, protocol.otel_name().to_owned()),
        (config::ENV_HEADERS, "x-tenant=acme%20corp".to_owned()),
        // The batch is sent when full, so all four spans travel in one request.
        (config::ENV_BSP_MAX_EXPORT_BATCH_SIZE, "4".to_owned()),
        (config::ENV_BSP_SCHEDULE_DELAY, "600000".to_owned()),
    ]);
    let cfg = config::resolve(|k| env.get(k).cloned(), &ExportOverrides::default())
        .unwrap()
        .expect("endpoint configured");
    assert_eq!(cfg.endpoint, receiver.traces_url());
    let metrics = Arc::new(Metrics::default());
    let sink = start_processor(Some(cfg), metrics.clone()).unwrap();
    assert!(matches!(sink.exporter(), Exporter::Otlp(_)));

    let (frontend, backend) = (resource("frontend", 10), resource("backend", 20));
    let mut failed = span(&backend, 4, Some(3), SpanKind::Client);
    failed.status = SpanStatus::Error {
        description: "HTTP 503".into(),
    };
    failed.trace_state = "vendor=x".into();
    sink.submit(span(&frontend, 1, None, SpanKind::Server));
    sink.submit(span(&backend, 3, Some(2), SpanKind::Server));
    sink.submit(span(&frontend, 2, Some(1), SpanKind::Client));
    sink.submit(failed);

    let spans = receiver
        .wait_for_spans(|s| s.len() >= 4, WAIT)
        .await
        .unwrap();
    sink.shutdown(deadline()).await;

    let requests = receiver.received();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].request.resource_spans.len(), 2);
    assert_eq!(
        requests[0].headers.get("x-tenant").map(String::as_str),
        Some("acme corp")
    );
    assert_eq!(spans.len(), 4);

    let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
    let root = by_name("GET /s1");
    assert_eq!(root.service_name(), Some("frontend"));
    assert_eq!(root.kind, "SERVER");
    assert!(root.is_root());
    assert_eq!(root.trace_id, "ab".repeat(16));
    assert_eq!(root.attr_int("http.response.status_code"), Some(200));
    assert_eq!(root.scope_name, "tracer-agent");
    let client = by_name("GET /s2");
    assert_eq!(client.kind, "CLIENT");
    assert_eq!(client.parent_span_id, "01".repeat(8));
    assert_eq!(client.resource_index, root.resource_index);
    let failed = by_name("GET /s4");
    assert_eq!(failed.service_name(), Some("backend"));
    assert_ne!(failed.resource_index, root.resource_index);
    assert_eq!(
        failed.resource.get("process.pid"),
        Some(&tracer_testkit::Value::Int(20))
    );
    assert_eq!(failed.status_code, "ERROR");
    assert_eq!(failed.status_message, "HTTP 503");
    assert_eq!(failed.trace_state, "vendor=x");

    assert_eq!(load(&metrics.spans_exported), 4);
    assert_eq!(load(&metrics.export_requests), 1);
    assert_eq!(load(&metrics.export_failures), 0);
    assert_eq!(load(&metrics.export_queue_depth), 0);
}

#[tokio::test]
async fn grpc_delivers_two_resources_in_one_request() {
    two_resources_in_one_request(ReceiverProtocol::Grpc).await;
}

#[tokio::test]
async fn http_delivers_two_resources_in_one_request() {
    two_resources_in_one_request(ReceiverProtocol::HttpProtobuf).await;
}

async fn retry_after_two_failures_succeeds(protocol: ReceiverProtocol) {
    let receiver = OtlpReceiver::start(protocol).await.unwrap();
    receiver.fail_next(2);
    let mut cfg = ExportConfig::new(receiver.traces_url(), protocol_of(&receiver));
    cfg.batch.max_export_batch_size = 1;
    cfg.retry = fast_retry(5);
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();

    exporter.submit(span(&resource("svc", 1), 1, None, SpanKind::Server));
    let spans = receiver
        .wait_for_spans(|s| !s.is_empty(), WAIT)
        .await
        .unwrap();
    exporter.shutdown(deadline()).await;

    assert_eq!(spans.len(), 1);
    assert_eq!(receiver.attempts(), 3);
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(load(&metrics.export_requests), 3);
    assert_eq!(load(&metrics.export_failures), 2);
    assert_eq!(load(&metrics.spans_exported), 1);
    assert_eq!(load(&metrics.spans_dropped_export_failed), 0);
}

#[tokio::test]
async fn grpc_retry_after_two_failures_succeeds() {
    retry_after_two_failures_succeeds(ReceiverProtocol::Grpc).await;
}

#[tokio::test]
async fn http_retry_after_two_failures_succeeds() {
    retry_after_two_failures_succeeds(ReceiverProtocol::HttpProtobuf).await;
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_the_batch_is_counted_as_dropped() {
    let receiver = OtlpReceiver::start_grpc().await.unwrap();
    receiver.fail_next(100);
    let mut cfg = ExportConfig::new(receiver.traces_url(), Protocol::Grpc);
    cfg.batch.max_export_batch_size = 2;
    cfg.retry = fast_retry(3);
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();
    let r = resource("svc", 1);
    exporter.submit(span(&r, 1, None, SpanKind::Server));
    exporter.submit(span(&r, 2, Some(1), SpanKind::Client));
    receiver.wait_for_attempts(3, WAIT).await.unwrap();
    exporter.shutdown(deadline()).await;

    assert_eq!(receiver.attempts(), 3);
    assert!(receiver.requests().is_empty());
    assert_eq!(load(&metrics.export_requests), 3);
    assert_eq!(load(&metrics.export_failures), 3);
    assert_eq!(load(&metrics.spans_dropped_export_failed), 2);
    assert_eq!(load(&metrics.spans_exported), 0);
}

#[tokio::test]
async fn permanent_http_error_is_not_retried() {
    let receiver = OtlpReceiver::start_http().await.unwrap();
    // The receiver serves only /v1/traces: this path gets a 404, which retrying cannot fix.
    let mut cfg = ExportConfig::new(
        format!("{}/wrong/path", receiver.endpoint()),
        Protocol::HttpProtobuf,
    );
    cfg.batch.max_export_batch_size = 1;
    cfg.retry = fast_retry(5);
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();
    exporter.submit(span(&resource("svc", 1), 1, None, SpanKind::Server));
    exporter.shutdown(deadline()).await;

    assert_eq!(load(&metrics.export_requests), 1);
    assert_eq!(load(&metrics.export_failures), 1);
    assert_eq!(load(&metrics.spans_dropped_export_failed), 1);
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn partial_success_is_not_retried_and_rejected_spans_are_counted() {
    let receiver = OtlpReceiver::start_http().await.unwrap();
    receiver.partial_success_next(1, "span too old");
    let mut cfg = ExportConfig::new(receiver.traces_url(), Protocol::HttpProtobuf);
    cfg.batch.max_export_batch_size = 3;
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();
    let r = resource("svc", 1);
    for id in 1..=3 {
        exporter.submit(span(&r, id, None, SpanKind::Server));
    }
    receiver
        .wait_for_spans(|s| s.len() == 3, WAIT)
        .await
        .unwrap();
    exporter.shutdown(deadline()).await;

    assert_eq!(receiver.attempts(), 1);
    assert_eq!(load(&metrics.export_requests), 1);
    assert_eq!(load(&metrics.spans_exported), 2);
    assert_eq!(load(&metrics.spans_dropped_export_failed), 1);
}

#[tokio::test]
async fn shutdown_flushes_a_partial_batch_before_its_schedule_delay() {
    let receiver = OtlpReceiver::start_grpc().await.unwrap();
    let mut cfg = ExportConfig::new(receiver.traces_url(), Protocol::Grpc);
    // Without shutdown these spans would wait an hour for their batch.
    cfg.batch.schedule_delay = Duration::from_secs(3600);
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();
    let r = resource("svc", 1);
    for id in 1..=3 {
        exporter.submit(span(&r, id, None, SpanKind::Server));
    }
    exporter.shutdown(deadline()).await;

    assert_eq!(receiver.spans().len(), 3);
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(load(&metrics.spans_exported), 3);
}

#[tokio::test]
async fn schedule_delay_sends_a_partial_batch() {
    let receiver = OtlpReceiver::start_http().await.unwrap();
    let mut cfg = ExportConfig::new(receiver.traces_url(), Protocol::HttpProtobuf);
    cfg.batch.schedule_delay = Duration::from_millis(50);
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();
    exporter.submit(span(&resource("svc", 1), 1, None, SpanKind::Server));
    // Batch size is 512: only the timer can send this one span.
    let spans = receiver
        .wait_for_spans(|s| s.len() == 1, WAIT)
        .await
        .unwrap();
    assert_eq!(spans[0].name, "GET /s1");
    exporter.shutdown(deadline()).await;
}

/// Batches go out `max_concurrent_exports` at a time: with the collector holding its
/// answers, four batches are all in flight at once (one at a time, the second would wait
/// for the first answer and this would time out), and all four land once it answers.
async fn batches_in_flight_at_once(protocol: ReceiverProtocol) {
    let receiver = OtlpReceiver::start(protocol).await.unwrap();
    receiver.hold_answers();
    let mut cfg = ExportConfig::new(receiver.traces_url(), protocol_of(&receiver));
    cfg.batch.max_export_batch_size = 1;
    assert_eq!(cfg.batch.max_concurrent_exports, 4);
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();
    let r = resource("svc", 1);
    for id in 1..=4 {
        exporter.submit(span(&r, id, None, SpanKind::Server));
    }
    receiver.wait_for_attempts(4, WAIT).await.unwrap();
    assert_eq!(load(&metrics.spans_exported), 0, "no answer yet");
    receiver.release_answers();
    receiver
        .wait_for_spans(|s| s.len() == 4, WAIT)
        .await
        .unwrap();
    exporter.shutdown(deadline()).await;
    assert_eq!(load(&metrics.spans_exported), 4);
    assert_eq!(load(&metrics.export_requests), 4);
    assert_eq!(receiver.attempts(), 4);
}

#[tokio::test]
async fn grpc_exports_batches_concurrently() {
    batches_in_flight_at_once(ReceiverProtocol::Grpc).await;
}

#[tokio::test]
async fn http_exports_batches_concurrently() {
    batches_in_flight_at_once(ReceiverProtocol::HttpProtobuf).await;
}

/// A collector that is down: `submit` and `submit_all` must stay a non-blocking
/// drop-and-count, memory must stay within the queue, and queued spans must be dropped (and counted) after retries.
///
/// The current-thread runtime makes the counts exact: the export task cannot run while the
/// test submits, so exactly `max_queue_size` spans are held. A `submit` that blocked or
/// waited for the task would hang here instead of passing.
async fn dead_collector(protocol: Protocol) {
    let dead = unused_local_addr().unwrap();
    let mut cfg = ExportConfig::new(format!("http://{dead}"), protocol);
    if protocol == Protocol::HttpProtobuf {
        cfg.endpoint.push_str("/v1/traces");
    }
    cfg.retry = fast_retry(3);
    assert_eq!(cfg.batch.max_queue_size, 8192);
    assert_eq!(cfg.batch.max_export_batch_size, 512);
    let queue = cfg.batch.max_queue_size as u64;
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();

    let r = resource("svc", 1);
    let template = span(&r, 1, None, SpanKind::Server);
    // Hand-overs of many spans, the last of which only partly fits, then single spans.
    for _ in 0..50 {
        exporter.submit_all(vec![template.clone(); 100]);
    }
    exporter.submit_all(vec![template.clone(); 5_000]);
    assert_eq!(load(&metrics.export_queue_depth), queue);
    assert_eq!(load(&metrics.spans_dropped_queue_full), 10_000 - queue);
    for _ in 0..90_000 {
        exporter.submit(template.clone());
    }
    assert_eq!(load(&metrics.export_queue_depth), queue);
    assert_eq!(load(&metrics.spans_dropped_queue_full), 100_000 - queue);

    exporter.shutdown(deadline()).await;
    // 16 batches of 512, each tried three times, all refused.
    assert_eq!(load(&metrics.export_requests), 16 * 3);
    assert_eq!(load(&metrics.export_failures), 16 * 3);
    assert_eq!(load(&metrics.spans_dropped_export_failed), queue);
    assert_eq!(load(&metrics.spans_exported), 0);
    assert_eq!(load(&metrics.export_queue_depth), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn grpc_dead_collector_drops_and_counts_without_blocking() {
    dead_collector(Protocol::Grpc).await;
}

#[tokio::test(flavor = "current_thread")]
async fn http_dead_collector_drops_and_counts_without_blocking() {
    dead_collector(Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_with_a_past_deadline_drops_queued_spans_without_attempts() {
    let dead = unused_local_addr().unwrap();
    let mut cfg = ExportConfig::new(format!("http://{dead}"), Protocol::Grpc);
    cfg.batch.max_queue_size = 4;
    cfg.batch.max_export_batch_size = 4;
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();
    let r = resource("svc", 1);
    for id in 0..10 {
        exporter.submit(span(&r, id, None, SpanKind::Server));
    }
    assert_eq!(load(&metrics.spans_dropped_queue_full), 6);
    // A deadline in the past: nothing more may be attempted, and shutdown returns at once.
    let started = std::time::Instant::now();
    exporter.shutdown(Instant::now()).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(load(&metrics.export_requests), 0);
    assert_eq!(load(&metrics.spans_dropped_export_failed), 4);
}

/// The gRPC channel connects lazily and reconnects: a collector that is down when the
/// agent starts and comes up later receives the spans.
#[tokio::test]
async fn collector_started_after_the_exporter_receives_spans() {
    let addr = unused_local_addr().unwrap();
    let mut cfg = ExportConfig::new(format!("http://{addr}"), Protocol::Grpc);
    cfg.batch.max_export_batch_size = 1;
    cfg.retry = RetryConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_attempts: 100,
    };
    let metrics = Arc::new(Metrics::default());
    let exporter = start_processor(Some(cfg.clone()), metrics.clone()).unwrap();
    exporter.submit(span(&resource("svc", 1), 1, None, SpanKind::Server));

    // The exporter offers no event for "an attempt failed", so poll its counter (bounded).
    let waited = Instant::now();
    while load(&metrics.export_failures) == 0 {
        assert!(waited.elapsed() < WAIT, "no export attempt was made");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let receiver = OtlpReceiver::start_grpc_on(addr).await.unwrap();
    let spans = receiver
        .wait_for_spans(|s| s.len() == 1, WAIT)
        .await
        .unwrap();
    assert_eq!(spans[0].name, "GET /s1");
    exporter.shutdown(deadline()).await;
    assert_eq!(load(&metrics.spans_exported), 1);
    assert!(load(&metrics.export_failures) >= 1);
}
