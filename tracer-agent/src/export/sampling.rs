//! Which linked spans leave for the span processor, and when: through the tail sampler when one is
//! set (it decides whole traces later), else by the head sampler at once. Every span the
//! samplers leave out is counted as unsampled.

use std::sync::atomic::Ordering;

use super::{Sampler, SpanProcessor, TailSampler};
use crate::metrics::Metrics;
use crate::spans::SpanRecord;

pub struct Sampling {
    head: Sampler,
    tail: Option<TailSampler>,
}

impl Sampling {
    pub fn new(head: Sampler, tail: Option<TailSampler>) -> Self {
        Sampling { head, tail }
    }

    /// The tail sampler, when one is set: it announces the traces it keeps to the other
    /// agents, and keeps the traces they announce.
    pub fn tail_mut(&mut self) -> Option<&mut TailSampler> {
        self.tail.as_mut()
    }

    /// Hands `spans` (linked, final) to `processor` as the samplers decide. `flush`: decide
    /// every waiting trace now (at shutdown).
    pub fn release(
        &mut self,
        processor: &SpanProcessor,
        metrics: &Metrics,
        mut spans: Vec<SpanRecord>,
        now_ns: u64,
        flush: bool,
    ) {
        let Some(tail) = self.tail.as_mut() else {
            let offered = spans.len();
            spans.retain(|span| self.head.keeps(span));
            Metrics::add(&metrics.spans_unsampled, (offered - spans.len()) as u64);
            processor.submit_all(spans);
            return;
        };
        let dropped_before = tail.stats().spans_dropped;
        let mut out = Vec::new();
        for span in spans {
            tail.push(span, now_ns, &mut out);
        }
        if flush {
            tail.flush(&mut out);
        } else {
            tail.poll(now_ns, &mut out);
        }
        processor.submit_all(out);
        let s = tail.stats();
        Metrics::add(&metrics.spans_unsampled, s.spans_dropped - dropped_before);
        for (slot, n) in metrics.tail_traces.iter().zip(s.traces) {
            slot.store(n, Ordering::Relaxed);
        }
        metrics
            .tail_decided_early
            .store(s.decided_early, Ordering::Relaxed);
        metrics
            .tail_buffered_spans
            .store(s.buffered, Ordering::Relaxed);
    }
}
