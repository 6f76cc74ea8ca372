//! The batch span processor: a bounded queue in front of one background task that batches,
//! and up to `max_concurrent_exports` tasks that each hand one batch to the exporter.
//!
//! Memory is bounded by the queue (`max_queue_size` spans) plus the batches in flight:
//! while all export slots are busy the batching task does not read the queue, so a slow
//! or dead collector makes new spans drop (and count) at `submit` instead of piling up.
//! The pipeline hands spans over a tick's worth at a time (`submit_all`): one message and
//! at most one wakeup of the batching task per hand-over, not per span.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};

use super::config::BatchConfig;
use super::exporter::{ExportDeadline, ShutdownSignal, SpanExporter};
use crate::metrics::Metrics;
use crate::spans::SpanRecord;

/// Handle to the batching task. `submit` is callable from any thread, sync or async.
#[derive(Debug)]
pub struct BatchSpanProcessor<E: SpanExporter> {
    tx: mpsc::UnboundedSender<Vec<SpanRecord>>,
    /// Spans handed over and not yet taken into a batch: the queue, bounded by `max_queue`.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    /// Carries the shutdown deadline to the task, which may be mid-retry.
    shutdown: watch::Sender<Option<Instant>>,
    worker: JoinHandle<()>,
    exporter: Arc<E>,
    metrics: Arc<Metrics>,
}

impl<E: SpanExporter> BatchSpanProcessor<E> {
    /// Starts the batching task on the current tokio runtime.
    pub fn start(exporter: E, batch: BatchConfig, metrics: Arc<Metrics>) -> Self {
        // Unbounded in messages, bounded in spans by `queued`: every message holds at
        // least one span counted there.
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let max_queue = batch.max_queue_size.max(1);
        let (shutdown, shutdown_rx) = watch::channel(None);
        let exporter = Arc::new(exporter);
        let worker = Worker {
            rx,
            queued: queued.clone(),
            signal: ShutdownSignal::new(shutdown_rx),
            exporter: exporter.clone(),
            metrics: metrics.clone(),
            in_flight: JoinSet::new(),
            max_in_flight: batch.max_concurrent_exports.max(1),
            batch_cfg: batch,
        };
        BatchSpanProcessor {
            tx,
            queued,
            max_queue,
            shutdown,
            worker: tokio::spawn(worker.run()),
            exporter,
            metrics,
        }
    }

    pub fn exporter(&self) -> &E {
        &self.exporter
    }

    /// Queues a span for export (see `submit_all`).
    pub fn submit(&self, span: SpanRecord) {
        self.submit_all(vec![span]);
    }

    /// Queues spans for export in one hand-over. Never blocks or waits: spans past the
    /// queue's room (or all of them, once the exporter is shutting down) are dropped and
    /// counted.
    pub fn submit_all(&self, mut spans: Vec<SpanRecord>) {
        let offered = spans.len();
        if offered == 0 {
            return;
        }
        let mut taken = 0;
        // Room is claimed before the send, so the task's release can never run first.
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                taken = offered.min(self.max_queue.saturating_sub(queued));
                Some(queued + taken)
            });
        spans.truncate(taken);
        let mut dropped = offered - taken;
        if taken > 0 {
            self.metrics
                .export_queue_depth
                .fetch_add(taken as u64, Ordering::Relaxed);
            if self.tx.send(spans).is_err() {
                self.queued.fetch_sub(taken, Ordering::Relaxed);
                self.metrics
                    .export_queue_depth
                    .fetch_sub(taken as u64, Ordering::Relaxed);
                dropped += taken;
            }
        }
        if dropped > 0 {
            let before = self
                .metrics
                .spans_dropped_queue_full
                .fetch_add(dropped as u64, Ordering::Relaxed);
            // Log when the total passes 1, 2, 4, 8, …: visible without flooding the log.
            let after = before + dropped as u64;
            if before == 0 || after.ilog2() > before.ilog2() {
                tracing::warn!(
                    dropped_total = after,
                    "export queue full (collector slow or unreachable?); dropping spans"
                );
            }
        }
    }

    /// Stops accepting spans, exports everything already queued, shuts the exporter down,
    /// and returns once that is done or `deadline` has passed. Spans not exported by then
    /// are counted as dropped.
    pub async fn shutdown(self, deadline: Instant) {
        let BatchSpanProcessor {
            tx,
            shutdown,
            mut worker,
            exporter,
            ..
        } = self;
        let _ = shutdown.send(Some(deadline));
        drop(tx);
        // The task gives up on its own at the deadline; the grace covers its final
        // bookkeeping. Abort only if it is stuck past that.
        let grace = deadline + Duration::from_millis(100);
        if tokio::time::timeout_at(grace, &mut worker).await.is_err() {
            tracing::warn!("span processor did not stop by its deadline; aborting it");
            worker.abort();
        }
        exporter.shutdown(deadline).await;
    }
}

struct Worker<E> {
    rx: mpsc::UnboundedReceiver<Vec<SpanRecord>>,
    /// Shared with the handle: decremented as spans are taken into a batch.
    queued: Arc<AtomicUsize>,
    signal: ShutdownSignal,
    exporter: Arc<E>,
    metrics: Arc<Metrics>,
    in_flight: JoinSet<()>,
    max_in_flight: usize,
    batch_cfg: BatchConfig,
}

