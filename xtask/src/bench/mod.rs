//! `cargo xtask bench`: what tracing costs, measured side by side in one run.
//!
//! Two scenarios, each a set of configurations run in interleaved rounds (the order rotates
//! every round, so a slow minute of a shared machine hits every configuration alike):
//!
//! * fast server: nginx serving 1 KiB over keep-alive — untraced; the agent exporting
//!   every span over OTLP/gRPC; the agent sampling 10%; an nginx reverse-proxy hop in front
//!   (what a sidecar costs before it traces anything);
//! * typical service: a Flask app calling a second Flask app — untraced; the agent; the
//!   OpenTelemetry Python SDK with Flask and requests instrumentation.
//!
//! Each round of a configuration measures throughput at saturation (`wrk`), then latency at
//! a fixed rate of half the untraced maximum (`oha`), and over that fixed-rate window the
//! CPU of the agent and of the servers (`/proc`), the eBPF programs' run time
//! (`kernel.bpf_stats_enabled`, on only then), the agent's peak RSS, kernel drops, and the
//! spans that reached the OTLP receiver. Then the criterion microbenchmarks of the agent's
//! hot path. Everything lands in BENCHMARKS.md. No figure is asserted: this measures.

mod load;
mod procs;
mod report;
mod setup;
mod tax;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use procs::{BpfRunStats, BpfStatsEnabled, Service};
use report::{Summary, cell, summarize, table};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rounds per configuration.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds of each load run (one saturation run and one fixed-rate run per round).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Check that the benchmark works: one round of 2-second runs and a short criterion
    /// pass; the report goes to target/bench/BENCHMARKS.md unless --output is given.
    #[arg(long)]
    smoke: bool,
    /// Where to write the report [default: BENCHMARKS.md in the workspace].
    #[arg(long)]
    output: Option<PathBuf>,
    /// Run only these parts (repeatable): fast, typical, go, asyncio, grpc, tax, micro.
    #[arg(long = "only", value_enum)]
    only: Vec<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Fast,
    Typical,
    Go,
    Asyncio,
    Grpc,
    Tax,
    Micro,
}

/// What each configuration starts besides the servers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    Untraced,
    Agent,
    AgentSampled,
    ProxyHop,
    OtelSdk,
    AgentGoUnfollowed,
    AgentPythonUnfollowed,
    AgentSyscallHooks,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Untraced => "no tracing",
            Config::Agent => "tracer-agent, 100% exported",
            Config::AgentSampled => "tracer-agent, 10% sampled",
            Config::ProxyHop => "nginx proxy hop (sidecar stand-in, no tracing)",
            Config::OtelSdk => "OpenTelemetry Python SDK (Flask + requests)",
            Config::AgentGoUnfollowed => "tracer-agent, goroutines not followed",
            Config::AgentPythonUnfollowed => "tracer-agent, asyncio tasks not followed",
            Config::AgentSyscallHooks => {
                "tracer-agent, syscall tracepoints (`--data-hooks syscalls`)"
            }
        }
    }
    fn agent_args(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Agent => Some(&[]),
            Config::AgentSampled => Some(&["--sample-ratio", "0.1"]),
            Config::AgentGoUnfollowed => Some(&["--follow-go", "false"]),
            Config::AgentPythonUnfollowed => Some(&["--follow-python", "false"]),
            Config::AgentSyscallHooks => Some(&["--data-hooks", "syscalls"]),
            _ => None,
        }
    }
}

/// One configuration's measurements in one round.
#[derive(Debug, Clone, Default)]
struct Round {
    saturation_rps: f64,
    saturation_errors: u64,
    fixed: Option<load::FixedRate>,
    /// Share of a core the agent used with no load, before the runs.
    agent_idle_cores: Option<f64>,
    /// Over the fixed-rate window.
    servers_cpu_ns: u64,
    agent_cpu_ns: Option<u64>,
    bpf: Option<BpfRunStats>,
    /// Over the whole round (saturation included).
    drops: Option<Drops>,
    agent_peak_rss: Option<u64>,
    /// At the end of the round.
    agent_rss_anon: Option<u64>,
    /// Spans the receiver got from the round, and the requests the round sent.
    spans: u64,
    requests: u64,
    /// The agent's account of its spans at exit.
    accounting: Option<Accounting>,
}

/// A scenario's name and the spans each of its requests must produce, known from what its
/// load generator and servers do (never from the agent's own figures). Every configuration
/// is checked against them: a run whose tracing lost or duplicated spans fails instead of
/// reporting the cost of doing less.
#[derive(Clone, Copy)]
struct Scenario<'a> {
    name: &'a str,
    /// Spans per request the agent creates (one per side of each exchange it sees).
    agent_spans: f64,
    /// Spans per request from the in-process SDK (it cannot see the load generator).
    sdk_spans: f64,
}

/// Share of the agent's spans that `--sample-ratio 0.1` keeps (a random tenth of traces).
const SAMPLED_SHARE: f64 = 0.1;

/// Spans a round may have beyond or short of two per request whatever the tracer does: a
/// request cut off at the end of a load run (at most one per connection, in each of its
/// two phases) has its server's span without its client's, and servers started under an
/// in-process SDK answer readiness probes.
const EDGE_SPANS: f64 = 128.0;
/// And beyond that, a tenth of a percent.
const SPANS_TOLERANCE: f64 = 0.001;

