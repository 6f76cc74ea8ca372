//! Real processes for the root integration suites: the agent binary, HTTP servers and
//! clients. Every wait is on a readiness signal (a printed port, `/readyz`), bounded by a
//! timeout that fails the test with what was seen.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// Root integration tests cannot run unprivileged; they fail (never skip) with the fix.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test loads eBPF programs and needs root: run `cargo xtask test` as root");
    }
}

/// The agent under test: `TRACER_AGENT_BIN`, else the workspace's debug build.
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TRACER_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tracer-agent");
    if default.is_file() {
        return Ok(default);
    }
    bail!(
        "tracer-agent binary not found: run the suite with `cargo xtask test` (it builds the agent and sets TRACER_AGENT_BIN)"
    )
}

pub use crate::agent::Agent;

/// The agent's async side, for the suites' tokio tests.
impl Agent {
    /// Starts the agent under test ([`agent_binary`]) with `args` and `env`, and waits until
    /// `/readyz` says all programs are attached.
    pub async fn start(args: &[&str], env: &[(&str, String)]) -> Result<Agent> {
        Self::start_within(args, env, Duration::from_secs(30)).await
    }

    /// [`Agent::start`], ready within `timeout`.
    pub async fn start_within(
        args: &[&str],
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Agent> {
        require_root();
        let bin = agent_binary()?;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        // The readiness wait blocks: off the test's runtime, which may have one thread.
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, String)> =
                env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            Agent::spawn(&bin, &args, &env, timeout)
        })
        .await?
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(
            reqwest::get(format!("http://{}/metrics", self.metrics_addr))
                .await?
                .text()
                .await?,
        )
    }

    /// A counter's value from `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<u64> {
        let text = self.metrics().await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("metric {name} not in /metrics"))
    }
}

/// A child process killed when dropped, so a failing test leaves nothing behind.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python's `http.server` on an ephemeral port of 127.0.0.1 (or `bind`). HTTP/1.1 with
/// keep-alive when `keep_alive`, else HTTP/1.0 (one request per connection). It prints the
/// port once it listens: that line is the readiness signal.
pub fn python_http_server(bind: &str, keep_alive: bool) -> Result<Server> {
    let script = format!(
        r#"
import http.server, socket, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "{proto}"
    def log_message(self, *args): pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in "{bind}" else socket.AF_INET
srv = Server(("{bind}", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#,
        proto = if keep_alive { "HTTP/1.1" } else { "HTTP/1.0" },
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start python3 (install it, or run `cargo xtask test` which does)")?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .parse()
        .with_context(|| format!("python server did not report its port: {line:?}"))?;
    Ok(Server { child, port })
}

/// Output of one curl run, with the pid it ran as.
pub struct CurlRun {
    pub pid: u32,
    pub stdout: String,
}

/// Runs curl to completion. `-sS` keeps errors visible; `--fail` is not used so 4xx are
/// ordinary outcomes.
pub fn curl(args: &[&str]) -> Result<CurlRun> {
    let child = Command::new("curl")
        .arg("-sS")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start curl (install it, or run `cargo xtask test` which does)")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(CurlRun {
        pid,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// A child process driven line by line: a command on its stdin, its answer on its stdout up
/// to a line the caller recognises (load clients that run in phases, a pooled client).
pub struct LineChild {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl LineChild {
    pub fn spawn(cmd: &mut Command) -> Result<LineChild> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a line-driven child")?;
        let stdin = child.stdin.take().context("stdin not piped")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout not piped")?);
        Ok(LineChild {
            child,
            stdin,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `line`; returns what the child printed up to and including the first line for
    /// which `last` holds. Fails if the child exits first.
    pub fn ask(&mut self, line: &str, last: impl Fn(&str) -> bool) -> Result<String> {
        use std::io::Write as _;
        writeln!(self.stdin, "{line}").context("the child's stdin")?;
        let mut out = String::new();
        loop {
            let mut l = String::new();
            if self
                .stdout
                .read_line(&mut l)
                .context("the child's stdout")?
                == 0
            {
                bail!("the child exited after printing: {out}");
            }
            out.push_str(&l);
            if last(l.trim_end()) {
                return Ok(out);
            }
        }
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
