//! The tax on a workload that never speaks HTTP: every `read` and `write` on the node runs
//! the agent's syscall programs, traced descriptor or not. Two `dd`s move 64-byte blocks
//! through a pipe (four syscalls per block, none on a socket), untraced and with the agent
//! loaded, rounds interleaved.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::report::{cell, summarize, table};
use super::{Plan, SinkAddrs, Tools, procs, start_agent};

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

struct TaxRound {
    untraced: Duration,
    traced: Duration,
    /// eBPF run time per syscall of the workload, from a separate pass with
    /// `bpf_stats_enabled` (whose clock reads would otherwise inflate the timed run).
    bpf_ns_per_syscall: f64,
    bpf_runs_per_syscall: f64,
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
    let mut rounds = Vec::new();
    for r in 0..plan.rounds {
        eprintln!("==> syscall tax: round {}/{}", r + 1, plan.rounds);
        // The order alternates so neither configuration always runs first.
        let agent_first = r % 2 == 1;
        let mut untraced = None;
        if !agent_first {
            untraced = Some(pipe_run(blocks)?);
        }
        let log = work.join(format!("agent-tax-{r}.log"));
        let agent = start_agent(tools, &[], sink, &log)?;
        let traced = pipe_run(blocks)?;
        let (bpf_ns_per_syscall, bpf_runs_per_syscall) = {
            let _stats = procs::BpfStatsEnabled::enable()?;
            let before = procs::bpf_run_stats(agent.pid());
            let n = (blocks / 4).max(1);
            pipe_run(n)?;
            let ran = procs::bpf_run_stats(agent.pid()).since(before);
            let syscalls = (n * SYSCALLS_PER_BLOCK) as f64;
            (
                ran.run_time_ns as f64 / syscalls,
                ran.run_count as f64 / syscalls,
            )
        };
        agent.stop()?;
        let untraced = match untraced {
            Some(u) => u,
            None => pipe_run(blocks)?,
        };
        eprintln!(
            "    untraced {untraced:?}, agent loaded {traced:?}: tax {:.0}%; {bpf_ns_per_syscall:.0} ns of eBPF per syscall",
            (traced.as_secs_f64() / untraced.as_secs_f64() - 1.0) * 100.0
        );
        rounds.push(TaxRound {
            untraced,
            traced,
            bpf_ns_per_syscall,
            bpf_runs_per_syscall,
        });
    }
    let syscalls = (blocks * SYSCALLS_PER_BLOCK) as f64;
    let ns_per = |d: Duration| d.as_nanos() as f64 / syscalls;
    let untraced: Vec<f64> = rounds.iter().map(|r| ns_per(r.untraced)).collect();
    let traced: Vec<f64> = rounds.iter().map(|r| ns_per(r.traced)).collect();
    let tax: Vec<f64> = rounds
        .iter()
        .map(|r| (r.traced.as_secs_f64() / r.untraced.as_secs_f64() - 1.0) * 100.0)
        .collect();
    let added: Vec<f64> = rounds
        .iter()
        .map(|r| ns_per(r.traced) - ns_per(r.untraced))
        .collect();
    let bpf: Vec<f64> = rounds.iter().map(|r| r.bpf_ns_per_syscall).collect();
    let runs: Vec<f64> = rounds.iter().map(|r| r.bpf_runs_per_syscall).collect();
    let rows = vec![
        vec![
            "no agent".to_owned(),
            cell(summarize(&untraced), 0),
            "0".to_owned(),
            "–".to_owned(),
            "–".to_owned(),
            "–".to_owned(),
        ],
        vec![
            "tracer-agent loaded (defaults)".to_owned(),
            cell(summarize(&traced), 0),
            cell(summarize(&tax), 1),
            cell(summarize(&added), 0),
            cell(summarize(&bpf), 0),
            cell(summarize(&runs), 2),
        ],
    ];
    Ok(format!(
        "## Tax on an untraced workload: small pipe reads and writes\n\n\
         `dd if=/dev/zero bs={BLOCK} count={blocks} | dd of=/dev/null bs={BLOCK}`: {} syscalls \
         per run, none on a socket, nothing traced. Wall time per syscall with no agent and \
         with the agent loaded at its defaults (tracing the whole machine); the eBPF figures \
         come from a separate quarter-length pass with `kernel.bpf_stats_enabled=1`.\n\n{}",
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
