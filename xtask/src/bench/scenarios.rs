//! The scenarios: which servers, which load, which configurations.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::procs::{self, Service};
use super::report::{section, table};
use super::runner::{Load, Scenario, SinkAddrs, Target, free_addr, rounds};
use super::{Config, Plan, Tools, load, setup};

// ---- scenario 1: the fast server -----------------------------------------------------------

pub(super) fn fast_server(
    tools: &Tools,
    plan: &Plan,
    work: &Path,
    sink: &SinkAddrs,
) -> Result<String> {
    let dir = work.join("nginx");
    let origin = setup::Nginx::start(&tools.nginx, &dir.join("origin"), None)?;
    std::fs::write(origin.html_dir().join("1k.bin"), [b'x'; 1024])?;
    let proxy = setup::Nginx::start(&tools.nginx, &dir.join("proxy"), Some(origin.addr))?;
    let direct = format!("http://{}/1k.bin", origin.addr);
    procs::wait_http_ok(origin.addr, "/1k.bin", Duration::from_secs(10))?;
    procs::wait_http_ok(proxy.addr, "/1k.bin", Duration::from_secs(10))?;

    let (max, rate) = calibrate("fast server", "req", plan, 100, |secs| {
        load::wrk(&tools.wrk, &direct, 32, secs)
    })?;

    let configs = [
        Config::Untraced,
        Config::Agent,
        Config::AgentSyscallHooks,
        Config::AgentSampled,
        Config::ProxyHop,
    ];
    let results = rounds(
        Scenario {
            name: "fast",
            // wrk's CLIENT, nginx's SERVER.
            agent_spans: 2.0,
            sdk_spans: 0.0,
        },
        &configs,
        plan,
        rate,
        work,
        sink,
        |config| {
            let (url, pids) = if config == Config::ProxyHop {
                (
                    format!("http://{}/1k.bin", proxy.addr),
                    vec![origin.pid(), proxy.pid()],
                )
            } else {
                (direct.clone(), vec![origin.pid()])
            };
            Ok((
                Target {
                    load: Load::Http(url),
                    server_pids: pids,
                    saturation_connections: 32,
                    fixed_connections: 32,
                    tools,
                },
                Box::new(|| Ok(())),
            ))
        },
    )?;
    Ok(section(
        "Fast server: nginx, 1 KiB responses over keep-alive",
        &format!(
            "nginx 1 worker serving a 1 KiB file (sendfile on), keep-alive. Saturation: `wrk -t1 -c32 -d{s}s`. \
             Fixed rate: `oha -c32 -q {rate} -z {s}s --latency-correction`, {rate} req/s being half the \
             untraced maximum measured just before the rounds ({max:.0} req/s). The agent traces every \
             process, the load generator included: 2 spans per request (wrk's CLIENT, nginx's SERVER). \
             The proxy hop is a second nginx (1 worker, upstream keep-alive) in front of the first.",
            s = plan.seconds
        ),
        &results,
    ))
}

// ---- scenario 2: the typical service --------------------------------------------------------

