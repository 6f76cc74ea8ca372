//! Export stage: finished spans leave the agent here, either as OTLP to a collector
//! (gRPC or HTTP/protobuf, batched, bounded, retried) or, when no endpoint is configured,
//! as trace trees printed on stdout.
//!
//! The pipeline only sees [`Sink`]: `submit` never blocks, `shutdown` flushes.

pub mod batcher;
pub mod config;
pub mod console;
pub mod exclude;
pub mod otlp;
pub mod sampler;
pub mod sampling;
pub mod tail;
pub mod transport;

use std::sync::Arc;

pub use batcher::SpanExporter;
pub use config::{ConfigError, ExportConfig, ExportOverrides, Protocol};
pub use console::{ConsoleConfig, ConsoleSink};
pub use exclude::Exclusions;
pub use sampler::{Sampler, SamplerError};
pub use sampling::Sampling;
pub use tail::{TailPolicy, TailSampler};
pub use transport::TransportError;

use crate::metrics::Metrics;
use crate::spans::SpanRecord;

/// Resolves the export configuration from CLI overrides and an environment lookup
/// (`|k| std::env::var(k).ok()` in the agent). `Ok(None)`: no endpoint, use the console.
pub fn resolve_config(
    overrides: &ExportOverrides,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<ExportConfig>, ConfigError> {
    config::resolve(lookup, overrides)
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot start the console printer thread: {0}")]
    Console(#[from] std::io::Error),
}

/// Where finished spans go.
#[derive(Debug)]
pub enum Sink {
    Otlp(SpanExporter),
    Console(ConsoleSink),
}

impl Sink {
    /// Hands a finished span over. Never blocks or awaits; drops (and counts) when full.
    pub fn submit(&self, span: SpanRecord) {
        match self {
            Sink::Otlp(e) => e.submit(span),
            Sink::Console(c) => c.submit(span),
        }
    }

    /// Hands finished spans over together. Never blocks or awaits; drops (and counts)
    /// what does not fit.
    pub fn submit_all(&self, spans: Vec<SpanRecord>) {
        match self {
            Sink::Otlp(e) => e.submit_all(spans),
            Sink::Console(c) => spans.into_iter().for_each(|span| c.submit(span)),
        }
    }

    /// Flushes everything pending, bounded by `deadline`, then stops.
    pub async fn shutdown(self, deadline: tokio::time::Instant) {
        match self {
            Sink::Otlp(e) => e.shutdown(deadline).await,
            Sink::Console(c) => c.shutdown(deadline).await,
        }
    }
}

/// Builds the sink for a resolved configuration (`None`: console). Must run inside a tokio
/// runtime; it does not contact the collector, so a collector that is down at startup is
/// reported by the export errors later, not here.
pub async fn build_sink(
    cfg: Option<ExportConfig>,
    metrics: Arc<Metrics>,
) -> Result<Sink, SinkError> {
    match cfg {
        Some(cfg) => {
            tracing::debug!(config = %cfg.describe(), "starting the OTLP exporter");
            Ok(Sink::Otlp(SpanExporter::start(&cfg, metrics)?))
        }
        None => {
            tracing::debug!("starting the console trace printer");
            Ok(Sink::Console(ConsoleSink::new(
                ConsoleConfig::default(),
                metrics,
            )?))
        }
    }
}
