//! The OTLP span exporter: a bounded queue in front of one background task that batches,
//! and up to `max_concurrent_exports` export tasks that send and retry one batch each.
//!
//! Memory is bounded by the queue (`max_queue_size` spans) plus the batches in flight:
//! while all export slots are busy the batching task does not read the queue, so a slow
//! or dead collector makes new spans drop (and count) at `submit` instead of piling up.
//! The pipeline hands spans over a tick's worth at a time (`submit_all`): one message and
//! at most one wakeup of the batching task per hand-over, not per span.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};

use super::config::{BatchConfig, ExportConfig, RetryConfig};
use super::otlp::encode_request;
use super::transport::{ExportError, Transport, TransportError};
use crate::metrics::Metrics;
use crate::spans::SpanRecord;

pub const SCOPE_NAME: &str = "tracer-agent";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Handle to the export task. `submit` is callable from any thread, sync or async.
#[derive(Debug)]
pub struct SpanExporter {
    tx: mpsc::UnboundedSender<Vec<SpanRecord>>,
    /// Spans handed over and not yet taken into a batch: the queue, bounded by `max_queue`.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    /// Carries the shutdown deadline to the task, which may be mid-retry.
    shutdown: watch::Sender<Option<Instant>>,
    worker: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl SpanExporter {
    /// Starts the export task on the current tokio runtime. Does not contact the collector.
    pub fn start(cfg: &ExportConfig, metrics: Arc<Metrics>) -> Result<Self, TransportError> {
        let transport = Transport::new(cfg)?;
        Ok(Self::with_transport(
            transport,
            cfg.batch.clone(),
            cfg.retry.clone(),
            metrics,
        ))
    }

    pub fn with_transport(
        transport: Transport,
        batch: BatchConfig,
        retry: RetryConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Unbounded in messages, bounded in spans by `queued`: every message holds at
        // least one span counted there.
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let max_queue = batch.max_queue_size.max(1);
        let (shutdown, shutdown_rx) = watch::channel(None);
        let signal = ShutdownSignal {
            rx: shutdown_rx,
            handle_gone: false,
        };
        let worker = Worker {
            rx,
            queued: queued.clone(),
            signal: signal.clone(),
            sender: Arc::new(BatchSender {
                transport,
                export_timeout: batch.export_timeout,
                retry,
                metrics: metrics.clone(),
                failing: AtomicBool::new(false),
            }),
            in_flight: JoinSet::new(),
            max_in_flight: batch.max_concurrent_exports.max(1),
            batch_cfg: batch,
            rng: SmallRng::from_os_rng(),
        };
        SpanExporter {
            tx,
            queued,
            max_queue,
            shutdown,
            worker: tokio::spawn(worker.run()),
            metrics,
        }
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

    /// Stops accepting spans, exports everything already queued, and returns once that is
    /// done or `deadline` has passed. Spans not exported by then are counted as dropped.
    pub async fn shutdown(self, deadline: Instant) {
        let SpanExporter {
            tx,
            shutdown,
            mut worker,
            ..
        } = self;
        let _ = shutdown.send(Some(deadline));
        drop(tx);
        // The task gives up on its own at the deadline; the grace covers its final
        // bookkeeping. Abort only if it is stuck past that.
        let grace = deadline + Duration::from_millis(100);
        if tokio::time::timeout_at(grace, &mut worker).await.is_err() {
            tracing::warn!("span exporter did not stop by its deadline; aborting it");
            worker.abort();
        }
    }
}

struct Worker {
    rx: mpsc::UnboundedReceiver<Vec<SpanRecord>>,
    /// Shared with the handle: decremented as spans are taken into a batch.
    queued: Arc<AtomicUsize>,
    signal: ShutdownSignal,
    sender: Arc<BatchSender>,
    in_flight: JoinSet<()>,
    max_in_flight: usize,
    batch_cfg: BatchConfig,
    /// Seeds each export's own backoff jitter.
    rng: SmallRng,
}

/// What every export task shares.
struct BatchSender {
    transport: Transport,
    export_timeout: Duration,
    retry: RetryConfig,
    metrics: Arc<Metrics>,
    /// Whether the last batch to finish failed, so recovery is logged once.
    failing: AtomicBool,
}

/// The receiving side of the shutdown deadline.
#[derive(Clone)]
struct ShutdownSignal {
    rx: watch::Receiver<Option<Instant>>,
    /// The handle was dropped without `shutdown`: treat it as a shutdown without deadline.
    handle_gone: bool,
}

impl ShutdownSignal {
    /// Resolves when the deadline is set or the handle goes away; once the handle is gone
    /// it never resolves again (a closed watch would otherwise wake every `select!`).
    async fn changed(&mut self) {
        if self.handle_gone {
            return std::future::pending().await;
        }
        if self.rx.changed().await.is_err() {
            self.handle_gone = true;
        }
    }

    fn requested(&self) -> bool {
        self.handle_gone || self.rx.borrow().is_some()
    }

    fn deadline(&self) -> Option<Instant> {
        *self.rx.borrow()
    }
}

impl Worker {
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
                            self.metrics().export_queue_depth.fetch_sub(1, Ordering::Relaxed);
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

    fn metrics(&self) -> &Metrics {
        &self.sender.metrics
    }

    /// Starts exporting `batch` once a slot is free. Waiting here (not reading the queue)
    /// is what bounds memory when the collector is slow.
    async fn dispatch(&mut self, batch: Vec<SpanRecord>) {
        while self.in_flight.len() >= self.max_in_flight {
            self.in_flight.join_next().await;
        }
        let sender = self.sender.clone();
        let signal = self.signal.clone();
        let rng = SmallRng::from_rng(&mut self.rng);
        self.in_flight.spawn(sender.export(batch, signal, rng));
    }
}

impl BatchSender {
    async fn export(
        self: Arc<Self>,
        batch: Vec<SpanRecord>,
        mut signal: ShutdownSignal,
        mut rng: SmallRng,
    ) {
        let n = batch.len() as u64;
        // Past the shutdown deadline the rest of the queue is only counted, not encoded.
        if signal.deadline().is_some_and(|d| Instant::now() >= d) {
            Metrics::add(&self.metrics.spans_dropped_export_failed, n);
            tracing::warn!(
                spans = n,
                "shutdown deadline passed; dropped unexported spans"
            );
            return;
        }
        // `Bytes`, so each retry re-sends the same buffer without copying it.
        let request = bytes::Bytes::from(encode_request(&batch, SCOPE_NAME, SCOPE_VERSION));
        // The request now holds copies of everything; free the spans before waiting.
        drop(batch);

        let batch_deadline = Instant::now() + self.export_timeout;
        // A shutdown deadline, which may arrive at any moment, can only shorten the budget.
        let deadline = |signal: &ShutdownSignal| {
            signal
                .deadline()
                .map_or(batch_deadline, |d| d.min(batch_deadline))
        };
        let mut attempts = 0u32;
        let last_error = loop {
            if Instant::now() >= deadline(&signal) {
                break ExportError::Retryable {
                    message: "export deadline passed".into(),
                    retry_after: None,
                };
            }
            attempts += 1;
            Metrics::inc(&self.metrics.export_requests);
            let attempt = self.transport.export(&request);
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break Some(r),
                    _ = sleep_until(deadline(&signal)) => break None,
                    // Re-arm the sleep above with the (possibly earlier) deadline.
                    _ = signal.changed() => {}
                }
            };
            let err = match result {
                Some(Ok(accepted)) => {
                    let rejected = accepted.rejected_spans.min(n);
                    Metrics::add(&self.metrics.spans_exported, n - rejected);
                    if rejected > 0 || !accepted.message.is_empty() {
                        // Partial success must not be retried (spec); the rejected spans
                        // are lost, so count them with the other export losses.
                        Metrics::add(&self.metrics.spans_dropped_export_failed, rejected);
                        tracing::warn!(
                            endpoint = self.transport.endpoint(),
                            rejected,
                            message = %accepted.message,
                            "collector rejected part of an export"
                        );
                    }
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            endpoint = self.transport.endpoint(),
                            "OTLP export recovered"
                        );
                    }
                    return;
                }
                Some(Err(e)) => e,
                None => ExportError::Retryable {
                    message: "export deadline passed during the request".into(),
                    retry_after: None,
                },
            };
            Metrics::inc(&self.metrics.export_failures);
            tracing::debug!(attempt = attempts, error = %err, "OTLP export attempt failed");
            if !err.is_retryable() || attempts >= self.retry.max_attempts {
                break err;
            }
            let delay = err
                .retry_after()
                .unwrap_or_else(|| backoff_delay(&self.retry, attempts, &mut rng));
            let wake = Instant::now() + delay;
            if wake >= deadline(&signal) {
                break err;
            }
            // Sleep, but wake early if shutdown moves the deadline before `wake`; the check
            // at the top of the loop then gives up.
            while Instant::now() < wake.min(deadline(&signal)) {
                tokio::select! {
                    _ = sleep_until(wake.min(deadline(&signal))) => {}
                    _ = signal.changed() => {}
                }
            }
        };

        Metrics::add(&self.metrics.spans_dropped_export_failed, n);
        self.failing.store(true, Ordering::Relaxed);
        tracing::warn!(
            endpoint = self.transport.endpoint(),
            spans = n,
            attempts,
            error = %last_error,
            "OTLP export failed; dropped batch"
        );
    }
}

/// Exponential backoff with "equal jitter": the `failures`-th retry waits a random time in
/// `[d/2, d]` with `d = min(initial * 2^(failures-1), max)`, so agents that lost the same
/// collector do not retry in lockstep.
pub fn backoff_delay(retry: &RetryConfig, failures: u32, rng: &mut impl Rng) -> Duration {
    let exp = failures.saturating_sub(1).min(31);
    let full = retry
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(retry.max_backoff);
    let half = full / 2;
    let jitter_nanos = rng.random_range(0..=(full - half).as_nanos() as u64);
    half + Duration::from_nanos(jitter_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let retry = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: 10,
        };
        let mut rng = SmallRng::seed_from_u64(1);
        for (failures, full_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (6, 3200),
            (7, 5000),
            (40, 5000),
        ] {
            let full = Duration::from_millis(full_ms);
            for _ in 0..100 {
                let d = backoff_delay(&retry, failures, &mut rng);
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
            }
        }
    }

    #[test]
    fn backoff_is_jittered() {
        let retry = RetryConfig::default();
        let mut rng = SmallRng::seed_from_u64(7);
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| backoff_delay(&retry, 3, &mut rng))
            .collect();
        assert!(delays.len() > 1);
    }
}
