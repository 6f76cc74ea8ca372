//! The tax on a workload that never speaks HTTP: every `read` and `write` on the node runs
//! the agent's syscall programs, traced descriptor or not. Two `dd`s move 64-byte blocks
//! through a pipe (four syscalls per block, none on a socket), untraced and with the agent
//! loaded, rounds interleaved.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::report::{cell, summarize, table};
use super::runner::{SinkAddrs, start_agent};
use super::{Plan, Tools, procs};

/// `dd` block size: small, so the syscalls dominate.
const BLOCK: u64 = 64;
/// Syscalls per block: a read and a write in each of the two `dd`s.
const SYSCALLS_PER_BLOCK: u64 = 4;

/// Wall time of `blocks` blocks through the pipe.
fn pipe_run(blocks: u64) -> Result<Duration> {
    let script = format!(
        "dd if=/dev/zero bs={BLOCK} count={blocks} status=none | dd of=/dev/null bs={BLOCK} status=none"
    );
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .context("cannot run dd")?;
    let took = started.elapsed();
    if !status.success() {
        bail!("`{script}` failed ({status})");
    }
    Ok(took)
}

/// The agent configurations measured against no agent: its defaults (socket tracepoints
/// where the kernel has them) and the syscall tracepoints every kernel has.
const CONFIGS: &[(&str, &[&str])] = &[
    ("tracer-agent loaded (defaults)", &[]),
    (
        "tracer-agent loaded, `--data-hooks syscalls`",
        &["--data-hooks", "syscalls"],
    ),
];

/// One agent configuration's run in one round.
struct Loaded {
    took: Duration,
    /// eBPF run time per syscall of the workload, from a separate pass with
    /// `bpf_stats_enabled` (whose clock reads would otherwise inflate the timed run).
    bpf_ns_per_syscall: f64,
    bpf_runs_per_syscall: f64,
}

fn loaded_run(
    tools: &Tools,
    args: &[&str],
    blocks: u64,
    sink: &SinkAddrs,
    log: &Path,
) -> Result<Loaded> {
    let agent = start_agent(tools, args, sink, log)?;
    let took = pipe_run(blocks)?;
    let _stats = procs::BpfStatsEnabled::enable()?;
    let before = procs::bpf_run_stats(agent.pid());
    let n = (blocks / 4).max(1);
    pipe_run(n)?;
    let ran = procs::bpf_run_stats(agent.pid()).since(before);
    agent.stop()?;
    let syscalls = (n * SYSCALLS_PER_BLOCK) as f64;
    Ok(Loaded {
        took,
        bpf_ns_per_syscall: ran.run_time_ns as f64 / syscalls,
        bpf_runs_per_syscall: ran.run_count as f64 / syscalls,
    })
}

pub fn syscall_tax(tools: &Tools, plan: &Plan, work: &Path, sink: &SinkAddrs) -> Result<String> {
    eprintln!("==> syscall tax: calibrating (untraced)");
    let probe = 200_000;
    let took = pipe_run(probe)?;
    let blocks = ((probe as f64) * plan.seconds as f64 / took.as_secs_f64()).max(1.0) as u64;
    eprintln!(
        "    {probe} blocks in {took:?}: {blocks} blocks per run ({} syscalls)",
        blocks * SYSCALLS_PER_BLOCK
    );
    // Per round: the untraced run, then each configuration's run and its ratio to it.
    let mut untraced_runs = Vec::new();
    let mut loaded_runs: Vec<Vec<(Loaded, f64)>> = CONFIGS.iter().map(|_| Vec::new()).collect();
    for r in 0..plan.rounds {
        eprintln!("==> syscall tax: round {}/{}", r + 1, plan.rounds);
        // The order rotates so no configuration always runs first.
        let slots = CONFIGS.len() + 1;
        let mut untraced = None;
        let mut loaded: Vec<Option<Loaded>> = CONFIGS.iter().map(|_| None).collect();
        for k in 0..slots {
            match (k + r as usize) % slots {
                0 => untraced = Some(pipe_run(blocks)?),
                c => {
                    let log = work.join(format!("agent-tax-{r}-{c}.log"));
                    loaded[c - 1] = Some(loaded_run(tools, CONFIGS[c - 1].1, blocks, sink, &log)?);
                }
            }
        }
        let untraced = untraced.context("untraced run missing")?;
        for (c, run) in loaded.into_iter().enumerate() {
            let run = run.context("loaded run missing")?;
            let tax = (run.took.as_secs_f64() / untraced.as_secs_f64() - 1.0) * 100.0;
            eprintln!(
                "    {}: untraced {untraced:?}, loaded {:?}: tax {tax:.0}%; {:.0} ns of eBPF per syscall",
                CONFIGS[c].0, run.took, run.bpf_ns_per_syscall
            );
            loaded_runs[c].push((run, tax));
        }
        untraced_runs.push(untraced);
    }
    let syscalls = (blocks * SYSCALLS_PER_BLOCK) as f64;
    let ns_per = |d: Duration| d.as_nanos() as f64 / syscalls;
    let untraced: Vec<f64> = untraced_runs.iter().map(|d| ns_per(*d)).collect();
    let mut rows = vec![vec![
        "no agent".to_owned(),
        cell(summarize(&untraced), 0),
        "0".to_owned(),
        "–".to_owned(),
        "–".to_owned(),
        "–".to_owned(),
    ]];
    for (c, runs) in loaded_runs.iter().enumerate() {
        let took: Vec<f64> = runs.iter().map(|(l, _)| ns_per(l.took)).collect();
        let tax: Vec<f64> = runs.iter().map(|(_, t)| *t).collect();
        let added: Vec<f64> = runs
            .iter()
            .zip(&untraced)
            .map(|((l, _), u)| ns_per(l.took) - u)
            .collect();
        let bpf: Vec<f64> = runs.iter().map(|(l, _)| l.bpf_ns_per_syscall).collect();
        let count: Vec<f64> = runs.iter().map(|(l, _)| l.bpf_runs_per_syscall).collect();
        rows.push(vec![
            CONFIGS[c].0.to_owned(),
            cell(summarize(&took), 0),
            cell(summarize(&tax), 1),
            cell(summarize(&added), 0),
            cell(summarize(&bpf), 0),
            cell(summarize(&count), 2),
        ]);
    }
    Ok(format!(
        "## Tax on an untraced workload: small pipe reads and writes\n\n\
         `dd if=/dev/zero bs={BLOCK} count={blocks} | dd of=/dev/null bs={BLOCK}`: {} syscalls \
         per run, none on a socket, nothing traced. Wall time per syscall with no agent and \
         with the agent loaded (tracing the whole machine), at its defaults and with the \
         syscall tracepoints every kernel has; the eBPF figures come from a separate \
         quarter-length pass with `kernel.bpf_stats_enabled=1`.\n\n{}",
        blocks * SYSCALLS_PER_BLOCK,
        table(
            &[
                "configuration",
                "ns per syscall",
                "tax %",
                "added ns per syscall",
                "eBPF ns per syscall",
                "eBPF runs per syscall",
            ],
            &rows,
        )
    ))
}
