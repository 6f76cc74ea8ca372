//! Sends one encoded batch to the collector over OTLP/gRPC (tonic) or OTLP/HTTP protobuf
//! (reqwest) and classifies failures the way the OTLP spec asks: retryable or permanent.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::config::{ExportConfig, Protocol};

const PROTOBUF: &str = "application/x-protobuf";

const TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// What the collector said about a request it accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans the collector accepted the request for but then rejected (OTLP partial success).
    pub rejected_spans: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// Worth trying again later: the collector is down, overloaded or slow.
    #[error("{message}")]
    Retryable {
        message: String,
        /// The collector's own hint (HTTP `Retry-After`), which overrides our backoff.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (bad request, auth, unimplemented): drop the batch.
    #[error("{message}")]
    Permanent { message: String },
}

impl ExportError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ExportError::Retryable { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ExportError::Retryable { retry_after, .. } => *retry_after,
            ExportError::Permanent { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("OTLP endpoint {endpoint:?} is not usable: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("OTLP header {name:?} is not usable: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("cannot build the OTLP HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// A ready-to-use connection to the collector. Cheap to share: both clients pool and
/// reconnect internally.
#[derive(Debug, Clone)]
pub struct Transport {
    endpoint: String,
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Grpc {
        /// The generic client, not the generated `TraceServiceClient`: that one takes the
        /// request as structs, while the batch is already protobuf bytes.
        client: tonic::client::Grpc<Channel>,
        metadata: MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        headers: HeaderMap,
    },
}

impl Transport {
    /// Builds the client without connecting: a collector that is down at startup must not
    /// stop the agent; exports fail (and retry) until it comes up.
    pub fn new(cfg: &ExportConfig) -> Result<Self, TransportError> {
        let inner = match cfg.protocol {
            Protocol::Grpc => {
                let endpoint = Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| TransportError::InvalidEndpoint {
                        endpoint: cfg.endpoint.clone(),
                        reason: error_chain(&e),
                    })?
                    // The pipeline recognises (and skips) its own exports by this agent
                    // (tonic appends its own name after it).
                    .user_agent(crate::EXPORTER_USER_AGENT)
                    .map_err(|e| TransportError::InvalidEndpoint {
                        endpoint: cfg.endpoint.clone(),
                        reason: error_chain(&e),
                    })?
                    .connect_timeout(cfg.timeout)
                    .timeout(cfg.timeout);
                let mut metadata = MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let invalid = |reason: String| TransportError::InvalidHeader {
                        name: k.clone(),
                        reason,
                    };
                    let key = MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|e| invalid(e.to_string()))?;
                    let value =
                        MetadataValue::try_from(v.as_str()).map_err(|e| invalid(e.to_string()))?;
                    metadata.append(key, value);
                }
                Inner::Grpc {
                    client: tonic::client::Grpc::new(endpoint.connect_lazy()),
                    metadata,
                    timeout: cfg.timeout,
                }
            }
            Protocol::HttpProtobuf => {
                reqwest::Url::parse(&cfg.endpoint).map_err(|e| {
                    TransportError::InvalidEndpoint {
                        endpoint: cfg.endpoint.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let mut headers = HeaderMap::new();
                for (k, v) in &cfg.headers {
                    let invalid = |reason: String| TransportError::InvalidHeader {
                        name: k.clone(),
                        reason,
                    };
                    let name =
                        HeaderName::from_bytes(k.as_bytes()).map_err(|e| invalid(e.to_string()))?;
                    let value = HeaderValue::from_str(v).map_err(|e| invalid(e.to_string()))?;
                    headers.append(name, value);
                }
                let client = reqwest::Client::builder()
                    // The pipeline recognises (and skips) its own exports by this agent.
                    .user_agent(crate::EXPORTER_USER_AGENT)
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
                    .build()
                    .map_err(TransportError::HttpClient)?;
                Inner::Http { client, headers }
            }
        };
        Ok(Transport {
            endpoint: cfg.endpoint.clone(),
            inner,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one `ExportTraceServiceRequest`, given as its protobuf bytes
    /// ([`super::otlp::encode_request`]).
    pub async fn export(&self, request: &Bytes) -> Result<Accepted, ExportError> {
        match &self.inner {
            Inner::Grpc {
                client,
                metadata,
                timeout,
            } => {
                let mut request = tonic::Request::new(request.clone());
                *request.metadata_mut() = metadata.clone();
                // Sends `grpc-timeout` so the collector can give up too.
                request.set_timeout(*timeout);
                match grpc_export(client.clone(), request).await {
                    Ok(resp) => Ok(accepted(resp.into_inner().partial_success)),
                    Err(status) => Err(classify_grpc(&status)),
                }
            }
            Inner::Http { client, headers } => {
                let result = client
                    .post(&self.endpoint)
                    .headers(headers.clone())
                    .header(CONTENT_TYPE, PROTOBUF)
                    .body(request.clone())
                    .send()
                    .await;
                let resp = match result {
                    Ok(resp) => resp,
                    Err(e) => return Err(classify_reqwest(&e)),
                };
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let body = match resp.bytes().await {
                    Ok(body) => body,
                    Err(e) if status.is_success() => {
                        // The collector took the request; only its partial-success report is lost.
                        tracing::debug!(error = %error_chain(&e), "OTLP/HTTP response body unreadable");
                        return Ok(Accepted::default());
                    }
                    Err(e) => return Err(classify_reqwest(&e)),
                };
                if status.is_success() {
                    // An empty body is a full success; a body we cannot decode is not worth
                    // failing (and re-sending) an accepted request over.
                    let resp =
                        ExportTraceServiceResponse::decode(body.as_ref()).unwrap_or_default();
                    return Ok(accepted(resp.partial_success));
                }
                Err(classify_http(status.as_u16(), retry_after, &body))
            }
        }
    }
}

/// What the generated `TraceServiceClient::export` does, with the request already encoded.
async fn grpc_export(
    mut client: tonic::client::Grpc<Channel>,
    mut request: tonic::Request<Bytes>,
) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new(TRACE_SERVICE, "Export"));
    client
        .unary(request, PathAndQuery::from_static(EXPORT_PATH), ExportCodec)
        .await
}

/// gRPC codec for the Export call: the request goes out as the bytes it already is; the
/// response is decoded with prost, as the generated client does.
#[derive(Debug, Clone, Copy, Default)]
struct ExportCodec;

impl Codec for ExportCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = ExportCodec;
    type Decoder = ExportCodec;

    fn encoder(&mut self) -> Self::Encoder {
        ExportCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        ExportCodec
    }
}

impl Encoder for ExportCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ExportCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        // INTERNAL for an undecodable message, as gRPC (and tonic's prost codec) have it.
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

fn accepted(partial: Option<ExportTracePartialSuccess>) -> Accepted {
    let partial = partial.unwrap_or_default();
    Accepted {
        rejected_spans: partial.rejected_spans.max(0) as u64,
        message: partial.error_message,
    }
}

/// The OTLP spec's retryable gRPC codes. RESOURCE_EXHAUSTED is retryable only when the
/// server promises recovery (RetryInfo); we retry it anyway, bounded by the attempt limit,
/// because a collector shedding load usually recovers within the backoff window.
pub fn classify_grpc(status: &tonic::Status) -> ExportError {
    use tonic::Code;
    let message = format!("gRPC {:?}: {}", status.code(), status.message());
    if let Some(hint) = protocol_mismatch(&message) {
        return ExportError::Permanent {
            message: format!("{message} ({hint})"),
        };
    }
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::OutOfRange
        | Code::DataLoss => ExportError::Retryable {
            message,
            retry_after: None,
        },
        // Connection-level failures that tonic did not map to UNAVAILABLE.
        _ if status
            .source()
            .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some()) =>
        {
            ExportError::Retryable {
                message,
                retry_after: None,
            }
        }
        _ => ExportError::Permanent { message },
    }
}

/// The OTLP spec's retryable HTTP statuses.
pub fn classify_http(status: u16, retry_after: Option<Duration>, body: &[u8]) -> ExportError {
    let detail = rpc_status_message(body);
    let message = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    match status {
        429 | 502 | 503 | 504 => ExportError::Retryable {
            message,
            retry_after,
        },
        _ => ExportError::Permanent { message },
    }
}

fn classify_reqwest(e: &reqwest::Error) -> ExportError {
    let message = error_chain(e);
    if let Some(hint) = protocol_mismatch(&message) {
        return ExportError::Permanent {
            message: format!("{message} ({hint})"),
        };
    }
    if e.is_builder() {
        ExportError::Permanent { message }
    } else {
        // Connect, timeout and mid-body I/O errors: the collector may be back next time.
        ExportError::Retryable {
            message,
            retry_after: None,
        }
    }
}

/// What to do when the endpoint speaks the other OTLP transport: the raw errors (an HTTP/1
/// client reading HTTP/2 frames, a gRPC client getting a plain 404) do not say it.
fn protocol_mismatch(message: &str) -> Option<&'static str> {
    if message.contains("invalid HTTP version parsed")
        || message.contains("received unexpected message from connection")
    {
        Some(
            "the endpoint answers in HTTP/2: it looks like an OTLP/gRPC port; set OTEL_EXPORTER_OTLP_PROTOCOL=grpc or use the collector's OTLP/HTTP port (4318)",
        )
    } else if message.contains("grpc-status header missing") {
        Some(
            "the endpoint answers plain HTTP: it looks like an OTLP/HTTP port; set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf or use the collector's gRPC port (4317)",
        )
    } else {
        None
    }
}

/// OTLP/HTTP error bodies are a protobuf `google.rpc.Status`; only its message matters here.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn rpc_status_message(body: &[u8]) -> String {
    match RpcStatus::decode(body) {
        Ok(s) if !s.message.is_empty() => s.message,
        // Some proxies answer with text; keep a short, printable prefix for the log.
        _ => String::from_utf8_lossy(&body[..body.len().min(200)])
            .chars()
            .filter(|c| !c.is_control())
            .collect(),
    }
}