impl Scenario<'_> {
    /// The agent must have created exactly its spans for every request (a kernel drop, a
    /// parse failure or an evicted span fails the check), and the receiver must have got
    /// them all but those sampling left out or the agent counted as dropped on export (a
    /// saturated 2-core machine starves the exporter; the tables report those drops). An
    /// SDK's spans and an untraced run's none are counted at the receiver.
    fn check_spans(&self, config: Config, round: &Round) -> Result<()> {
        let what = format!("{}: {}", self.name, config.label());
        ensure!(round.requests > 0, "{what}: no request was answered");
        let requests = round.requests as f64;
        let near = |got: u64, per_request: f64| {
            let expected = per_request * requests;
            (got as f64 - expected).abs() <= expected * SPANS_TOLERANCE + EDGE_SPANS
        };
        match (config, round.accounting) {
            (Config::Untraced | Config::ProxyHop, _) => ensure!(
                round.spans == 0,
                "{what}: the receiver got {} spans with no tracing",
                round.spans
            ),
            (Config::OtelSdk, _) => ensure!(
                near(round.spans, self.sdk_spans),
                "{what}: the receiver got {} spans for {} requests, expected {} per request",
                round.spans,
                round.requests,
                self.sdk_spans
            ),
            (_, None) => bail!("{what}: no span accounting from the agent"),
            (_, Some(a)) => {
                ensure!(
                    near(a.created, self.agent_spans),
                    "{what}: the agent created {} spans for {} requests ({:.3} per request), expected {:.2} per request",
                    a.created,
                    round.requests,
                    a.created as f64 / requests,
                    self.agent_spans
                );
                if config == Config::AgentSampled {
                    let kept = round.spans as f64 / a.created.max(1) as f64;
                    ensure!(
                        (kept - SAMPLED_SHARE).abs() <= SAMPLED_SHARE * 0.2,
                        "{what}: {:.1}% of the spans created were exported, expected {:.0}%",
                        kept * 100.0,
                        SAMPLED_SHARE * 100.0
                    );
                } else {
                    ensure!(
                        round.spans + a.dropped_on_export == a.created,
                        "{what}: of {} spans created the receiver got {} and {} were counted as dropped on export",
                        a.created,
                        round.spans,
                        a.dropped_on_export
                    );
                }
            }
        }
        Ok(())
    }
}

struct Tools {
    wrk: PathBuf,
    oha: PathBuf,
    agent: PathBuf,
    sink: PathBuf,
    python_path: PathBuf,
    nginx: PathBuf,
}

struct Plan {
    rounds: u32,
    seconds: u64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the benchmark loads eBPF programs and reads kernel counters: rerun as root (sudo -E cargo xtask bench)"
        );
    }
    let plan = if args.smoke {
        Plan {
            rounds: 1,
            seconds: 2,
        }
    } else {
        Plan {
            rounds: args.rounds.max(1),
            seconds: args.seconds.max(1),
        }
    };
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let output = args.output.clone().unwrap_or_else(|| {
        if args.smoke {
            crate::target_dir().join("bench/BENCHMARKS.md")
        } else {
            crate::workspace_root().join("BENCHMARKS.md")
        }
    });
    let work = crate::target_dir().join("bench/run");
    std::fs::create_dir_all(&work)?;

    let mut sections = Vec::new();
    if [
        Part::Fast,
        Part::Typical,
        Part::Go,
        Part::Asyncio,
        Part::Grpc,
        Part::Tax,
    ]
    .into_iter()
    .any(wants)
    {
        let tools = setup::tools(wants(Part::Typical))?;
        let sink_log = work.join("otlp-sink.log");
        let (sink, sink_addrs) = start_sink(&tools, &sink_log)?;
        if wants(Part::Fast) {
            sections.push(fast_server(&tools, &plan, &work, &sink_addrs)?);
        }
        if wants(Part::Typical) {
            sections.push(typical_service(&tools, &plan, &work, &sink_addrs)?);
        }
        if wants(Part::Go) {
            sections.push(go_service(&tools, &plan, &work, &sink_addrs)?);
        }
        if wants(Part::Asyncio) {
            sections.push(asyncio_service(&tools, &plan, &work, &sink_addrs)?);
        }
        if wants(Part::Grpc) {
            sections.push(grpc_service(&tools, &plan, &work, &sink_addrs)?);
        }
        if wants(Part::Tax) {
            sections.push(tax::syscall_tax(&tools, &plan, &work, &sink_addrs)?);
        }
        drop(sink);
    }
    if wants(Part::Micro) {
        sections.push(microbenchmarks(args.smoke)?);
    }
    let doc = document(&plan, args.smoke, &sections);
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&output, doc).with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!("==> wrote {}", output.display());
    Ok(())
}

// ---- the OTLP receiver -----------------------------------------------------------------

struct SinkAddrs {
    grpc: SocketAddr,
    http: SocketAddr,
}

impl SinkAddrs {
    /// Spans received so far.
    fn spans(&self) -> Result<u64> {
        let body = http_get(self.http, "/stats")?;
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("bad /stats answer {body}"))?;
        v["spans"].as_u64().context("no span count in /stats")
    }
}

