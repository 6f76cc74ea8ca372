//! A standalone OTLP trace receiver for `cargo xtask bench`: gRPC and HTTP/protobuf on two
//! ports, every request decoded in full (the work a collector's receiver does), only counts
//! kept so memory stays flat however long the benchmark runs.
//!
//! `tracer-otlp-sink --grpc 127.0.0.1:4317 --http 127.0.0.1:4318` prints one line
//! `ready grpc=<addr> http=<addr>` once both listen; `GET /stats` on the HTTP port answers
//! `{"requests":N,"spans":N}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    spans: AtomicU64,
}

impl Counts {
    fn record(&self, request: &ExportTraceServiceRequest) {
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
    }
}

struct Grpc(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.record(request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_traces(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            counts.record(&request);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn stats(State(counts): State<Arc<Counts>>) -> String {
    format!(
        "{{\"requests\":{},\"spans\":{}}}",
        counts.requests.load(Ordering::Relaxed),
        counts.spans.load(Ordering::Relaxed)
    )
}

fn parse_args() -> Result<(SocketAddr, SocketAddr)> {
    let mut grpc = None;
    let mut http = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs an address"))?;
        let addr: SocketAddr = value
            .parse()
            .with_context(|| format!("{flag}: `{value}` is not an address like 127.0.0.1:4317"))?;
        match flag.as_str() {
            "--grpc" => grpc = Some(addr),
            "--http" => http = Some(addr),
            other => bail!("unknown flag {other}: use --grpc ADDR --http ADDR"),
        }
    }
    Ok((
        grpc.unwrap_or(([127, 0, 0, 1], 4317).into()),
        http.unwrap_or(([127, 0, 0, 1], 4318).into()),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let (grpc_addr, http_addr) = parse_args()?;
    let counts = Arc::new(Counts::default());
    let grpc = TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {grpc_addr}"))?;
    let http = TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {http_addr}"))?;
    println!(
        "ready grpc={} http={}",
        grpc.local_addr()?,
        http.local_addr()?
    );
    let service = TraceServiceServer::new(Grpc(counts.clone()))
        // The agent's batches are small; the SDK's can reach a few MiB.
        .max_decoding_message_size(64 << 20);
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(http_traces))
        .route("/stats", axum::routing::get(stats))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(counts);
    let grpc_server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc));
    tokio::select! {
        r = grpc_server => r.context("gRPC receiver stopped")?,
        r = axum::serve(http, app) => r.context("HTTP receiver stopped")?,
    }
    Ok(())
}
