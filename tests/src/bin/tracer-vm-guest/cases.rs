//! The suite run inside each guest kernel. Every case starts its own agent and, where spans
//! are checked, its own OTLP receiver, so counts are exact: after the agent's clean stop (it
//! flushes) the spans of the case's processes are final, and duplicates would show.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use tracer_agent::capture::features::Feature;
use tracer_testkit::agent::Agent;
use tracer_testkit::spans::{check_encloses, count_of, find_one, pid, spans_of, summary};
use tracer_testkit::{OtlpReceiver, ReceivedSpan, Value};

use crate::agent;
use crate::http::Exchange;

/// Generous: the guest may run under software emulation and the binaries are debug builds.
const AGENT_READY: Duration = Duration::from_secs(180);
const SPANS_ARRIVE: Duration = Duration::from_secs(60);
const AGENT_STOP: Duration = Duration::from_secs(30);
const PROCESS_RUN: Duration = Duration::from_secs(60);

/// Linux release as `(major, minor)`, from e.g. `5.10.0-32-cloud-amd64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KernelVersion(major, minor))
    }
}

pub struct Ctx {
    pub rt: tokio::runtime::Runtime,
    pub release: String,
    pub kernel: KernelVersion,
    /// Require the chain's spans to form one trace (off with `TRACER_VM_ASSERT_LINKING=0`).
    pub assert_linking: bool,
    self_exe: PathBuf,
}

impl Ctx {
    pub fn new(release: String, assert_linking: bool) -> Result<Ctx> {
        let kernel = KernelVersion::parse(&release)
            .with_context(|| format!("cannot parse the kernel release {release:?}"))?;
        Ok(Ctx {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?,
            release,
            kernel,
            assert_linking,
            self_exe: std::env::current_exe().context("locating the guest binary")?,
        })
    }
}

pub type Case = fn(&Ctx) -> Result<()>;

/// In run order. Names are what `cargo xtask vm-test -- <filter>` matches.
pub const CASES: &[(&str, Case)] = &[
    ("load_and_attach", load_and_attach),
    ("kernel_features", kernel_features),
    ("http_server_and_client", http_server_and_client),
    ("keep_alive", keep_alive),
    ("two_hop_chain", two_hop_chain),
    ("go_goroutines", go_goroutines),
    ("grpc_go", grpc_go),
];

/// The case of node `a` in the two-guest run (`cargo xtask vm-test` boots node `b` beside
/// it); see [`two_nodes`].
pub const TWO_NODE_CASES: &[(&str, Case)] = &[("two_nodes", two_nodes)];

// ---- processes -------------------------------------------------------------------------

/// A child killed on drop, so a failing case leaves nothing behind.
struct Proc {
    child: Child,
    port: u16,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn role(ctx: &Ctx, service: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(&ctx.self_exe);
    cmd.args(args)
        .env("OTEL_SERVICE_NAME", service)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Starts `serve` and waits for its `listening <port>` line.
fn start_server(ctx: &Ctx, service: &str, extra: &[String]) -> Result<Proc> {
    let mut args = vec!["serve".to_owned()];
    args.extend_from_slice(extra);
    let mut child = role(ctx, service, &args).spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut proc = Proc { child, port: 0 };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
    });
    let line = rx
        .recv_timeout(PROCESS_RUN)
        .with_context(|| format!("{service} did not report its port within {PROCESS_RUN:?}"))??;
    proc.port = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("{service} printed {line:?} instead of its port"))?;
    Ok(proc)
}

struct ClientRun {
    pid: u32,
    exchanges: Vec<Exchange>,
}

/// Runs `client` to completion (bounded) and parses its `exchange …` lines.
/// `target`: a port on 127.0.0.1 or an address.
fn run_client(
    ctx: &Ctx,
    service: &str,
    target: impl ToString,
    requests: &[&str],
) -> Result<ClientRun> {
    let mut args = vec!["client".to_owned(), target.to_string()];
    args.extend(requests.iter().map(|s| s.to_string()));
    let mut child = role(ctx, service, &args).spawn()?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let read = stdout.read_to_string(&mut out);
        let _ = tx.send(read.and(child.wait()).map(|status| (status, out)));
    });
    let (status, out) = match rx.recv_timeout(PROCESS_RUN) {
        Ok(result) => result?,
        Err(_) => {
            // SAFETY: kill(2) on our child; the reading thread reaps it.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            bail!("client {requests:?} did not finish within {PROCESS_RUN:?}");
        }
    };
    ensure!(status.success(), "client {requests:?} failed ({status})");
    let exchanges = out
        .lines()
        .map(parse_exchange)
        .collect::<Option<Vec<_>>>()
        .with_context(|| format!("client printed {out:?}"))?;
    Ok(ClientRun { pid, exchanges })
}

/// `exchange GET /path 200 41234`
fn parse_exchange(line: &str) -> Option<Exchange> {
    let mut f = line.strip_prefix("exchange ")?.split(' ');
    Some(Exchange {
        method: f.next()?.to_owned(),
        path: f.next()?.to_owned(),
        status: f.next()?.parse().ok()?,
        local_port: f.next()?.parse().ok()?,
        body: Vec::new(),
    })
}

