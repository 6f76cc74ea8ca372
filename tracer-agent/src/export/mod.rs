//! Export stage, layered as OpenTelemetry layers it: the pipeline hands finished spans to a
//! [`BatchSpanProcessor`] (bounded queue, batches, concurrent exports; `submit` never
//! blocks, `shutdown` flushes), which hands each batch to a [`SpanExporter`]: OTLP to a
//! collector (gRPC or HTTP/protobuf, retried), or, when no endpoint is configured, the
//! console, which prints trace trees on stdout.

pub mod config;
pub mod console;
pub mod exclude;
pub mod exporter;
pub mod otlp;
pub mod otlp_exporter;
pub mod processor;
pub mod sampler;
pub mod sampling;
pub mod tail;
pub mod transport;

use std::sync::Arc;

pub use config::{ConfigError, ExportConfig, ExportOverrides, Protocol};
pub use console::{ConsoleConfig, ConsoleExporter};
pub use exclude::Exclusions;
pub use exporter::{Exporter, SpanExporter};
pub use otlp_exporter::OtlpExporter;
pub use processor::BatchSpanProcessor;
pub use sampler::{Sampler, SamplerError};
pub use sampling::Sampling;
pub use tail::{TailPolicy, TailSampler};
pub use transport::TransportError;

use crate::metrics::Metrics;

/// Resolves the export configuration from CLI overrides and an environment lookup
/// (`|k| std::env::var(k).ok()` in the agent). `Ok(None)`: no endpoint, use the console.
pub fn resolve_config(
    overrides: &ExportOverrides,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<ExportConfig>, ConfigError> {
    config::resolve(lookup, overrides)
}

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot start the console printer thread: {0}")]
    Console(#[from] std::io::Error),
}

/// What the pipeline hands finished spans to.
pub type SpanProcessor = BatchSpanProcessor<Exporter>;

/// Starts the span processor and exporter for a resolved configuration (`None`: console).
/// Must run inside a tokio runtime; it does not contact the collector, so a collector that
/// is down at startup is reported by the export errors later, not here.
pub fn start_processor(
    cfg: Option<ExportConfig>,
    metrics: Arc<Metrics>,
) -> Result<SpanProcessor, ExporterError> {
    match cfg {
        Some(cfg) => {
            tracing::debug!(config = %cfg.describe(), "starting the OTLP exporter");
            let exporter = OtlpExporter::new(&cfg, metrics.clone())?;
            Ok(BatchSpanProcessor::start(
                Exporter::Otlp(exporter),
                cfg.batch,
                metrics,
            ))
        }
        None => {
            tracing::debug!("starting the console trace printer");
            let console = ConsoleConfig::default();
            let batch = console.batch();
            Ok(BatchSpanProcessor::start(
                Exporter::Console(ConsoleExporter::new(console)?),
                batch,
                metrics,
            ))
        }
    }
}
