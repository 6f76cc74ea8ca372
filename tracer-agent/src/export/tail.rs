//! Tail sampling on the node: keep every trace with an error or a slow span, and a ratio of
//! the rest, decided on this node's whole part of the trace.
//!
//! Spans wait in a buffer by trace id until `wait` after the first span of their trace
//! arrived here; then the trace is decided. It is kept if one of its spans has status ERROR
//! (with `--sample-errors`) or lasted longer than `--sample-slower-than`; otherwise the head
//! [`Sampler`] decides as without tail sampling (the ratio on the trace id, or the caller's
//! `sampled` flag). Spans of a decided trace that arrive later follow its decision, which is
//! remembered for the most recent traces.
//!
//! Bounded: the buffer holds at most `max_spans`; a span that would exceed it makes the
//! oldest traces be decided at once on what they have (counted as decided early), so
//! memory never grows with load.
//!
//! Across nodes: the first error or slow span of a trace is announced at once
//! ([`TailSampler::take_announcements`], with the peer addresses of the trace's spans so far)
//! and the agent-to-agent exchange tells the agents holding its other parts, which keep them
//! ([`TailSampler::keep_remote`]) if they have not decided yet — they wait as long as this
//! node does, and the announcement leaves when the span arrives, not when the trace is
//! decided. A ratio decision needs no message: it is made on the trace id, the same on
//! every node. A keep that arrives after the other node dropped its part is too late
//! (counted as `late`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use super::Sampler;
use super::exclude::{ExcludeError, PathPattern};
use crate::spans::builder::split_target;
use crate::spans::{AttrValue, SpanRecord, SpanStatus, TraceId};

/// Decisions remembered for late spans.
const DECISIONS_REMEMBERED: usize = 65_536;

#[derive(Debug, Clone, PartialEq)]
pub struct TailPolicy {
    pub keep_errors: bool,
    /// Keep traces with a span longer than this.
    pub slower_than_ns: Option<u64>,
    /// Per-route ratios: a trace with a span on a matching path is kept at that ratio
    /// (the highest of those it matches) instead of the head sampler's.
    pub routes: Vec<RouteRule>,
    /// How long a trace's spans wait for the rest of it.
    pub wait_ns: u64,
    /// Spans buffered at most.
    pub max_spans: usize,
}

impl TailPolicy {
    /// Whether any tail rule is set; without one the head sampler works alone.
    pub fn enabled(&self) -> bool {
        self.keep_errors || self.slower_than_ns.is_some() || !self.routes.is_empty()
    }
}

/// `--sample-route PATH=RATIO`: a path prefix or glob (as `--exclude-path`) and its ratio.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRule {
    path: PathPattern,
    ratio: f64,
    sampler: Sampler,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteRuleError {
    #[error(
        "--sample-route `{0}` is not PATH=RATIO with a ratio from 0 to 1 (e.g. /api/checkout*=1)"
    )]
    Syntax(String),
    #[error(transparent)]
    Path(#[from] ExcludeError),
}

impl RouteRule {
    pub fn parse(s: &str) -> Result<RouteRule, RouteRuleError> {
        let bad = || RouteRuleError::Syntax(s.to_owned());
        let (path, ratio) = s.trim().rsplit_once('=').ok_or_else(bad)?;
        let ratio: f64 = ratio.trim().parse().map_err(|_| bad())?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(bad());
        }
        Ok(RouteRule {
            path: PathPattern::parse(path)?,
            ratio,
            // On the trace id alone: the same answer on every node, whatever the caller said.
            sampler: Sampler::ratio(ratio).map_err(|_| bad())?.ignoring_parent(),
        })
    }
}

/// Why a trace was kept or not, for `tracer_tail_traces_total{decision}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Error,
    Slow,
    /// Another node's agent kept it (an error or slow span there).
    Remote,
    /// Kept by a per-route ratio.
    Route,
    Sampled,
    Dropped,
}