// ---- spans -----------------------------------------------------------------------------

/// Waits for `want` spans of `pids`, stops the agent (it flushes on SIGTERM), and returns every
/// span of `pids` received: the count is then final.
fn collect(
    ctx: &Ctx,
    rx: &OtlpReceiver,
    agent: Agent,
    pids: &[u32],
    want: usize,
) -> Result<Vec<ReceivedSpan>> {
    let waited = ctx
        .rt
        .block_on(rx.wait_for_spans(|spans| count_of(spans, pids) >= want, SPANS_ARRIVE));
    let (_, log) = agent.stop_within(AGENT_STOP)?;
    let spans = spans_of(&rx.spans(), pids);
    if let Err(e) = waited {
        bail!(
            "expected {want} spans of pids {pids:?}: {e:#}; got {}; agent log: {}",
            summary(&spans),
            log
        );
    }
    ensure!(
        spans.len() == want,
        "expected exactly {want} spans of pids {pids:?}, got {}: {}",
        spans.len(),
        summary(&spans)
    );
    Ok(spans)
}

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    f: impl Fn(&ReceivedSpan) -> bool,
) -> Result<&'a ReceivedSpan> {
    find_one(spans, what, f).map_err(anyhow::Error::msg)
}

fn check_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<()> {
    ensure!(got == want, "{what}: got {got:?}, want {want:?}");
    Ok(())
}

/// One exchange seen by both sides: exactly one CLIENT span (client pid, the connection's
/// local port) and exactly one SERVER span (server pid, that port as its peer), with method,
/// path, query, status, ports and timing right.
fn check_pair<'a>(
    spans: &'a [ReceivedSpan],
    client_pid: u32,
    server_pid: u32,
    server_port: u16,
    ex: &Exchange,
) -> Result<(&'a ReceivedSpan, &'a ReceivedSpan)> {
    let (path, query) = match ex.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (ex.path.as_str(), None),
    };
    let local_port = Some(ex.local_port as i64);
    let client = one(
        spans,
        &format!("CLIENT span for {} {}", ex.method, ex.path),
        |s| {
            s.kind == "CLIENT"
                && pid(s) == Some(client_pid)
                && s.attr_int("network.local.port") == local_port
                && s.attr_str("url.full")
                    .is_some_and(|u| u.ends_with(&ex.path))
        },
    )?;
    let server = one(
        spans,
        &format!("SERVER span for {} {}", ex.method, ex.path),
        |s| {
            s.kind == "SERVER"
                && pid(s) == Some(server_pid)
                && s.attr_int("network.peer.port") == local_port
                && s.attr_str("url.path") == Some(path)
                && s.attr_str("url.query") == query
        },
    )?;
    let status = Some(ex.status as i64);
    let port = Some(server_port as i64);
    let what = |side: &str, attr: &str| format!("{side} span of {} {}: {attr}", ex.method, ex.path);
    for (side, span) in [("CLIENT", client), ("SERVER", server)] {
        check_eq(
            &what(side, "http.request.method"),
            span.attr_str("http.request.method"),
            Some(ex.method.as_str()),
        )?;
        check_eq(
            &what(side, "http.response.status_code"),
            span.attr_int("http.response.status_code"),
            status,
        )?;
        check_eq(
            &what(side, "server.port"),
            span.attr_int("server.port"),
            port,
        )?;
        ensure!(
            span.name.starts_with(&ex.method),
            "{}: name {:?}",
            what(side, "name"),
            span.name
        );
        ensure!(
            span.start_unix_nanos < span.end_unix_nanos,
            "{}: [{}, {}]",
            what(side, "timing"),
            span.start_unix_nanos,
            span.end_unix_nanos
        );
    }
    check_eq(
        &what("CLIENT", "network.peer.port"),
        client.attr_int("network.peer.port"),
        port,
    )?;
    check_eq(
        &what("CLIENT", "status"),
        client.status_code.as_str(),
        if ex.status >= 400 { "ERROR" } else { "UNSET" },
    )?;
    check_eq(
        &what("SERVER", "status"),
        server.status_code.as_str(),
        if ex.status >= 500 { "ERROR" } else { "UNSET" },
    )?;
    check_encloses(client, server).with_context(|| format!("{} {}", ex.method, ex.path))?;
    Ok((client, server))
}

fn receiver(ctx: &Ctx) -> Result<OtlpReceiver> {
    ctx.rt.block_on(OtlpReceiver::start_grpc())
}

// ---- cases -----------------------------------------------------------------------------

/// `N` from the agent's `… N programs attached …` line.
fn attached_count(log: &[String]) -> Option<usize> {
    log.iter().find_map(|l| {
        let before = l
            .split(" programs attached")
            .next()
            .filter(|b| b.len() < l.len())?;
        before.rsplit(' ').next()?.parse().ok()
    })
}