/// `Display` of an error and its sources: reqwest and tonic hide the useful part
/// ("connection refused") in the chain.
pub fn error_chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their source in their own message.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_transport_is_named_not_retried() {
        let status = tonic::Status::new(
            tonic::Code::Unimplemented,
            "grpc-status header missing, mapped from HTTP status code 404",
        );
        match classify_grpc(&status) {
            ExportError::Permanent { message } => {
                assert!(message.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"));
            }
            other => panic!("{other:?}"),
        }
        let http1_reading_h2 = "error sending request for url (http://c:4317/v1/traces): \
            client error (SendRequest): invalid HTTP version parsed";
        assert!(
            protocol_mismatch(http1_reading_h2)
                .is_some_and(|h| h.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"))
        );
        assert_eq!(protocol_mismatch("connection refused"), None);
    }

    #[test]
    fn grpc_codes_are_classified_per_spec() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::ResourceExhausted,
            tonic::Code::Aborted,
            tonic::Code::Cancelled,
        ] {
            assert!(
                classify_grpc(&tonic::Status::new(code, "x")).is_retryable(),
                "{code:?}"
            );
        }
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::Unimplemented,
        ] {
            assert!(
                !classify_grpc(&tonic::Status::new(code, "x")).is_retryable(),
                "{code:?}"
            );
        }
    }

    #[test]
    fn http_statuses_are_classified_per_spec() {
        for status in [429, 502, 503, 504] {
            assert!(classify_http(status, None, b"").is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 500] {
            assert!(!classify_http(status, None, b"").is_retryable(), "{status}");
        }
        let e = classify_http(429, Some(Duration::from_secs(3)), b"");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn http_error_body_message_is_kept() {
        let body = RpcStatus {
            code: 3,
            message: "bad span id".into(),
        }
        .encode_to_vec();
        assert_eq!(
            classify_http(400, None, &body).to_string(),
            "HTTP 400: bad span id"
        );
        assert_eq!(
            classify_http(502, None, b"Bad Gateway\n").to_string(),
            "HTTP 502: Bad Gateway"
        );
    }

    #[test]
    fn partial_success_is_reported() {
        let a = accepted(Some(ExportTracePartialSuccess {
            rejected_spans: 3,
            error_message: "too old".into(),
        }));
        assert_eq!(
            a,
            Accepted {
                rejected_spans: 3,
                message: "too old".into()
            }
        );
        assert_eq!(accepted(None), Accepted::default());
    }
}