pub(super) fn typical_service(
    tools: &Tools,
    plan: &Plan,
    work: &Path,
    sink: &SinkAddrs,
) -> Result<String> {
    let app = work.join("flask_app.py");
    std::fs::write(&app, include_str!("flask_app.py"))?;
    let start_apps = |sdk: bool| -> Result<(Service, Service, SocketAddr)> {
        let back_addr = free_addr()?;
        let front_addr = free_addr()?;
        let spawn = |role: &str, addr: SocketAddr, downstream: Option<String>| {
            let mut cmd = Command::new("python3");
            cmd.arg(&app)
                .arg(role)
                .arg(addr.port().to_string())
                .args(downstream)
                .env("PYTHONPATH", &tools.python_path)
                .env("PYTHONUNBUFFERED", "1");
            if sdk {
                cmd.env("BENCH_OTEL_SDK", "1")
                    .env(
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                        format!("http://{}/v1/traces", sink.http),
                    )
                    .env("OTEL_SERVICE_NAME", role);
            }
            Service::spawn(role, &mut cmd, &work.join(format!("{role}.log")))
        };
        let back = spawn("back", back_addr, None)?;
        let front = spawn(
            "front",
            front_addr,
            Some(format!("http://{back_addr}/api/data")),
        )?;
        procs::wait_http_ok(back_addr, "/api/data", Duration::from_secs(20))
            .context("the downstream Flask app did not start")?;
        procs::wait_http_ok(front_addr, "/api/data", Duration::from_secs(20))
            .context("the Flask app did not start")?;
        Ok((front, back, front_addr))
    };

    let (front, back, addr) = start_apps(false)?;
    let url = format!("http://{addr}/api/data");
    let (max, rate) = calibrate("typical service", "req", plan, 1, |secs| {
        load::wrk(&tools.wrk, &url, 8, secs)
    })?;
    drop((front, back));

    let configs = [Config::Untraced, Config::Agent, Config::OtelSdk];
    let results = rounds(
        Scenario {
            name: "typical",
            // wrk's CLIENT, both apps' SERVER, the first app's CLIENT; the SDK cannot see wrk.
            agent_spans: 4.0,
            sdk_spans: 3.0,
        },
        &configs,
        plan,
        rate,
        work,
        sink,
        |config| {
            let (front, back, addr) = start_apps(config == Config::OtelSdk)?;
            let pids = vec![front.pid(), back.pid()];
            let stop: Box<dyn FnOnce() -> Result<()>> = Box::new(move || {
                // SIGINT: Python runs its exit handlers, so the SDK's batch processor flushes.
                for s in [front, back] {
                    s.interrupt(Duration::from_secs(15))?;
                }
                Ok(())
            });
            Ok((
                Target {
                    load: Load::Http(format!("http://{addr}/api/data")),
                    server_pids: pids,
                    saturation_connections: 8,
                    fixed_connections: 8,
                    tools,
                },
                stop,
            ))
        },
    )?;
    Ok(section(
        "Typical service: a Flask app calling a second Flask app",
        &format!(
            "Two Flask 3 apps on Flask's threaded server; each request to the first makes one \
             `requests.get` to the second (a new connection, as the demo's backend does). \
             Saturation: `wrk -t1 -c8 -d{s}s`. Fixed rate: `oha -c8 -q {rate} -z {s}s --latency-correction`, \
             half the untraced maximum ({max:.0} req/s). Spans per request: the agent 4 (wrk, both \
             apps' SERVER and the first app's CLIENT), the SDK 3 (it cannot see wrk).",
            s = plan.seconds
        ),
        &results,
    ))
}

// ---- scenarios 3 and 4: a Go or asyncio service in the middle --------------------------------

/// One of the linking suite's middle services, calling nginx (1 KiB) once per request.
struct Middle<'a> {
    /// For logs and the rounds' labels: `go`, `asyncio`.
    name: &'static str,
    /// Starts the service with nginx's port as its downstream; it prints its own port.
    command: &'a dyn Fn(u16) -> Command,
    /// The agent configurations besides no tracing and the default agent.
    extra: Config,
    title: &'static str,
    /// The section's text after the common part; `{rate}`, `{max}` and `{s}` are filled in.
    how: &'static str,
}

pub(super) fn go_service(
    tools: &Tools,
    plan: &Plan,
    work: &Path,
    sink: &SinkAddrs,
) -> Result<String> {
    crate::deps::ensure_packages(&[("go", "golang-go")])?;
    let bin = work.join("go/go-middle");
    std::fs::create_dir_all(work.join("go"))?;
    crate::run_cmd(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(crate::workspace_root().join("tests/linking/middle.go"))
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0")
            .env("GOTOOLCHAIN", "local"),
    )?;
    let command = |down: u16| {
        let mut cmd = Command::new(&bin);
        cmd.args(["plain", &down.to_string()]);
        cmd
    };
    middle_service(
        tools,
        plan,
        work,
        sink,
        &Middle {
            name: "go",
            command: &command,
            extra: Config::AgentGoUnfollowed,
            title: "Go service: Go net/http calling nginx through a keep-alive pool",
            how: "The linking suite's Go service (`tests/linking/middle.go`, Go's `http.Client` with a \
                  keep-alive pool) makes one call per request to nginx (1 KiB). With the agent its \
                  goroutines are followed (about 4 uprobe hits per request: roundTrip, the \
                  connection writer, and newproc1's entry and return for net/http's per-request \
                  background-read goroutine), or not (`--follow-go false`); spans per request: 4 \
                  (wrk's CLIENT, the Go SERVER and CLIENT, nginx's SERVER).",
        },
    )
}

