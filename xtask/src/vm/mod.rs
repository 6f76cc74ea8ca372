//! `cargo xtask vm-test`: the guest suite (tests/src/bin/tracer-vm-guest) on each kernel of the
//! matrix, inside QEMU. Per kernel: fetch the Debian cloud kernel (cached under `target/vm`),
//! boot it with an initramfs holding the guest suite as `/init` and the agent, stream the
//! console, and judge the run from the guest's `TRACER-VM-RESULT` line, a kernel panic, or the
//! deadline. Prints a PASS/FAIL table; any failure fails the command.

mod initramfs;
mod kernel;
mod netmods;
mod qemu;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

pub use kernel::debian_mirror;
pub use qemu::Accel;

/// Environment variable passed through to the guest: require the chain to be one trace.
const ASSERT_LINKING_ENV: &str = "TRACER_VM_ASSERT_LINKING";
const RESULT_MARK: &str = "TRACER-VM-RESULT";
const CASE_MARK: &str = "TRACER-VM-CASE";

#[derive(Debug, clap::Args)]
pub struct VmTestArgs {
    /// Kernel to test (repeatable): 5.10, 6.1 or 6.12 (or bullseye, bookworm, trixie).
    /// Default: all of them.
    #[arg(long = "kernel", value_name = "VERSION")]
    kernels: Vec<String>,
    /// Per-kernel limit in seconds (boot and suite); a guest still running is killed and fails.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    timeout: u64,
    /// Accelerator: `auto` probes KVM and falls back to software emulation.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    memory: u32,
    /// Only run guest cases whose name contains this (one word: it travels on the kernel
    /// command line).
    #[arg(last = true, value_name = "FILTER")]
    filter: Option<String>,
}

/// How one kernel went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
}

struct Row {
    version: String,
    release: String,
    verdict: Verdict,
    fetch: Duration,
    guest: Duration,
    cases: String,
}

/// The programs the guest's cases run besides the agent (`guest_tool` in the cases):
/// the linking suite's Go middle service and the HTTP/2 suite's grpc-go server and client,
/// built static with the host's Go, named as the cases look for them.
const GUEST_TOOLS: [(&str, &str); 3] = [
    ("go-middle", "tests/linking/middle.go"),
    ("grpc-server", "tests/grpc/grpc_server.go"),
    ("grpc-client", "tests/grpc/grpc_client.go"),
];

/// Builds [`GUEST_TOOLS`] into `dir` (Go from Debian's `golang-go` and grpc-go from
/// `golang-google-grpc-dev`, installed when missing); returns each one's path in the image
/// (`bin/NAME`) and the built file.
fn build_guest_tools(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    crate::deps::ensure_packages(&[("go", "golang-go")])?;
    crate::deps::ensure_go_grpc()?;
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for (name, src) in GUEST_TOOLS {
        let src = crate::workspace_root().join(src);
        let out = dir.join(name);
        eprintln!("==> building the guest's {name} from {}", src.display());
        go_build_static(&src, &out)?;
        files.push((format!("bin/{name}"), out));
    }
    Ok(files)
}

/// The guest's programs for its cases run on this machine (`cargo xtask test`): the
/// directory to pass as `TRACER_GUEST_TOOLS`.
pub fn guest_tools_for_host() -> Result<PathBuf> {
    let dir = crate::workspace_root().join("target/vm/tools");
    build_guest_tools(&dir)?;
    Ok(dir)
}

/// `go build` of one file into a static executable with the host's Go, offline: GOPATH
/// mode, library imports only from Debian's Go packages.
fn go_build_static(src: &Path, out: &Path) -> Result<()> {
    crate::run_cmd(
        Command::new("go")
            .args(["build", "-o"])
            .arg(out)
            .arg(src)
            .env("GOPATH", crate::deps::DEBIAN_GOPATH)
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0")
            .env("GOTOOLCHAIN", "local"),
    )
}

