//! Processes the benchmark starts and what it reads about them from `/proc`: CPU time of a
//! process tree, peak RSS, and the run time of the agent's eBPF programs.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A child process killed (SIGTERM, then SIGKILL) when dropped, so a failed run leaves
/// nothing behind.
pub struct Service {
    pub name: String,
    child: Child,
}

impl Service {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Service> {
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Service {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the process has already exited.
    pub fn ensure_running(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}): {}", self.name, log_tail(log, 800));
        }
        Ok(())
    }

    /// SIGTERM and wait up to `grace`, then SIGKILL.
    pub fn stop(self, grace: Duration) -> Result<std::process::ExitStatus> {
        self.stop_with(libc::SIGTERM, grace)
    }

    /// SIGINT (Python runs its exit handlers) and wait up to `grace`, then SIGKILL.
    pub fn interrupt(self, grace: Duration) -> Result<std::process::ExitStatus> {
        self.stop_with(libc::SIGINT, grace)
    }

    fn stop_with(mut self, sig: i32, grace: Duration) -> Result<std::process::ExitStatus> {
        signal(self.child.id(), sig);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

pub fn log_tail(log: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().replace('\n', " | ")
}

/// Waits until `url`'s host accepts connections and a GET of it answers 200 (the service's
/// own readiness), or fails after `timeout` with what the service logged.
/// The first line a service wrote to its log (its readiness signal), waiting up to `timeout`.
pub fn first_line(log: &Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some((line, _)) = text.split_once('\n') {
            return Ok(line.to_owned());
        }
        if Instant::now() > deadline {
            bail!("{} stayed empty for {timeout:?}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match super::runner::http_request(addr, path) {
            Ok(resp) => {
                let status = resp.lines().next().unwrap_or_default();
                if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
                    return Ok(());
                }
                last = status.to_owned();
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("http://{addr}{path} not ready after {timeout:?}: {last}")
}

/// User + system CPU of a process and every descendant, in nanoseconds (from
/// `/proc/<pid>/stat`, which includes exited threads; clock ticks of 10 ms).
pub fn tree_cpu_ns(root: u32) -> u64 {
    let tick_ns = 1_000_000_000 / clock_ticks_per_second();
    let mut total = 0;
    for pid in tree(root) {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(t) = parse_stat_cpu_ticks(&stat)
        {
            total += t * tick_ns;
        }
    }
    total
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name in
/// parentheses may hold spaces, so fields are counted after the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and all its descendants alive now.
pub fn tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some(ppid) = parse_stat_ppid(&stat)
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Peak resident set size (`VmHWM`) in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

/// Resident anonymous memory (`RssAnon`: the heap, without the mapped ring buffer) in
/// bytes.
pub fn rss_anon_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "RssAnon:")
}

pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    status_kib(status, "VmHWM:")
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Summed `run_time_ns` and `run_cnt` of the eBPF programs whose fds `pid` holds (the
/// kernel fills them while `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct BpfRunStats {
    pub run_time_ns: u64,
    pub run_count: u64,
    pub programs: u32,
}

impl BpfRunStats {
    pub fn since(self, earlier: BpfRunStats) -> BpfRunStats {
        BpfRunStats {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_count: self.run_count.saturating_sub(earlier.run_count),
            programs: self.programs,
        }
    }
}

pub fn bpf_run_stats(pid: u32) -> BpfRunStats {
    let mut total = BpfRunStats::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return total;
    };
    for entry in dir.flatten() {
        if let Ok(info) = std::fs::read_to_string(entry.path())
            && let Some(s) = parse_prog_fdinfo(&info)
        {
            total.run_time_ns += s.run_time_ns;
            total.run_count += s.run_count;
            total.programs += 1;
        }
    }
    total
}

/// One program's counters from its fd's `fdinfo`; `None` for fds that are not programs.
pub fn parse_prog_fdinfo(info: &str) -> Option<BpfRunStats> {
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    field("prog_type:")?;
    Some(BpfRunStats {
        run_time_ns: field("run_time_ns:").unwrap_or(0),
        run_count: field("run_cnt:").unwrap_or(0),
        programs: 1,
    })
}

/// `kernel.bpf_stats_enabled` on for as long as this lives, restored afterwards: the
/// counters cost two clock reads per program run, so they stay off outside measurement.
pub struct BpfStatsEnabled {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsEnabled {
    pub fn enable() -> Result<BpfStatsEnabled> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("cannot read {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("cannot write {BPF_STATS}"))?;
        Ok(BpfStatsEnabled {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for BpfStatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parens() {
        let stat =
            "1234 (tokio (rt) w) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_ppid(stat), Some(1));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn vm_hwm_in_bytes() {
        let status =
            "Name:\ttracer-agent\nVmPeak:\t  100000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(12345 * 1024));
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn program_fdinfo_and_other_fds() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2063\nprog_type:\t5\nprog_jited:\t1\nprog_tag:\tabc\nmemlock:\t4096\nprog_id:\t42\nrun_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t0\nverified_insns:\t100\n";
        assert_eq!(
            parse_prog_fdinfo(prog),
            Some(BpfRunStats {
                run_time_ns: 123456,
                run_count: 789,
                programs: 1
            })
        );
        let map = "pos:\t0\nflags:\t02\nmap_type:\t27\nkey_size:\t0\n";
        assert_eq!(parse_prog_fdinfo(map), None);
        assert_eq!(parse_prog_fdinfo("pos:\t0\nflags:\t0100002\n"), None);
    }

    #[test]
    fn own_process_tree_contains_itself() {
        let me = std::process::id();
        assert!(tree(me).contains(&me));
        // Burn CPU until the kernel's tick accounting shows it (10 ms ticks).
        let start = Instant::now();
        let mut x = 0u64;
        while tree_cpu_ns(me) == 0 {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no CPU time seen"
            );
        }
    }
}