/// `N` from the agent's `… N loaded for Go executables …` (0 without it).
fn go_program_count(log: &[String]) -> usize {
    log.iter()
        .find_map(|l| {
            let before = l
                .split(" loaded for Go executables")
                .next()
                .filter(|b| b.len() < l.len())?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The BPF programs process `pid` holds, by id, from `/proc/<pid>/fdinfo` (a program fd's
/// fdinfo has `prog_type:` and `prog_id:` lines; links and maps have no `prog_type:`).
fn programs_held_by(pid: u32) -> Result<BTreeMap<u32, u32>> {
    let mut programs = BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u32>().ok())
        };
        if let (Some(prog_type), Some(id)) = (field("prog_type:"), field("prog_id:")) {
            programs.insert(id, prog_type);
        }
    }
    Ok(programs)
}

/// The verifier of this kernel accepts every program, each attaches (the agent is ready only
/// then, and the programs it holds are as many as it says it attached), the agent serves its
/// health endpoints, and stops cleanly on SIGTERM. tracefs is not mounted by the guest's
/// init: the agent's preflight mounts it.
fn load_and_attach(_ctx: &Ctx) -> Result<()> {
    let agent = agent::start(None, &[], AGENT_READY)?;
    // The agent logs the line before it turns ready; the log reader may lag a little.
    let logged = Instant::now();
    let mut log = agent.log();
    while attached_count(&log).is_none() && logged.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        log = agent.log();
    }
    let attached = attached_count(&log)
        .with_context(|| format!("no `N programs attached` line in the log: {log:?}"))?;
    ensure!(attached > 0, "no programs attached: {log:?}");
    // The uprobes for Go executables are loaded (verified) at start and attached per
    // executable later.
    let go_programs = go_program_count(&log);
    let held = programs_held_by(agent.pid())?;
    ensure!(
        held.len() == attached + go_programs,
        "the agent reports {attached} programs attached and {go_programs} loaded for Go but holds {} loaded programs (id: type): {held:?}",
        held.len()
    );
    // Each of them is known to the kernel under that id.
    let loaded: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok().map(|p| p.id()))
        .collect();
    let missing: Vec<_> = held.keys().filter(|id| !loaded.contains(id)).collect();
    ensure!(
        missing.is_empty(),
        "programs {missing:?} are not in the kernel's list {loaded:?}"
    );
    ensure!(
        PathBuf::from("/sys/kernel/tracing/events/syscalls").is_dir(),
        "tracefs is not mounted after the agent started"
    );
    let (status, _) = agent::get(&agent, "/healthz")?;
    check_eq("/healthz status", status, 200)?;
    let (status, metrics) = agent::get(&agent, "/metrics")?;
    check_eq("/metrics status", status, 200)?;
    ensure!(
        metrics.lines().any(|l| l.starts_with("tracer_")),
        "/metrics has no tracer_ series: {metrics}"
    );
    println!(
        "  {attached} programs loaded and attached (agent pid {})",
        agent.pid()
    );
    agent.stop_within(AGENT_STOP)?;
    Ok(())
}

/// What the agent must report on a kernel of this version: each feature exactly from the
/// mainline release that introduced it (the agent's own table; the probes must agree with it).
pub fn expected_features(kernel: KernelVersion) -> BTreeMap<&'static str, bool> {
    Feature::ALL
        .into_iter()
        .map(|f| {
            let since = KernelVersion::parse(f.since()).expect("versions in the table parse");
            (f.key(), kernel >= since)
        })
        .collect()
}

