//! The OTLP span exporter: encodes a batch once, sends it over gRPC or HTTP/protobuf, and
//! retries retryable failures with jittered exponential backoff until the batch's deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::{Instant, sleep_until};

use super::config::{ExportConfig, RetryConfig};
use super::exporter::{Delivered, ExportDeadline, ExportResult, GaveUp, SpanExporter};
use super::otlp::encode_request;
use super::transport::{ExportError, Transport, TransportError};
use crate::metrics::Metrics;
use crate::spans::SpanRecord;

pub const SCOPE_NAME: &str = "tracer-agent";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct OtlpExporter {
    transport: Transport,
    retry: RetryConfig,
    metrics: Arc<Metrics>,
    /// Whether the last batch to finish failed, so recovery is logged once.
    failing: AtomicBool,
    /// Seeds each export's own backoff jitter.
    rng: Mutex<SmallRng>,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("endpoint", &self.transport.endpoint())
            .finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// Does not contact the collector.
    pub fn new(cfg: &ExportConfig, metrics: Arc<Metrics>) -> Result<Self, TransportError> {
        Ok(Self::with_transport(
            Transport::new(cfg)?,
            cfg.retry.clone(),
            metrics,
        ))
    }

    pub fn with_transport(transport: Transport, retry: RetryConfig, metrics: Arc<Metrics>) -> Self {
        OtlpExporter {
            transport,
            retry,
            metrics,
            failing: AtomicBool::new(false),
            rng: Mutex::new(SmallRng::from_os_rng()),
        }
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanRecord>, mut deadline: ExportDeadline) -> ExportResult {
        let n = batch.len() as u64;
        let mut rng = {
            let mut seed = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            SmallRng::from_rng(&mut *seed)
        };
        // `Bytes`, so each retry re-sends the same buffer without copying it.
        let request = bytes::Bytes::from(encode_request(&batch, SCOPE_NAME, SCOPE_VERSION));
        // The request now holds copies of everything; free the spans before waiting.
        drop(batch);

        let mut attempts = 0u32;
        let last_error = loop {
            if Instant::now() >= deadline.at() {
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
                    _ = sleep_until(deadline.at()) => break None,
                    // Re-arm the sleep above with the (possibly earlier) deadline.
                    _ = deadline.changed() => {}
                }
            };
            let err = match result {
                Some(Ok(accepted)) => {
                    let rejected = accepted.rejected_spans.min(n);
                    if rejected > 0 || !accepted.message.is_empty() {
                        // Partial success must not be retried (spec).
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
                    return Ok(Delivered { rejected });
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
            if wake >= deadline.at() {
                break err;
            }
            // Sleep, but wake early if shutdown moves the deadline before `wake`; the check
            // at the top of the loop then gives up.
            while Instant::now() < wake.min(deadline.at()) {
                tokio::select! {
                    _ = sleep_until(wake.min(deadline.at())) => {}
                    _ = deadline.changed() => {}
                }
            }
        };

        self.failing.store(true, Ordering::Relaxed);
        tracing::warn!(
            endpoint = self.transport.endpoint(),
            spans = n,
            attempts,
            error = %last_error,
            "OTLP export failed; dropped batch"
        );
        Err(GaveUp)
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