pub fn run(args: VmTestArgs) -> Result<()> {
    let specs = if args.kernels.is_empty() {
        kernel::KERNELS.to_vec()
    } else {
        let mut specs = Vec::new();
        for k in &args.kernels {
            let spec = kernel::spec(k)?;
            if !specs.contains(&spec) {
                specs.push(spec);
            }
        }
        specs
    };
    let filter = args.filter.clone();
    if let Some(f) = &filter
        && (f.is_empty() || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        bail!(
            "the test filter must be one word of letters, digits and `_` (it travels on the kernel command line), got {f:?}"
        );
    }

    let qemu = qemu::ensure_qemu()?;
    let (guest_bin, agent_bin) = build_binaries()?;
    let vm_dir = crate::workspace_root().join("target").join("vm");
    std::fs::create_dir_all(&vm_dir)?;
    let static_files = build_guest_tools(&vm_dir.join("tools"))?;
    let image = vm_dir.join("initramfs.cpio");
    eprintln!("==> building the initramfs {}", image.display());
    let size = initramfs::build(
        &initramfs::Contents {
            init: guest_bin,
            agent: agent_bin,
            static_files,
        },
        &image,
        &vm_dir.join("initramfs-staging"),
    )?;
    eprintln!("    {:.1} MiB", size as f64 / (1024.0 * 1024.0));

    let mut cmdline_extra = Vec::new();
    if let Some(f) = &filter {
        cmdline_extra.push(format!("TRACER_VM_FILTER={f}"));
    }
    if let Ok(v) = std::env::var(ASSERT_LINKING_ENV) {
        if !v.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("{ASSERT_LINKING_ENV} must be alphanumeric, got {v:?}");
        }
        cmdline_extra.push(format!("{ASSERT_LINKING_ENV}={v}"));
    }

    // `-- two_nodes` (or a part of that name) runs only the two-guest case; any other filter
    // only the one-guest suite.
    let two_nodes_only = filter
        .as_deref()
        .is_some_and(|f| TWO_NODES_CASE.contains(f));
    let with_two_nodes = filter.is_none() || two_nodes_only;
    let mut accel = None;
    let mut rows = Vec::new();
    for spec in specs {
        let fetch_started = Instant::now();
        let kernel = match kernel::ensure(spec, &vm_dir) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("error: {e:#}");
                rows.push(Row {
                    version: spec.version.to_owned(),
                    release: "-".into(),
                    verdict: Verdict::Fail(format!("kernel not fetched: {e:#}")),
                    fetch: fetch_started.elapsed(),
                    guest: Duration::ZERO,
                    cases: String::new(),
                });
                continue;
            }
        };
        let fetch = if kernel.downloaded {
            fetch_started.elapsed()
        } else {
            Duration::ZERO
        };
        let accel = match accel {
            Some(a) => a,
            None => *accel.insert(qemu::choose_accel(args.accel, &qemu, &kernel.vmlinuz)?),
        };
        if !two_nodes_only {
            eprintln!(
                "==> [{}] booting {} ({}) with {}, up to {}s",
                spec.version,
                kernel.release,
                kernel.package,
                accel.name(),
                args.timeout
            );
            let guest_started = Instant::now();
            let boot = qemu::BootSpec {
                qemu: &qemu,
                accel,
                kernel: &kernel.vmlinuz,
                initramfs: &image,
                memory_mib: args.memory,
                cpus: 2,
                cmdline_extra: cmdline_extra.clone(),
                qemu_extra: Vec::new(),
            };
            let mut outcome = run_guest(&boot, spec.version, args.timeout);
            // Under software emulation a kernel has been seen to oops in its own boot code
            // (instruction patching), before init runs: that says nothing about the agent, so
            // such a boot is tried once more. A panic once the suite runs is a failure.
            if matches!(&outcome, Ok((_, _, true))) {
                eprintln!(
                    "==> [{}] the kernel panicked while booting, before the suite started: booting it again",
                    spec.version
                );
                outcome = run_guest(&boot, spec.version, args.timeout);
            }
            let (verdict, cases) = match outcome {
                Ok((verdict, cases, _)) => (verdict, cases),
                Err(e) => (Verdict::Fail(format!("{e:#}")), String::new()),
            };
            rows.push(Row {
                version: spec.version.to_owned(),
                release: kernel.release.clone(),
                verdict,
                fetch,
                guest: guest_started.elapsed(),
                cases,
            });
        }
        if with_two_nodes {
            let started = Instant::now();
            let outcome = two_nodes(&TwoNodes {
                qemu: &qemu,
                accel,
                kernel: &kernel,
                kernel_dir: &vm_dir.join("kernels").join(spec.suite),
                base_image: &image,
                vm_dir: &vm_dir,
                memory_mib: args.memory,
                cmdline_extra: &cmdline_extra,
                label: spec.version,
                timeout: args.timeout,
            });
            let (verdict, cases) = match outcome {
                Ok(v) => v,
                Err(e) => (Verdict::Fail(format!("{e:#}")), String::new()),
            };
            rows.push(Row {
                version: format!("{} x2", spec.version),
                release: kernel.release.clone(),
                verdict,
                fetch: Duration::ZERO,
                guest: started.elapsed(),
                cases,
            });
        }
    }

    print_table(&rows, accel);
    let failed = rows.iter().filter(|r| r.verdict != Verdict::Pass).count();
    if failed > 0 {
        bail!("{failed} of {} kernel(s) failed", rows.len());
    }
    Ok(())
}

