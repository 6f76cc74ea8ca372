//! The in-process linking suite (`tests/tests/linking.rs`): a load client → a middle
//! service in the runtime under test → a downstream server. The middle's programs live in
//! `tests/linking/`; this module starts them and counts, from the clients' own request ids,
//! whether each CLIENT span the middle made is the child of the SERVER span of the request
//! that made it (RIGHT), of some other span (WRONG), of nothing (UNLINKED), or could not be
//! judged because a span is absent (MISSING).

use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use tracer_testkit::ReceivedSpan;
use tracer_testkit::workloads::Server;
use tracer_testkit::workloads::go::go_build_by;
use tracer_testkit::workloads::python::{python, python_packages_dir};
use tracer_testkit::workloads::{TempDir, spawn_printing_port};

/// Go `net/http` middle: `middle plain|fanout|pool DOWNSTREAM_PORT`.
pub const GO_MIDDLE: &str = include_str!("../linking/middle.go");
/// Node.js `http` middle with a keep-alive `http.Agent`.
pub const NODE_MIDDLE: &str = include_str!("../linking/middle.js");
/// aiohttp server + `ClientSession` on one asyncio loop.
pub const AIOHTTP_MIDDLE: &str = include_str!("../linking/middle_aiohttp.py");
/// `ThreadingHTTPServer` + a shared `requests.Session`: thread per request.
pub const THREADS_MIDDLE: &str = include_str!("../linking/middle_threads.py");
/// 16 threads of `http.client`, one keep-alive connection each.
pub const LOAD_CLIENT: &str = include_str!("../linking/load_client.py");

/// Requests the load client sends, ids `FIRST_ID..FIRST_ID + REQUESTS`.
pub const REQUESTS: u32 = 160;
pub const FIRST_ID: u32 = 1;
/// Concurrent load-client workers: requests overlap in the middle.
pub const WORKERS: u32 = 16;

/// How many requests, from how many concurrent workers.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests: u32,
    pub workers: u32,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            requests: REQUESTS,
            workers: WORKERS,
        }
    }
}

/// How the Go middle calls downstream.
#[derive(Debug, Clone, Copy)]
pub enum GoMode {
    /// One call from the handler's goroutine.
    Plain,
    /// Two goroutines, `part=a` and `part=b`, in parallel.
    FanOut,
    /// A pool of 4 goroutines started at boot makes the call.
    WorkerPool,
}

/// Builds and starts the Go middle; `dir` holds the binary.
pub fn go_middle(dir: &TempDir, mode: GoMode, downstream_port: u16) -> Result<Server> {
    go_middle_built(dir, mode, downstream_port, &[])
}

/// [`go_middle`] built with extra `go build` flags.
pub fn go_middle_built(
    dir: &TempDir,
    mode: GoMode,
    downstream_port: u16,
    flags: &[&str],
) -> Result<Server> {
    go_middle_by(
        std::path::Path::new("go"),
        dir,
        mode,
        downstream_port,
        flags,
    )
}

/// [`go_middle_built`] by a given `go` command (another Go release).
pub fn go_middle_by(
    go: &std::path::Path,
    dir: &TempDir,
    mode: GoMode,
    downstream_port: u16,
    flags: &[&str],
) -> Result<Server> {
    let bin = go_build_by(go, dir, "middle", GO_MIDDLE, flags)?;
    let mut cmd = Command::new(bin);
    cmd.arg(match mode {
        GoMode::Plain => "plain",
        GoMode::FanOut => "fanout",
        GoMode::WorkerPool => "pool",
    })
    .arg(downstream_port.to_string());
    spawn_printing_port(cmd, "go middle")
}

/// The Node.js middle; `mode` is `http` or `fetch-fanout` (see the script).
pub fn node_middle(downstream_port: u16, mode: &str) -> Result<Server> {
    let mut cmd = Command::new("node");
    cmd.arg("-e")
        .arg(NODE_MIDDLE)
        .arg(downstream_port.to_string())
        .arg(mode);
    spawn_printing_port(cmd, "node middle")
}

