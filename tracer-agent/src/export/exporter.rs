//! The exporter interface, as OpenTelemetry layers it: a [`SpanExporter`] sends one batch
//! somewhere and reports how it went; the batch span processor in front of it
//! ([`super::BatchSpanProcessor`]) queues, batches, bounds memory and counts. The agent's
//! exporters are OTLP ([`super::OtlpExporter`]) and the console
//! ([`super::ConsoleExporter`]); [`Exporter`] is whichever one the configuration chose.

use std::future::Future;

use tokio::sync::watch;
use tokio::time::Instant;

use super::console::ConsoleExporter;
use super::otlp_exporter::OtlpExporter;
use crate::spans::SpanRecord;

/// A batch the exporter delivered. `rejected`: spans the receiver refused in a partial
/// success; they are lost and must not be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivered {
    pub rejected: u64,
}

/// The exporter gave the batch up (it logged why); every span of it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaveUp;

pub type ExportResult = Result<Delivered, GaveUp>;

/// Sends batches of finished spans. `export` may retry inside, but must return by
/// `deadline.at()`, which a shutdown can move earlier at any time (`deadline.changed()`).
pub trait SpanExporter: Send + Sync + 'static {
    fn export(
        &self,
        batch: Vec<SpanRecord>,
        deadline: ExportDeadline,
    ) -> impl Future<Output = ExportResult> + Send;

    /// Called once, after the last batch has returned: flush anything held, by `deadline`.
    fn shutdown(&self, deadline: Instant) -> impl Future<Output = ()> + Send {
        let _ = deadline;
        async {}
    }
}

/// The configured exporter.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one instance per agent, held behind the processor's Arc"
)]
pub enum Exporter {
    Otlp(OtlpExporter),
    Console(ConsoleExporter),
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanRecord>, deadline: ExportDeadline) -> ExportResult {
        match self {
            Exporter::Otlp(e) => e.export(batch, deadline).await,
            Exporter::Console(e) => e.export(batch, deadline).await,
        }
    }

    async fn shutdown(&self, deadline: Instant) {
        match self {
            Exporter::Otlp(e) => e.shutdown(deadline).await,
            Exporter::Console(e) => e.shutdown(deadline).await,
        }
    }
}

/// The receiving side of the processor's shutdown deadline.
#[derive(Clone, Debug)]
pub(super) struct ShutdownSignal {
    rx: watch::Receiver<Option<Instant>>,
    /// The handle was dropped without `shutdown`: treat it as a shutdown without deadline.
    handle_gone: bool,
}

impl ShutdownSignal {
    pub(super) fn new(rx: watch::Receiver<Option<Instant>>) -> Self {
        ShutdownSignal {
            rx,
            handle_gone: false,
        }
    }

    /// Resolves when the deadline is set or the handle goes away; once the handle is gone
    /// it never resolves again (a closed watch would otherwise wake every `select!`).
    pub(super) async fn changed(&mut self) {
        if self.handle_gone {
            return std::future::pending().await;
        }
        if self.rx.changed().await.is_err() {
            self.handle_gone = true;
        }
    }

    pub(super) fn requested(&self) -> bool {
        self.handle_gone || self.rx.borrow().is_some()
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        *self.rx.borrow()
    }
}

/// When one export must be over: its own budget (`OTEL_BSP_EXPORT_TIMEOUT`), or the
/// shutdown deadline once that is set and earlier.
#[derive(Clone, Debug)]
pub struct ExportDeadline {
    budget: Instant,
    signal: ShutdownSignal,
}

impl ExportDeadline {
    pub(super) fn new(budget: Instant, signal: ShutdownSignal) -> Self {
        ExportDeadline { budget, signal }
    }

    pub fn at(&self) -> Instant {
        self.signal
            .deadline()
            .map_or(self.budget, |d| d.min(self.budget))
    }

    /// Resolves when a shutdown may have moved `at()`; re-read it then.
    pub async fn changed(&mut self) {
        self.signal.changed().await
    }
}
