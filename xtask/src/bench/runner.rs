//! Running one configuration for one round, and the rounds of a scenario: the OTLP receiver,
//! the agent, the load, and the checks every run must pass.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::procs::{self, BpfRunStats, BpfStatsEnabled, Service};
use super::{Config, Plan, Tools, load};

/// One configuration's measurements in one round.
#[derive(Debug, Clone, Default)]
pub(super) struct Round {
    pub(super) saturation_rps: f64,
    pub(super) saturation_errors: u64,
    pub(super) fixed: Option<load::FixedRate>,
    /// Share of a core the agent used with no load, before the runs.
    pub(super) agent_idle_cores: Option<f64>,
    /// Over the fixed-rate window.
    pub(super) servers_cpu_ns: u64,
    pub(super) agent_cpu_ns: Option<u64>,
    pub(super) bpf: Option<BpfRunStats>,
    /// Over the whole round (saturation included).
    pub(super) drops: Option<Drops>,
    pub(super) agent_peak_rss: Option<u64>,
    /// At the end of the round.
    pub(super) agent_rss_anon: Option<u64>,
    /// Spans the receiver got from the round, and the requests the round sent.
    pub(super) spans: u64,
    pub(super) requests: u64,
    /// The agent's account of its spans at exit.
    pub(super) accounting: Option<Accounting>,
}

/// A scenario's name and the spans each of its requests must produce, known from what its
/// load generator and servers do (never from the agent's own figures). Every configuration
/// is checked against them: a run whose tracing lost or duplicated spans fails instead of
/// reporting the cost of doing less.
#[derive(Clone, Copy)]
pub(super) struct Scenario<'a> {
    pub(super) name: &'a str,
    /// Spans per request the agent creates (one per side of each exchange it sees).
    pub(super) agent_spans: f64,
    /// Spans per request from the in-process SDK (it cannot see the load generator).
    pub(super) sdk_spans: f64,
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

// ---- the OTLP receiver -----------------------------------------------------------------

pub(super) struct SinkAddrs {
    pub(super) grpc: SocketAddr,
    pub(super) http: SocketAddr,
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

pub(super) fn start_sink(tools: &Tools, log: &Path) -> Result<(Service, SinkAddrs)> {
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

pub(super) struct RunningAgent {
    service: Service,
    metrics: SocketAddr,
    log: PathBuf,
}

pub(super) fn start_agent(
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
    pub(super) fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// Events lost in the kernel and spans lost on the way out, so far.
    pub(super) fn drops(&self) -> Result<Drops> {
        let text = http_get(self.metrics, "/metrics")?;
        Ok(Drops {
            kernel: metric_sum(&text, "tracer_kernel_drops_total{"),
            export: metric_sum(&text, "tracer_spans_dropped_queue_full_total ")
                + metric_sum(&text, "tracer_spans_dropped_export_failed_total "),
        })
    }

    /// SIGTERM (the agent flushes what it holds), then its final span accounting.
    pub(super) fn stop(self) -> Result<Accounting> {
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
pub(super) struct Accounting {
    pub(super) created: u64,
    pub(super) exported: u64,
    /// Unsampled, dropped on a full queue or a failed export, out of scope.
    pub(super) not_exported: u64,
    /// Of those, dropped on a full queue or a failed export.
    pub(super) dropped_on_export: u64,
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
pub(super) struct Drops {
    pub(super) kernel: u64,
    pub(super) export: u64,
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
pub(super) fn metric_sum(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// ---- one configuration, one round ----------------------------------------------------------

/// What drives a scenario's load.
pub(super) enum Load {
    /// `wrk` to saturation, `oha` at the fixed rate, on this URL.
    Http(String),
    /// The gRPC generator, both runs.
    Grpc(load::GrpcLoad),
}

/// The servers of a scenario as the measurement sees them.
pub(super) struct Target<'a> {
    pub(super) load: Load,
    /// Roots of the process trees whose CPU counts as the service's.
    pub(super) server_pids: Vec<u32>,
    pub(super) saturation_connections: u32,
    pub(super) fixed_connections: u32,
    pub(super) tools: &'a Tools,
}

pub(super) fn measure_round(
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
pub(super) fn rounds<'t>(
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

// ---- small helpers -------------------------------------------------------------------------------

pub(super) fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(super) fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let resp = http_request(addr, path).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

pub(super) fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
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

pub(super) fn http_request(addr: SocketAddr, path: &str) -> Result<String> {
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
