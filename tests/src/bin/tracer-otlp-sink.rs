//! A standalone OTLP trace receiver for `cargo xtask bench`: gRPC and HTTP/protobuf on two
//! ports. It counts the spans of each request by walking the protobuf framing down to them
//! (`tracer_testkit::span_count`) and keeps only the counts, so memory stays flat however
//! long the benchmark runs. It shares the cores with the load being measured: a full
//! decode cost it as much CPU as the agent's user space, which the benchmark then charged to
//! the tracer.
//!
//! `tracer-otlp-sink --grpc 127.0.0.1:4317 --http 127.0.0.1:4318` prints one line
//! `ready grpc=<addr> http=<addr>` once both listen; `GET /stats` on the HTTP port answers
//! `{"requests":N,"spans":N,"malformed":N}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Buf as _;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Status};
use tracer_testkit::span_count::{WireError, count_spans};

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    spans: AtomicU64,
    malformed: AtomicU64,
}

impl Counts {
    fn record(&self, request: &[u8]) -> Result<(), WireError> {
        match count_spans(request) {
            Ok(spans) => {
                self.requests.fetch_add(1, Ordering::Relaxed);
                self.spans.fetch_add(spans, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// `TraceService/Export` over gRPC, with a codec that counts instead of decoding.
#[derive(Clone)]
struct Export(Arc<Counts>);

impl NamedService for Export {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl Service<http::Request<Body>> for Export {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let export = self.clone();
        Box::pin(async move {
            // The one method served: `/{NAME}/Export`.
            let method = request.uri().path().strip_prefix('/');
            if method.and_then(|m| m.strip_prefix(Self::NAME)) != Some("/Export") {
                return Ok(Status::unimplemented("only TraceService/Export").into_http());
            }
            let mut grpc = Grpc::new(Counting(export.0.clone())).apply_max_message_size_config(
                // The agent's batches are small; the SDK's can reach a few MiB.
                Some(64 << 20),
                None,
            );
            Ok(grpc.unary(export, request).await)
        })
    }
}

impl UnaryService<Result<(), WireError>> for Export {
    type Response = ();
    type Future = BoxFuture<tonic::Response<()>, Status>;

    fn call(&mut self, request: tonic::Request<Result<(), WireError>>) -> Self::Future {
        let answer = match request.into_inner() {
            Ok(()) => Ok(tonic::Response::new(())),
            Err(e) => Err(Status::new(Code::InvalidArgument, e.to_string())),
        };
        Box::pin(std::future::ready(answer))
    }
}

/// Decodes a request into whether it was well formed (counted on the way).
struct Counting(Arc<Counts>);

impl Codec for Counting {
    type Encode = ();
    type Decode = Result<(), WireError>;
    type Encoder = EmptyResponse;
    type Decoder = Counting;

    fn encoder(&mut self) -> EmptyResponse {
        EmptyResponse
    }

    fn decoder(&mut self) -> Counting {
        Counting(self.0.clone())
    }
}

/// The empty `ExportTraceServiceResponse`: zero bytes.
struct EmptyResponse;

impl Encoder for EmptyResponse {
    type Item = ();
    type Error = Status;

    fn encode(&mut self, (): (), _dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for Counting {
    type Item = Result<(), WireError>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        // The buffer holds exactly one message, in one piece unless tonic had to gather it.
        let len = src.remaining();
        let counted = if src.chunk().len() == len {
            let counted = self.0.record(src.chunk());
            src.advance(len);
            counted
        } else {
            self.0.record(&src.copy_to_bytes(len))
        };
        Ok(Some(counted))
    }
}

async fn http_traces(State(counts): State<Arc<Counts>>, body: Bytes) -> Response {
    match counts.record(&body) {
        // An empty ExportTraceServiceResponse encodes to no bytes.
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Vec::new(),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn stats(State(counts): State<Arc<Counts>>) -> String {
    format!(
        "{{\"requests\":{},\"spans\":{},\"malformed\":{}}}",
        counts.requests.load(Ordering::Relaxed),
        counts.spans.load(Ordering::Relaxed),
        counts.malformed.load(Ordering::Relaxed)
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
    let service = Export(counts.clone());
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
