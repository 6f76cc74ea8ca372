use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tracer_agent::capture::{btf::Btf, events, loader, preflight};
use tracer_agent::export::{self, ExportOverrides};
use tracer_agent::link::LinkConfig;
use tracer_agent::metrics::Metrics;
use tracer_agent::peers;
use tracer_agent::pipeline::{Pipeline, PipelineConfig};
use tracer_agent::server;
use tracer_agent::spans::clock::Clock;
use tracer_agent::spans::runtime::Runtime;
use tracer_common::{DEFAULT_CAPTURE_BYTES, KernelOffsets};
use tracing_subscriber::EnvFilter;

/// Traces the HTTP traffic of every process on this machine with eBPF and exports
/// OpenTelemetry spans. No code changes, no sidecars.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Trace only this process (repeatable). Default: every process except the agent.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,

    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, env = "TRACER_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,

    /// OTLP endpoint (like OTEL_EXPORTER_OTLP_ENDPOINT). Without one, traces print to stdout.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// OTLP traces endpoint, used as is (like OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).
    #[arg(long, value_name = "URL")]
    otlp_traces_endpoint: Option<String>,

    /// `grpc` or `http/protobuf` (like OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<String>,

    /// Extra export headers, `k=v,k2=v2` (like OTEL_EXPORTER_OTLP_HEADERS).
    #[arg(long, value_name = "HEADERS")]
    otlp_headers: Option<String>,

    /// Delay between export batches in ms (like OTEL_BSP_SCHEDULE_DELAY).
    #[arg(long, value_name = "MS")]
    batch_delay_ms: Option<u64>,

    /// Payload bytes copied per syscall (headers beyond it are lost; bodies are only counted).
    #[arg(long, env = "TRACER_CAPTURE_BYTES", default_value_t = DEFAULT_CAPTURE_BYTES)]
    capture_bytes: u32,

    /// Size of the kernel→agent ring buffer in bytes (power of two).
    #[arg(long, env = "TRACER_RING_BUFFER_BYTES", default_value_t = 8 * 1024 * 1024)]
    ring_buffer_bytes: u32,

    /// Which kernel hooks see the traffic: `socket` (socket and TCP tracepoints, Linux
    /// 6.15+: programs run for TCP sends, receives and state changes only, none for the
    /// node's other syscalls), `syscalls` (syscall tracepoints, every kernel: every read,
    /// write and close on the node runs a program), or `auto` (socket where the kernel has
    /// them).
    #[arg(long, env = "TRACER_DATA_HOOKS", value_enum, default_value_t = loader::DataHooks::Auto)]
    data_hooks: loader::DataHooks,

    /// Connections tracked at once in user space.
    #[arg(long, env = "TRACER_MAX_CONNECTIONS", default_value_t = 65536)]
    max_connections: usize,

    /// How long a SERVER span waits for the CLIENT span of a traced caller before it is
    /// exported without it (ms).
    #[arg(long, env = "TRACER_LINK_WINDOW_MS", default_value_t = LinkConfig::default().window_ns / 1_000_000)]
    link_window_ms: u64,

    /// Fraction of traces exported, 0 to 1, decided per trace id (like
    /// OTEL_TRACES_SAMPLER=traceidratio with OTEL_TRACES_SAMPLER_ARG). Default: all.
    #[arg(long, value_name = "RATIO")]
    sample_ratio: Option<f64>,

    /// Tail sampling: keep every trace with an error span (5xx, broken exchanges; 4xx on
    /// clients), whatever the ratio. Traces wait --tail-wait-ms on this node to be decided.
    #[arg(long, env = "TRACER_SAMPLE_ERRORS")]
    sample_errors: bool,

    /// Tail sampling: keep every trace with a span longer than this many milliseconds.
    #[arg(long, env = "TRACER_SAMPLE_SLOWER_THAN_MS", value_name = "MS")]
    sample_slower_than_ms: Option<u64>,

    /// Tail sampling: keep traces that touch this path at this ratio instead of the
    /// default one, `PATH=RATIO` with PATH a prefix or a glob (`/api/checkout*=1`).
    /// Repeatable (the highest matching ratio wins); comma-separated in the environment.
    #[arg(
        long = "sample-route",
        env = "TRACER_SAMPLE_ROUTES",
        value_delimiter = ',',
        value_name = "PATH=RATIO"
    )]
    sample_routes: Vec<String>,

    /// Tail sampling: how long a trace's spans wait on this node for the rest of it.
    #[arg(
        long,
        env = "TRACER_TAIL_WAIT_MS",
        default_value_t = 2000,
        value_name = "MS"
    )]
    tail_wait_ms: u64,

    /// Tail sampling: spans buffered at most; when full, the oldest traces are decided at
    /// once on what they have.
    #[arg(
        long,
        env = "TRACER_TAIL_MAX_SPANS",
        default_value_t = 50_000,
        value_name = "N"
    )]
    tail_max_spans: usize,

    /// Answer other nodes' agents asking for the callers of their SERVER spans on this
    /// address (agent-to-agent exchange; needs the shared token).
    #[arg(long, env = "TRACER_EXCHANGE_ADDR", value_name = "ADDR")]
    exchange_addr: Option<SocketAddr>,

    /// Another node's agent to ask for callers, `HOST:PORT` of its --exchange-addr
    /// (repeatable; comma-separated in the environment).
    #[arg(
        long = "peer",
        env = "TRACER_PEERS",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    peers: Vec<String>,

    /// Find the other nodes' agents in Kubernetes: the pods matching this label selector in
    /// --peers-namespace, each asked only about callers on its own node (Node pod CIDRs and
    /// addresses). Needs --exchange-addr and the node name (NODE_NAME).
    #[arg(long, env = "TRACER_PEERS_FROM_KUBERNETES", value_name = "SELECTOR")]
    peers_from_kubernetes: Option<String>,

    /// Namespace of the agent pods (the downward API's metadata.namespace).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        value_name = "NS",
        default_value = "default"
    )]
    peers_namespace: String,

    /// File holding the exchange's shared token (a mounted Secret); else TRACER_EXCHANGE_TOKEN.
    #[arg(long, env = "TRACER_EXCHANGE_TOKEN_FILE", value_name = "PATH")]
    exchange_token_file: Option<std::path::PathBuf>,

    /// Follow the goroutines of Go processes (uprobes) so their downstream calls get their
    /// parent; `false` leaves Go's CLIENT spans without an in-process parent.
    #[arg(long, env = "TRACER_FOLLOW_GO", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    follow_go: bool,

    /// Trace the TCP connections that are already open when the agent starts (found in
    /// /proc), from their next message on.
    #[arg(long, env = "TRACER_ADOPT_CONNECTIONS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    adopt_connections: bool,

    /// Follow the asyncio tasks of CPython 3.11 processes (their frames are read on each
    /// write) so their downstream calls get their parent; `false` leaves those calls to the
    /// thread rule, which abstains while an event loop serves several requests.
    #[arg(long, env = "TRACER_FOLLOW_PYTHON", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    follow_python: bool,

    /// Trace kubelet probes (User-Agent `kube-probe/…`); by default they are not traced.
    #[arg(long, env = "TRACER_TRACE_PROBES")]
    trace_probes: bool,

    /// Do not trace requests to this path, nor what they cause downstream: a prefix
    /// (`/health`) or a glob with `*` and `?` (`/api/*/status`). Repeatable;
    /// comma-separated in the environment.
    #[arg(
        long = "exclude-path",
        env = "TRACER_EXCLUDE_PATHS",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    exclude_paths: Vec<String>,

    /// Name spans `{method} {route}` by this route pattern, and set `http.route`: `{name}`
    /// matches one path segment, a last `*` the rest (`/api/users/{id}`, `/static/*`).
    /// Repeatable, first match wins; comma-separated in the environment. Other paths are
    /// named by a guessed template (numbers, UUIDs, hex and tokens as placeholders) in
    /// `url.template`.
    #[arg(
        long = "route",
        env = "TRACER_ROUTES",
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    routes: Vec<String>,

    /// Distinct guessed route templates per service; past it spans keep the method alone as
    /// their name. 0 turns guessing off.
    #[arg(long, env = "TRACER_ROUTE_TEMPLATES_PER_SERVICE", default_value_t = tracer_agent::spans::route::DEFAULT_TEMPLATES_PER_SERVICE)]
    route_templates_per_service: usize,

    #[command(flatten)]
    enrich: tracer_agent::enrich::cli::EnrichArgs,
}

