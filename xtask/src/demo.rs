//! `cargo xtask demo`: the lesson's three services, each in its own pod, traced by the agent
//! into one trace per request, printed as trees. The product's promise in one command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

// The pods harness of the test suites, compiled here as is: xtask must not depend on the
// tests crate (that would build the agent, eBPF included, before xtask could run).
#[path = "../../tests/src/pods.rs"]
#[allow(dead_code)]
mod pods;

use pods::CgroupLayout;
use pods::lesson::{Demo, Frontend, Options, Paths};

#[derive(Args)]
pub struct DemoArgs {
    /// Requests to send to the frontend.
    #[arg(long, default_value_t = 3)]
    requests: u32,
    /// Cgroup layout of the pods: the kubelet's `systemd` or `cgroupfs` driver.
    #[arg(long, default_value = "systemd", value_parser = ["systemd", "cgroupfs"])]
    layout: String,
}

pub fn run(args: DemoArgs) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the demo creates network namespaces and cgroups and loads eBPF programs: rerun as root (sudo -E cargo xtask demo)"
        );
    }
    let agent = crate::build_agent(false)?;
    let paths = Paths::in_workspace(&crate::workspace_root(), crate::target_dir().join("demo"));
    crate::deps::ensure_demo_apps(&paths.apps, &paths.deps)?;
    crate::deps::ensure_packages(&[("curl", "curl")])?;

    let layout = match args.layout.as_str() {
        "cgroupfs" => CgroupLayout::Cgroupfs,
        _ => CgroupLayout::Systemd,
    };
    eprintln!("==> starting the pods: frontend (Node.js) → backend (Python) → database (Go)");
    let demo = Demo::start(
        &paths,
        &Options {
            frontend: Frontend::Lesson,
            layout,
            oracle: false,
            // As a Deployment's env would; the apps themselves are untouched.
            service_names: true,
        },
    )?;
    for pod in [&demo.frontend, &demo.backend, &demo.database] {
        eprintln!(
            "    {:<9} {:<15} pid {:<8} cgroup {}",
            pod.name,
            pod.ip,
            pod.pid(),
            pod.cgroup_path()
        );
    }

    eprintln!("==> starting tracer-agent (no collector configured: it prints traces as trees)");
    let mut agent = ConsoleAgent::start(&agent)?;

    let url = format!(
        "http://{}:{}/",
        demo.frontend.ip,
        pods::lesson::FRONTEND_PORT
    );
    for _ in 0..args.requests {
        eprintln!("==> curl {url}");
        let out = Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--max-time", "10", &url])
            .output()
            .context("cannot run curl")?;
        if !out.status.success() {
            bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        eprintln!("    {}", String::from_utf8_lossy(&out.stdout).trim());
    }

    // The agent traces the whole machine: show the traces that went through the frontend.
    let marker = format!(
        "server={}:{}",
        demo.frontend.ip,
        pods::lesson::FRONTEND_PORT
    );
    let traces = agent.wait_for_traces(&marker, args.requests as usize, Duration::from_secs(15));
    let stderr = agent.stop()?;
    println!();
    for t in &traces {
        println!("{t}");
    }
    if traces.len() < args.requests as usize {
        bail!(
            "{} of {} traces printed by the agent; its log:\n{stderr}",
            traces.len(),
            args.requests
        );
    }
    eprintln!(
        "==> {} requests, {} traces: curl → frontend → backend → database, no code changes, no sidecar",
        args.requests,
        traces.len()
    );
    drop(demo);
    eprintln!("==> pods removed");
    Ok(())
}

/// The agent in console mode, its output in files (read while it runs).
struct ConsoleAgent {
    child: Option<std::process::Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ConsoleAgent {
    fn start(bin: &Path) -> Result<ConsoleAgent> {
        let dir = std::env::temp_dir();
        let tag = std::process::id();
        let stdout = dir.join(format!("tracer-demo-agent-{tag}.out"));
        let stderr = dir.join(format!("tracer-demo-agent-{tag}.err"));
        let child = Command::new(bin)
            // Its own port: a developer's agent may be running on the default one.
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut agent = ConsoleAgent {
            child: Some(child),
            stdout,
            stderr,
        };
        // Its readiness line: logged once every program is attached.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&agent.stderr).unwrap_or_default();
            if log.contains("programs attached") {
                return Ok(agent);
            }
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the agent exited ({status}):\n{log}");
            }
            if Instant::now() > deadline {
                bail!("the agent is not ready after 30 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until `want` printed traces contain `marker`; returns them.
    fn wait_for_traces(&mut self, marker: &str, want: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let traces: Vec<String> = self
                .printed()
                .into_iter()
                .filter(|t| t.contains(marker))
                .collect();
            if traces.len() >= want || Instant::now() > deadline {
                return traces;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The trees printed so far: each starts with a `trace <id> (…)` line.
    fn printed(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let mut traces: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.starts_with("trace ") {
                traces.push(String::new());
            }
            if let Some(t) = traces.last_mut() {
                t.push_str(line);
                t.push('\n');
            }
        }
        traces
    }

    /// SIGTERM (the agent flushes and exits); returns its log.
    fn stop(&mut self) -> Result<String> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait()?;
        }
        Ok(std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }
}

impl Drop for ConsoleAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}
