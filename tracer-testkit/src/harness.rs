//! The agent under test, for the async root integration suites: which binary, root
//! required, and a handle whose waits run off the test's runtime. Readiness is `/readyz`,
//! bounded by a timeout that fails the test with what was seen.

use std::path::PathBuf;
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