impl Decision {
    pub const ALL: [Decision; 6] = [
        Decision::Error,
        Decision::Slow,
        Decision::Remote,
        Decision::Route,
        Decision::Sampled,
        Decision::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Error => "error",
            Decision::Slow => "slow",
            Decision::Remote => "remote",
            Decision::Route => "route",
            Decision::Sampled => "sampled",
            Decision::Dropped => "dropped",
        }
    }

    fn keeps(self) -> bool {
        self != Decision::Dropped
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TailStats {
    /// Traces decided, per [`Decision::ALL`].
    pub traces: [u64; 6],
    /// Keeps from other nodes for traces this node had already dropped.
    pub remote_late: u64,
    /// Traces decided before their wait was over because the buffer was full.
    pub decided_early: u64,
    /// Spans not exported (their trace was dropped).
    pub spans_dropped: u64,
    /// Spans in the buffer now.
    pub buffered: u64,
}

struct Pending {
    spans: Vec<SpanRecord>,
    /// The strongest reason to keep it seen so far.
    reason: Option<Decision>,
    /// Told to the other nodes already.
    announced: bool,
    /// The highest per-route ratio its spans matched, as the rule's index.
    route: Option<usize>,
}

pub struct TailSampler {
    policy: TailPolicy,
    head: Sampler,
    pending: HashMap<TraceId, Pending>,
    /// Traces by the time they are due, oldest first (times only grow).
    due: VecDeque<(u64, TraceId)>,
    buffered: usize,
    decided: HashMap<TraceId, bool>,
    decided_order: VecDeque<TraceId>,
    /// Traces kept here for their own spans, with the peer addresses of those spans, not yet
    /// handed to the exchange.
    announcements: Vec<(TraceId, Vec<IpAddr>)>,
    stats: TailStats,
}

impl TailSampler {
    pub fn new(policy: TailPolicy, head: Sampler) -> Self {
        TailSampler {
            policy: TailPolicy {
                max_spans: policy.max_spans.max(1),
                ..policy
            },
            head,
            pending: HashMap::new(),
            due: VecDeque::new(),
            buffered: 0,
            decided: HashMap::new(),
            decided_order: VecDeque::new(),
            announcements: Vec::new(),
            stats: TailStats::default(),
        }
    }

    pub fn stats(&self) -> TailStats {
        TailStats {
            buffered: self.buffered as u64,
            ..self.stats
        }
    }

    fn reason(&self, span: &SpanRecord) -> Option<Decision> {
        if self.policy.keep_errors && matches!(span.status, SpanStatus::Error { .. }) {
            return Some(Decision::Error);
        }
        let took = span.end_unix_nanos.saturating_sub(span.start_unix_nanos);
        if self.policy.slower_than_ns.is_some_and(|t| took > t) {
            return Some(Decision::Slow);
        }
        None
    }

    /// Takes a span whose trace is linked; spans that may leave now go to `out`.
    pub fn push(&mut self, span: SpanRecord, now_ns: u64, out: &mut Vec<SpanRecord>) {
        if let Some(&keep) = self.decided.get(&span.trace_id) {
            if keep {
                out.push(span);
            } else {
                self.stats.spans_dropped += 1;
            }
            return;
        }
        while self.buffered >= self.policy.max_spans {
            if !self.decide_oldest(out) {
                break;
            }
            self.stats.decided_early += 1;
        }
        let reason = self.reason(&span);
        let trace = span.trace_id;
        let entry = self.pending.entry(trace).or_insert_with(|| {
            self.due.push_back((now_ns + self.policy.wait_ns, trace));
            Pending {
                spans: Vec::new(),
                reason: None,
                announced: false,
                route: None,
            }
        });
        if entry.reason != Some(Decision::Error) && reason.is_some() {
            entry.reason = reason;
        }
        if let Some(path) = span_path(&span) {
            for (i, rule) in self.policy.routes.iter().enumerate() {
                let better = entry
                    .route
                    .is_none_or(|r| self.policy.routes[r].ratio < rule.ratio);
                if better && rule.path.matches(path) {
                    entry.route = Some(i);
                }
            }
        }
        entry.spans.push(span);
        self.buffered += 1;
        if reason.is_some() && !entry.announced {
            entry.announced = true;
            let mut ips: Vec<IpAddr> = entry.spans.iter().filter_map(peer_ip).collect();
            ips.sort_unstable();
            ips.dedup();
            self.announcements.push((trace, ips));
        }
    }

    /// Traces kept here for their own spans since the last call: the exchange tells the
    /// agents holding their other parts.
    pub fn take_announcements(&mut self) -> Vec<(TraceId, Vec<IpAddr>)> {
        std::mem::take(&mut self.announcements)
    }

    /// Other nodes kept these traces: keep this node's parts too, those waiting and those
    /// still to come.
    pub fn keep_remote(&mut self, traces: &[TraceId]) {
        for trace in traces {
            if let Some(p) = self.pending.get_mut(trace) {
                if p.reason.is_none() {
                    p.reason = Some(Decision::Remote);
                }
                // Never announced back: the sender knows.
                p.announced = true;
                continue;
            }
            match self.decided.get(trace) {
                Some(true) => {}
                Some(false) => self.stats.remote_late += 1,
                None => self.remember(*trace, true),
            }
        }
    }

    fn remember(&mut self, trace: TraceId, keep: bool) {
        if self.decided_order.len() >= DECISIONS_REMEMBERED
            && let Some(old) = self.decided_order.pop_front()
        {
            self.decided.remove(&old);
        }
        if self.decided.insert(trace, keep).is_none() {
            self.decided_order.push_back(trace);
        }
    }

    /// Decides the traces whose wait is over.
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<SpanRecord>) {
        while self.due.front().is_some_and(|&(at, _)| at <= now_ns) {
            self.decide_oldest(out);
        }
    }

    /// Decides everything now (shutdown).
    pub fn flush(&mut self, out: &mut Vec<SpanRecord>) {
        while self.decide_oldest(out) {}
    }

    fn decide_oldest(&mut self, out: &mut Vec<SpanRecord>) -> bool {
        let Some((_, trace)) = self.due.pop_front() else {
            return false;
        };
        let Some(p) = self.pending.remove(&trace) else {
            return true;
        };
        self.buffered -= p.spans.len();
        let route = p.route.map(|i| &self.policy.routes[i]);
        let decision = match (p.reason, route) {
            (Some(r), _) => r,
            (None, Some(rule)) if rule.sampler.keeps_trace(&trace, None) => Decision::Route,
            (None, Some(_)) => Decision::Dropped,
            // Every span of a trace has the same head decision (the linker gives them the
            // same parent flag); the first one stands for the trace.
            (None, None) if p.spans.first().is_some_and(|s| self.head.keeps(s)) => {
                Decision::Sampled
            }
            (None, None) => Decision::Dropped,
        };
        self.stats.traces[decision as usize] += 1;
        if decision.keeps() {
            out.extend(p.spans);
        } else {
            self.stats.spans_dropped += p.spans.len() as u64;
        }
        self.remember(trace, decision.keeps());
        true
    }
}

