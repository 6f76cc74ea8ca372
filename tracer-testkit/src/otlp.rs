//! An in-process OTLP trace receiver (gRPC or HTTP/protobuf) for integration tests.
//!
//! It records every accepted request with its headers, flattens spans into
//! [`ReceivedSpan`] for easy asserting, can be told to fail the next N requests
//! (UNAVAILABLE / 503) to exercise retries, and lets tests wait on arrivals through a
//! notification instead of sleeping.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode as OtlpCode};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The receiver's wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverProtocol {
    Grpc,
    HttpProtobuf,
}

impl ReceiverProtocol {
    /// The value for `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn otel_name(self) -> &'static str {
        match self {
            ReceiverProtocol::Grpc => "grpc",
            ReceiverProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// An attribute value, simplified for asserting.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// Arrays, maps and bytes, in their debug form (the agent emits none).
    Other(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Double(d) => write!(f, "{d}"),
            Value::Other(o) => write!(f, "{o}"),
        }
    }
}

/// One received span with its resource, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Index of the request it came in (among accepted requests).
    pub request_index: usize,
    /// Index of its `ResourceSpans` within that request.
    pub resource_index: usize,
    pub resource: BTreeMap<String, Value>,
    pub scope_name: String,
    pub scope_version: String,
    /// Lower-case hex; empty when the field was empty.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for roots.
    pub parent_span_id: String,
    pub trace_state: String,
    pub name: String,
    /// `SERVER`, `CLIENT`, `INTERNAL`, … (`UNSPECIFIED` for unknown values).
    pub kind: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attrs: BTreeMap<String, Value>,
    /// `UNSET`, `OK` or `ERROR`.
    pub status_code: String,
    pub status_message: String,
    pub flags: u32,
}

impl ReceivedSpan {
    pub fn service_name(&self) -> Option<&str> {
        self.resource_str("service.name")
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        match self.resource.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attrs.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        match self.attrs.get(key) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }
}

/// Flattens the spans of one request (`request_index` is stored in each span).
pub fn flatten(request_index: usize, req: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for (resource_index, rs) in req.resource_spans.iter().enumerate() {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            let (scope_name, scope_version) = ss
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for s in &ss.spans {
                let kind = SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified);
                let status = s.status.clone().unwrap_or_default();
                let code = OtlpCode::try_from(status.code).unwrap_or(OtlpCode::Unset);
                out.push(ReceivedSpan {
                    request_index,
                    resource_index,
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    trace_state: s.trace_state.clone(),
                    name: s.name.clone(),
                    kind: kind
                        .as_str_name()
                        .trim_start_matches("SPAN_KIND_")
                        .to_owned(),
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano,
                    attrs: attrs(&s.attributes),
                    status_code: code
                        .as_str_name()
                        .trim_start_matches("STATUS_CODE_")
                        .to_owned(),
                    status_message: status.message,
                    flags: s.flags,
                });
            }
        }
    }
    out
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect()
}

fn value(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Value::Str(s.clone()),
        Some(any_value::Value::IntValue(i)) => Value::Int(*i),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::DoubleValue(d)) => Value::Double(*d),
        other => Value::Other(format!("{other:?}")),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An accepted request and the headers (gRPC metadata) it came with.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// Lower-case header names; the last value wins for repeated headers.
    pub headers: BTreeMap<String, String>,
    pub request: ExportTraceServiceRequest,
}

#[derive(Default)]
struct Shared {
    accepted: Mutex<Vec<ReceivedRequest>>,
    /// The spans of `accepted`, flattened once as each request arrives: waiters re-check
    /// after every request, and flattening everything each time made a long run's wait
    /// quadratic.
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Every request that reached the handler, failed or not.
    attempts: AtomicUsize,
    fail_next: AtomicUsize,
    partial_success: Mutex<Option<ExportTracePartialSuccess>>,
    /// Bumped after every request so waiters re-check.
    version: watch::Sender<u64>,
    /// While true, requests are counted and kept but not answered.
    held: watch::Sender<bool>,
}

enum Outcome {
    Accepted(ExportTraceServiceResponse),
    Failed,
}

impl Shared {
    fn handle(&self, headers: &HeaderMap, request: ExportTraceServiceRequest) -> Outcome {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let outcome = if fail {
            Outcome::Failed
        } else {
            let headers = headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut accepted = self.accepted.lock().unwrap();
            self.spans
                .lock()
                .unwrap()
                .extend(flatten(accepted.len(), &request));
            accepted.push(ReceivedRequest { headers, request });
            Outcome::Accepted(ExportTraceServiceResponse {
                partial_success: self.partial_success.lock().unwrap().take(),
            })
        };
        self.version.send_modify(|v| *v += 1);
        outcome
    }

