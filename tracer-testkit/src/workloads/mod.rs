//! The programs the suites trace, per language (Python, Node.js, Go, nginx, wrk), and what
//! they share: a temporary directory, starting a server that prints its port, waiting for a
//! listener, running a client to completion. Each server reports readiness by printing its
//! port (or, for nginx, by accepting a connection); every wait is bounded.

pub mod go;
pub mod nginx;
pub mod node;
pub mod python;
pub mod wrk;

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

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

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracer-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let p = self.join(name);
        std::fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `cmd` with stdout piped and waits for the port it prints as its first line.
pub fn spawn_printing_port(mut cmd: Command, what: &str) -> Result<Server> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = match line.trim().parse() {
        Ok(p) => p,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not report its port: {line:?}");
        }
    };
    Ok(Server { child, port })
}

/// Waits until `addr` accepts a TCP connection: the readiness signal of servers that do not
/// print their port.
pub fn wait_for_listener(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a client to completion and returns its pid and stdout; fails with its stderr.
pub fn run_client(mut cmd: Command, what: &str) -> Result<(u32, String)> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((pid, stdout))
}

/// `key=value` from a client's report line (`requests=100 conns=4`).
pub fn reported(stdout: &str, key: &str) -> Result<u64> {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .with_context(|| format!("no {key}= in {stdout:?}"))
}

/// Direct children of `pid` (from `/proc/<pid>/task/*/children`).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out
}

/// Agent RSS in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .context("no VmRSS in /proc/<pid>/status")
}

/// Sends raw bytes on a fresh connection and returns everything read until the peer
/// closes or `timeout` passes.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    Ok(out)
}