pub(super) fn asyncio_service(
    tools: &Tools,
    plan: &Plan,
    work: &Path,
    sink: &SinkAddrs,
) -> Result<String> {
    crate::deps::ensure_python_test_packages()?;
    let script = crate::workspace_root().join("tests/linking/middle_aiohttp.py");
    let command = |down: u16| {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args([&down.to_string(), "plain"])
            .env("PYTHONPATH", crate::deps::python_test_packages_dir());
        cmd
    };
    middle_service(
        tools,
        plan,
        work,
        sink,
        &Middle {
            name: "asyncio",
            command: &command,
            extra: Config::AgentPythonUnfollowed,
            title: "asyncio service: aiohttp calling nginx through a keep-alive pool",
            how: "The linking suite's asyncio service (`tests/linking/middle_aiohttp.py`: an aiohttp \
                  server and one `ClientSession`, CPython 3.11) makes one call per request to nginx \
                  (1 KiB). With the agent its tasks are followed (no uprobe: the programs walk the \
                  writing thread's frames on each write to an HTTP socket, two per request here), \
                  or not (`--follow-python false`); spans per request: 4.",
        },
    )
}

fn middle_service(
    tools: &Tools,
    plan: &Plan,
    work: &Path,
    sink: &SinkAddrs,
    m: &Middle<'_>,
) -> Result<String> {
    let dir = work.join(m.name);
    let origin = setup::Nginx::start(&tools.nginx, &dir.join("origin"), None)?;
    // The service calls `/down?id=…`: nginx serves the file `down`, the query ignored.
    std::fs::write(origin.html_dir().join("down"), [b'x'; 1024])?;
    procs::wait_http_ok(origin.addr, "/down?id=0", Duration::from_secs(10))?;
    let log = dir.join("middle.log");
    let start_middle = || -> Result<(Service, SocketAddr)> {
        let mut cmd = (m.command)(origin.addr.port());
        let service = Service::spawn(m.name, &mut cmd, &log)?;
        let port: u16 = procs::first_line(&log, Duration::from_secs(20))?
            .trim()
            .parse()
            .with_context(|| format!("the {} service did not print its port", m.name))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        procs::wait_http_ok(addr, "/work?id=0", Duration::from_secs(10))?;
        Ok((service, addr))
    };

    let (middle, addr) = start_middle()?;
    // id=0: no jitter before the call.
    let url = format!("http://{addr}/work?id=0");
    let (max, rate) = calibrate(&format!("{} service", m.name), "req", plan, 1, |secs| {
        load::wrk(&tools.wrk, &url, 16, secs)
    })?;
    drop(middle);

    let configs = [Config::Untraced, Config::Agent, m.extra];
    let results = rounds(
        Scenario {
            name: m.name,
            // wrk's CLIENT, the service's SERVER and CLIENT, nginx's SERVER.
            agent_spans: 4.0,
            sdk_spans: 0.0,
        },
        &configs,
        plan,
        rate,
        work,
        sink,
        |_| {
            let (middle, addr) = start_middle()?;
            let pids = vec![middle.pid(), origin.pid()];
            let stop: Box<dyn FnOnce() -> Result<()>> = Box::new(move || {
                drop(middle);
                Ok(())
            });
            Ok((
                Target {
                    load: Load::Http(format!("http://{addr}/work?id=0")),
                    server_pids: pids,
                    saturation_connections: 16,
                    fixed_connections: 16,
                    tools,
                },
                stop,
            ))
        },
    )?;
    Ok(section(
        m.title,
        &format!(
            "{} Saturation: `wrk -t1 -c16 -d{s}s`. Fixed rate: `oha -c16 -q {rate} -z {s}s \
             --latency-correction`, half the untraced maximum ({max:.0} req/s).",
            m.how,
            s = plan.seconds
        ),
        &results,
    ))
}

// ---- scenario 5: a gRPC service ----------------------------------------------------------------