    /// Returns once answers are not held.
    async fn answer_allowed(&self) {
        let mut held = self.held.subscribe();
        // Err: the sender is gone with the receiver; nothing to wait for.
        let _ = held.wait_for(|h| !*h).await;
    }
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    protocol: ReceiverProtocol,
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl OtlpReceiver {
    /// OTLP/gRPC on 127.0.0.1 (ephemeral port).
    pub async fn start_grpc() -> anyhow::Result<Self> {
        Self::start_grpc_on(([127, 0, 0, 1], 0).into()).await
    }

    /// OTLP/gRPC on a given address (e.g. a port an exporter already targets).
    pub async fn start_grpc_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the gRPC receiver to {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let service = TraceServiceServer::new(GrpcService(shared.clone()));
        let server = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("OTLP gRPC receiver stopped: {e}");
            }
        });
        Ok(Self::new(ReceiverProtocol::Grpc, addr, shared, server))
    }

    /// OTLP/HTTP protobuf on 127.0.0.1 (ephemeral port), serving `POST /v1/traces`.
    pub async fn start_http() -> anyhow::Result<Self> {
        Self::start_http_on(([127, 0, 0, 1], 0).into()).await
    }

    /// OTLP/HTTP protobuf on a given address.
    pub async fn start_http_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP receiver to {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_traces))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("OTLP HTTP receiver stopped: {e}");
            }
        });
        Ok(Self::new(
            ReceiverProtocol::HttpProtobuf,
            addr,
            shared,
            server,
        ))
    }

    /// Starts a receiver speaking `protocol` on an ephemeral port.
    pub async fn start(protocol: ReceiverProtocol) -> anyhow::Result<Self> {
        Self::start_on(protocol, ([127, 0, 0, 1], 0).into()).await
    }

    pub async fn start_on(protocol: ReceiverProtocol, addr: SocketAddr) -> anyhow::Result<Self> {
        match protocol {
            ReceiverProtocol::Grpc => Self::start_grpc_on(addr).await,
            ReceiverProtocol::HttpProtobuf => Self::start_http_on(addr).await,
        }
    }

    fn new(
        protocol: ReceiverProtocol,
        addr: SocketAddr,
        shared: Arc<Shared>,
        server: JoinHandle<()>,
    ) -> Self {
        OtlpReceiver {
            protocol,
            addr,
            shared,
            server,
        }
    }

    /// Base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` (HTTP exporters append `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL an exporter actually posts to: the base for gRPC, `/v1/traces` for HTTP.
    pub fn traces_url(&self) -> String {
        match self.protocol {
            ReceiverProtocol::Grpc => self.endpoint(),
            ReceiverProtocol::HttpProtobuf => format!("{}/v1/traces", self.endpoint()),
        }
    }

    pub fn protocol(&self) -> ReceiverProtocol {
        self.protocol
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepted requests, in arrival order.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.received().into_iter().map(|r| r.request).collect()
    }

    /// Accepted requests with their headers.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.accepted.lock().unwrap().clone()
    }

    /// All spans of all accepted requests, flattened.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    /// Requests that reached the receiver, including the ones it failed on purpose.
    pub fn attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    /// Fails the next `n` requests with gRPC UNAVAILABLE / HTTP 503 (retryable per spec).
    pub fn fail_next(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }

    /// Holds every answer from now on: requests are counted and kept, their exporters wait.
    pub fn hold_answers(&self) {
        self.shared.held.send_replace(true);
    }

    /// Answers the held requests and every later one at once.
    pub fn release_answers(&self) {
        self.shared.held.send_replace(false);
    }

    /// Answers the next accepted request with an OTLP partial success.
    pub fn partial_success_next(&self, rejected_spans: i64, error_message: &str) {
        *self.shared.partial_success.lock().unwrap() = Some(ExportTracePartialSuccess {
            rejected_spans,
            error_message: error_message.to_owned(),
        });
    }

    /// Waits until `predicate` holds for the spans received so far and returns them.
    /// Re-checks after every request, woken by a notification (no polling).
    pub async fn wait_for_spans(
        &self,
        predicate: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        self.wait_until(
            || {
                let spans = self.shared.spans.lock().unwrap();
                predicate(&spans).then(|| spans.clone())
            },
            timeout,
        )
        .await
        .with_context(|| {
            let spans = self.spans();
            format!(
                "spans not received within {timeout:?}: {} request(s), {} attempt(s), spans: {:?}",
                self.shared.accepted.lock().unwrap().len(),
                self.attempts(),
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    }

    /// Waits until at least `n` requests (accepted or failed) have arrived.
    pub async fn wait_for_attempts(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(|| (self.attempts() >= n).then_some(()), timeout)
            .await
            .with_context(|| {
                format!(
                    "{n} attempt(s) not reached within {timeout:?}: saw {}",
                    self.attempts()
                )
            })
    }

    async fn wait_until<T>(
        &self,
        check: impl Fn() -> Option<T>,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.version.subscribe();
        loop {
            // Mark the current version seen *before* checking, so a request landing between
            // the check and the wait still wakes us.
            rx.borrow_and_update();
            if let Some(v) = check() {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => anyhow::bail!("receiver state dropped"),
                Err(_) => anyhow::bail!("timed out"),
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct GrpcService(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let outcome = self.0.handle(&headers, request.into_inner());
        self.0.answer_allowed().await;
        match outcome {
            Outcome::Accepted(resp) => Ok(tonic::Response::new(resp)),
            Outcome::Failed => Err(tonic::Status::unavailable("injected failure")),
        }
    }
}

async fn http_traces(
    AxumState(shared): AxumState<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Real collectors insist on the content type; so does this one, to catch exporters
    // that forget it.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != "application/x-protobuf" {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {content_type:?}"),
        )
            .into_response();
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let outcome = shared.handle(&headers, request);
    shared.answer_allowed().await;
    match outcome {
        Outcome::Accepted(resp) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response(),
        Outcome::Failed => (StatusCode::SERVICE_UNAVAILABLE, "injected failure").into_response(),
    }
}
