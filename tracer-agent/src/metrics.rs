//! Process-wide counters, rendered as Prometheus text on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

macro_rules! counters {
    ($( $field:ident => ($name:literal, $kind:literal, $help:literal) ),* $(,)?) => {
        /// All counters the agent exposes. Each is monotonic unless its kind is `gauge`.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( pub $field: AtomicU64, )*
            /// Drops counted in the kernel, per reason, copied in by the capture loop.
            pub kernel_drops: [AtomicU64; tracer_common::DROP_REASON_COUNT],
            /// Connection ends the kernel found speaking something other than HTTP/1, per
            /// `tracer_common::Sniffed` (minus one), copied in by the capture loop.
            pub connections_not_http: [AtomicU64; tracer_common::NOT_HTTP_KIND_COUNT],
            /// CLIENT spans the thread rule left without a parent, per
            /// `link::Abstained::ALL`, copied in by the pipeline.
            pub link_abstained: [AtomicU64; crate::link::Abstained::ALL.len()],
            /// Traces decided by the tail sampler, per `export::tail::Decision::ALL`.
            pub tail_traces: [AtomicU64; crate::export::tail::Decision::ALL.len()],
            /// HTTP/2 connections whose headers could not be decoded, per
            /// `http2::Undecodable::ALL`, counted by the pipeline.
            pub http2_undecodable: [AtomicU64; crate::http2::Undecodable::ALL.len()],
            /// Requests not traced, per `export::exclude::Rule::ALL`.
            pub requests_excluded: [AtomicU64; crate::export::exclude::Rule::ALL.len()],
            /// The agent-to-agent exchange.
            pub peers: crate::peers::PeerMetrics,
            pub ready: AtomicBool,
        }

        impl Metrics {
            pub fn render_prometheus(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP {} {}", $name, $help);
                    let _ = writeln!(out, "# TYPE {} {}", $name, $kind);
                    let _ = writeln!(out, "{} {}", $name, self.$field.load(Ordering::Relaxed));
                )*
                let _ = writeln!(out, "# HELP tracer_kernel_drops_total Events the eBPF programs could not deliver, by reason.");
                let _ = writeln!(out, "# TYPE tracer_kernel_drops_total counter");
                for (i, c) in self.kernel_drops.iter().enumerate() {
                    let reason = tracer_common::DropReason::try_from(i as u32)
                        .map(|r| r.as_str())
                        .unwrap_or("unknown");
                    let _ = writeln!(out, "tracer_kernel_drops_total{{reason=\"{reason}\"}} {}", c.load(Ordering::Relaxed));
                }
                let _ = writeln!(out, "# HELP tracer_connections_not_http_total Connection ends whose first bytes were not HTTP/1 (not captured further), by protocol.");
                let _ = writeln!(out, "# TYPE tracer_connections_not_http_total counter");
                for (i, c) in self.connections_not_http.iter().enumerate() {
                    let protocol = tracer_common::Sniffed::not_http_label(i);
                    let _ = writeln!(out, "tracer_connections_not_http_total{{protocol=\"{protocol}\"}} {}", c.load(Ordering::Relaxed));
                }
                let _ = writeln!(out, "# HELP tracer_link_abstained_total CLIENT spans given no in-process parent because no choice was certain, by reason.");
                let _ = writeln!(out, "# TYPE tracer_link_abstained_total counter");
                for (why, c) in crate::link::Abstained::ALL.iter().zip(&self.link_abstained) {
                    let _ = writeln!(out, "tracer_link_abstained_total{{reason=\"{}\"}} {}", why.as_str(), c.load(Ordering::Relaxed));
                }
                let _ = writeln!(out, "# HELP tracer_http2_undecodable_total HTTP/2 connections whose header blocks cannot be decoded (HPACK is stateful): their streams in flight end with a capture gap and later ones are not traced, by reason.");
                let _ = writeln!(out, "# TYPE tracer_http2_undecodable_total counter");
                for (why, c) in crate::http2::Undecodable::ALL.iter().zip(&self.http2_undecodable) {
                    let _ = writeln!(out, "tracer_http2_undecodable_total{{reason=\"{}\"}} {}", why.as_str(), c.load(Ordering::Relaxed));
                }
                let _ = writeln!(out, "# HELP tracer_requests_excluded_total Requests not traced (their span and every span below it dropped), by rule.");
                let _ = writeln!(out, "# TYPE tracer_requests_excluded_total counter");
                for (rule, c) in crate::export::exclude::Rule::ALL.iter().zip(&self.requests_excluded) {
                    let _ = writeln!(out, "tracer_requests_excluded_total{{rule=\"{}\"}} {}", rule.as_str(), c.load(Ordering::Relaxed));
                }
                let _ = writeln!(out, "# HELP tracer_tail_traces_total Traces decided by the tail sampler, by decision (error and slow kept whole, sampled by the ratio, dropped).");
                let _ = writeln!(out, "# TYPE tracer_tail_traces_total counter");
                for (d, c) in crate::export::tail::Decision::ALL.iter().zip(&self.tail_traces) {
                    let _ = writeln!(out, "tracer_tail_traces_total{{decision=\"{}\"}} {}", d.as_str(), c.load(Ordering::Relaxed));
                }
                self.peers.render(&mut out);
                out
            }
        }
    };
}