fn start_sink(tools: &Tools, log: &Path) -> Result<(Service, SinkAddrs)> {
    let mut sink = Service::spawn(
        "OTLP receiver",
        Command::new(&tools.sink).args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"]),
        log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("ready ")) {
            let addr = |key: &str| -> Result<SocketAddr> {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .context("malformed ready line")?
                    .parse()
                    .context("malformed address in ready line")
            };
            let addrs = SinkAddrs {
                grpc: addr("grpc=")?,
                http: addr("http=")?,
            };
            return Ok((sink, addrs));
        }
        sink.ensure_running(log)?;
        if Instant::now() > deadline {
            bail!(
                "the OTLP receiver did not start: {}",
                procs::log_tail(log, 400)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the agent ---------------------------------------------------------------------------

struct RunningAgent {
    service: Service,
    metrics: SocketAddr,
    log: PathBuf,
}

fn start_agent(
    tools: &Tools,
    extra: &[&str],
    sink: &SinkAddrs,
    log: &Path,
) -> Result<RunningAgent> {
    let metrics = free_addr()?;
    let mut cmd = Command::new(&tools.agent);
    cmd.args([
        "--otlp-endpoint",
        &format!("http://{}", sink.grpc),
        "--otlp-protocol",
        "grpc",
        "--metrics-addr",
        &metrics.to_string(),
    ])
    .args(extra)
    .env("RUST_LOG", "warn,tracer_agent::accounting=info");
    let mut service = Service::spawn("tracer-agent", &mut cmd, log)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // /readyz turns 200 once every program is attached.
    while http_status(metrics, "/readyz") != Some(200) {
        service.ensure_running(log)?;
        if Instant::now() > deadline {
            bail!(
                "the agent was not ready within 60 s: {}",
                procs::log_tail(log, 600)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(RunningAgent {
        service,
        metrics,
        log: log.to_owned(),
    })
}

impl RunningAgent {
    fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// Events lost in the kernel and spans lost on the way out, so far.
    fn drops(&self) -> Result<Drops> {
        let text = http_get(self.metrics, "/metrics")?;
        Ok(Drops {
            kernel: metric_sum(&text, "tracer_kernel_drops_total{"),
            export: metric_sum(&text, "tracer_spans_dropped_queue_full_total ")
                + metric_sum(&text, "tracer_spans_dropped_export_failed_total "),
        })
    }

    /// SIGTERM (the agent flushes what it holds), then its final span accounting.
    fn stop(self) -> Result<Accounting> {
        let status = self.service.stop(Duration::from_secs(15))?;
        if !status.success() {
            bail!(
                "the agent exited with {status}: {}",
                procs::log_tail(&self.log, 600)
            );
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        Accounting::parse(&log).with_context(|| {
            format!(
                "the agent logged no span accounting at exit: {}",
                procs::log_tail(&self.log, 600)
            )
        })
    }
}

/// The agent's account of its spans at exit (its `spans created=… exported=…` line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Accounting {
    created: u64,
    exported: u64,
    /// Unsampled, dropped on a full queue or a failed export, out of scope.
    not_exported: u64,
    /// Of those, dropped on a full queue or a failed export.
    dropped_on_export: u64,
}

impl Accounting {
    fn parse(log: &str) -> Option<Accounting> {
        let line = log.lines().rev().find(|l| l.contains("spans created="))?;
        let field = |key: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        Some(Accounting {
            created: field("created")?,
            exported: field("exported")?,
            not_exported: field("unsampled")?
                + field("excluded")?
                + field("dropped_queue_full")?
                + field("dropped_export_failed")?
                + field("out_of_scope")?,
            dropped_on_export: field("dropped_queue_full")? + field("dropped_export_failed")?,
        })
    }

    /// Every span created was exported or counted as not exported, and the receiver got
    /// exactly the exported ones.
    fn check(&self, received: u64) -> Result<()> {
        ensure!(
            self.created == self.exported + self.not_exported,
            "span accounting: {} created, {} exported + {} counted as not exported",
            self.created,
            self.exported,
            self.not_exported
        );
        ensure!(
            received == self.exported,
            "span accounting: the agent exported {} spans, the receiver got {received}",
            self.exported
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Drops {
    kernel: u64,
    export: u64,
}

impl Drops {
    fn since(self, earlier: Drops) -> Drops {
        Drops {
            kernel: self.kernel.saturating_sub(earlier.kernel),
            export: self.export.saturating_sub(earlier.export),
        }
    }
}

/// Sum of the samples whose line starts with `prefix` (a name and `{` or a space).
fn metric_sum(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// ---- one configuration, one round ----------------------------------------------------------

/// What drives a scenario's load.
enum Load {
    /// `wrk` to saturation, `oha` at the fixed rate, on this URL.
    Http(String),
    /// The gRPC generator, both runs.
    Grpc(load::GrpcLoad),
}

/// The servers of a scenario as the measurement sees them.
struct Target<'a> {
    load: Load,
    /// Roots of the process trees whose CPU counts as the service's.
    server_pids: Vec<u32>,
    saturation_connections: u32,
    fixed_connections: u32,
    tools: &'a Tools,
}

fn measure_round(
    target: &Target,
    config: Config,
    rate: u64,
    plan: &Plan,
    sink: &SinkAddrs,
    log: &Path,
    stop_servers: impl FnOnce() -> Result<()>,
) -> Result<Round> {
    let spans_before = sink.spans()?;
    let agent = match config.agent_args() {
        Some(extra) => Some(start_agent(target.tools, extra, sink, log)?),
        None => None,
    };
    let drops_before = agent.as_ref().map(|a| a.drops()).transpose()?;
    // What the agent costs with nothing to trace (its timers and housekeeping), apart
    // from the per-request figures, which it inflates at low rates.
    let agent_idle_cores = agent.as_ref().map(|a| {
        let window = Duration::from_secs(plan.seconds.clamp(1, 3));
        let before = procs::tree_cpu_ns(a.pid());
        std::thread::sleep(window);
        (procs::tree_cpu_ns(a.pid()) - before) as f64 / window.as_nanos() as f64
    });

    let sat = match &target.load {
        Load::Http(url) => load::wrk(
            &target.tools.wrk,
            url,
            target.saturation_connections,
            plan.seconds,
        )?,
        Load::Grpc(g) => g.saturate(target.saturation_connections, plan.seconds)?,
    };

    let bpf_stats = agent
        .as_ref()
        .map(|_| BpfStatsEnabled::enable())
        .transpose()?;
    let cpu = |pids: &[u32]| pids.iter().map(|&p| procs::tree_cpu_ns(p)).sum::<u64>();
    let servers_before = cpu(&target.server_pids);
    let agent_before = agent.as_ref().map(|a| procs::tree_cpu_ns(a.pid()));
    let bpf_before = agent.as_ref().map(|a| procs::bpf_run_stats(a.pid()));
    let fixed = match &target.load {
        Load::Http(url) => load::oha(
            &target.tools.oha,
            url,
            rate,
            target.fixed_connections,
            plan.seconds,
        )?,
        Load::Grpc(g) => g.fixed_rate(rate, plan.seconds)?,
    };
    let servers_cpu_ns = cpu(&target.server_pids).saturating_sub(servers_before);
    let agent_cpu_ns = agent
        .as_ref()
        .zip(agent_before)
        .map(|(a, before)| procs::tree_cpu_ns(a.pid()).saturating_sub(before));
    let bpf = agent
        .as_ref()
        .zip(bpf_before)
        .map(|(a, before)| procs::bpf_run_stats(a.pid()).since(before));
    drop(bpf_stats);

    let mut drops = None;
    let mut agent_peak_rss = None;
    let mut agent_rss_anon = None;
    let mut accounting = None;
    if let Some(agent) = agent {
        agent_rss_anon = procs::rss_anon_bytes(agent.pid());
        drops = Some(agent.drops()?.since(drops_before.unwrap_or_default()));
        agent_peak_rss = procs::peak_rss_bytes(agent.pid());
        // SIGTERM: the agent flushes what it holds before it exits.
        accounting = Some(agent.stop()?);
    }
    // In-process SDKs flush on a clean exit too.
    stop_servers()?;
    let spans = sink.spans()?.saturating_sub(spans_before);
    if let Some(accounting) = accounting {
        accounting.check(spans)?;
    }
    Ok(Round {
        saturation_rps: sat.requests_per_sec,
        saturation_errors: sat.errors,
        agent_idle_cores,
        fixed: Some(fixed),
        servers_cpu_ns,
        agent_cpu_ns,
        bpf,
        drops,
        agent_peak_rss,
        agent_rss_anon,
        spans,
        requests: sat.requests + fixed.responses,
        accounting,
    })
}

/// Runs `configs` for `plan.rounds` rounds, rotating the order each round. `start` brings
/// the servers up for a configuration and returns the target and a closure that stops them.
fn rounds<'t>(
    scenario: Scenario<'_>,
    configs: &[Config],
    plan: &Plan,
    rate: u64,
    work: &Path,
    sink: &SinkAddrs,
    mut start: impl FnMut(Config) -> Result<(Target<'t>, Box<dyn FnOnce() -> Result<()> + 't>)>,
) -> Result<Vec<(Config, Vec<Round>)>> {
    let name = scenario.name;
    let mut results: Vec<(Config, Vec<Round>)> = configs.iter().map(|&c| (c, vec![])).collect();
    for r in 0..plan.rounds {
        for i in 0..configs.len() {
            let idx = (i + r as usize) % configs.len();
            let config = configs[idx];
            eprintln!(
                "==> {name}: round {}/{}: {}",
                r + 1,
                plan.rounds,
                config.label()
            );
            let (target, stop) = start(config)?;
            let log = work.join(format!("agent-{name}-{r}-{idx}.log"));
            let round = measure_round(&target, config, rate, plan, sink, &log, stop)?;
            eprintln!(
                "    saturation {:.0} req/s; at {rate} req/s p50 {:.0} µs p99 {:.0} µs; {} spans for {} requests",
                round.saturation_rps,
                round.fixed.map_or(f64::NAN, |f| f.p50_us),
                round.fixed.map_or(f64::NAN, |f| f.p99_us),
                round.spans,
                round.requests
            );
            scenario.check_spans(config, &round)?;
            results[idx].1.push(round);
        }
    }
    Ok(results)
}

// ---- scenario 1: the fast server -----------------------------------------------------------

fn fast_server(tools: &Tools, plan: &Plan, work: &Path, sink: &SinkAddrs) -> Result<String> {
    let dir = work.join("nginx");
    let origin = setup::Nginx::start(&tools.nginx, &dir.join("origin"), None)?;
    std::fs::write(origin.html_dir().join("1k.bin"), [b'x'; 1024])?;
    let proxy = setup::Nginx::start(&tools.nginx, &dir.join("proxy"), Some(origin.addr))?;
    let direct = format!("http://{}/1k.bin", origin.addr);
    procs::wait_http_ok(origin.addr, "/1k.bin", Duration::from_secs(10))?;
    procs::wait_http_ok(proxy.addr, "/1k.bin", Duration::from_secs(10))?;

    eprintln!("==> fast server: calibrating (untraced saturation)");
    load::wrk(&tools.wrk, &direct, 32, 1)?;
    let max = load::wrk(&tools.wrk, &direct, 32, plan.seconds)?.requests_per_sec;
    let rate = ((max / 2.0) / 100.0).round().max(1.0) as u64 * 100;
    eprintln!("    untraced maximum {max:.0} req/s: fixed rate {rate} req/s");

    let configs = [
        Config::Untraced,
        Config::Agent,
        Config::AgentSyscallHooks,
        Config::AgentSampled,
        Config::ProxyHop,
    ];
    let results = rounds(
        Scenario {
            name: "fast",
            // wrk's CLIENT, nginx's SERVER.
            agent_spans: 2.0,
            sdk_spans: 0.0,
        },
        &configs,
        plan,
        rate,
        work,
        sink,
        |config| {
            let (url, pids) = if config == Config::ProxyHop {
                (
                    format!("http://{}/1k.bin", proxy.addr),
                    vec![origin.pid(), proxy.pid()],
                )
            } else {
                (direct.clone(), vec![origin.pid()])
            };
            Ok((
                Target {
                    load: Load::Http(url),
                    server_pids: pids,
                    saturation_connections: 32,
                    fixed_connections: 32,
                    tools,
                },
                Box::new(|| Ok(())),
            ))
        },
    )?;
    Ok(section(
        "Fast server: nginx, 1 KiB responses over keep-alive",
        &format!(
            "nginx 1 worker serving a 1 KiB file (sendfile on), keep-alive. Saturation: `wrk -t1 -c32 -d{s}s`. \
             Fixed rate: `oha -c32 -q {rate} -z {s}s --latency-correction`, {rate} req/s being half the \
             untraced maximum measured just before the rounds ({max:.0} req/s). The agent traces every \
             process, the load generator included: 2 spans per request (wrk's CLIENT, nginx's SERVER). \
             The proxy hop is a second nginx (1 worker, upstream keep-alive) in front of the first.",
            s = plan.seconds
        ),
        &results,
    ))
}

// ---- scenario 2: the typical service --------------------------------------------------------

fn typical_service(tools: &Tools, plan: &Plan, work: &Path, sink: &SinkAddrs) -> Result<String> {
    let app = work.join("flask_app.py");
    std::fs::write(&app, include_str!("flask_app.py"))?;
    let start_apps = |sdk: bool| -> Result<(Service, Service, SocketAddr)> {
        let back_addr = free_addr()?;
        let front_addr = free_addr()?;
        let spawn = |role: &str, addr: SocketAddr, downstream: Option<String>| {
            let mut cmd = Command::new("python3");
            cmd.arg(&app)
                .arg(role)
                .arg(addr.port().to_string())
                .args(downstream)
                .env("PYTHONPATH", &tools.python_path)
                .env("PYTHONUNBUFFERED", "1");
            if sdk {
                cmd.env("BENCH_OTEL_SDK", "1")
                    .env(
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                        format!("http://{}/v1/traces", sink.http),
                    )
                    .env("OTEL_SERVICE_NAME", role);
            }
            Service::spawn(role, &mut cmd, &work.join(format!("{role}.log")))
        };
        let back = spawn("back", back_addr, None)?;
        let front = spawn(
            "front",
            front_addr,
            Some(format!("http://{back_addr}/api/data")),
        )?;
        procs::wait_http_ok(back_addr, "/api/data", Duration::from_secs(20))
            .context("the downstream Flask app did not start")?;
        procs::wait_http_ok(front_addr, "/api/data", Duration::from_secs(20))
            .context("the Flask app did not start")?;
        Ok((front, back, front_addr))
    };

    eprintln!("==> typical service: calibrating (untraced saturation)");
    let (front, back, addr) = start_apps(false)?;
    let url = format!("http://{addr}/api/data");
    load::wrk(&tools.wrk, &url, 8, 1)?;
    let max = load::wrk(&tools.wrk, &url, 8, plan.seconds)?.requests_per_sec;
    drop((front, back));
    let rate = ((max / 2.0).round() as u64).max(1);
    eprintln!("    untraced maximum {max:.0} req/s: fixed rate {rate} req/s");

    let configs = [Config::Untraced, Config::Agent, Config::OtelSdk];
    let results = rounds(
        Scenario {
            name: "typical",
            // wrk's CLIENT, both apps' SERVER, the first app's CLIENT; the SDK cannot see wrk.
            agent_spans: 4.0,
            sdk_spans: 3.0,
        },
        &configs,
        plan,
        rate,
        work,
        sink,
        |config| {
            let (front, back, addr) = start_apps(config == Config::OtelSdk)?;
            let pids = vec![front.pid(), back.pid()];
            let stop: Box<dyn FnOnce() -> Result<()>> = Box::new(move || {
                // SIGINT: Python runs its exit handlers, so the SDK's batch processor flushes.
                for s in [front, back] {
                    s.interrupt(Duration::from_secs(15))?;
                }
                Ok(())
            });
            Ok((
                Target {
                    load: Load::Http(format!("http://{addr}/api/data")),
                    server_pids: pids,
                    saturation_connections: 8,
                    fixed_connections: 8,
                    tools,
                },
                stop,
            ))
        },
    )?;
    Ok(section(
        "Typical service: a Flask app calling a second Flask app",
        &format!(
            "Two Flask 3 apps on Flask's threaded server; each request to the first makes one \
             `requests.get` to the second (a new connection, as the demo's backend does). \
             Saturation: `wrk -t1 -c8 -d{s}s`. Fixed rate: `oha -c8 -q {rate} -z {s}s --latency-correction`, \
             half the untraced maximum ({max:.0} req/s). Spans per request: the agent 4 (wrk, both \
             apps' SERVER and the first app's CLIENT), the SDK 3 (it cannot see wrk).",
            s = plan.seconds
        ),
        &results,
    ))
}

// ---- scenarios 3 and 4: a Go or asyncio service in the middle --------------------------------

/// One of the linking suite's middle services, calling nginx (1 KiB) once per request.
struct Middle<'a> {
    /// For logs and the rounds' labels: `go`, `asyncio`.
    name: &'static str,
    /// Starts the service with nginx's port as its downstream; it prints its own port.
    command: &'a dyn Fn(u16) -> Command,
    /// The agent configurations besides no tracing and the default agent.
    extra: Config,
    title: &'static str,
    /// The section's text after the common part; `{rate}`, `{max}` and `{s}` are filled in.
    how: &'static str,
}

fn go_service(tools: &Tools, plan: &Plan, work: &Path, sink: &SinkAddrs) -> Result<String> {
    crate::deps::ensure_packages(&[("go", "golang-go")])?;
    let bin = work.join("go/go-middle");
    std::fs::create_dir_all(work.join("go"))?;
    crate::run_cmd(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(crate::workspace_root().join("tests/linking/middle.go"))
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0")
            .env("GOTOOLCHAIN", "local"),
    )?;
    let command = |down: u16| {
        let mut cmd = Command::new(&bin);
        cmd.args(["plain", &down.to_string()]);
        cmd
    };
    middle_service(
        tools,
        plan,
        work,
        sink,
        &Middle {
            name: "go",
            command: &command,
            extra: Config::AgentGoUnfollowed,
            title: "Go service: Go net/http calling nginx through a keep-alive pool",
            how: "The linking suite's Go service (`tests/linking/middle.go`, Go's `http.Client` with a \
                  keep-alive pool) makes one call per request to nginx (1 KiB). With the agent its \
                  goroutines are followed (about 4 uprobe hits per request: roundTrip, the \
                  connection writer, and newproc1's entry and return for net/http's per-request \
                  background-read goroutine), or not (`--follow-go false`); spans per request: 4 \
                  (wrk's CLIENT, the Go SERVER and CLIENT, nginx's SERVER).",
        },
    )
}

fn asyncio_service(tools: &Tools, plan: &Plan, work: &Path, sink: &SinkAddrs) -> Result<String> {
    crate::deps::ensure_python_test_packages()?;
    let script = crate::workspace_root().join("tests/linking/middle_aiohttp.py");
    let command = |down: u16| {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args([&down.to_string(), "plain"])
            .env("PYTHONPATH", crate::deps::python_test_packages_dir());
        cmd
    };
    middle_service(
        tools,
        plan,
        work,
        sink,
        &Middle {
            name: "asyncio",
            command: &command,
            extra: Config::AgentPythonUnfollowed,
            title: "asyncio service: aiohttp calling nginx through a keep-alive pool",
            how: "The linking suite's asyncio service (`tests/linking/middle_aiohttp.py`: an aiohttp \
                  server and one `ClientSession`, CPython 3.11) makes one call per request to nginx \
                  (1 KiB). With the agent its tasks are followed (no uprobe: the programs walk the \
                  writing thread's frames on each write to an HTTP socket, two per request here), \
                  or not (`--follow-python false`); spans per request: 4.",
        },
    )
}

fn middle_service(
    tools: &Tools,
    plan: &Plan,
    work: &Path,
    sink: &SinkAddrs,
    m: &Middle<'_>,
) -> Result<String> {
    let dir = work.join(m.name);
    let origin = setup::Nginx::start(&tools.nginx, &dir.join("origin"), None)?;
    // The service calls `/down?id=…`: nginx serves the file `down`, the query ignored.
    std::fs::write(origin.html_dir().join("down"), [b'x'; 1024])?;
    procs::wait_http_ok(origin.addr, "/down?id=0", Duration::from_secs(10))?;
    let log = dir.join("middle.log");
    let start_middle = || -> Result<(Service, SocketAddr)> {
        let mut cmd = (m.command)(origin.addr.port());
        let service = Service::spawn(m.name, &mut cmd, &log)?;
        let port: u16 = procs::first_line(&log, Duration::from_secs(20))?
            .trim()
            .parse()
            .with_context(|| format!("the {} service did not print its port", m.name))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        procs::wait_http_ok(addr, "/work?id=0", Duration::from_secs(10))?;
        Ok((service, addr))
    };

    eprintln!("==> {} service: calibrating (untraced saturation)", m.name);
    let (middle, addr) = start_middle()?;
    // id=0: no jitter before the call.
    let url = format!("http://{addr}/work?id=0");
    load::wrk(&tools.wrk, &url, 16, 1)?;
    let max = load::wrk(&tools.wrk, &url, 16, plan.seconds)?.requests_per_sec;
    drop(middle);
    let rate = ((max / 2.0).round() as u64).max(1);
    eprintln!("    untraced maximum {max:.0} req/s: fixed rate {rate} req/s");

    let configs = [Config::Untraced, Config::Agent, m.extra];
    let results = rounds(
        Scenario {
            name: m.name,
            // wrk's CLIENT, the service's SERVER and CLIENT, nginx's SERVER.
            agent_spans: 4.0,
            sdk_spans: 0.0,
        },
        &configs,
        plan,
        rate,
        work,
        sink,
        |_| {
            let (middle, addr) = start_middle()?;
            let pids = vec![middle.pid(), origin.pid()];
            let stop: Box<dyn FnOnce() -> Result<()>> = Box::new(move || {
                drop(middle);
                Ok(())
            });
            Ok((
                Target {
                    load: Load::Http(format!("http://{addr}/work?id=0")),
                    server_pids: pids,
                    saturation_connections: 16,
                    fixed_connections: 16,
                    tools,
                },
                stop,
            ))
        },
    )?;
    Ok(section(
        m.title,
        &format!(
            "{} Saturation: `wrk -t1 -c16 -d{s}s`. Fixed rate: `oha -c16 -q {rate} -z {s}s \
             --latency-correction`, half the untraced maximum ({max:.0} req/s).",
            m.how,
            s = plan.seconds
        ),
        &results,
    ))
}

// ---- scenario 5: a gRPC service ----------------------------------------------------------------

fn grpc_service(tools: &Tools, plan: &Plan, work: &Path, sink: &SinkAddrs) -> Result<String> {
    crate::deps::ensure_packages(&[("node", "nodejs"), ("npm", "npm")])?;
    crate::deps::ensure_node_test_packages()?;
    let node_path = crate::deps::node_test_packages_dir().join("node_modules");
    let server_js = crate::workspace_root().join("tests/grpc/server.js");
    let log = work.join("grpc/server.log");
    std::fs::create_dir_all(work.join("grpc"))?;
    let start_server = || -> Result<(Service, load::GrpcLoad)> {
        let mut cmd = Command::new("node");
        cmd.arg(&server_js).env("NODE_PATH", &node_path);
        let service = Service::spawn("grpc", &mut cmd, &log)?;
        let port: u16 = procs::first_line(&log, Duration::from_secs(20))?
            .trim()
            .parse()
            .context("the gRPC server did not print its port")?;
        let load = load::GrpcLoad {
            node_path: node_path.clone(),
            port,
        };
        Ok((service, load))
    };

    eprintln!("==> gRPC service: calibrating (untraced saturation)");
    let (server, load) = start_server()?;
    load.saturate(16, 1)?;
    let max = load.saturate(16, plan.seconds)?.requests_per_sec;
    drop(server);
    let rate = ((max / 2.0).round() as u64).max(1);
    eprintln!("    untraced maximum {max:.0} calls/s: fixed rate {rate} calls/s");

    let configs = [Config::Untraced, Config::Agent, Config::AgentSampled];
    let results = rounds(
        Scenario {
            name: "grpc",
            // The generator's CLIENT, the server's SERVER.
            agent_spans: 2.0,
            sdk_spans: 0.0,
        },
        &configs,
        plan,
        rate,
        work,
        sink,
        |_| {
            let (server, load) = start_server()?;
            let pids = vec![server.pid()];
            let stop: Box<dyn FnOnce() -> Result<()>> = Box::new(move || {
                drop(server);
                Ok(())
            });
            Ok((
                Target {
                    load: Load::Grpc(load),
                    server_pids: pids,
                    saturation_connections: 16,
                    fixed_connections: 1,
                    tools,
                },
                stop,
            ))
        },
    )?;
    Ok(section(
        "gRPC service: unary calls, @grpc/grpc-js on both sides",
        &format!(
            "The HTTP/2 suite's @grpc/grpc-js server (`tests/grpc/server.js`, Node.js) answers \
             unary `demo.Greeter/Say` calls from the benchmark's @grpc/grpc-js generator \
             (`xtask/src/bench/grpc_load.js`), all calls streams of ONE HTTP/2 connection, as \
             gRPC clients run. Saturation: 16 calls in flight for {s} s. Fixed rate: call i \
             due at i/{rate} s, latency from when it was due (coordinated omission corrected), \
             {rate} calls/s being half the untraced maximum ({max:.0} calls/s). The agent \
             traces both processes: 2 spans per call. The generator's CPU is not counted as \
             the service's.",
            s = plan.seconds
        ),
        &results,
    ))
}

// ---- the report -------------------------------------------------------------------------------

fn section(title: &str, how: &str, results: &[(Config, Vec<Round>)]) -> String {
    let baseline = &results[0].1;
    let paired = |rounds: &[Round], f: &dyn Fn(&Round, &Round) -> Option<f64>| -> Option<Summary> {
        let v: Vec<f64> = rounds
            .iter()
            .zip(baseline)
            .filter_map(|(r, b)| f(r, b))
            .collect();
        summarize(&v)
    };
    let each = |rounds: &[Round], f: &dyn Fn(&Round) -> Option<f64>| -> Option<Summary> {
        summarize(&rounds.iter().filter_map(f).collect::<Vec<_>>())
    };
    let per_request = |r: &Round, ns: u64| -> Option<f64> {
        let n = r.fixed?.responses;
        (n > 0).then(|| ns as f64 / n as f64 / 1000.0)
    };
    let mut throughput = Vec::new();
    let mut cost = Vec::new();
    for (config, rounds) in results {
        let is_baseline = std::ptr::eq(rounds, baseline);
        throughput.push(vec![
            config.label().to_owned(),
            cell(each(rounds, &|r| Some(r.saturation_rps)), 0),
            if is_baseline {
                "1".into()
            } else {
                cell(
                    paired(rounds, &|r, b| Some(r.saturation_rps / b.saturation_rps)),
                    3,
                )
            },
            cell(each(rounds, &|r| Some(r.fixed?.p50_us)), 0),
            cell(each(rounds, &|r| Some(r.fixed?.p99_us)), 0),
            if is_baseline {
                "0".into()
            } else {
                cell(
                    paired(rounds, &|r, b| Some(r.fixed?.p99_us - b.fixed?.p99_us)),
                    0,
                )
            },
            cell(
                each(rounds, &|r| {
                    Some((r.saturation_errors + r.fixed?.errors + r.fixed?.non_2xx) as f64)
                }),
                0,
            ),
        ]);
        let seconds_of = |r: &Round| -> Option<f64> {
            let f = r.fixed?;
            Some(f.responses as f64 / f.requests_per_sec)
        };
        cost.push(vec![
            config.label().to_owned(),
            cell(each(rounds, &|r| Some(r.agent_idle_cores? * 100.0)), 2),
            cell(
                each(rounds, &|r| {
                    let busy = r.agent_cpu_ns? as f64 / 1e9 / seconds_of(r)?;
                    Some(busy * 100.0 / (r.fixed?.requests_per_sec / 10_000.0))
                }),
                1,
            ),
            cell(
                each(rounds, &|r| {
                    Some(r.bpf?.run_time_ns as f64 / r.fixed?.responses as f64 / 1000.0)
                }),
                2,
            ),
            cell(
                each(rounds, &|r| {
                    Some(r.bpf?.run_count as f64 / r.fixed?.responses as f64)
                }),
                1,
            ),
            cell(
                each(rounds, &|r| {
                    per_request(r, r.agent_cpu_ns? + r.bpf?.run_time_ns)
                }),
                2,
            ),
            cell(
                paired(rounds, &|r, b| {
                    Some(
                        per_request(r, r.servers_cpu_ns + r.agent_cpu_ns.unwrap_or(0))?
                            - per_request(b, b.servers_cpu_ns)?,
                    )
                }),
                1,
            ),
            cell(
                each(rounds, &|r| {
                    Some(r.agent_peak_rss? as f64 / (1 << 20) as f64)
                }),
                1,
            ),
            cell(
                each(rounds, &|r| {
                    Some(r.agent_rss_anon? as f64 / (1 << 20) as f64)
                }),
                1,
            ),
            cell(each(rounds, &|r| Some(r.drops?.kernel as f64)), 0),
            cell(each(rounds, &|r| Some(r.drops?.export as f64)), 0),
            cell(
                each(rounds, &|r| Some(r.spans as f64 / r.requests as f64)),
                2,
            ),
            cell(
                each(rounds, &|r| {
                    Some(r.spans as f64 / r.requests as f64 * r.fixed?.requests_per_sec)
                }),
                0,
            ),
        ]);
    }
    format!(
        "## {title}\n\n{how}\n\n### Throughput and latency\n\n{}\n### Cost\n\n{}\n",
        table(
            &[
                "configuration",
                "saturation req/s",
                "ratio to untraced",
                "p50 µs at fixed rate",
                "p99 µs",
                "added p99 µs",
                "errors",
            ],
            &throughput
        ),
        table(
            &[
                "configuration",
                "agent idle CPU, % of a core",
                "agent CPU, % of a core per 10k req/s",
                "BPF µs/request",
                "BPF runs/request",
                "added CPU µs/request (agent + BPF)",
                "Δ CPU µs/request (servers + agent, vs untraced)",
                "agent peak RSS MiB",
                "agent heap (RssAnon) MiB",
                "kernel drops",
                "spans dropped on export",
                "spans/request",
                "spans/s exported at the fixed rate",
            ],
            &cost
        )
    )
}

fn document(plan: &Plan, smoke: bool, sections: &[String]) -> String {
    let machine = machine_description();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench{smoke_flag}` on {date}. {rounds} round(s) per configuration, \
         {seconds} s per load run; configurations interleaved (the order rotates each round). \
         Cells: median over rounds (min–max). Ratios and differences are paired with the untraced \
         run of the same round.\n\n\
         Machine: {machine}\n\n\
         How to read the cost table: *added CPU* is the agent process's user + system time (from \
         `/proc/<pid>/stat`) plus the run time of its eBPF programs (`run_time_ns` with \
         `kernel.bpf_stats_enabled=1`, which covers every traced syscall on the machine, the load \
         generator's included), over the fixed-rate window, divided by the requests answered in it. \
         *Δ CPU* is the servers' and the agent's CPU per request minus the untraced servers' CPU \
         per request: for the proxy hop and the in-process SDK it is their whole cost. \
         BPF time spent in a server's syscalls is in both the BPF and the server's figure.\n\n\
         {body}",
        smoke_flag = if smoke { " --smoke" } else { "" },
        rounds = plan.rounds,
        seconds = plan.seconds,
        body = sections.join("\n"),
    )
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / (1 << 20) as f64);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    format!(
        "{cores} cores ({cpu}), {mem_gib:.0} GiB, Linux {kernel}; load generator, servers, agent and receiver share the cores."
    )
}

// ---- microbenchmarks ----------------------------------------------------------------------------

fn microbenchmarks(smoke: bool) -> Result<String> {
    eprintln!("==> microbenchmarks (criterion): the agent's user-space hot path");
    let tools = crate::toolchain::ensure()?;
    let mut cmd = crate::cargo();
    cmd.args(["bench", "-p", "tracer-agent", "--bench", "hot_path"])
        .env("TRACER_TOOLCHAIN_DIR", &tools);
    if smoke {
        cmd.args(["--", "--warm-up-time", "0.2", "--measurement-time", "0.5"]);
    }
    crate::run_cmd(&mut cmd)?;
    let results = setup::criterion_results(&crate::target_dir().join("criterion"))?;
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                format!("{:.0}", r.elements),
                format!("{:.1}", r.median_ns / 1000.0),
                format!("{:.0}", r.elements / (r.median_ns / 1e9)),
            ]
        })
        .collect();
    Ok(format!(
        "## Microbenchmarks: the agent's user-space hot path on one core\n\n\
         `cargo bench -p tracer-agent --bench hot_path` (criterion; median of its samples). \
         `events_to_spans`: kernel records decoded, reassembled, parsed, paired, linked and built \
         into spans; an element is one exchange seen by one side (one span). `otlp_encode`: spans \
         encoded into one OTLP export request.\n\n{}",
        table(
            &[
                "benchmark",
                "elements/iteration",
                "µs/iteration",
                "elements/s"
            ],
            &rows
        )
    ))
}

// ---- small helpers -------------------------------------------------------------------------------

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let resp = http_request(addr, path).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let resp = http_request(addr, path)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed response from {addr}{path}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {addr}{path}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

fn http_request(addr: SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_accounting_from_the_agent_log() {
        let log = "noise\n\x1b[32m INFO\x1b[0m tracer_agent::accounting: spans created=10 exported=7 unsampled=1 excluded=1 dropped_queue_full=1 dropped_export_failed=0 out_of_scope=0\n";
        let a = Accounting::parse(log).unwrap();
        assert_eq!(
            a,
            Accounting {
                created: 10,
                exported: 7,
                not_exported: 3,
                dropped_on_export: 1,
            }
        );
        assert!(a.check(7).is_ok());
        assert!(
            a.check(6).is_err(),
            "the receiver must get every exported span"
        );
        let lost = Accounting { created: 11, ..a };
        assert!(
            lost.check(7).is_err(),
            "a span neither exported nor counted"
        );
        assert!(Accounting::parse("spans created=1 exported=1").is_none());
    }

    #[test]
    fn spans_per_request_checked_against_the_scenario() {
        let scenario = Scenario {
            name: "fast",
            agent_spans: 2.0,
            sdk_spans: 0.0,
        };
        let account = |created, exported, dropped_on_export| Accounting {
            created,
            exported,
            not_exported: created - exported,
            dropped_on_export,
        };
        let round = |spans, accounting| Round {
            spans,
            requests: 100_000,
            accounting,
            ..Round::default()
        };
        let whole = round(200_000, Some(account(200_000, 200_000, 0)));
        assert!(scenario.check_spans(Config::Agent, &whole).is_ok());
        // Dropped on export, and counted: reported, not failed.
        let starved = round(190_000, Some(account(200_000, 190_000, 10_000)));
        assert!(scenario.check_spans(Config::Agent, &starved).is_ok());
        // A span per 100 requests never created: lost before the exporter.
        let short = round(198_000, Some(account(198_000, 198_000, 0)));
        assert!(scenario.check_spans(Config::Agent, &short).is_err());
        // Exported but not received, with nothing counted.
        let vanished = round(190_000, Some(account(200_000, 200_000, 0)));
        assert!(scenario.check_spans(Config::Agent, &vanished).is_err());
        let sampled = round(20_500, Some(account(200_000, 20_500, 0)));
        assert!(scenario.check_spans(Config::AgentSampled, &sampled).is_ok());
        let all_kept = round(200_000, Some(account(200_000, 200_000, 0)));
        assert!(
            scenario
                .check_spans(Config::AgentSampled, &all_kept)
                .is_err()
        );
        assert!(
            scenario
                .check_spans(Config::Untraced, &round(0, None))
                .is_ok()
        );
        assert!(
            scenario
                .check_spans(Config::ProxyHop, &round(3, None))
                .is_err()
        );
        assert!(
            scenario
                .check_spans(Config::Agent, &round(200_000, None))
                .is_err()
        );
    }

    #[test]
    fn kernel_drops_summed_over_reasons() {
        let text = "# HELP tracer_kernel_drops_total x\n# TYPE tracer_kernel_drops_total counter\n\
                    tracer_kernel_drops_total{reason=\"ring_full\"} 5\n\
                    tracer_kernel_drops_total{reason=\"too_big\"} 2\n\
                    tracer_events_total 100\n";
        assert_eq!(metric_sum(text, "tracer_kernel_drops_total{"), 7);
        assert_eq!(metric_sum(text, "tracer_events_total "), 100);
        assert_eq!(metric_sum("", "tracer_events_total "), 0);
    }
}
