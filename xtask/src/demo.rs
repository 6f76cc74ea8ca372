//! `cargo xtask demo`: the lesson's three services, each in its own pod, traced by the agent
//! into one trace per request, printed as trees. The product's promise in one command.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use tracer_testkit::agent::Agent;
use tracer_testkit::pods::lesson::{Demo, Frontend, Options, Paths};
use tracer_testkit::pods::{self, CgroupLayout};

#[derive(Args)]
pub struct DemoArgs {
    /// Requests to send to the frontend.
    #[arg(long, default_value_t = 3)]
    requests: u32,
    /// Cgroup layout of the pods: the kubelet's `systemd` or `cgroupfs` driver.
    #[arg(long, default_value = "systemd", value_parser = ["systemd", "cgroupfs"])]
    layout: String,
    /// Nodes to spread the pods over: 1, or 2 (an agent per node, as a DaemonSet runs them:
    /// the frontend on one, the backend and the database on the other, joined by the
    /// agents' context exchange).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    nodes: u8,
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

    if args.nodes == 2 {
        return two_nodes(&agent, demo, args.requests);
    }
    eprintln!("==> starting tracer-agent (no collector configured: it prints traces as trees)");
    let agent = console_agent(&agent, &[], &[])?;

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
    let traces = wait_for_traces(
        &agent,
        &marker,
        args.requests as usize,
        Duration::from_secs(15),
    );
    let (_, stderr) = agent.stop()?;
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

/// The pods over two nodes, each traced by its own agent (`--pid` keeps each to its node's
/// processes), the two joined by the exchange: each agent prints its part of every trace,
/// and the parts share the trace id. The requests come from this process (on node 1 with
/// the frontend), so the first span of each trace is the caller's.
fn two_nodes(bin: &Path, demo: pods::lesson::Demo, requests: u32) -> Result<()> {
    let free = || -> Result<String> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string())
    };
    let (one, two) = (free()?, free()?);
    let token = [(
        "TRACER_EXCHANGE_TOKEN",
        format!("demo-exchange-{:016x}", rand_u64()),
    )];
    let scope = |pids: &[u32], mine: &str, peer: &str| -> Vec<String> {
        pids.iter()
            .flat_map(|p| ["--pid".to_owned(), p.to_string()])
            .chain(
                ["--exchange-addr", mine, "--peer", peer]
                    .iter()
                    .map(|s| s.to_string()),
            )
            .collect()
    };
    eprintln!("==> node 1: frontend and the client; node 2: backend and database");
    eprintln!("==> starting one tracer-agent per node (exchange on {one} and {two})");
    let agents = [
        console_agent(
            bin,
            &scope(&[demo.frontend.pid(), std::process::id()], &one, &two),
            &token,
        )?,
        console_agent(
            bin,
            &scope(&[demo.backend.pid(), demo.database.pid()], &two, &one),
            &token,
        )?,
    ];
    let addr = std::net::SocketAddr::from((demo.frontend.ip, pods::lesson::FRONTEND_PORT));
    for _ in 0..requests {
        eprintln!("==> GET http://{addr}/");
        eprintln!("    {}", http_get(addr)?);
    }
    let marker = format!("server={addr}");
    let fronts = wait_for_traces(
        &agents[0],
        &marker,
        requests as usize,
        Duration::from_secs(15),
    );
    let ids: Vec<String> = fronts.iter().filter_map(|t| trace_id(t)).collect();
    let backs = wait_for_traces_with(
        &agents[1],
        |t| trace_id(t).is_some_and(|id| ids.contains(&id)),
        ids.len(),
        Duration::from_secs(15),
    );
    let [front_agent, back_agent] = agents;
    let logs = [front_agent.stop()?.1, back_agent.stop()?.1];
    println!();
    let mut whole = 0;
    for front in &fronts {
        let id = trace_id(front).unwrap_or_default();
        println!("node 1 (agent 1):\n{front}");
        match backs
            .iter()
            .find(|b| trace_id(b).as_deref() == Some(id.as_str()))
        {
            Some(back) => {
                whole += 1;
                println!("node 2 (agent 2), the same trace:\n{back}");
            }
            None => println!("node 2 (agent 2): no part of trace {id}\n"),
        }
    }
    if whole < requests as usize {
        bail!(
            "{whole} of {requests} traces whole across the two nodes; node 1's log:\n{}\nnode 2's log:\n{}",
            logs[0],
            logs[1]
        );
    }
    eprintln!(
        "==> {requests} requests, {whole} traces across two nodes: each agent saw half of the frontend → backend hop and the exchange joined them"
    );
    drop(demo);
    eprintln!("==> pods removed");
    Ok(())
}

/// The id of a printed tree (`trace <id> (…)`).
fn trace_id(tree: &str) -> Option<String> {
    tree.strip_prefix("trace ")?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// One GET on its own connection; the status line and body.
fn http_get(addr: std::net::SocketAddr) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to the frontend at {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tracer-demo\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    if !status.contains(" 200 ") {
        bail!("the frontend answered {status:?}: {body}");
    }
    Ok(format!("{status}: {body}"))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The agent in console mode (no collector configured: it prints trees), ready.
fn console_agent(bin: &Path, args: &[String], env: &[(&str, String)]) -> Result<Agent> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::spawn(bin, &args, env, Duration::from_secs(30))
}

/// Waits (bounded) until `want` printed traces contain `marker`; returns them.
fn wait_for_traces(agent: &Agent, marker: &str, want: usize, timeout: Duration) -> Vec<String> {
    wait_for_traces_with(agent, |t| t.contains(marker), want, timeout)
}

/// Waits (bounded) until `want` printed traces satisfy `f`; returns them.
fn wait_for_traces_with(
    agent: &Agent,
    f: impl Fn(&str) -> bool,
    want: usize,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let traces: Vec<String> = printed_traces(agent).into_iter().filter(|t| f(t)).collect();
        if traces.len() >= want || Instant::now() > deadline {
            return traces;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The trees printed so far: each starts with a `trace <id> (…)` line.
fn printed_traces(agent: &Agent) -> Vec<String> {
    let mut traces: Vec<String> = Vec::new();
    for line in agent.printed().lines() {
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