/// The path of a span's request: `url.path` (SERVER) or the path in `url.full` (CLIENT).
fn span_path(span: &SpanRecord) -> Option<&str> {
    match span.attr("url.path") {
        Some(AttrValue::Str(s)) => Some(s.as_str()),
        _ => match span.attr("url.full") {
            Some(AttrValue::Str(full)) => Some(split_target(full.as_str()).0),
            _ => None,
        },
    }
}

/// The other end's address of a span: where the rest of its trace may be traced.
fn peer_ip(span: &SpanRecord) -> Option<IpAddr> {
    match span.attr("network.peer.address") {
        Some(AttrValue::Str(s)) => s.as_str().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::SpanKind;

    const MS: u64 = 1_000_000;

    fn span(trace: u8, n: u8, took_ms: u64, error: bool) -> SpanRecord {
        let mut trace_id = [0; 16];
        trace_id[0] = trace;
        // Low bits decide the ratio: `trace` high means outside any ratio below 1.
        trace_id[8] = trace;
        SpanRecord {
            trace_id,
            span_id: [n; 8],
            start_unix_nanos: 1_000 * MS,
            end_unix_nanos: 1_000 * MS + took_ms * MS,
            status: if error {
                SpanStatus::Error {
                    description: "500".into(),
                }
            } else {
                SpanStatus::Unset
            },
            ..SpanRecord::for_test(SpanKind::Server, "GET")
        }
    }

    fn policy() -> TailPolicy {
        TailPolicy {
            keep_errors: true,
            slower_than_ns: Some(100 * MS),
            routes: Vec::new(),
            wait_ns: 1_000 * MS,
            max_spans: 1_000,
        }
    }

    fn sampler_none() -> Sampler {
        Sampler::ratio(0.0).unwrap()
    }

    #[test]
    fn errors_and_slow_traces_are_kept_whole_the_rest_by_ratio() {
        let mut t = TailSampler::new(policy(), sampler_none());
        let mut out = Vec::new();
        // Trace 1: one error among fast spans. Trace 2: one slow span. Trace 3: neither.
        t.push(span(1, 1, 5, false), 0, &mut out);
        t.push(span(2, 1, 5, false), 0, &mut out);
        t.push(span(3, 1, 5, false), 0, &mut out);
        t.push(span(1, 2, 5, true), 10 * MS, &mut out);
        t.push(span(2, 2, 150, false), 10 * MS, &mut out);
        t.push(span(3, 2, 50, false), 10 * MS, &mut out);
        assert!(out.is_empty(), "nothing leaves before the wait");
        t.poll(999 * MS, &mut out);
        assert!(out.is_empty());
        t.poll(1_000 * MS, &mut out);
        let kept: Vec<(u8, u8)> = out.iter().map(|s| (s.trace_id[0], s.span_id[0])).collect();
        assert_eq!(kept, vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
        let s = t.stats();
        assert_eq!(s.traces, [1, 1, 0, 0, 0, 1]);
        assert_eq!((s.spans_dropped, s.buffered), (2, 0));
        // Late spans follow their trace's decision.
        out.clear();
        t.push(span(1, 3, 1, false), 2_000 * MS, &mut out);
        t.push(span(3, 3, 500, true), 2_000 * MS, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].trace_id[0], 1);
        assert_eq!(t.stats().spans_dropped, 3);
    }

    #[test]
    fn the_head_sampler_decides_the_rest() {
        let mut t = TailSampler::new(policy(), Sampler::DEFAULT);
        let mut out = Vec::new();
        t.push(span(9, 1, 1, false), 0, &mut out);
        t.flush(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(t.stats().traces, [0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn a_full_buffer_decides_the_oldest_traces_early_and_never_grows() {
        let mut t = TailSampler::new(
            TailPolicy {
                max_spans: 10,
                ..policy()
            },
            sampler_none(),
        );
        let mut out = Vec::new();
        for i in 0..100u8 {
            // Every tenth trace has an error.
            t.push(span(i, 1, 1, i % 10 == 0), u64::from(i), &mut out);
            assert!(t.stats().buffered <= 10);
        }
        t.flush(&mut out);
        let s = t.stats();
        assert_eq!(s.decided_early, 90);
        assert_eq!(s.traces[Decision::Error as usize], 10);
        assert_eq!(out.len(), 10, "every error trace kept, under pressure too");
        assert_eq!(s.spans_dropped, 90);
    }

    #[test]
    fn error_traces_are_announced_once_and_remote_keeps_are_honoured() {
        let mut t = TailSampler::new(policy(), sampler_none());
        let mut out = Vec::new();
        let mut with_peer = span(1, 1, 1, false);
        with_peer.attributes.push((
            "network.peer.address",
            AttrValue::from("10.0.2.7".to_owned()),
        ));
        t.push(with_peer, 0, &mut out);
        t.push(span(1, 2, 1, true), 1, &mut out);
        t.push(span(1, 3, 1, true), 2, &mut out);
        let a = t.take_announcements();
        assert_eq!(
            a,
            vec![(
                [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                vec!["10.0.2.7".parse().unwrap()]
            )]
        );
        assert!(t.take_announcements().is_empty());
        // Another node kept trace 2 (waiting here) and trace 3 (not seen yet); trace 4 was
        // already dropped here.
        t.push(span(4, 1, 1, false), 0, &mut out);
        t.push(span(2, 1, 1, false), 500 * MS, &mut out);
        t.poll(1_000 * MS, &mut out);
        out.clear();
        t.push(span(2, 2, 1, false), 1_000 * MS, &mut out);
        let id = |n: u8| {
            let mut x = [0; 16];
            x[0] = n;
            x[8] = n;
            x
        };
        t.keep_remote(&[id(2), id(3), id(4)]);
        t.push(span(3, 1, 1, false), 1_001 * MS, &mut out);
        assert_eq!(
            out.len(),
            1,
            "a span of a trace kept elsewhere leaves at once"
        );
        t.poll(3_000 * MS, &mut out);
        let kept: Vec<(u8, u8)> = out.iter().map(|s| (s.trace_id[0], s.span_id[0])).collect();
        assert_eq!(kept, vec![(3, 1), (2, 1), (2, 2)]);
        let s = t.stats();
        assert_eq!(s.traces[Decision::Remote as usize], 1);
        assert_eq!(s.remote_late, 1);
        assert!(
            t.take_announcements().is_empty(),
            "remote keeps are not echoed"
        );
    }

    #[test]
    fn per_route_ratios_apply_to_traces_touching_the_route() {
        let rules: Vec<RouteRule> = ["/checkout*=1", "/checkout/cart=0.0", "/search=0"]
            .iter()
            .map(|r| RouteRule::parse(r).unwrap())
            .collect();
        let mut t = TailSampler::new(
            TailPolicy {
                routes: rules,
                ..policy()
            },
            sampler_none(),
        );
        let mut out = Vec::new();
        let with_path = |trace: u8, path: &str| {
            let mut s = span(trace, 1, 1, false);
            s.attributes
                .push(("url.path", AttrValue::from(path.to_owned())));
            s
        };
        t.push(with_path(1, "/checkout/cart"), 0, &mut out);
        t.push(with_path(2, "/search"), 0, &mut out);
        let mut client = span(3, 1, 1, false);
        client.attributes.push((
            "url.full",
            AttrValue::from("http://shop:8080/checkout/pay?x=1".to_owned()),
        ));
        t.push(client, 0, &mut out);
        t.push(with_path(4, "/other"), 0, &mut out);
        t.flush(&mut out);
        let kept: Vec<u8> = out.iter().map(|s| s.trace_id[0]).collect();
        // The highest matching ratio wins; other traces follow the head sampler (none).
        assert_eq!(kept, vec![1, 3]);
        assert_eq!(t.stats().traces[Decision::Route as usize], 2);
        for bad in ["/a", "/a=2", "a=1", "/a=x"] {
            assert!(RouteRule::parse(bad).is_err(), "{bad}");
        }
    }
}
