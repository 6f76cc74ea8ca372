//! The agent as a child process: of the root suites, of the VM guest's cases, of `xtask
//! demo`. Its output goes to files (read while it runs, removed when the handle is
//! dropped); it is ready when `/readyz` answers 200, every program loaded and attached.
//! Std-only: the async suites start it through `harness`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::process::{Wait, backing_off, terminate, wait_ready};

/// How long [`Agent::stop`] waits for the agent to flush and exit.
const STOP: Duration = Duration::from_secs(60);

pub struct Agent {
    child: Option<Child>,
    pub metrics_addr: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Agent {
    /// Starts `bin` with `args` and `env` (health and metrics on a free port, `RUST_LOG=info`,
    /// no OTLP endpoint inherited from the caller's environment) and waits until it is ready;
    /// fails as soon as it exits, or after `timeout`, with its log.
    pub fn spawn(
        bin: &Path,
        args: &[&str],
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Agent> {
        let metrics_addr = crate::ports::unused_local_addr()?;
        let dir = std::env::temp_dir();
        let tag = format!("{}-{}", std::process::id(), metrics_addr.port());
        let stdout = dir.join(format!("tracer-agent-{tag}.out"));
        let stderr = dir.join(format!("tracer-agent-{tag}.err"));
        let mut cmd = Command::new(bin);
        cmd.arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut agent = Agent {
            child: Some(child),
            metrics_addr,
            stdout,
            stderr,
        };
        let wait = wait_ready(
            agent.child.as_mut().expect("just started"),
            timeout,
            || ready(metrics_addr),
            backing_off(Duration::from_millis(20), Duration::from_millis(250)),
        )?;
        match wait {
            Wait::Ready => Ok(agent),
            Wait::Exited(status) => bail!(
                "agent exited during startup ({status}): {}",
                agent.stderr_text()
            ),
            Wait::TimedOut => bail!("agent not ready after {timeout:?}: {}", agent.stderr_text()),
        }
    }

    /// The agent's pid: the abuse suite reads its RSS from `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// The agent's log (stderr) so far, a line each.
    pub fn log(&self) -> Vec<String> {
        self.stderr_text().lines().map(str::to_owned).collect()
    }

    /// What the agent printed on stdout so far (its trace trees in console mode).
    pub fn printed(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit: the agent flushes what is pending first.
    /// Returns (stdout, stderr).
    pub fn stop(self) -> Result<(String, String)> {
        self.stop_within(STOP)
    }

    /// [`Agent::stop`], killed (and failed) when it takes longer than `timeout`.
    pub fn stop_within(mut self, timeout: Duration) -> Result<(String, String)> {
        let child = self.child.take().expect("agent running");
        let status = terminate(child, timeout)?;
        let (out, err) = (self.printed(), self.stderr_text());
        if !status.success() {
            bail!("agent exited with {status} after SIGTERM: {err}");
        }
        Ok((out, err))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// `GET /readyz` answered 200 (one HTTP/1.0 exchange, the connection closed by the agent).
fn ready(addr: SocketAddr) -> bool {
    let exchange = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(status_is_ok(&answer))
    };
    exchange().unwrap_or(false)
}

/// The status line of an HTTP/1.x response says 200.
fn status_is_ok(answer: &[u8]) -> bool {
    let line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    parts.next().is_some_and(|v| v.starts_with(b"HTTP/1."))
        && parts.next() == Some(b"200".as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_status_line_is_ready() {
        assert!(status_is_ok(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        ));
        assert!(status_is_ok(b"HTTP/1.0 200 OK\r\n\r\n"));
        assert!(!status_is_ok(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"));
        assert!(!status_is_ok(b"HTTP/1.1 2000 OK\r\n\r\n"));
        assert!(!status_is_ok(b"200 HTTP/1.1\r\n"));
        assert!(!status_is_ok(b""));
    }
}
