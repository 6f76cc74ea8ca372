//! The node agent's pipeline, one module per stage:
//!
//! `capture` (eBPF load, ring buffer, event decoding) → `pipeline` (connection table,
//! reassembly per direction) → `http` (HTTP/1 parsing and request/response pairing) →
//! `spans` (span building, clock conversion) → `link` (one trace across threads and
//! processes) → `export` (OTLP gRPC/HTTP, console trees).

pub mod capture;
pub mod enrich;
pub mod export;
pub mod http;
pub mod http2;
pub mod link;
pub mod metrics;
pub mod peers;
pub mod pipeline;
pub mod server;
pub mod spans;

/// User-Agent of the agent's own OTLP/HTTP requests. A collector on the same node is traced
/// like any server; its spans for our exports would feed back into every export, so the
/// pipeline drops exchanges carrying this agent.
pub const EXPORTER_USER_AGENT: &str = concat!("tracer-agent/", env!("CARGO_PKG_VERSION"));