/// The case with two guests, each its own node with its own kernel and agent, joined by
/// a virtual network (QEMU's UDP socket backend between two virtio NICs: no bridge, no
/// privilege): node `a` runs the client and the backend, node `b` the proxy between them,
/// so each request crosses from a to b and back, and each agent sees half of each hop.
const TWO_NODES_CASE: &str = "two_nodes";
const NODE_A_IP: &str = "10.0.2.1";
const NODE_B_IP: &str = "10.0.2.2";

struct TwoNodes<'a> {
    qemu: &'a Path,
    accel: Accel,
    kernel: &'a kernel::Kernel,
    kernel_dir: &'a Path,
    base_image: &'a Path,
    vm_dir: &'a Path,
    memory_mib: u32,
    cmdline_extra: &'a [String],
    label: &'a str,
    timeout: u64,
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Boots both guests and follows both consoles; node a's result line is the verdict (node
/// b serves until it is stopped, and fails the case only by reporting a failure itself).
fn two_nodes(t: &TwoNodes) -> Result<(Verdict, String)> {
    let mut image = std::fs::read(t.base_image)?;
    image.extend(netmods::archive(t.kernel_dir, &t.kernel.release)?);
    let image_path = t
        .vm_dir
        .join(format!("initramfs-two-nodes-{}.cpio", t.label));
    std::fs::write(&image_path, &image)?;
    let (port_a, port_b) = (free_udp_port()?, free_udp_port()?);
    let boot = |node: &str, ip: &str, peer: &str, mine: u16, theirs: u16, mac: u8| {
        let mut cmdline_extra = t.cmdline_extra.to_vec();
        cmdline_extra.extend([
            format!("TRACER_VM_NODE={node}"),
            format!("TRACER_VM_IP={ip}"),
            format!("TRACER_VM_PEER={peer}"),
        ]);
        qemu::boot(&qemu::BootSpec {
            qemu: t.qemu,
            accel: t.accel,
            kernel: &t.kernel.vmlinuz,
            initramfs: &image_path,
            memory_mib: t.memory_mib,
            cpus: 1,
            cmdline_extra,
            qemu_extra: vec![
                "-netdev".into(),
                format!("socket,id=n0,udp=127.0.0.1:{theirs},localaddr=127.0.0.1:{mine}"),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac=52:54:00:00:00:{mac:02x}"),
            ],
        })
    };
    eprintln!(
        "==> [{}] booting two guests ({}), nodes a={NODE_A_IP} and b={NODE_B_IP}, up to {}s",
        t.label, t.kernel.release, t.timeout
    );
    let mut a = boot("a", NODE_A_IP, NODE_B_IP, port_a, port_b, 1)?;
    let mut b = boot("b", NODE_B_IP, NODE_A_IP, port_b, port_a, 2)?;
    let deadline = Instant::now() + Duration::from_secs(t.timeout);
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
    let mut b_running = true;
    loop {
        let tick = (Instant::now() + Duration::from_millis(50)).min(deadline);
        match a.next_line(tick) {
            Ok(line) => {
                println!("[{} a] {line}", t.label);
                seen_a.observe(&line);
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                seen_a.timed_out = Some(t.timeout);
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        while b_running {
            match b.next_line(Instant::now()) {
                Ok(line) => {
                    println!("[{} b] {line}", t.label);
                    seen_b.observe(&line);
                }
                Err(RecvTimeoutError::Disconnected) => b_running = false,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        if seen_b.panic.is_some() || seen_b.result.is_some() {
            break;
        }
    }
    a.kill();
    b.kill();
    if let Some(panic) = &seen_b.panic {
        return Ok((
            Verdict::Fail(format!("node b: kernel panic: {panic}")),
            String::new(),
        ));
    }
    if let Some(result) = &seen_b.result {
        return Ok((Verdict::Fail(format!("node b: {result}")), String::new()));
    }
    Ok((seen_a.verdict(), seen_a.cases_summary()))
}

/// Builds the agent and the guest suite and returns their paths as cargo reports them. Debug
/// and `--workspace`, like `cargo test --workspace` in `cargo xtask test`: the same feature
/// unification, so after the tests (as in CI) little more than two links remain.
fn build_binaries() -> Result<(PathBuf, PathBuf)> {
    let tools = crate::toolchain::ensure()?;
    eprintln!("==> building tracer-agent and tracer-vm-guest");
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "--message-format=json-render-diagnostics",
        "--workspace",
        "--bin",
        "tracer-agent",
        "--bin",
        "tracer-vm-guest",
    ])
    .env("TRACER_TOOLCHAIN_DIR", &tools)
    .stdout(Stdio::piped());
    eprintln!("+ {cmd:?}");
    let out = cmd.output().context("cannot run cargo build")?;
    if !out.status.success() {
        bail!("cargo build failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exe = |name: &str| {
        executable(&stdout, name).with_context(|| format!("cargo built no {name} executable"))
    };
    Ok((exe("tracer-vm-guest")?, exe("tracer-agent")?))
}

/// Pure: the `executable` of the `compiler-artifact` message for bin target `name`.
fn executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// Boots one guest and follows its console until QEMU exits or the deadline passes.
/// The verdict, the cases' summary, and whether the kernel panicked before the suite ran.
fn run_guest(boot: &qemu::BootSpec, label: &str, timeout: u64) -> Result<(Verdict, String, bool)> {
    let mut console = qemu::boot(boot)?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut seen = Seen::default();
    loop {
        match console.next_line(deadline) {
            Ok(line) => {
                println!("[{label}] {line}");
                seen.observe(&line);
            }
            Err(RecvTimeoutError::Timeout) => {
                console.kill();
                seen.timed_out = Some(timeout);
                break;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = console.wait()?;
                if !status.success() {
                    seen.qemu_failed = Some(status.to_string());
                }
                break;
            }
        }
    }
    Ok((
        seen.verdict(),
        seen.cases_summary(),
        seen.panicked_before_suite(),
    ))
}

/// What the console showed.
#[derive(Debug, Default)]
struct Seen {
    result: Option<String>,
    panic: Option<String>,
    cases: Vec<(String, String)>,
    /// The case started last and not finished.
    running: Option<String>,
    timed_out: Option<u64>,
    qemu_failed: Option<String>,
    /// The last few lines, for a failure without a result.
    tail: Vec<String>,
    /// The guest suite printed one of its marks.
    suite_started: bool,
}

impl Seen {
    fn observe(&mut self, line: &str) {
        if line.contains("TRACER-VM-") {
            self.suite_started = true;
        }
        if let Some(at) = line.find(RESULT_MARK) {
            self.result = Some(line[at + RESULT_MARK.len()..].trim().to_owned());
        } else if let Some(at) = line.find(CASE_MARK) {
            let mut f = line[at + CASE_MARK.len()..].split_whitespace();
            match (f.next(), f.next()) {
                (Some(name), Some("RUN")) => self.running = Some(name.to_owned()),
                (Some(name), Some(status)) => {
                    self.running = None;
                    self.cases.push((name.to_owned(), status.to_owned()));
                }
                _ => {}
            }
        }
        if self.panic.is_none() && line.contains("Kernel panic") {
            self.panic = Some(line.trim().to_owned());
        }
        self.tail.push(line.to_owned());
        if self.tail.len() > 5 {
            self.tail.remove(0);
        }
    }

    /// A kernel panic before the suite printed anything: the kernel's own boot failed.
    fn panicked_before_suite(&self) -> bool {
        self.panic.is_some() && !self.suite_started
    }

    /// Pure: a kernel passes only with a PASS result line, no panic and no timeout.
    fn verdict(&self) -> Verdict {
        if let Some(panic) = &self.panic {
            return Verdict::Fail(format!("kernel panic: {panic}"));
        }
        match (&self.result, self.timed_out) {
            (Some(r), None) if r.starts_with("PASS") => Verdict::Pass,
            (Some(r), None) => Verdict::Fail(r.trim_start_matches("FAIL").trim().to_owned()),
            (_, Some(secs)) => Verdict::Fail(format!(
                "timeout: no result within {secs}s (QEMU killed){}{}; last console lines: {}",
                match &self.running {
                    Some(case) => format!(" while running {case}"),
                    None => String::new(),
                },
                match &self.result {
                    Some(r) => format!("; the guest had reported {r}"),
                    None => String::new(),
                },
                self.tail.join(" | ")
            )),
            (None, None) => Verdict::Fail(format!(
                "the guest stopped without a result (QEMU {}); last console lines: {}",
                self.qemu_failed.as_deref().unwrap_or("exited"),
                self.tail.join(" | ")
            )),
        }
    }

    fn cases_summary(&self) -> String {
        let passed = self.cases.iter().filter(|(_, s)| s == "PASS").count();
        let failed: Vec<&str> = self
            .cases
            .iter()
            .filter(|(_, s)| s != "PASS")
            .map(|(n, _)| n.as_str())
            .collect();
        let mut s = format!("{passed}/{} cases", self.cases.len());
        if !failed.is_empty() {
            s.push_str(&format!(" (failed: {})", failed.join(", ")));
        }
        s
    }
}

fn secs(d: Duration) -> String {
    if d.is_zero() {
        "-".into()
    } else {
        format!("{:.0}s", d.as_secs_f64())
    }
}

fn print_table(rows: &[Row], accel: Option<Accel>) {
    println!();
    println!(
        "VM test matrix ({}):",
        accel.map_or("no guest booted", |a| match a {
            Accel::Kvm => "KVM",
            _ => "TCG software emulation",
        })
    );
    println!(
        "{:<7} {:<28} {:<6} {:>6} {:>6} {:>6}  details",
        "kernel", "release", "result", "fetch", "guest", "total"
    );
    for r in rows {
        let (result, why) = match &r.verdict {
            Verdict::Pass => ("PASS", String::new()),
            Verdict::Fail(why) => ("FAIL", why.clone()),
        };
        let mut details = r.cases.clone();
        if !why.is_empty() {
            if !details.is_empty() {
                details.push_str("; ");
            }
            details.push_str(&why.chars().take(300).collect::<String>());
        }
        println!(
            "{:<7} {:<28} {:<6} {:>6} {:>6} {:>6}  {}",
            r.version,
            r.release,
            result,
            secs(r.fetch),
            secs(r.guest),
            secs(r.fetch + r.guest),
            details
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(lines: &[&str]) -> Seen {
        let mut s = Seen::default();
        for l in lines {
            s.observe(l);
        }
        s
    }

    #[test]
    fn passes_only_on_a_pass_line() {
        let s = seen(&[
            "TRACER-VM-CASE load_and_attach RUN",
            "TRACER-VM-CASE load_and_attach PASS 3.0s",
            "[    5.1] random: crng init done TRACER-VM-RESULT PASS kernel=6.1.0 passed=1 failed=0",
        ]);
        assert_eq!(s.verdict(), Verdict::Pass);
        assert_eq!(s.cases_summary(), "1/1 cases");
    }

    #[test]
    fn a_failing_case_fails_the_kernel() {
        let s = seen(&[
            "TRACER-VM-CASE keep_alive FAIL 9.0s: expected 6 spans",
            "TRACER-VM-RESULT FAIL kernel=5.10 passed=4 failed=1 failing: keep_alive",
        ]);
        assert_eq!(
            s.verdict(),
            Verdict::Fail("kernel=5.10 passed=4 failed=1 failing: keep_alive".into())
        );
        assert_eq!(s.cases_summary(), "0/1 cases (failed: keep_alive)");
    }

    #[test]
    fn panic_and_timeout_and_silence_fail() {
        let s = seen(&[
            "TRACER-VM-RESULT PASS kernel=x",
            "[    9.0] Kernel panic - not syncing: Attempted to kill init!",
        ]);
        assert!(matches!(s.verdict(), Verdict::Fail(m) if m.starts_with("kernel panic")));
        let mut s = seen(&["booting", "TRACER-VM-CASE keep_alive RUN"]);
        s.timed_out = Some(60);
        assert!(matches!(
            s.verdict(),
            Verdict::Fail(m) if m.contains("timeout") && m.contains("while running keep_alive")
        ));
        let s = seen(&["booting"]);
        assert!(matches!(s.verdict(), Verdict::Fail(m) if m.contains("without a result")));
    }

    /// Only a panic before the suite printed anything is the kernel's own boot failing
    /// (retried once); after it, a panic is the suite's failure.
    #[test]
    fn panics_before_the_suite_are_told_apart() {
        let boot = seen(&[
            "[    0.96] Oops: int3: 0000 [#2] PREEMPT SMP NOPTI",
            "[    0.97] Kernel panic - not syncing: Fatal exception in interrupt",
        ]);
        assert!(boot.panicked_before_suite());
        let during = seen(&[
            "TRACER-VM-CASE load_and_attach RUN",
            "[    9.0] Kernel panic - not syncing: Fatal exception",
        ]);
        assert!(!during.panicked_before_suite());
        assert!(!seen(&["booting"]).panicked_before_suite());
    }

    #[test]
    fn finds_executables_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"tracer-agent","kind":["bin"]},"executable":"/t/debug/tracer-agent"}
{"reason":"compiler-artifact","target":{"name":"tracer_tests","kind":["lib"]},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable(messages, "tracer-agent"),
            Some(PathBuf::from("/t/debug/tracer-agent"))
        );
        assert_eq!(executable(messages, "tracer-vm-guest"), None);
    }
}