/// glibc gives threads that allocate at once arenas of their own and keeps freed memory in
/// each: spans built on one runtime thread and freed by the exporter on another spread the
/// heap over several. One arena cut the agent's peak RSS under a saturating nginx load from
/// 64-67 to 52-54 MiB, at no measurable CPU cost (its tcache still serves most allocations
/// without the arena lock). Before any thread starts: the setting is read at arena creation.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Starting up (parsing the kernel's BTF to load the programs, reading /proc) frees about
/// 13 MiB that glibc would otherwise keep: an idle agent's heap goes from 15 to 2 MiB.
#[cfg(target_env = "gnu")]
fn release_startup_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it is thread-safe.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}

#[cfg(not(target_env = "gnu"))]
fn release_startup_memory() {}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the cause chain joined, most specific last.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    preflight::require_root()?;
    let btf = preflight::require_btf()?;
    preflight::ensure_tracefs()?;
    preflight::raise_memlock_rlimit();
    let _features = tracer_agent::capture::features::check()?;

    let offsets = match Btf::parse(&btf).and_then(|b| b.kernel_offsets()) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("socket addresses unavailable: {e}");
            KernelOffsets::UNKNOWN
        }
    };
    drop(btf);

    let metrics = Arc::new(Metrics::default());
    let export_cfg = export::resolve_config(
        &ExportOverrides {
            endpoint: args.otlp_endpoint.clone(),
            traces_endpoint: args.otlp_traces_endpoint.clone(),
            protocol: args.otlp_protocol.clone(),
            headers: args.otlp_headers.clone(),
            schedule_delay_ms: args.batch_delay_ms,
        },
        |k| std::env::var(k).ok(),
    )?;
    let sampler = export::Sampler::resolve(args.sample_ratio, |k| std::env::var(k).ok())?;
    tracing::info!("sampling: exporting {}", sampler.describe());
    let tail_policy = export::TailPolicy {
        keep_errors: args.sample_errors,
        slower_than_ns: args.sample_slower_than_ms.map(|ms| ms * 1_000_000),
        routes: args
            .sample_routes
            .iter()
            .filter(|r| !r.trim().is_empty())
            .map(|r| export::tail::RouteRule::parse(r))
            .collect::<Result<_, _>>()?,
        wait_ns: args.tail_wait_ms * 1_000_000,
        max_spans: args.tail_max_spans,
    };
    let tail = tail_policy.enabled().then(|| {
        let mut keeps = Vec::new();
        if args.sample_errors {
            keeps.push("every trace with an error".to_owned());
        }
        if let Some(ms) = args.sample_slower_than_ms {
            keeps.push(format!("every trace with a span slower than {ms} ms"));
        }
        for r in args.sample_routes.iter().filter(|r| !r.trim().is_empty()) {
            keeps.push(format!("traces on {r}"));
        }
        tracing::info!(
            "tail sampling: keeping {}, deciding {} ms after a trace's first span here (at most {} spans waiting)",
            keeps.join(", "),
            args.tail_wait_ms,
            args.tail_max_spans,
        );
        export::TailSampler::new(tail_policy, sampler)
    });
    let mut sampling = export::Sampling::new(sampler, tail);
    let exclude = export::Exclusions::new(args.trace_probes, &args.exclude_paths)?;
    tracing::info!("not traced: {}", exclude.describe());
    let routes = tracer_agent::spans::route::RouteNamer::new(
        &args.routes,
        args.route_templates_per_service,
    )?;
    match &export_cfg {
        Some(cfg) => tracing::info!("exporting OTLP to {}", cfg.describe()),
        None => tracing::info!("no OTLP endpoint configured: printing traces to stdout"),
    }
    // Kubernetes mode connects to the API before attaching: a bad configuration fails here.
    let enrich_cfg = args.enrich.resolve(|k| std::env::var(k).ok())?;
    if let Some(k) = &enrich_cfg.kubernetes {
        tracing::info!("Kubernetes mode: tracing pods on node {}", k.node_name);
    }
    let enricher = tracer_agent::enrich::Enricher::start(enrich_cfg, metrics.clone()).await?;
    let processor = export::start_processor(export_cfg, metrics.clone())?;
    let bound = server::spawn(args.metrics_addr, metrics.clone()).await?;
    let mut exchange = !args.peers.is_empty()
        || args.exchange_addr.is_some()
        || args.peers_from_kubernetes.is_some();
    // The DaemonSet mounts the token's Secret as optional: without it the agent traces its
    // node alone, and says how to join the nodes.
    if let Some(path) = &args.exchange_token_file
        && exchange
        && !path.exists()
    {
        tracing::warn!(
            "the agent-to-agent exchange is off: {} does not exist; create the Secret (kubectl -n tracer create secret generic tracer-exchange --from-literal=token=$(head -c 24 /dev/urandom | base64)) and restart the agents",
            path.display()
        );
        exchange = false;
    }
    let token = if exchange {
        Some(peers::load_token(
            args.exchange_token_file.as_deref(),
            std::env::var("TRACER_EXCHANGE_TOKEN").ok(),
        )?)
    } else {
        None
    };
    let (mut questions, mut remote_keeps) = match (args.exchange_addr.filter(|_| exchange), &token)
    {
        (Some(addr), Some(token)) => {
            let (bound, inbox) = peers::serve(addr, token.clone(), metrics.clone()).await?;
            tracing::info!("answering other agents' caller lookups on {bound}");
            (Some(inbox.questions), Some(inbox.keeps))
        }
        _ => (None, None),
    };
    let (peer_client, mut found) = match (&token, args.peers.is_empty()) {
        (Some(_), false) if args.peers_from_kubernetes.is_some() => {
            anyhow::bail!("use either --peer or --peers-from-kubernetes, not both")
        }
        (Some(token), true) if args.peers_from_kubernetes.is_some() => {
            let selector = args.peers_from_kubernetes.clone().unwrap_or_default();
            let port = args
                .exchange_addr
                .context("--peers-from-kubernetes needs --exchange-addr (the port every agent listens on)")?
                .port();
            let node = args.enrich.node_name.clone().context(
                "--peers-from-kubernetes needs this node's name: set NODE_NAME (the downward API's spec.nodeName) or --node-name",
            )?;
            let client = tracer_agent::enrich::k8s::watch::client().await?;
            let directory = Arc::new(std::sync::RwLock::new(peers::directory::Directory::new(
                &node,
            )));
            peers::kube::spawn(
                client,
                directory.clone(),
                peers::kube::AgentPods {
                    namespace: args.peers_namespace.clone(),
                    selector: selector.clone(),
                    default_port: port,
                },
                metrics.clone(),
            );
            tracing::info!(
                "asking the agents of other nodes for callers: pods {selector} in namespace {}",
                args.peers_namespace
            );
            let (c, rx) = peers::Client::start(
                peers::PeerSource::Directory(directory),
                token.clone(),
                metrics.clone(),
            )?;
            (Some(c), Some(rx))
        }
        (Some(token), false) => {
            for p in &args.peers {
                anyhow::ensure!(
                    p.rsplit_once(':')
                        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok()),
                    "--peer {p:?} is not HOST:PORT"
                );
            }
            tracing::info!(
                "asking {} peer agent(s) for callers: {}",
                args.peers.len(),
                args.peers.join(", ")
            );
            let (c, rx) = peers::Client::start(
                peers::PeerSource::Static(args.peers.clone()),
                token.clone(),
                metrics.clone(),
            )?;
            (Some(c), Some(rx))
        }
        _ => (None, None),
    };

    let mut capture = loader::Capture::load(&loader::CaptureConfig {
        pids: args.pids.clone(),
        capture_bytes: args.capture_bytes,
        ring_buffer_bytes: args.ring_buffer_bytes,
        offsets,
        data_hooks: args.data_hooks,
    })?;
    // Go and CPython processes running already are followed before readiness: a request
    // made once /readyz answers is linked like any later one.
    let follow = Follow {
        go: args.follow_go,
        python: args.follow_python,
    };
    if follow.go || follow.python {
        for (tgid, runtime) in followable_processes(&args.pids) {
            follow_process(&mut capture, tgid, runtime, follow, &metrics);
        }
    }
    // Handlers before readiness: a SIGTERM right after /readyz must mean a clean shutdown.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let mut pipeline = Pipeline::new(
        PipelineConfig {
            max_connections: args.max_connections,
            exclude,
            routes,
            link: LinkConfig {
                window_ns: args.link_window_ms * 1_000_000,
                remote: exchange,
                ..Default::default()
            },
            ..Default::default()
        },
        metrics.clone(),
    );
    pipeline.set_enricher(enricher);
    // Connections open before the programs were attached (a pooled client's, a restarted
    // agent's predecessor's) are traced from their next message; found before readiness.
    if args.adopt_connections {
        let found = tracer_agent::capture::adopt::scan(
            std::path::Path::new("/proc"),
            &args.pids,
            std::process::id(),
        );
        let opened = capture.adopt(found, Clock::monotonic_now_ns())?;
        let (servers, clients) = opened.iter().fold((0, 0), |(s, c), o| match o.role {
            tracer_common::Role::Server => (s + 1, c),
            _ => (s, c + 1),
        });
        Metrics::add(&metrics.connections_adopted, opened.len() as u64);
        for o in opened {
            pipeline.handle(events::CaptureEvent::Opened(o));
        }
        tracing::info!(
            "adopted {} connections open before the agent ({servers} server, {clients} client side)",
            servers + clients
        );
    }
    // Logged before readiness turns on: whoever sees /readyz answer 200 finds the line.
    tracing::info!(
        "tracing HTTP: {} programs attached ({} data hooks), {} loaded for Go executables; health and metrics on http://{bound}",
        capture.attached,
        capture.data_hooks,
        capture.go_programs
    );
    release_startup_memory();
    metrics.ready.store(true, Ordering::Relaxed);
    let ring = capture.take_ring().context("ring buffer already taken")?;
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register(ring) }.context("cannot poll the ring buffer")?;
    let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
    let mut drops_refresh = tokio::time::interval(Duration::from_millis(500));
    // Drains the ring buffer and releases linked spans. The programs wake the agent only
    // once a batch of events has accumulated, so a trickle of events is read here.
    let mut link_tick = tokio::time::interval(Duration::from_millis(20));
    link_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut pipeline, &metrics);
                guard.clear_ready();
                follow_new(&mut pipeline, &mut capture, follow, &metrics);
            }
            _ = drops_refresh.tick() => {
                for (slot, value) in metrics.kernel_drops.iter().zip(capture.drops()) {
                    slot.store(value, Ordering::Relaxed);
                }
                for (slot, value) in metrics.connections_not_http.iter().zip(capture.not_http()) {
                    slot.store(value, Ordering::Relaxed);
                }
            }
            _ = link_tick.tick() => {
                drain(ring.get_mut(), &mut pipeline, &metrics);
                follow_new(&mut pipeline, &mut capture, follow, &metrics);
                let now = Clock::monotonic_now_ns();
                if let Some(client) = &peer_client {
                    let due = pipeline.due_lookups(now);
                    if !due.is_empty() {
                        client.lookup(due);
                    }
                }
                let spans = pipeline.take_spans(now);
                sampling.release(&processor, &metrics, spans, now, false);
                if let (Some(tail), Some(client)) = (sampling.tail_mut(), &peer_client) {
                    let kept = tail.take_announcements();
                    if !kept.is_empty() {
                        client.keep(kept);
                    }
                }
            }
            Some(q) = recv_some(&mut questions) => {
                // Events read so far may hold the asked-for requests.
                drain(ring.get_mut(), &mut pipeline, &metrics);
                let _ = q.reply.send(pipeline.answer(&q.keys));
            }
            Some((key, ctx)) = recv_some(&mut found) => pipeline.remote_found(key, ctx),
            Some(traces) = recv_some(&mut remote_keeps) => {
                if let Some(tail) = sampling.tail_mut() {
                    tail.keep_remote(&traces);
                }
            }
            _ = housekeeping.tick() => {
                pipeline.tick();
                capture.prune_go();
                capture.refresh_python();
                capture.prune_adopting();
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    tracing::info!("shutting down: draining events and flushing spans");
    drain(ring.get_mut(), &mut pipeline, &metrics);
    let spans = pipeline.flush();
    sampling.release(&processor, &metrics, spans, Clock::monotonic_now_ns(), true);
    metrics.ready.store(false, Ordering::Relaxed);
    // Detach before the flush so no new events arrive while exporting.
    drop(capture);
    drop(ring);
    processor
        .shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    // Every span built is accounted for exactly once; benchmarks check the sum.
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    tracing::info!(
        target: "tracer_agent::accounting",
        "spans created={} exported={} unsampled={} excluded={} dropped_queue_full={} dropped_export_failed={} out_of_scope={}",
        n(&metrics.spans_created),
        n(&metrics.spans_exported),
        n(&metrics.spans_unsampled),
        n(&metrics.spans_excluded),
        n(&metrics.spans_dropped_queue_full),
        n(&metrics.spans_dropped_export_failed),
        n(&metrics.spans_out_of_scope),
    );
    Ok(())
}

