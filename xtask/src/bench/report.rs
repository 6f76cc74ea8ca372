//! Summaries over rounds (median with min–max) and the Markdown tables of BENCHMARKS.md.

use std::fmt::Write as _;
use std::process::Command;

use super::runner::Round;
use super::{Config, Plan};

/// Median and range of one figure over the rounds; `None` when no round produced it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// `12.3 (11.9–12.8)` with `digits` decimals; a single round shows only the value.
pub fn cell(s: Option<Summary>, digits: usize) -> String {
    match s {
        None => "–".to_owned(),
        Some(s) if s.min == s.max => format!("{:.*}", digits, s.median),
        Some(s) => format!(
            "{:.*} ({:.*}–{:.*})",
            digits, s.median, digits, s.min, digits, s.max
        ),
    }
}

/// A Markdown table: header row, then rows of cells.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| "---|").collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

// ---- the report -------------------------------------------------------------------------------

pub(super) fn section(title: &str, how: &str, results: &[(Config, Vec<Round>)]) -> String {
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

pub(super) fn document(plan: &Plan, smoke: bool, sections: &[String]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_non_finite() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = summarize(&[4.0, 1.0, 2.0, 3.0, f64::INFINITY]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn cells_and_tables() {
        assert_eq!(cell(None, 1), "–");
        assert_eq!(cell(summarize(&[2.0]), 2), "2.00");
        assert_eq!(cell(summarize(&[1.0, 2.0, 4.0]), 1), "2.0 (1.0–4.0)");
        let t = table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }
}
