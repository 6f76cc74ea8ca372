//! Spans from the agent to a test: an agent exporting to an [`OtlpReceiver`], the wait for
//! a case's spans ([`collect`]), and queries and assertions over them: by process, by
//! kind, exactly one, parent and child across a connection, and a summary to print when an
//! assertion fails. The agent traces the whole machine, so every check picks its own
//! processes' spans first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::harness::Agent;
use crate::{OtlpReceiver, ReceivedSpan, ReceiverProtocol, Value};

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

/// The spans of the given processes, borrowed.
fn iter_of<'a>(
    spans: &'a [ReceivedSpan],
    pids: &'a [u32],
) -> impl Iterator<Item = &'a ReceivedSpan> + 'a {
    spans
        .iter()
        .filter(|s| pid(s).is_some_and(|p| pids.contains(&p)))
}

/// Spans of the given processes only.
pub fn spans_of(spans: &[ReceivedSpan], pids: &[u32]) -> Vec<ReceivedSpan> {
    iter_of(spans, pids).cloned().collect()
}

/// How many spans the given processes have: [`spans_of`] without the copies, for waits
/// that re-check after every request.
pub fn count_of(spans: &[ReceivedSpan], pids: &[u32]) -> usize {
    iter_of(spans, pids).count()
}

/// A CLIENT span encloses the SERVER span it caused: the client sends before the server
/// reads and reads the answer after the server wrote it, on one clock.
pub fn check_encloses(client: &ReceivedSpan, server: &ReceivedSpan) -> Result<()> {
    if client.start_unix_nanos <= server.start_unix_nanos
        && server.end_unix_nanos <= client.end_unix_nanos
        && server.start_unix_nanos < server.end_unix_nanos
    {
        return Ok(());
    }
    bail!(
        "the CLIENT span [{}, {}] must enclose its SERVER span [{}, {}]",
        client.start_unix_nanos,
        client.end_unix_nanos,
        server.start_unix_nanos,
        server.end_unix_nanos
    )
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

/// The agent, exporting to `rx` over gRPC with short batches and a queue large enough
/// that no span of a test is dropped.
pub async fn agent_exporting_to(rx: &OtlpReceiver, args: &[&str]) -> Result<Agent> {
    Agent::start(
        args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                rx.protocol().otel_name().to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "200000".to_owned()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2000".to_owned()),
        ],
    )
    .await
}

pub async fn receiver() -> Result<OtlpReceiver> {
    OtlpReceiver::start(ReceiverProtocol::Grpc).await
}

/// Waits until at least `want` spans of `pids` arrived, stops the agent (which flushes
/// whatever it still holds) and returns every span of `pids`: the count is then final, so
/// duplicates would show. The agent's metrics are returned too.
pub async fn collect(
    rx: &OtlpReceiver,
    agent: Agent,
    pids: &[u32],
    want: usize,
    timeout: Duration,
) -> Result<(Vec<ReceivedSpan>, String)> {
    let started = std::time::Instant::now();
    let waited = rx
        .wait_for_spans(|spans| count_of(spans, pids) >= want, timeout)
        .await;
    println!("  collect: waited {:?} for {want} spans", started.elapsed());
    let metrics = agent.metrics().await.unwrap_or_default();
    let (_, stderr) = agent.stop()?;
    if let Err(e) = waited {
        let got = spans_of(&rx.spans(), pids);
        // Short first: a CI log keeps a failure's first lines, so the counts, the non-zero
        // counters and the agent's last words come before the span list.
        let nonzero: Vec<&str> = metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            .collect();
        let stderr_lines: Vec<&str> = stderr.lines().collect();
        let tail = &stderr_lines[stderr_lines.len().saturating_sub(30)..];
        let listed = summary(&got);
        let listed: Vec<&str> = listed.lines().collect();
        bail!(
            "expected {want} spans of {pids:?}, got {} {:?}: {e}\nnon-zero metrics:\n{}\nagent stderr (last {} lines):\n{}\nspans (first {} of {}):\n{}",
            got.len(),
            counts(&got),
            nonzero.join("\n"),
            tail.len(),
            tail.join("\n"),
            listed.len().min(60),
            listed.len(),
            listed[..listed.len().min(60)].join("\n"),
        );
    }
    Ok((spans_of(&rx.spans(), pids), metrics))
}

/// How long a test waits for the spans it expects.
pub const WAIT: Duration = Duration::from_secs(30);

/// The one span `f` picks; fails with a summary of all of them when there are none or
/// several.
pub fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    f: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    find_one(spans, what, f).unwrap_or_else(|e| panic!("{e}"))
}

/// [`collect`] for one client process talking to one server process: exactly `n` CLIENT
/// spans of `client`, `n` SERVER spans of `server`, and each server span the child of its
/// client span ([`assert_linked`]).
pub async fn collect_pairs(
    rx: &OtlpReceiver,
    agent: Agent,
    client: u32,
    server: u32,
    n: usize,
) -> Vec<ReceivedSpan> {
    let (spans, _) = collect(rx, agent, &[client, server], 2 * n, WAIT)
        .await
        .unwrap();
    assert_eq!(spans.len(), 2 * n, "{}", summary(&spans));
    assert_eq!(of_kind(&spans, client, "CLIENT").len(), n);
    assert_eq!(of_kind(&spans, server, "SERVER").len(), n);
    assert_eq!(assert_linked(&spans, &[client], &[server]), n);
    for s in &spans {
        assert_eq!(s.attr_str("error.type"), None, "{s:#?}");
    }
    spans
}

/// The distinct values of an integer attribute, e.g. `network.local.port`: one per
/// connection.
pub fn distinct<'a>(
    spans: impl IntoIterator<Item = &'a ReceivedSpan>,
    attr: &str,
) -> BTreeSet<Option<i64>> {
    spans.into_iter().map(|s| s.attr_int(attr)).collect()
}

/// Every SERVER span of `servers` whose client is one of `clients` has that CLIENT span
/// (same connection: the client's local port is the server's peer port, n-th request on
/// both) as its parent, and the client span encloses it. Returns how many pairs matched.
pub fn assert_linked(spans: &[ReceivedSpan], clients: &[u32], servers: &[u32]) -> usize {
    let by_id: BTreeMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut pairs = 0;
    for server in spans
        .iter()
        .filter(|s| s.kind == "SERVER" && servers.contains(&span_pid(s)))
    {
        let parent = by_id
            .get(server.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("SERVER span without a traced parent: {server:#?}"));
        assert!(
            parent.kind == "CLIENT" && clients.contains(&span_pid(parent)),
            "parent of {server:#?} is {parent:#?}"
        );
        assert_eq!(parent.trace_id, server.trace_id);
        assert_eq!(
            parent.attr_int("network.local.port"),
            server.attr_int("network.peer.port"),
            "linked across connections: {parent:#?} {server:#?}"
        );
        assert_eq!(
            parent.attr_str("http.request.method"),
            server.attr_str("http.request.method")
        );
        assert_eq!(
            parent.attr_int("http.response.status_code"),
            server.attr_int("http.response.status_code")
        );
        assert_eq!(
            parent.attr_int("http.response.body.size"),
            server.attr_int("http.response.body.size")
        );
        assert!(
            parent.start_unix_nanos <= server.start_unix_nanos
                && server.end_unix_nanos <= parent.end_unix_nanos,
            "client span must enclose its server span: {parent:#?} {server:#?}"
        );
        pairs += 1;
    }
    pairs
}