/// Which runtimes' tasks are followed.
#[derive(Debug, Clone, Copy)]
struct Follow {
    go: bool,
    python: bool,
}

/// Follows the Go and CPython processes the pipeline just met (when following is on).
fn follow_new(
    pipeline: &mut Pipeline,
    capture: &mut loader::Capture,
    follow: Follow,
    metrics: &Metrics,
) {
    for (tgid, runtime) in pipeline.take_new_followable() {
        follow_process(capture, tgid, runtime, follow, metrics);
    }
}

fn follow_process(
    capture: &mut loader::Capture,
    tgid: u32,
    runtime: Runtime,
    follow: Follow,
    metrics: &Metrics,
) {
    match runtime {
        Runtime::Go if follow.go => follow_go(capture, tgid, metrics),
        Runtime::Python if follow.python => follow_python(capture, tgid, metrics),
        _ => {}
    }
}

/// Follows a CPython process's asyncio tasks; says once per process why it cannot.
fn follow_python(capture: &mut loader::Capture, tgid: u32, metrics: &Metrics) {
    match capture.follow_python(tgid) {
        loader::PyFollow::Followed { version, threads } => {
            Metrics::inc(&metrics.python_followed);
            tracing::info!(
                "following the asyncio tasks of CPython process {tgid} (python{}.{}, {threads} threads)",
                version.0,
                version.1
            );
        }
        loader::PyFollow::AlreadyFollowed => {}
        loader::PyFollow::Unsupported(why) => {
            Metrics::inc(&metrics.python_unsupported);
            tracing::info!(
                "CPython process {tgid}: asyncio tasks not followed, its calls are linked by thread only: {why}"
            );
        }
    }
}

