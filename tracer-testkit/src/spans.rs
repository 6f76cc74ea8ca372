//! Queries over the spans an [`OtlpReceiver`](crate::OtlpReceiver) received: by process,
//! by kind, exactly one, and a summary to print when an assertion fails. The agent traces
//! the whole machine, so every check picks its own processes' spans first.

use std::collections::BTreeMap;

use crate::{ReceivedSpan, Value};

/// The span's `process.pid` resource attribute.
pub fn pid(span: &ReceivedSpan) -> Option<u32> {
    match span.resource.get("process.pid") {
        Some(Value::Int(p)) => u32::try_from(*p).ok(),
        _ => None,
    }
}

/// [`pid`], for spans that must have one: panics with the span's resource otherwise.
pub fn span_pid(span: &ReceivedSpan) -> u32 {
    pid(span).unwrap_or_else(|| panic!("span without process.pid: {:?}", span.resource))
}

/// Spans of the given processes only.
pub fn spans_of(spans: &[ReceivedSpan], pids: &[u32]) -> Vec<ReceivedSpan> {
    spans
        .iter()
        .filter(|s| pid(s).is_some_and(|p| pids.contains(&p)))
        .cloned()
        .collect()
}

/// How many spans the given processes have: [`spans_of`] without the copies, for waits
/// that re-check after every request.
pub fn count_of(spans: &[ReceivedSpan], pids: &[u32]) -> usize {
    spans
        .iter()
        .filter(|s| pid(s).is_some_and(|p| pids.contains(&p)))
        .count()
}

/// The spans of process `pid` of `kind` (`"CLIENT"`, `"SERVER"`).
pub fn of_kind<'a>(spans: &'a [ReceivedSpan], pid: u32, kind: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| self::pid(s) == Some(pid) && s.kind == kind)
        .collect()
}

/// Spans by (pid, kind) → count.
pub fn counts(spans: &[ReceivedSpan]) -> BTreeMap<(u32, String), usize> {
    let mut m = BTreeMap::new();
    for s in spans {
        *m.entry((span_pid(s), s.kind.clone())).or_insert(0) += 1;
    }
    m
}

/// The one span `f` picks; an error with a summary of all of them when there are none or
/// several.
pub fn find_one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    f: impl Fn(&ReceivedSpan) -> bool,
) -> Result<&'a ReceivedSpan, String> {
    let found: Vec<_> = spans.iter().filter(|s| f(s)).collect();
    match found[..] {
        [one] => Ok(one),
        _ => Err(format!(
            "expected exactly one {what}, got {}:\n{}",
            found.len(),
            summary(spans)
        )),
    }
}

/// One line per span, sorted: enough to see what is missing or doubled.
pub fn summary(spans: &[ReceivedSpan]) -> String {
    let mut lines: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "{} pid={} {} {} status={:?} local={:?} peer={:?} err={:?}",
                s.kind,
                pid(s).map_or_else(|| "-".to_owned(), |p| p.to_string()),
                s.attr_str("http.request.method").unwrap_or("-"),
                s.attr_str("url.path")
                    .or(s.attr_str("url.full"))
                    .unwrap_or("-"),
                s.attr_int("http.response.status_code"),
                s.attr_int("network.local.port"),
                s.attr_int("network.peer.port"),
                s.attr_str("error.type"),
            )
        })
        .collect();
    lines.sort();
    lines.join("\n")
}