/// `kernel features: a=yes b=no …` → {a: "yes", b: "no"}.
pub fn parse_features(log: &[String]) -> Option<BTreeMap<String, String>> {
    let line = log
        .iter()
        .find_map(|l| Some(l.split_once("kernel features:")?.1))?;
    Some(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// The agent probes the kernel at start and reports each feature; on this kernel's version
/// the report must match what mainline has, and every missing optional feature comes with
/// its fallback. Where a required one is missing (the ring buffer before 5.8), the agent must
/// refuse to start with an error naming it and the release that has it.
fn kernel_features(ctx: &Ctx) -> Result<()> {
    let expected = expected_features(ctx.kernel);
    if let Some(missing) = Feature::ALL
        .into_iter()
        .find(|f| f.required() && !expected[f.key()])
    {
        let err = match agent::start(None, &[], AGENT_READY) {
            Ok(_) => bail!("the agent started on {} without a ring buffer", ctx.release),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains(missing.description()) && err.contains(missing.since()),
            "the startup error must name {} and Linux {}: {err}",
            missing.description(),
            missing.since()
        );
        return Ok(());
    }
    let agent = agent::start(None, &[], AGENT_READY)?;
    let log = agent.log();
    let reported = parse_features(&log)
        .with_context(|| format!("no `kernel features:` line in the agent log: {log:?}"))?;
    for (key, want) in &expected {
        let want = if *want { "yes" } else { "no" };
        check_eq(
            &format!("feature {key} on {}", ctx.release),
            reported.get(*key).map(String::as_str),
            Some(want),
        )?;
        let optional = Feature::ALL
            .into_iter()
            .any(|f| f.key() == *key && !f.required());
        if want == "no" && optional {
            let fallback = format!("{key} unavailable (");
            ensure!(
                log.iter().any(|l| l.contains(&fallback)),
                "{key} is missing but the agent did not say what it does instead: {log:?}"
            );
        }
    }
    println!(
        "  reported: {}",
        reported
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    agent.stop_within(AGENT_STOP)?;
    Ok(())
}

/// A server process and three client processes, one connection each: 200, 404 and a POST.
fn http_server_and_client(ctx: &Ctx) -> Result<()> {
    let rx = receiver(ctx)?;
    let agent = agent::start(Some(&rx.endpoint()), &[], AGENT_READY)?;
    let server = start_server(ctx, "vm-server", &[])?;
    let runs = [
        run_client(ctx, "vm-client", server.port, &["GET", "/hello"])?,
        run_client(ctx, "vm-client", server.port, &["GET", "/missing?x=1"])?,
        run_client(ctx, "vm-client", server.port, &["POST", "/submit"])?,
    ];
    let statuses: Vec<u16> = runs.iter().map(|r| r.exchanges[0].status).collect();
    check_eq("statuses the clients saw", statuses, vec![200, 404, 201])?;
    let mut pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
    pids.push(server.pid());
    let spans = collect(ctx, &rx, agent, &pids, 6)?;
    for run in &runs {
        let (client, server_span) = check_pair(
            &spans,
            run.pid,
            server.pid(),
            server.port,
            &run.exchanges[0],
        )?;
        // The agent reads OTEL_SERVICE_NAME from /proc/<pid>/environ "when readable, else the
        // executable name" (README): a client that exits right after its response may be gone
        // by then. The long-running server must have its variable read.
        ensure!(
            matches!(client.service_name(), Some("vm-client" | "tracer-vm-guest")),
            "client service.name {:?}, want vm-client (or the executable name): resource {:?}",
            client.service_name(),
            client.resource
        );
        if client.service_name() != Some("vm-client") {
            println!(
                "  note: client pid {} was named from its executable (its environment was not read): resource {:?}",
                run.pid, client.resource
            );
        }
        check_eq(
            "server service.name",
            server_span.service_name(),
            Some("vm-server"),
        )?;
    }
    Ok(())
}

/// Three requests on one keep-alive connection: three pairs, one local port.
fn keep_alive(ctx: &Ctx) -> Result<()> {
    let rx = receiver(ctx)?;
    let agent = agent::start(Some(&rx.endpoint()), &[], AGENT_READY)?;
    let server = start_server(ctx, "vm-server", &[])?;
    let run = run_client(
        ctx,
        "vm-client",
        server.port,
        &[
            "--keep-alive",
            "GET",
            "/ka?n=1",
            "GET",
            "/ka?n=2",
            "GET",
            "/ka?n=3",
        ],
    )?;
    check_eq("exchanges", run.exchanges.len(), 3)?;
    let port = run.exchanges[0].local_port;
    ensure!(
        run.exchanges.iter().all(|e| e.local_port == port),
        "the client did not reuse its connection: {:?}",
        run.exchanges
    );
    let spans = collect(ctx, &rx, agent, &[run.pid, server.pid()], 6)?;
    for ex in &run.exchanges {
        check_pair(&spans, run.pid, server.pid(), server.port, ex)?;
    }
    Ok(())
}

/// The four spans of client → proxy (`/front`) → backend (`/back`).
pub struct Chain<'a> {
    pub client: &'a ReceivedSpan,
    pub proxy_server: &'a ReceivedSpan,
    pub proxy_client: &'a ReceivedSpan,
    pub backend_server: &'a ReceivedSpan,
}

/// Client → proxy → backend, three processes: both hops give their pair of spans.
fn two_hop_chain(ctx: &Ctx) -> Result<()> {
    let rx = receiver(ctx)?;
    let agent = agent::start(Some(&rx.endpoint()), &[], AGENT_READY)?;
    let backend = start_server(ctx, "vm-backend", &[])?;
    let proxy = start_server(
        ctx,
        "vm-proxy",
        &["--proxy-to".to_owned(), backend.port.to_string()],
    )?;
    let run = run_client(ctx, "vm-client", proxy.port, &["GET", "/front"])?;
    check_eq("status the client saw", run.exchanges[0].status, 200)?;
    let spans = collect(ctx, &rx, agent, &[run.pid, proxy.pid(), backend.pid()], 4)?;
    let (client, proxy_server) =
        check_pair(&spans, run.pid, proxy.pid(), proxy.port, &run.exchanges[0])?;
    let proxy_client = one(&spans, "CLIENT span of the proxy for /back", |s| {
        s.kind == "CLIENT"
            && pid(s) == Some(proxy.pid())
            && s.attr_str("url.full").is_some_and(|u| u.ends_with("/back"))
    })?;
    let hop_port = proxy_client
        .attr_int("network.local.port")
        .context("the proxy's CLIENT span has no network.local.port")?;
    let hop = Exchange {
        method: "GET".into(),
        path: "/back".into(),
        status: 200,
        local_port: u16::try_from(hop_port).context("network.local.port out of range")?,
        body: Vec::new(),
    };
    let (_, backend_server) = check_pair(&spans, proxy.pid(), backend.pid(), backend.port, &hop)?;
    let chain = Chain {
        client,
        proxy_server,
        proxy_client,
        backend_server,
    };
    if ctx.assert_linking {
        assert_chain_linked(&chain)?;
        println!("  the chain is one trace");
    } else {
        println!("  linking not asserted (TRACER_VM_ASSERT_LINKING=0)");
    }
    Ok(())
}

/// The chain forms one trace: the client's span is the root, the proxy's server span its
/// child (peer match across processes), the proxy's client span a child of that (same thread),
/// the backend's server span a child of the proxy's client span.
pub fn assert_chain_linked(chain: &Chain) -> Result<()> {
    let Chain {
        client,
        proxy_server,
        proxy_client,
        backend_server,
    } = chain;
    ensure!(
        !client.trace_id.is_empty(),
        "the client span has no trace id"
    );
    for (name, span) in [
        ("proxy SERVER", proxy_server),
        ("proxy CLIENT", proxy_client),
        ("backend SERVER", backend_server),
    ] {
        check_eq(
            &format!("trace id of the {name} span"),
            &span.trace_id,
            &client.trace_id,
        )?;
    }
    ensure!(
        client.is_root(),
        "the client span should be the root, has parent {}",
        client.parent_span_id
    );
    check_eq(
        "parent of the proxy SERVER span",
        &proxy_server.parent_span_id,
        &client.span_id,
    )?;
    check_eq(
        "parent of the proxy CLIENT span",
        &proxy_client.parent_span_id,
        &proxy_server.span_id,
    )?;
    check_eq(
        "parent of the backend SERVER span",
        &backend_server.parent_span_id,
        &proxy_client.span_id,
    )?;
    Ok(())
}

// ---- two nodes ---------------------------------------------------------------------------

const TWO_NODE_REQUESTS: u32 = 20;
const EXCHANGE_PORT: u16 = 9465;
const PROXY_PORT: u16 = 8080;
const BACKEND_PORT: u16 = 8081;
const OTLP_PORT: u16 = 4317;
const EXCHANGE_TOKEN_FILE: &str = "/tmp/exchange-token";
/// Node b boots, loads its agent under emulation and starts the proxy meanwhile.
const PEER_READY: Duration = Duration::from_secs(300);

/// This node's address and the other's, from the kernel command line.
pub fn node_addresses() -> Result<(Ipv4Addr, Ipv4Addr)> {
    let var = |name: &str| -> Result<Ipv4Addr> {
        std::env::var(name)
            .with_context(|| format!("{name} is not set"))?
            .parse()
            .with_context(|| format!("{name} is not an IPv4 address"))
    };
    Ok((var("TRACER_VM_IP")?, var("TRACER_VM_PEER")?))
}

/// The agent of this node, exporting to `otlp`, exchanging contexts with the other node's.
fn node_agent(otlp: &str, me: Ipv4Addr, peer: Ipv4Addr) -> Result<Agent> {
    std::fs::write(EXCHANGE_TOKEN_FILE, "two-node-vm-test-shared-token")?;
    let (listen, peer) = (
        format!("{me}:{EXCHANGE_PORT}"),
        format!("{peer}:{EXCHANGE_PORT}"),
    );
    agent::start(
        Some(otlp),
        &[
            // Under software emulation an agent's first lookups take several hundred
            // milliseconds of guest time (each guest runs its agent, its services and the
            // exchange on one emulated CPU); the default second is sized for real machines.
            "--link-window-ms",
            "3000",
            "--exchange-addr",
            &listen,
            "--peer",
            &peer,
            "--exchange-token-file",
            EXCHANGE_TOKEN_FILE,
        ],
        AGENT_READY,
    )
}

/// Node b: the proxy between node a's client and backend, under its own agent, which
/// exports to node a's receiver. Ready once the proxy listens (the agent is ready before);
/// serves until the host stops the VM.
pub fn node_b(ctx: &Ctx) -> Result<()> {
    let (me, peer) = node_addresses()?;
    let _agent = node_agent(&format!("http://{peer}:{OTLP_PORT}"), me, peer)?;
    let proxy = start_server(
        ctx,
        "vm-proxy",
        &[
            "--bind".to_owned(),
            format!("0.0.0.0:{PROXY_PORT}"),
            "--proxy-to".to_owned(),
            format!("{peer}:{BACKEND_PORT}"),
        ],
    )?;
    println!("TRACER-VM-NODE b ready (proxy pid {})", proxy.pid());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Two kernels, two agents: node a's client calls node b's proxy, which calls node a's
/// backend, one new connection per request, 20 requests. Each hop is seen half by each
/// agent; the exchange between them must make every request one trace, parent by parent
/// (the proxy's SERVER span under the client's CLIENT span across the network, the proxy's
/// CLIENT span under its SERVER span on node b, the backend's SERVER span under the
/// proxy's CLIENT span across the network again).
fn two_nodes(ctx: &Ctx) -> Result<()> {
    let (me, peer) = node_addresses()?;
    let rx = ctx
        .rt
        .block_on(OtlpReceiver::start_grpc_on(SocketAddr::from((
            Ipv4Addr::UNSPECIFIED,
            OTLP_PORT,
        ))))?;
    let agent = node_agent(&format!("http://127.0.0.1:{OTLP_PORT}"), me, peer)?;
    let backend = start_server(
        ctx,
        "vm-backend",
        &["--bind".to_owned(), format!("0.0.0.0:{BACKEND_PORT}")],
    )?;
    let proxy = SocketAddr::from((peer, PROXY_PORT));
    let deadline = Instant::now() + PEER_READY;
    while TcpStream::connect_timeout(&proxy, Duration::from_secs(1)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "node b's proxy {proxy} did not accept within {PEER_READY:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut clients = Vec::new();
    for i in 0..TWO_NODE_REQUESTS {
        let run = run_client(ctx, "vm-client", proxy, &["GET", &format!("/front?id={i}")])?;
        check_eq(
            &format!("status of request {i}"),
            run.exchanges[0].status,
            200,
        )?;
        clients.push(run.pid);
    }
    // Spans of this node's processes (by pid), and of node b's proxy (a long-lived process:
    // its service name is known); pids repeat across the nodes, host names do not.
    let on = |s: &ReceivedSpan, node: &str| {
        s.resource.get("host.name") == Some(&Value::Str(format!("tracer-vm-{node}")))
    };
    let node_a_pids: Vec<u32> = clients.iter().copied().chain([backend.pid()]).collect();
    let ours = |s: &ReceivedSpan| {
        (on(s, "a") && pid(s).is_some_and(|p| node_a_pids.contains(&p)))
            || (on(s, "b") && s.service_name() == Some("vm-proxy"))
    };
    let mine = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans.iter().filter(|s| ours(s)).cloned().collect()
    };
    let want = 4 * TWO_NODE_REQUESTS as usize;
    let waited = ctx
        .rt
        .block_on(rx.wait_for_spans(|s| mine(s).len() >= want, SPANS_ARRIVE));
    let metrics = agent::get(&agent, "/metrics")
        .map(|(_, m)| {
            m.lines()
                .filter(|l| l.starts_with("tracer_peer") || l.starts_with("tracer_link"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let (_, log) = agent.stop_within(AGENT_STOP)?;
    let spans = mine(&rx.spans());
    ensure!(
        waited.is_ok() && spans.len() == want,
        "expected {want} spans from both nodes, got {}: {}; node a's agent: {}",
        spans.len(),
        summary(&spans),
        log
    );
    let mut linked = 0;
    for (i, &client_pid) in clients.iter().enumerate() {
        let query = format!("id={i}");
        let find = |what: &str, node: &str, kind: &str, f: &dyn Fn(&ReceivedSpan) -> bool| {
            one(&spans, &format!("{what} of request {i}"), |s| {
                on(s, node) && s.kind == kind && f(s)
            })
        };
        let has_query = |s: &ReceivedSpan| s.attr_str("url.query") == Some(query.as_str());
        let chain = Chain {
            client: find("the client's CLIENT span", "a", "CLIENT", &|s| {
                pid(s) == Some(client_pid)
            })?,
            proxy_server: find("the proxy's SERVER span", "b", "SERVER", &has_query)?,
            proxy_client: find("the proxy's CLIENT span", "b", "CLIENT", &|s| {
                s.attr_str("url.full")
                    .is_some_and(|u| u.ends_with(&format!("/back?{query}")))
            })?,
            backend_server: find("the backend's SERVER span", "a", "SERVER", &|s| {
                pid(s) == Some(backend.pid()) && has_query(s)
            })?,
        };
        assert_chain_linked(&chain).with_context(|| {
            format!(
                "request {i} (spans client {} proxy server {}<-{} proxy client {}<-{} backend {}<-{}; node a: {metrics})",
                chain.client.span_id,
                chain.proxy_server.span_id,
                chain.proxy_server.parent_span_id,
                chain.proxy_client.span_id,
                chain.proxy_client.parent_span_id,
                chain.backend_server.span_id,
                chain.backend_server.parent_span_id,
            )
        })?;
        linked += 1;
    }
    println!("  {linked} of {TWO_NODE_REQUESTS} requests one trace across the two nodes");
    Ok(())
}

/// A program the cases run besides the agent: in the image's `/bin`, where `xtask vm-test`
/// puts them, or in `TRACER_GUEST_TOOLS`, where `xtask test` builds them for the run on the
/// host. Fails with the fix when it is in neither.
fn guest_tool(name: &str) -> Result<PathBuf> {
    let dir =
        std::env::var_os("TRACER_GUEST_TOOLS").map_or_else(|| PathBuf::from("/bin"), PathBuf::from);
    let path = dir.join(name);
    ensure!(
        path.exists(),
        "{} not found: run through `cargo xtask vm-test` or `cargo xtask test`, which build it",
        path.display()
    );
    Ok(path)
}

/// The Go service (tests/linking/middle.go).
const GO_MIDDLE: &str = "go-middle";

/// A Go `net/http` service in the middle, 4 concurrent clients of 6 requests each: every
/// call it makes downstream is the child of the request that made it, which only the
/// goroutine following (uprobes, the goroutine id read at each syscall) can tell on this
/// kernel.
fn go_goroutines(ctx: &Ctx) -> Result<()> {
    let go_middle = guest_tool(GO_MIDDLE)?;
    let rx = receiver(ctx)?;
    let backend = start_server(ctx, "vm-backend", &[])?;
    let mut child = Command::new(&go_middle)
        .args(["plain", &backend.port.to_string()])
        .env("OTEL_SERVICE_NAME", "vm-go")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the Go service")?;
    let stdout = child.stdout.take().expect("piped");
    let mut middle = Proc { child, port: 0 };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    middle.port = line
        .trim()
        .parse()
        .with_context(|| format!("the Go service printed {line:?} instead of its port"))?;
    // Started after the service: the agent follows it from its start-up scan.
    let agent = agent::start(Some(&rx.endpoint()), &[], AGENT_READY)?;
    const CLIENTS: u32 = 4;
    const EACH: u32 = 6;
    let runs: Vec<Result<ClientRun>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let port = middle.port;
                scope.spawn(move || {
                    let paths: Vec<String> = (0..EACH)
                        .map(|i| format!("/work?id={}", c * EACH + i + 1))
                        .collect();
                    let mut args = vec!["--keep-alive"];
                    for p in &paths {
                        args.extend(["GET", p.as_str()]);
                    }
                    run_client(ctx, "vm-client", port, &args)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut pids = vec![middle.pid(), backend.pid()];
    for run in runs {
        let run = run?;
        ensure!(
            run.exchanges.iter().all(|e| e.status == 200),
            "a request through the Go service failed: {:?}",
            run.exchanges.iter().map(|e| e.status).collect::<Vec<_>>()
        );
        pids.push(run.pid);
    }
    let n = (CLIENTS * EACH) as usize;
    // The agent's own account, for the failure message.
    let counters = agent::get(&agent, "/metrics")
        .map(|(_, text)| {
            text.lines()
                .filter(|l| l.starts_with("tracer_link") || l.starts_with("tracer_go"))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let spans = collect(ctx, &rx, agent, &pids, 4 * n)?;
    let go = middle.pid();
    for id in 1..=n {
        let query = format!("id={id}");
        let server = one(&spans, &format!("Go SERVER span of {query}"), |s| {
            s.kind == "SERVER" && pid(s) == Some(go) && s.attr_str("url.query") == Some(&query)
        })?;
        let call = one(&spans, &format!("Go CLIENT span of {query}"), |s| {
            s.kind == "CLIENT"
                && pid(s) == Some(go)
                && s.attr_str("url.full")
                    .is_some_and(|u| u.ends_with(&format!("?{query}")))
        })?;
        check_eq(
            &format!("parent of the Go service's call for {query} (agent: {counters})"),
            &call.parent_span_id,
            &server.span_id,
        )?;
        check_eq(
            &format!("trace of {query}"),
            &call.trace_id,
            &server.trace_id,
        )?;
    }
    println!("  {n} calls of the Go service, each the child of its own request");
    Ok(())
}

/// The gRPC programs (tests/grpc/grpc_*.go, grpc-go).
const GRPC_SERVER: &str = "grpc-server";
const GRPC_CLIENT: &str = "grpc-client";

/// gRPC (grpc-go on both sides, the HTTP/2 suite's programs), 40 unary calls, 8 in flight
/// on one connection: on this kernel the programs gather each syscall's frames whole, and
/// every call gives one CLIENT and one SERVER span with the gRPC attributes, the SERVER
/// span the child of its CLIENT span.
fn grpc_go(ctx: &Ctx) -> Result<()> {
    let (grpc_server, grpc_client) = (guest_tool(GRPC_SERVER)?, guest_tool(GRPC_CLIENT)?);
    let rx = receiver(ctx)?;
    let mut child = Command::new(&grpc_server)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the gRPC server")?;
    let stdout = child.stdout.take().expect("piped");
    let mut server = Proc { child, port: 0 };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    server.port = line
        .trim()
        .parse()
        .with_context(|| format!("the gRPC server printed {line:?} instead of its port"))?;
    let agent = agent::start(Some(&rx.endpoint()), &[], AGENT_READY)?;
    const CALLS: usize = 40;
    let client = Command::new(&grpc_client)
        .args([
            server.port.to_string(),
            "say".into(),
            CALLS.to_string(),
            "8".into(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the gRPC client")?;
    let client_pid = client.id();
    let out = client.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success()
            && report.starts_with(&format!("calls={CALLS} ok={CALLS} "))
            && report.ends_with(" conns=1"),
        "the gRPC client reported {report:?} ({})",
        out.status
    );
    let spans = collect(ctx, &rx, agent, &[client_pid, server.pid()], 2 * CALLS)?;
    for id in 1..=CALLS {
        let id_str = id.to_string();
        let of = |kind: &str, process: u32| {
            let id_str = id_str.clone();
            let kind = kind.to_owned();
            move |s: &ReceivedSpan| {
                s.kind == kind
                    && pid(s) == Some(process)
                    && s.attr_str("http.request.header.x-request-id") == Some(id_str.as_str())
            }
        };
        let server_span = one(
            &spans,
            &format!("SERVER span of call {id}"),
            of("SERVER", server.pid()),
        )?;
        let client_span = one(
            &spans,
            &format!("CLIENT span of call {id}"),
            of("CLIENT", client_pid),
        )?;
        for s in [server_span, client_span] {
            let what = format!("{} span of call {id}", s.kind);
            check_eq(
                &format!("{what}: name"),
                s.name.as_str(),
                "demo.Greeter/Say",
            )?;
            check_eq(
                &format!("{what}: rpc.system"),
                s.attr_str("rpc.system"),
                Some("grpc"),
            )?;
            check_eq(
                &format!("{what}: rpc.grpc.status_code"),
                s.attr_int("rpc.grpc.status_code"),
                Some(0),
            )?;
            check_eq(
                &format!("{what}: network.protocol.version"),
                s.attr_str("network.protocol.version"),
                Some("2"),
            )?;
        }
        check_eq(
            &format!("parent of the SERVER span of call {id}"),
            &server_span.parent_span_id,
            &client_span.span_id,
        )?;
    }
    println!("  {CALLS} gRPC calls on one HTTP/2 connection, a linked span pair each");
    Ok(())
}

/// Outcome of a whole run.
pub struct Summary {
    pub passed: usize,
    pub failed: Vec<String>,
    pub filtered_out: usize,
}

/// Runs the `cases` whose name contains `filter`, printing one `TRACER-VM-CASE` line each.
pub fn run(ctx: &Ctx, cases: &[(&str, Case)], filter: Option<&str>) -> Summary {
    let mut summary = Summary {
        passed: 0,
        failed: Vec::new(),
        filtered_out: 0,
    };
    for (name, case) in cases {
        if filter.is_some_and(|f| !name.contains(f)) {
            summary.filtered_out += 1;
            continue;
        }
        println!("TRACER-VM-CASE {name} RUN");
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(ctx)))
            .unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(anyhow::anyhow!("panicked: {msg}"))
            });
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                println!("TRACER-VM-CASE {name} PASS {secs:.1}s");
                summary.passed += 1;
            }
            Err(e) => {
                let msg = format!("{e:#}").replace('\n', " ");
                println!("TRACER-VM-CASE {name} FAIL {secs:.1}s: {msg}");
                summary.failed.push(name.to_string());
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(
            KernelVersion::parse("5.10.0-32-cloud-amd64"),
            Some(KernelVersion(5, 10))
        );
        assert_eq!(
            KernelVersion::parse("6.12.48+deb13-cloud-amd64"),
            Some(KernelVersion(6, 12))
        );
        assert_eq!(KernelVersion::parse("6.1"), Some(KernelVersion(6, 1)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(KernelVersion(5, 10) < KernelVersion(5, 17));
        assert!(KernelVersion(6, 1) > KernelVersion(5, 17));
    }

    #[test]
    fn expectations_follow_mainline_versions() {
        let k510 = expected_features(KernelVersion(5, 10));
        assert!(k510["ring_buffer"] && k510["btf_tracepoints"] && !k510["bpf_loop"]);
        let k61 = expected_features(KernelVersion(6, 1));
        assert!(k61.values().all(|v| *v));
        let k54 = expected_features(KernelVersion(5, 4));
        assert!(!k54["ring_buffer"]);
    }

    #[test]
    fn parses_the_agent_log() {
        let log = vec![
            "2025-01-01T00:00:00Z  INFO tracer_agent::capture::features: kernel features: ring_buffer=yes bpf_loop=no".to_owned(),
            "  INFO tracer_agent: tracing HTTP: 23 programs attached, 4 loaded for Go executables; health and metrics on http://127.0.0.1:1".to_owned(),
        ];
        let f = parse_features(&log).unwrap();
        assert_eq!(f["ring_buffer"], "yes");
        assert_eq!(f["bpf_loop"], "no");
        assert_eq!(attached_count(&log), Some(23));
        assert_eq!(attached_count(&log[..1]), None);
        assert_eq!(go_program_count(&log), 4);
        assert_eq!(go_program_count(&log[..1]), 0);
    }

    #[test]
    fn parses_client_lines() {
        assert_eq!(
            parse_exchange("exchange GET /a?b=1 404 40000"),
            Some(Exchange {
                method: "GET".into(),
                path: "/a?b=1".into(),
                status: 404,
                local_port: 40000,
                body: Vec::new(),
            })
        );
        assert_eq!(parse_exchange("listening 3"), None);
    }
}
