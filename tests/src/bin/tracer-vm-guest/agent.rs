//! The agent as a child process of the guest suite: its log streams to the console (prefixed)
//! and is kept for assertions; readiness is `/readyz`, re-checked whenever the agent logs.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::http;

pub fn agent_binary() -> PathBuf {
    std::env::var_os("TRACER_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/tracer-agent"))
}

pub struct GuestAgent {
    child: Option<Child>,
    pub metrics_port: u16,
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<()>,
}

impl GuestAgent {
    /// Starts the agent exporting to `otlp_endpoint` over gRPC (console mode when `None`) and
    /// waits until `/readyz` answers 200: every program loaded and attached.
    pub fn start(otlp_endpoint: Option<&str>, timeout: Duration) -> Result<GuestAgent> {
        Self::start_with(otlp_endpoint, &[], timeout)
    }

    /// As [`GuestAgent::start`], with more flags.
    pub fn start_with(
        otlp_endpoint: Option<&str>,
        args: &[&str],
        timeout: Duration,
    ) -> Result<GuestAgent> {
        let metrics_port = tracer_testkit::ports::free_port()?;
        let bin = agent_binary();
        let mut cmd = Command::new(&bin);
        cmd.arg("--metrics-addr")
            .arg(SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port)).to_string())
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(endpoint) = otlp_endpoint {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                println!("  agent| {line}");
                sink.lock().unwrap().push(line);
                // The receiver may be gone; the log is still kept.
                let _ = tx.send(());
            }
        });
        let mut agent = GuestAgent {
            child: Some(child),
            metrics_port,
            log,
            lines,
        };
        agent.wait_ready(timeout)?;
        Ok(agent)
    }

    /// Re-checks `/readyz` whenever the agent logs a line (it logs when it becomes ready), and
    /// at least every 250 ms; fails as soon as the agent exits.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "agent exited during startup ({status}): {}",
                    self.log().join(" | ")
                );
            }
            if self.get("/readyz").is_ok_and(|(status, _)| status == 200) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "agent not ready after {timeout:?}: {}",
                    self.log().join(" | ")
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(250)))
            {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                // stderr closed: the agent is exiting; the next try_wait reports it.
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().expect("running").wait()?;
                    bail!(
                        "agent exited during startup ({status}): {}",
                        self.log().join(" | ")
                    );
                }
            }
        }
    }

    /// One GET to the agent's health/metrics server.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let exchange = http::request_once(self.metrics_port, "GET", path, b"")?;
        Ok((
            exchange.status,
            String::from_utf8_lossy(&exchange.body).into_owned(),
        ))
    }

    /// The agent's log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then a clean exit within `timeout` (the agent drains and flushes first).
    /// Returns the whole log.
    pub fn stop(mut self, timeout: Duration) -> Result<Vec<String>> {
        let child = self.child.take().expect("running");
        let status = terminate(child, timeout)?;
        if !status.success() {
            bail!(
                "agent exited with {status} after SIGTERM: {}",
                self.log().join(" | ")
            );
        }
        Ok(self.log())
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM `child` and wait for it, SIGKILL after `timeout`. The wait runs on its own thread so
/// the deadline needs no polling; the pid cannot be reused before that wait returns.
pub fn terminate(mut child: Child, timeout: Duration) -> Result<ExitStatus> {
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => Ok(status?),
        Err(_) => {
            // SAFETY: as above; the waiting thread reaps it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            bail!("pid {pid} did not exit within {timeout:?} of SIGTERM (killed)")
        }
    }
}
