//! Two agents on one kernel, each scoped to its own "node" (a set of processes, `--pid`),
//! as a DaemonSet runs one agent per node and joined by the agent-to-agent exchange; and a
//! gate for clients whose pid the agents must know before the first request.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tracer_testkit::harness::Agent;
use tracer_testkit::spans::{WAIT, spans_of};
use tracer_testkit::{OtlpReceiver, ReceivedSpan};

/// The exchange token every agent of a test shares (`TRACER_EXCHANGE_TOKEN`).
pub const EXCHANGE_TOKEN: &str = "test-exchange-token-0123456789";

/// How an agent finds the others.
pub enum Discovery<'a> {
    /// `--peer` for each.
    Static(&'a [SocketAddr]),
    /// `--peers-from-kubernetes app=tracer-agent` in namespace `tracing`, this agent on
    /// `node`, the API server named by `kubeconfig`.
    Kubernetes { kubeconfig: &'a Path, node: &'a str },
}

/// Agent of one "node": traces `pids`, answers lookups on `exchange`, asks `peers`, and
/// exports to `rx` with the default export settings, or batches every `batch_delay_ms`.
pub async fn node_agent(
    rx: &OtlpReceiver,
    pids: &[u32],
    exchange: SocketAddr,
    peers: &[SocketAddr],
    batch_delay_ms: Option<u64>,
) -> Agent {
    discovering_agent(
        rx,
        pids,
        exchange,
        Discovery::Static(peers),
        batch_delay_ms,
        &[],
    )
    .await
}

/// [`node_agent`] finding its peers by `discovery`, with `extra` arguments.
pub async fn discovering_agent(
    rx: &OtlpReceiver,
    pids: &[u32],
    exchange: SocketAddr,
    discovery: Discovery<'_>,
    batch_delay_ms: Option<u64>,
    extra: &[&str],
) -> Agent {
    let mut args: Vec<String> = vec!["--exchange-addr".into(), exchange.to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    for p in pids {
        args.extend(["--pid".into(), p.to_string()]);
    }
    let mut extra_env = Vec::new();
    match discovery {
        Discovery::Static(peers) => {
            for p in peers {
                args.extend(["--peer".into(), p.to_string()]);
            }
        }
        Discovery::Kubernetes { kubeconfig, node } => {
            args.extend([
                "--peers-from-kubernetes".into(),
                "app=tracer-agent".into(),
                "--peers-namespace".into(),
                "tracing".into(),
            ]);
            extra_env.push(("KUBECONFIG", kubeconfig.display().to_string()));
            extra_env.push(("NODE_NAME", node.to_owned()));
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            rx.protocol().otel_name().to_owned(),
        ),
        ("TRACER_EXCHANGE_TOKEN", EXCHANGE_TOKEN.to_owned()),
    ];
    env.extend(extra_env);
    if let Some(ms) = batch_delay_ms {
        env.push(("OTEL_BSP_SCHEDULE_DELAY", ms.to_string()));
    }
    Agent::start(&args, &env).await.expect("agent starts")
}

/// A client started now but held before its first instruction until [`GatedClient::run`]:
/// its pid must be known before the agents start (they trace by pid), and its requests must
/// come after. A shell reads one line, then `exec`s the client in its own process (same pid).
pub struct GatedClient {
    child: Child,
    what: String,
}

impl GatedClient {
    /// Starts `client` (program, arguments, environment and working directory as set) held.
    pub fn start(client: &Command, what: &str) -> GatedClient {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"read -r _ && exec "$@""#, "sh"])
            .arg(client.get_program())
            .args(client.get_args());
        for (key, value) in client.get_envs() {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        if let Some(dir) = client.get_current_dir() {
            cmd.current_dir(dir);
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        GatedClient {
            child,
            what: what.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Opens the gate and waits for the client's report (its stdout); panics with its
    /// output when it fails.
    pub fn run(mut self) -> String {
        let mut stdin = self.child.stdin.take().expect("piped");
        stdin.write_all(b"go\n").expect("open the gate");
        drop(stdin);
        let out = self.child.wait_with_output().expect("wait for the client");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{} failed: {stdout}{}",
            self.what,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// The end of a two-agent run: what arrived of `pids`' spans and each agent's `/metrics`.
pub struct TwoAgentsEnd {
    pub spans: Vec<ReceivedSpan>,
    /// `want` spans arrived within [`WAIT`].
    pub complete: bool,
    pub metrics: [String; 2],
}

/// Waits until `want` spans of `pids` arrived (at most [`WAIT`]), reads both agents'
/// metrics, and stops both (each must exit cleanly, having flushed what it held).
pub async fn finish_two_agents(
    rx: &OtlpReceiver,
    agents: [Agent; 2],
    pids: &[u32],
    want: usize,
) -> TwoAgentsEnd {
    let complete = rx
        .wait_for_spans(|s| spans_of(s, pids).len() >= want, WAIT)
        .await
        .is_ok();
    let [a1, a2] = agents;
    let metrics = [
        a1.metrics().await.unwrap_or_default(),
        a2.metrics().await.unwrap_or_default(),
    ];
    a1.stop().expect("agent 1 stops cleanly");
    a2.stop().expect("agent 2 stops cleanly");
    TwoAgentsEnd {
        spans: spans_of(&rx.spans(), pids),
        complete,
        metrics,
    }
}