/// The aiohttp middle; `mode` is `plain`, `sequence` or `gather` (see the script).
pub fn aiohttp_middle(downstream_port: u16, mode: &str) -> Result<Server> {
    require_python_module("aiohttp")?;
    let mut cmd = python();
    cmd.arg("-c")
        .arg(AIOHTTP_MIDDLE)
        .arg(downstream_port.to_string())
        .arg(mode);
    spawn_printing_port(cmd, "aiohttp middle")
}

pub fn threads_middle(downstream_port: u16) -> Result<Server> {
    require_python_module("requests")?;
    let mut cmd = python();
    cmd.arg("-c")
        .arg(THREADS_MIDDLE)
        .arg(downstream_port.to_string());
    spawn_printing_port(cmd, "python threads middle")
}

/// Fails with the fix when `module` cannot be imported from the suites' package directory.
pub fn require_python_module(module: &str) -> Result<()> {
    let out = python()
        .args(["-c", &format!("import {module}")])
        .output()
        .context("cannot start python3")?;
    ensure!(
        out.status.success(),
        "python3 cannot import {module}: run `cargo xtask test`, which installs it into {}",
        python_packages_dir().display()
    );
    Ok(())
}

/// The load client against the middle on `port`; run it with `run_client`.
pub fn load_client(port: u16, load: Load) -> Command {
    let mut cmd = python();
    cmd.arg("-c").arg(LOAD_CLIENT).args([
        port.to_string(),
        FIRST_ID.to_string(),
        load.requests.to_string(),
        load.workers.to_string(),
    ]);
    cmd
}

/// The load client's own account: the ids it sent and how many answered 200.
#[derive(Debug)]
pub struct LoadReport {
    pub sent: Vec<u32>,
    pub ok: u64,
}

pub fn parse_load_report(stdout: &str) -> Result<LoadReport> {
    let sent = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sent="))
        .with_context(|| format!("no sent= in {stdout:?}"))?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().with_context(|| format!("bad id {s:?}")))
        .collect::<Result<Vec<u32>>>()?;
    let ok = tracer_testkit::workloads::reported(stdout, "ok")?;
    Ok(LoadReport { sent, ok })
}

/// A request's identity as the programs put it in the URL: `id=N`, and `part=a|b` for the
/// fan-out's two calls.
pub type Key = (u32, Option<String>);

/// The value of `key` in a query string (`id=7&part=a`).
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn key_of_query(query: &str) -> Option<Key> {
    let id = query_param(query, "id")?.parse().ok()?;
    Some((id, query_param(query, "part").map(str::to_owned)))
}

/// A SERVER span's key, from `url.query` (or a query left in `url.path`).
pub fn server_key(span: &ReceivedSpan) -> Option<Key> {
    let query = match span.attr_str("url.query") {
        Some(q) => q,
        None => span.attr_str("url.path")?.split_once('?')?.1,
    };
    key_of_query(query)
}

/// A CLIENT span's key, from `url.full`.
pub fn client_key(span: &ReceivedSpan) -> Option<Key> {
    key_of_query(span.attr_str("url.full")?.split_once('?')?.1)
}

fn by_key<'a>(
    spans: &'a [ReceivedSpan],
    pid: u32,
    kind: &str,
    key: fn(&ReceivedSpan) -> Option<Key>,
) -> BTreeMap<Key, Vec<&'a ReceivedSpan>> {
    let mut m: BTreeMap<Key, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in spans
        .iter()
        .filter(|s| s.kind == kind && tracer_testkit::spans::span_pid(s) == pid)
    {
        if let Some(k) = key(s) {
            m.entry(k).or_default().push(s);
        }
    }
    m
}

/// The middle's CLIENT spans judged against the SERVER span of the request that made them.
#[derive(Debug, Default)]
pub struct Tally {
    pub right: usize,
    pub wrong: usize,
    pub unlinked: usize,
    pub missing: usize,
    /// Downstream calls expected: one per (id, part).
    pub of: usize,
    /// One line per WRONG call: which span it was given as parent instead.
    pub wrong_cases: Vec<String>,
    /// One line per MISSING call: which span is absent or doubled.
    pub missing_cases: Vec<String>,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "right={} wrong={} unlinked={} missing={} of {}",
            self.right, self.wrong, self.unlinked, self.missing, self.of
        )
    }
}