/// Follows a Go process's goroutines; says once per process why it cannot.
fn follow_go(capture: &mut loader::Capture, tgid: u32, metrics: &Metrics) {
    match capture.follow_go(tgid) {
        loader::GoFollow::Followed { version, functions } => {
            Metrics::inc(&metrics.go_followed);
            tracing::info!(
                "following the goroutines of Go process {tgid} (go{}.{}, {functions} functions probed)",
                version.0,
                version.1
            );
        }
        loader::GoFollow::AlreadyFollowed => {}
        loader::GoFollow::Unsupported(why) => {
            Metrics::inc(&metrics.go_unsupported);
            tracing::info!(
                "Go process {tgid}: goroutines not followed, its calls get no in-process parent: {why}"
            );
        }
    }
}

/// Traced processes running a Go or CPython executable now.
fn followable_processes(only: &[u32]) -> Vec<(u32, Runtime)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && (only.is_empty() || only.contains(&pid)))
        .map(|pid| {
            let runtime =
                tracer_agent::spans::runtime::of_process(std::path::Path::new("/proc"), pid);
            (pid, runtime)
        })
        .filter(|(_, runtime)| matches!(runtime, Runtime::Go | Runtime::Python))
        .collect()
}

/// The next message of an optional channel; pending forever without one.
async fn recv_some<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    pipeline: &mut Pipeline,
    metrics: &Metrics,
) {
    while let Some(record) = ring.next() {
        Metrics::inc(&metrics.events);
        match events::decode(&record) {
            Ok(event) => pipeline.handle(event),
            Err(e) => {
                Metrics::inc(&metrics.events_malformed);
                tracing::debug!("malformed event: {e}");
            }
        }
    }
}