pub(super) fn grpc_service(
    tools: &Tools,
    plan: &Plan,
    work: &Path,
    sink: &SinkAddrs,
) -> Result<String> {
    crate::deps::ensure_packages(&[("node", "nodejs"), ("npm", "npm")])?;
    crate::deps::ensure_node_test_packages()?;
    let node_path = crate::deps::node_test_packages_dir().join("node_modules");
    let server_js = crate::workspace_root().join("tests/grpc/server.js");
    let log = work.join("grpc/server.log");
    std::fs::create_dir_all(work.join("grpc"))?;
    let start_server = || -> Result<(Service, load::GrpcLoad)> {
        let mut cmd = Command::new("node");
        cmd.arg(&server_js).env("NODE_PATH", &node_path);
        let service = Service::spawn("grpc", &mut cmd, &log)?;
        let port: u16 = procs::first_line(&log, Duration::from_secs(20))?
            .trim()
            .parse()
            .context("the gRPC server did not print its port")?;
        let load = load::GrpcLoad {
            node_path: node_path.clone(),
            port,
        };
        Ok((service, load))
    };

    let (server, load) = start_server()?;
    let (max, rate) = calibrate("gRPC service", "calls", plan, 1, |secs| {
        load.saturate(16, secs)
    })?;
    drop(server);

    let configs = [Config::Untraced, Config::Agent, Config::AgentSampled];
    let results = rounds(
        Scenario {
            name: "grpc",
            // The generator's CLIENT, the server's SERVER.
            agent_spans: 2.0,
            sdk_spans: 0.0,
        },
        &configs,
        plan,
        rate,
        work,
        sink,
        |_| {
            let (server, load) = start_server()?;
            let pids = vec![server.pid()];
            let stop: Box<dyn FnOnce() -> Result<()>> = Box::new(move || {
                drop(server);
                Ok(())
            });
            Ok((
                Target {
                    load: Load::Grpc(load),
                    server_pids: pids,
                    saturation_connections: 16,
                    fixed_connections: 1,
                    tools,
                },
                stop,
            ))
        },
    )?;
    Ok(section(
        "gRPC service: unary calls, @grpc/grpc-js on both sides",
        &format!(
            "The HTTP/2 suite's @grpc/grpc-js server (`tests/grpc/server.js`, Node.js) answers \
             unary `demo.Greeter/Say` calls from the benchmark's @grpc/grpc-js generator \
             (`xtask/src/bench/grpc_load.js`), all calls streams of ONE HTTP/2 connection, as \
             gRPC clients run. Saturation: 16 calls in flight for {s} s. Fixed rate: call i \
             due at i/{rate} s, latency from when it was due (coordinated omission corrected), \
             {rate} calls/s being half the untraced maximum ({max:.0} calls/s). The agent \
             traces both processes: 2 spans per call. The generator's CPU is not counted as \
             the service's.",
            s = plan.seconds
        ),
        &results,
    ))
}

// ---- microbenchmarks ----------------------------------------------------------------------------

pub(super) fn microbenchmarks(smoke: bool) -> Result<String> {
    eprintln!("==> microbenchmarks (criterion): the agent's user-space hot path");
    let tools = crate::toolchain::ensure()?;
    let mut cmd = crate::cargo();
    cmd.args(["bench", "-p", "tracer-agent", "--bench", "hot_path"])
        .env("TRACER_TOOLCHAIN_DIR", &tools);
    if smoke {
        cmd.args(["--", "--warm-up-time", "0.2", "--measurement-time", "0.5"]);
    }
    crate::run_cmd(&mut cmd)?;
    let results = setup::criterion_results(&crate::target_dir().join("criterion"))?;
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                format!("{:.0}", r.elements),
                format!("{:.1}", r.median_ns / 1000.0),
                format!("{:.0}", r.elements / (r.median_ns / 1e9)),
            ]
        })
        .collect();
    Ok(format!(
        "## Microbenchmarks: the agent's user-space hot path on one core\n\n\
         `cargo bench -p tracer-agent --bench hot_path` (criterion; median of its samples). \
         `events_to_spans`: kernel records decoded, reassembled, parsed, paired, linked and built \
         into spans; an element is one exchange seen by one side (one span). `otlp_encode`: spans \
         encoded into one OTLP export request.\n\n{}",
        table(
            &[
                "benchmark",
                "elements/iteration",
                "µs/iteration",
                "elements/s"
            ],
            &rows
        )
    ))
}

/// A scenario's untraced saturation and its fixed rate, half of it (a 1 s warm-up, then
/// `plan.seconds` measured; the rate rounded to `step`).
fn calibrate(
    what: &str,
    unit: &str,
    plan: &Plan,
    step: u64,
    mut saturate: impl FnMut(u64) -> Result<load::Saturation>,
) -> Result<(f64, u64)> {
    eprintln!("==> {what}: calibrating (untraced saturation)");
    saturate(1)?;
    let max = saturate(plan.seconds)?.requests_per_sec;
    let rate = ((max / 2.0 / step as f64).round() as u64).max(1) * step;
    eprintln!("    untraced maximum {max:.0} {unit}/s: fixed rate {rate} {unit}/s");
    Ok((max, rate))
}
