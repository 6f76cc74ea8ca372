//! `cargo xtask bench`: what tracing costs, measured side by side in one run.
//!
//! Scenarios (`scenarios`), each a set of configurations run in interleaved rounds (the
//! order rotates every round, so a slow minute of a shared machine hits every configuration
//! alike): nginx serving 1 KiB (untraced, the agent, the agent sampling 10%, the agent on
//! the syscall tracepoints, an nginx proxy hop in front); a Flask app calling a second one
//! (untraced, the agent, the OpenTelemetry Python SDK); a Go and an asyncio service calling
//! nginx; a gRPC service; the tax on an untraced pipe workload (`tax`); the criterion
//! microbenchmarks of the agent's hot path.
//!
//! Each round of a configuration (`runner`) measures throughput at saturation (`wrk`), then
//! latency at a fixed rate of half the untraced maximum (`oha`), and over that fixed-rate
//! window the CPU of the agent and of the servers (`/proc`), the eBPF programs' run time
//! (`kernel.bpf_stats_enabled`, on only then), the agent's peak RSS, kernel drops, and the
//! spans that reached the OTLP receiver. No timing is asserted; every round's spans are
//! checked against its requests. `report` writes BENCHMARKS.md.

mod load;
mod procs;
mod report;
mod runner;
mod scenarios;
mod setup;
mod tax;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

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
pub(super) enum Config {
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

pub(super) struct Tools {
    wrk: PathBuf,
    oha: PathBuf,
    agent: PathBuf,
    sink: PathBuf,
    python_path: PathBuf,
    nginx: PathBuf,
}

pub(super) struct Plan {
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
        let (sink, sink_addrs) = runner::start_sink(&tools, &sink_log)?;
        if wants(Part::Fast) {
            sections.push(scenarios::fast_server(&tools, &plan, &work, &sink_addrs)?);
        }
        if wants(Part::Typical) {
            sections.push(scenarios::typical_service(
                &tools,
                &plan,
                &work,
                &sink_addrs,
            )?);
        }
        if wants(Part::Go) {
            sections.push(scenarios::go_service(&tools, &plan, &work, &sink_addrs)?);
        }
        if wants(Part::Asyncio) {
            sections.push(scenarios::asyncio_service(
                &tools,
                &plan,
                &work,
                &sink_addrs,
            )?);
        }
        if wants(Part::Grpc) {
            sections.push(scenarios::grpc_service(&tools, &plan, &work, &sink_addrs)?);
        }
        if wants(Part::Tax) {
            sections.push(tax::syscall_tax(&tools, &plan, &work, &sink_addrs)?);
        }
        drop(sink);
    }
    if wants(Part::Micro) {
        sections.push(scenarios::microbenchmarks(args.smoke)?);
    }
    let doc = report::document(&plan, args.smoke, &sections);
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&output, doc).with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!("==> wrote {}", output.display());
    Ok(())
}