impl<E: SpanExporter> Worker<E> {
    async fn run(mut self) {
        let max = self.batch_cfg.max_export_batch_size.max(1);
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(max);
        let mut flush_at: Option<Instant> = None;
        let mut closing = false;
        loop {
            // Stop taking new spans, then drain what is queued: `recv` yields the buffered
            // spans before it returns None.
            if !closing && self.signal.requested() {
                closing = true;
                self.rx.close();
            }
            tokio::select! {
                biased;
                _ = self.signal.changed(), if !closing => {}
                msg = self.rx.recv() => match msg {
                    Some(spans) => {
                        for span in spans {
                            // Taken one by one: spans still in this message while the
                            // task waits for an export slot stay counted as queued.
                            self.queued.fetch_sub(1, Ordering::Relaxed);
                            self.metrics.export_queue_depth.fetch_sub(1, Ordering::Relaxed);
                            batch.push(span);
                            if batch.len() == 1 {
                                flush_at = Some(Instant::now() + self.batch_cfg.schedule_delay);
                            }
                            if batch.len() >= max {
                                flush_at = None;
                                self.dispatch(std::mem::replace(&mut batch, Vec::with_capacity(max))).await;
                            }
                        }
                    }
                    None => {
                        if !batch.is_empty() {
                            self.dispatch(batch).await;
                        }
                        while self.in_flight.join_next().await.is_some() {}
                        return;
                    }
                },
                _ = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    flush_at = None;
                    self.dispatch(std::mem::replace(&mut batch, Vec::with_capacity(max))).await;
                }
                // Reap finished exports as they end, so a slot frees without waiting for
                // the next full batch.
                Some(_) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {}
            }
        }
    }

    /// Starts exporting `batch` once a slot is free. Waiting here (not reading the queue)
    /// is what bounds memory when the collector is slow.
    async fn dispatch(&mut self, batch: Vec<SpanRecord>) {
        while self.in_flight.len() >= self.max_in_flight {
            self.in_flight.join_next().await;
        }
        let deadline = ExportDeadline::new(
            Instant::now() + self.batch_cfg.export_timeout,
            self.signal.clone(),
        );
        let exporter = self.exporter.clone();
        let metrics = self.metrics.clone();
        self.in_flight
            .spawn(async move { export(&*exporter, &metrics, batch, deadline).await });
    }
}

/// Exports one batch and counts how it went.
async fn export<E: SpanExporter>(
    exporter: &E,
    metrics: &Metrics,
    batch: Vec<SpanRecord>,
    deadline: ExportDeadline,
) {
    let n = batch.len() as u64;
    // Past the shutdown deadline the rest of the queue is only counted, not exported.
    if Instant::now() >= deadline.at() {
        Metrics::add(&metrics.spans_dropped_export_failed, n);
        tracing::warn!(
            spans = n,
            "export deadline passed; dropped unexported spans"
        );
        return;
    }
    match exporter.export(batch, deadline).await {
        Ok(delivered) => {
            let rejected = delivered.rejected.min(n);
            Metrics::add(&metrics.spans_exported, n - rejected);
            // Rejected spans are lost: counted with the other export losses.
            Metrics::add(&metrics.spans_dropped_export_failed, rejected);
        }
        Err(_) => Metrics::add(&metrics.spans_dropped_export_failed, n),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::export::exporter::{Delivered, ExportResult, GaveUp};
    use crate::export::otlp::tests::{resource, span};

    /// Answers each batch with the next scripted result and records what it saw.
    #[derive(Debug, Default)]
    struct Scripted {
        results: Mutex<Vec<ExportResult>>,
        batches: Mutex<Vec<usize>>,
        shutdowns: AtomicUsize,
    }

    impl SpanExporter for Scripted {
        async fn export(&self, batch: Vec<SpanRecord>, _: ExportDeadline) -> ExportResult {
            self.batches.lock().unwrap().push(batch.len());
            self.results.lock().unwrap().remove(0)
        }

        async fn shutdown(&self, _: Instant) {
            self.shutdowns.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A processor over a scripted exporter, batches of `batch_size` exported one at a
    /// time and never on a timer, with spans 1..=`spans` submitted.
    fn started(
        results: Vec<ExportResult>,
        batch_size: usize,
        spans: u8,
    ) -> (BatchSpanProcessor<Scripted>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let exporter = Scripted {
            results: Mutex::new(results),
            ..Scripted::default()
        };
        let batch = BatchConfig {
            schedule_delay: Duration::from_secs(3600),
            max_export_batch_size: batch_size,
            max_concurrent_exports: 1,
            ..BatchConfig::default()
        };
        let p = BatchSpanProcessor::start(exporter, batch, metrics.clone());
        let r = resource("svc");
        p.submit_all((1..=spans).map(|id| span(&r, id, None)).collect());
        (p, metrics)
    }

    #[tokio::test]
    async fn counts_what_the_exporter_reports_and_shuts_it_down_once() {
        // Batches are exported one at a time, in order.
        let (p, metrics) = started(
            vec![
                Ok(Delivered { rejected: 1 }),
                Err(GaveUp),
                Ok(Delivered::default()),
            ],
            3,
            8,
        );
        // Shutdown exports the partial last batch without waiting for the delay.
        p.shutdown(Instant::now() + Duration::from_secs(10)).await;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        // 3 with 1 rejected, 3 given up, 2 delivered.
        assert_eq!(load(&metrics.spans_exported), 2 + 2);
        assert_eq!(load(&metrics.spans_dropped_export_failed), 1 + 3);
        assert_eq!(load(&metrics.export_queue_depth), 0);
    }

    #[tokio::test]
    async fn the_exporter_sees_full_batches_then_the_rest_and_one_shutdown() {
        let (p, _) = started(vec![Ok(Delivered::default()); 3], 4, 10);
        let exporter = p.exporter.clone();
        p.shutdown(Instant::now() + Duration::from_secs(10)).await;
        assert_eq!(*exporter.batches.lock().unwrap(), [4, 4, 2]);
        assert_eq!(exporter.shutdowns.load(Ordering::Relaxed), 1);
    }
}