counters! {
    events => ("tracer_events_total", "counter", "Events read from the kernel ring buffer."),
    event_bytes => ("tracer_event_bytes_total", "counter", "Bytes of payload captured from socket syscalls."),
    events_malformed => ("tracer_events_malformed_total", "counter", "Ring buffer records that failed to decode."),
    connections_opened => ("tracer_connections_opened_total", "counter", "Connections seen opening (accept/connect)."),
    connections_active => ("tracer_connections_active", "gauge", "Connections currently tracked in user space."),
    connections_evicted => ("tracer_connections_evicted_total", "counter", "Connections dropped from the table because it was full or idle."),
    connections_of_exited => ("tracer_connections_exited_total", "counter", "Connections ended because their process exited without closing them."),
    parse_errors => ("tracer_http_parse_errors_total", "counter", "HTTP messages that could not be parsed."),
    stream_gaps => ("tracer_stream_gaps_total", "counter", "Gaps in a captured byte stream (lost or truncated data)."),
    desynchronised => ("tracer_http_desynchronised_total", "counter", "Connections whose requests and responses can no longer be paired after lost bytes (a client that pipelines): their later requests are exported without a response."),
    exchanges => ("tracer_http_exchanges_total", "counter", "HTTP request/response exchanges reconstructed."),
    own_exports_skipped => ("tracer_own_exports_skipped_total", "counter", "Exchanges skipped because they are this agent's own OTLP exports."),
    links_by_peer => ("tracer_links_by_peer_total", "counter", "SERVER spans linked to the CLIENT span of the same exchange (address match)."),
    links_by_remote_peer => ("tracer_links_by_remote_peer_total", "counter", "SERVER spans linked to the CLIENT span of the same exchange traced by another node's agent."),
    links_by_header => ("tracer_links_by_header_total", "counter", "Spans linked to trace context from request headers."),
    links_by_thread => ("tracer_links_by_thread_total", "counter", "CLIENT spans linked to the SERVER span their thread was serving."),
    links_by_goroutine => ("tracer_links_by_goroutine_total", "counter", "CLIENT spans of followed Go processes linked to the SERVER span their goroutine works for."),
    connections_adopted => ("tracer_connections_adopted_total", "counter", "TCP connections open before the agent started, found in /proc and traced from their next message."),
    links_by_task => ("tracer_links_by_task_total", "counter", "CLIENT spans of followed CPython processes linked to the SERVER request their asyncio task answered."),
    python_followed => ("tracer_python_processes_followed_total", "counter", "CPython processes whose asyncio tasks are followed (frames read on writes)."),
    python_unsupported => ("tracer_python_processes_unsupported_total", "counter", "CPython processes whose tasks cannot be followed (release without a known layout); their calls fall back to the thread rule."),
    go_followed => ("tracer_go_processes_followed_total", "counter", "Go processes whose goroutines are followed (uprobes attached)."),
    go_unsupported => ("tracer_go_processes_unsupported_total", "counter", "Go processes whose goroutines cannot be followed (release, symbols); their calls get no in-process parent."),
    trace_roots => ("tracer_trace_roots_total", "counter", "Spans exported as the root of a new trace."),
    link_orphans => ("tracer_link_orphans_total", "counter", "Spans whose parent never resolved, exported as roots."),
    link_evicted => ("tracer_link_evicted_total", "counter", "Requests given up by the linker because too many were in flight."),
    spans_waiting => ("tracer_spans_waiting", "gauge", "Requests and spans held by the linker."),
    spans_held_for_metadata => ("tracer_spans_held_for_metadata_total", "counter", "Spans held until their pod's Kubernetes metadata arrived."),
    spans_released_without_metadata => ("tracer_spans_released_without_metadata_total", "counter", "Held spans exported after the wait without their pod's metadata."),
    spans_out_of_scope => ("tracer_spans_out_of_scope_total", "counter", "Held spans not exported because their pod turned out to be out of scope."),
    kube_watch_errors => ("tracer_kube_watch_errors_total", "counter", "Kubernetes list/watch failures (each is retried)."),
    kube_pods => ("tracer_kube_pods", "gauge", "Pods on this node known from the Kubernetes API."),
    spans_created => ("tracer_spans_created_total", "counter", "Spans built from exchanges."),
    route_names_capped => ("tracer_route_names_capped_total", "counter", "Spans named by their method alone because their service reached its cap of guessed route templates."),
    tail_decided_early => ("tracer_tail_decided_early_total", "counter", "Traces the tail sampler decided before their wait was over because its buffer was full."),
    tail_buffered_spans => ("tracer_tail_buffered_spans", "gauge", "Spans waiting in the tail sampler's buffer for their trace to be decided."),
    spans_excluded => ("tracer_spans_excluded_total", "counter", "Spans not exported because their trace starts at an excluded request (a kubelet probe, an excluded path)."),
    spans_unsampled => ("tracer_spans_unsampled_total", "counter", "Spans not exported because their trace was not sampled."),
    spans_exported => ("tracer_spans_exported_total", "counter", "Spans accepted by the exporter's destination."),
    spans_dropped_queue_full => ("tracer_spans_dropped_queue_full_total", "counter", "Spans dropped because the export queue was full."),
    spans_dropped_export_failed => ("tracer_spans_dropped_export_failed_total", "counter", "Spans dropped after export retries were exhausted."),
    export_requests => ("tracer_export_requests_total", "counter", "Export requests sent."),
    export_failures => ("tracer_export_failures_total", "counter", "Export attempts that failed (each retry counts)."),
    export_queue_depth => ("tracer_export_queue_depth", "gauge", "Spans waiting in the export queue."),
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        // Callers publish per-batch deltas, mostly zero: skip the locked add then.
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}