fn describe(key: &Key) -> String {
    match &key.1 {
        Some(part) => format!("id={} part={part}", key.0),
        None => format!("id={}", key.0),
    }
}

/// Judges every downstream call `(id, part)` of the middle process `middle`: its one CLIENT
/// span against the one SERVER span of request `id`. RIGHT: the CLIENT's parent is that
/// SERVER span, in its trace. WRONG: it has another parent (none of the programs forwards
/// context, so any parent is the agent's doing). UNLINKED: it is a root. MISSING: the SERVER
/// or the CLIENT span is absent, or there are several (which one would be judged?).
pub fn tally(spans: &[ReceivedSpan], middle: u32, ids: &[u32], parts: &[Option<&str>]) -> Tally {
    let servers = by_key(spans, middle, "SERVER", server_key);
    let clients = by_key(spans, middle, "CLIENT", client_key);
    let by_id: BTreeMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut t = Tally::default();
    for &id in ids {
        let server = servers.get(&(id, None)).map(Vec::as_slice).unwrap_or(&[]);
        for part in parts {
            t.of += 1;
            let key = (id, part.map(str::to_owned));
            let client = clients.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let (&[s], &[c]) = (server, client) else {
                t.missing += 1;
                t.missing_cases.push(format!(
                    "{}: {} SERVER span(s), {} CLIENT span(s)",
                    describe(&key),
                    server.len(),
                    client.len()
                ));
                continue;
            };
            if c.parent_span_id.is_empty() {
                t.unlinked += 1;
            } else if c.parent_span_id == s.span_id && c.trace_id == s.trace_id {
                t.right += 1;
            } else {
                t.wrong += 1;
                let given = match by_id.get(c.parent_span_id.as_str()) {
                    Some(p) => format!(
                        "{} pid={} {}",
                        p.kind,
                        tracer_testkit::spans::span_pid(p),
                        server_key(p)
                            .or_else(|| client_key(p))
                            .map_or("without id".to_owned(), |k| describe(&k))
                    ),
                    None => "a span not exported by these processes".to_owned(),
                };
                t.wrong_cases.push(format!(
                    "{}: CLIENT {} has parent {} = {given}; its SERVER span is {}",
                    describe(&key),
                    c.span_id,
                    c.parent_span_id,
                    s.span_id
                ));
            }
        }
    }
    t
}

/// Peer linking across a hop, as a cross-check of the keys above: of the SERVER spans of
/// `server` with a key, how many have as parent the CLIENT span of `client` with the same
/// key. Returns (linked, SERVER spans with a key).
pub fn peer_links(spans: &[ReceivedSpan], client: u32, server: u32) -> (usize, usize) {
    let clients = by_key(spans, client, "CLIENT", client_key);
    let servers = by_key(spans, server, "SERVER", server_key);
    let total = servers.values().map(Vec::len).sum();
    let linked = servers
        .iter()
        .flat_map(|(k, ss)| ss.iter().map(move |s| (k, s)))
        .filter(|(k, s)| {
            clients
                .get(k)
                .is_some_and(|cs| cs.iter().any(|c| c.span_id == s.parent_span_id))
        })
        .count();
    (linked, total)
}

/// The `tracer_link*` lines of the agent's `/metrics`, and its loss counters that are not zero.
pub fn link_metrics(metrics: &str) -> Vec<&str> {
    const LOSSES: [&str; 5] = [
        "tracer_kernel_drops_total",
        "tracer_spans_dropped",
        "tracer_stream_gaps_total",
        "tracer_connections_evicted_total",
        "tracer_http_desynchronised_total",
    ];
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("tracer_link")
                || (LOSSES.iter().any(|p| l.starts_with(p)) && !l.ends_with(" 0"))
        })
        .collect()
}
