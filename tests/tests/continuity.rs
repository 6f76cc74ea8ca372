//! Root integration suite: what a user sees around interruptions, with the real agent at
//! its default settings: a collector that goes away for a few seconds loses no span (and
//! one away for longer costs exactly the spans of that time, counted), SIGTERM delivers
//! every span still queued before the agent exits, connections that predate the agent are
//! traced, a restart under traffic misses no new connection after readiness, and losses in
//! the kernel are counted and never pair an exchange with the wrong request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracer_testkit::harness::Agent;
use tracer_testkit::spans::{WAIT, span_pid};
use tracer_testkit::workloads::curl;
use tracer_testkit::workloads::python::python_http_server;
use tracer_testkit::{OtlpReceiver, ReceiverProtocol, ports::unused_local_addr};

/// The agent exporting to `endpoint` with the default queue, batch size and export
/// timeout; a short schedule delay so batches are attempted while the collector is away.
async fn agent_exporting(endpoint: SocketAddr, protocol: ReceiverProtocol, delay_ms: u64) -> Agent {
    Agent::start(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}")),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                protocol.otel_name().to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", delay_ms.to_string()),
        ],
    )
    .await
    .expect("agent starts")
}

/// `n` curl requests to `port`; returns their pids.
fn requests(port: u16, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            curl(&[
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{port}/?n={i}"),
            ])
            .expect("curl")
            .pid
        })
        .collect()
}

async fn wait_metric(agent: &Agent, name: &str, at_least: u64) {
    let started = Instant::now();
    loop {
        if agent.metric(name).await.unwrap_or(0) >= at_least {
            return;
        }
        assert!(started.elapsed() < WAIT, "{name} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The collector is down (nothing listens on its port) for 5 s while spans are made, then
/// comes back: every span arrives, none is counted as dropped.
async fn collector_outage_loses_nothing(protocol: ReceiverProtocol) {
    const N: usize = 10;
    let server = python_http_server("127.0.0.1", false).unwrap();
    let endpoint = unused_local_addr().unwrap();
    let agent = agent_exporting(endpoint, protocol, 200).await;
    let down_since = Instant::now();
    let mut pids = requests(server.port, N);
    pids.push(server.child.id());
    // Exports are being refused: the outage is real, not just scheduled.
    wait_metric(&agent, "tracer_export_failures_total", 2).await;
    let outage = Duration::from_secs(5);
    if let Some(rest) = outage.checked_sub(down_since.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let rx = OtlpReceiver::start_on(protocol, endpoint).await.unwrap();
    let mine = |spans: &[tracer_testkit::ReceivedSpan]| {
        spans.iter().filter(|s| pids.contains(&span_pid(s))).count()
    };
    let waited = rx.wait_for_spans(|s| mine(s) >= 2 * N, WAIT).await;
    let failures = agent.metric("tracer_export_failures_total").await.unwrap();
    let dropped = agent
        .metric("tracer_spans_dropped_export_failed_total")
        .await
        .unwrap();
    agent.stop().expect("clean stop");
    assert!(
        waited.is_ok(),
        "{} of {} spans arrived after a {outage:?} outage",
        mine(&rx.spans()),
        2 * N
    );
    assert_eq!(mine(&rx.spans()), 2 * N, "each span once");
    assert_eq!(dropped, 0, "nothing dropped ({failures} failed attempts)");
    println!(
        "{protocol:?}: {failures} failed attempts during the outage, {} spans delivered",
        2 * N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_of_5s_over_grpc_loses_no_span() {
    collector_outage_loses_nothing(ReceiverProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_of_5s_over_http_loses_no_span() {
    collector_outage_loses_nothing(ReceiverProtocol::HttpProtobuf).await;
}

/// Spans still queued when SIGTERM arrives (the schedule delay is a minute away) are all
/// delivered before the agent exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_every_queued_span() {
    const N: usize = 20;
    let server = python_http_server("127.0.0.1", false).unwrap();
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let agent = agent_exporting(rx.local_addr(), ReceiverProtocol::Grpc, 60_000).await;
    let mut pids = requests(server.port, N);
    pids.push(server.child.id());
    // Every span made (and held by the batch delay), none sent yet.
    wait_metric(&agent, "tracer_spans_created_total", 2 * N as u64).await;
    assert_eq!(rx.spans().len(), 0, "nothing exported before the signal");
    agent.stop().expect("exit 0 after SIGTERM");
    let got = rx
        .spans()
        .iter()
        .filter(|s| pids.contains(&span_pid(s)))
        .count();
    assert_eq!(got, 2 * N, "every queued span delivered before exit");
}

/// One keep-alive connection in a Python process (`http.client`), as a pooled client holds
/// it, used on command: a line `FIRST COUNT` on stdin sends `GET /pooled?id=N` for each id
/// on that same connection, then prints `done OK` (OK: the 200s it counted).
const POOLED_CLIENT: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
for line in sys.stdin:
    first, count = map(int, line.split())
    ok = 0
    for n in range(first, first + count):
        conn.request("GET", "/pooled?id=%d" % n)
        r = conn.getresponse()
        r.read()
        ok += r.status == 200
    print("done %d" % ok, flush=True)
"#;

struct PooledClient(tracer_testkit::workloads::LineChild);

/// A Python script driven line by line (see `LineChild`), with its arguments.
fn python_script(script: &str, args: &[&dyn ToString]) -> tracer_testkit::workloads::LineChild {
    let mut cmd = tracer_testkit::workloads::python::python();
    cmd.arg("-c").arg(script);
    for a in args {
        cmd.arg(a.to_string());
    }
    tracer_testkit::workloads::LineChild::spawn(&mut cmd).expect("python script starts")
}

impl PooledClient {
    fn start(port: u16) -> PooledClient {
        PooledClient(python_script(POOLED_CLIENT, &[&port]))
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Sends ids `first..first + count` on the one connection; asserts every one got 200.
    fn send(&mut self, first: u32, count: u32) {
        let out = self
            .0
            .ask(&format!("{first} {count}"), |l| l.starts_with("done "))
            .expect("client report");
        assert_eq!(
            out.trim(),
            format!("done {count}"),
            "every request answered 200"
        );
    }
}

/// `id=N` of a span's query.
fn id_of(span: &tracer_testkit::ReceivedSpan) -> Option<u32> {
    let query = span.attr_str("url.query").map(str::to_owned).or_else(|| {
        span.attr_str("url.full")
            .and_then(|u| u.split_once('?').map(|(_, q)| q.to_owned()))
    })?;
    tracer_tests::linking::query_param(&query, "id")?
        .parse()
        .ok()
}

/// For each id in `ids`: exactly one CLIENT span of `client` and one SERVER span of
/// `server`, the SERVER span the CLIENT span's child. Returns the problems found.
fn pairs_linked(
    spans: &[tracer_testkit::ReceivedSpan],
    client: u32,
    server: u32,
    ids: std::ops::Range<u32>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for id in ids {
        let of = |pid: u32, kind: &str| -> Vec<&tracer_testkit::ReceivedSpan> {
            spans
                .iter()
                .filter(|s| span_pid(s) == pid && s.kind == kind && id_of(s) == Some(id))
                .collect()
        };
        match (
            of(client, "CLIENT").as_slice(),
            of(server, "SERVER").as_slice(),
        ) {
            ([c], [s]) if s.parent_span_id == c.span_id && s.trace_id == c.trace_id => {}
            ([_], [_]) => problems.push(format!("id {id}: SERVER not the CLIENT's child")),
            (c, s) => problems.push(format!(
                "id {id}: {} CLIENT and {} SERVER spans",
                c.len(),
                s.len()
            )),
        }
    }
    problems
}

/// The agent adopted (at least) both ends of the connection open before it started.
async fn assert_both_ends_adopted(agent: &Agent, what: &str) {
    let adopted = agent
        .metric("tracer_connections_adopted_total")
        .await
        .unwrap();
    assert!(adopted >= 2, "{what}: both ends adopted, got {adopted}");
}

/// A client holding one keep-alive connection opened before the agent started (as every
/// pooled client does) is traced from its next request on, at the default settings, both
/// ends linked; and again after the agent is restarted (the new agent finds the same
/// connection in the middle of its life). Requests made while no agent ran stay untraced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_before_the_agent_are_traced() {
    let server = tracer_testkit::workloads::python::python_app_server("127.0.0.1", false).unwrap();
    let mut client = PooledClient::start(server.port);
    client.send(1, 5);
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let pids = [client.pid(), server.pid()];
    let scope: Vec<String> = pids
        .iter()
        .flat_map(|p| ["--pid".to_owned(), p.to_string()])
        .collect();
    let scope: Vec<&str> = scope.iter().map(String::as_str).collect();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
    ];
    for (round, first) in [(1, 6u32), (2, 46)] {
        let agent = Agent::start(&scope, &env).await.expect("agent starts");
        assert_both_ends_adopted(&agent, &format!("round {round}")).await;
        client.send(first, 20);
        let want = 2 * 20 * round;
        let waited = rx
            .wait_for_spans(
                |s| tracer_testkit::spans::spans_of(s, &pids).len() >= want,
                WAIT,
            )
            .await;
        agent.stop().expect("agent stops cleanly");
        let spans = tracer_testkit::spans::spans_of(&rx.spans(), &pids);
        assert!(
            waited.is_ok() && spans.len() == want,
            "round {round}: want {want} spans, got {}",
            spans.len()
        );
        let problems = pairs_linked(&spans, pids[0], pids[1], first..first + 20);
        assert!(problems.is_empty(), "round {round}: {problems:#?}");
        if round == 1 {
            // Sent while no agent runs: the next round must not see them.
            client.send(26, 20);
        }
    }
    let spans = tracer_testkit::spans::spans_of(&rx.spans(), &pids);
    assert!(
        spans
            .iter()
            .all(|s| id_of(s).is_some_and(|id| (6..26).contains(&id) || (46..66).contains(&id))),
        "only requests made while an agent ran are traced"
    );
}

/// The descriptors of `pid` that are sockets.
fn socket_fds(pid: u32) -> std::collections::BTreeSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_str()?
                .starts_with("socket:")
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// The idle client goes away without another byte and the server closes its end; then
/// `new` connects (at its first request) and sends ids `first..first + 20`, having taken
/// the descriptor the idle connection freed (`held`: the server's sockets before).
async fn reuse_the_idle_descriptor(
    server: u32,
    held: &std::collections::BTreeSet<u32>,
    idle: PooledClient,
    new: &mut PooledClient,
    first: u32,
) {
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket_fds(server).len() >= held.len() {
        assert!(
            Instant::now() < deadline,
            "the server did not close the idle connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    new.send(first, 20);
    assert_eq!(
        &socket_fds(server),
        held,
        "premise: the new connection took the descriptor the idle one freed"
    );
}

/// A connection adopted at startup and closed while idle (its socket not yet seen, so its
/// close is not either) leaves its descriptor number to the next connection the server
/// accepts. That connection must be traced as itself: its SERVER spans the children of the
/// new client's CLIENT spans, not carrying the old connection's identity and addresses
/// (which made every one of them wait out the link window and leave as a root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_freed_by_an_idle_adopted_connection_is_traced_afresh() {
    let server = tracer_testkit::workloads::python::python_app_server("127.0.0.1", false).unwrap();
    let mut old = PooledClient::start(server.port);
    old.send(1, 1);
    // Connects at its first request, after the agent started.
    let mut new = PooledClient::start(server.port);
    let held = socket_fds(server.pid());
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let pids = [old.pid(), new.pid(), server.pid()];
    let agent = agent_scoped(&rx, &pids, &[]).await;
    assert_both_ends_adopted(&agent, "the idle connection").await;

    reuse_the_idle_descriptor(server.pid(), &held, old, &mut new, 10).await;
    let want = 2 * 20;
    let mine = |s: &[tracer_testkit::ReceivedSpan]| {
        tracer_testkit::spans::count_of(s, &[pids[1], pids[2]])
    };
    let waited = rx.wait_for_spans(|s| mine(s) >= want, WAIT).await;
    agent.stop().expect("agent stops cleanly");
    let spans = tracer_testkit::spans::spans_of(&rx.spans(), &[pids[1], pids[2]]);
    assert!(
        waited.is_ok() && spans.len() == want,
        "want {want} spans, got {}",
        spans.len()
    );
    let problems = pairs_linked(&spans, pids[1], pids[2], 10..30);
    assert!(problems.is_empty(), "{problems:#?}");
    let client_port = spans
        .iter()
        .find(|s| s.kind == "CLIENT")
        .and_then(|s| s.attr_int("network.local.port"));
    assert!(
        spans
            .iter()
            .filter(|s| s.kind == "SERVER")
            .all(|s| s.attr_int("network.peer.port") == client_port),
        "the server's spans name the new client's port {client_port:?}"
    );
}

/// The same two situations across nodes, as a DaemonSet sees them: the clients' agent and
/// the server's agent are two agents (each scoped to its node's processes, joined by the
/// agent-to-agent exchange), both started while two pooled connections are open. The
/// connection in use is linked across the agents from its next request on (each agent
/// adopted its own end); the idle one is closed by the server and a new client takes its
/// descriptor, and that client's requests are linked as themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_before_two_agents_are_linked_across_them() {
    let server = tracer_testkit::workloads::python::python_app_server("127.0.0.1", false).unwrap();
    let mut busy = PooledClient::start(server.port);
    busy.send(1, 1);
    let mut idle = PooledClient::start(server.port);
    idle.send(2, 1);
    let mut new = PooledClient::start(server.port);
    let held = socket_fds(server.pid());
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let (ex_clients, ex_server) = (unused_local_addr().unwrap(), unused_local_addr().unwrap());
    let clients = [busy.pid(), idle.pid(), new.pid()];
    let agents = [
        tracer_tests::nodes::node_agent(&rx, &clients, ex_clients, &[ex_server], None).await,
        tracer_tests::nodes::node_agent(&rx, &[server.pid()], ex_server, &[ex_clients], None).await,
    ];
    assert_both_ends_adopted(&agents[0], "the clients' agent").await;
    assert_both_ends_adopted(&agents[1], "the server's agent").await;

    busy.send(10, 20);
    reuse_the_idle_descriptor(server.pid(), &held, idle, &mut new, 40).await;
    let pids = [busy.pid(), new.pid(), server.pid()];
    let end = tracer_tests::nodes::finish_two_agents(&rx, agents, &pids, 2 * 40).await;
    assert!(
        end.complete && end.spans.len() == 2 * 40,
        "want 80 spans, got {}",
        end.spans.len()
    );
    let mut problems = pairs_linked(&end.spans, pids[0], pids[2], 10..30);
    problems.extend(pairs_linked(&end.spans, pids[1], pids[2], 40..60));
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The agent traces only `pids`, exporting to `rx` with room for every span of a test.
async fn agent_scoped(rx: &OtlpReceiver, pids: &[u32], extra: &[&str]) -> Agent {
    let mut args: Vec<String> = pids
        .iter()
        .flat_map(|p| ["--pid".to_owned(), p.to_string()])
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tracer_testkit::spans::agent_exporting_to(rx, &args)
        .await
        .expect("agent starts")
}

/// SERVER spans of `server` whose parent is a CLIENT span of `client` for another id.
fn wrong_pairs(spans: &[tracer_testkit::ReceivedSpan], client: u32, server: u32) -> Vec<String> {
    let clients: std::collections::HashMap<&str, Option<u32>> = spans
        .iter()
        .filter(|s| span_pid(s) == client && s.kind == "CLIENT")
        .map(|s| (s.span_id.as_str(), id_of(s)))
        .collect();
    spans
        .iter()
        .filter(|s| span_pid(s) == server && s.kind == "SERVER")
        .filter_map(|s| {
            let parent = clients.get(s.parent_span_id.as_str())?;
            (*parent != id_of(s))
                .then(|| format!("SERVER id {:?} under CLIENT id {parent:?}", id_of(s)))
        })
        .collect()
}

/// Keep-alive connections in one Python process, one per thread (`http.client`). A line
/// `FIRST PER BYTES SEQUENTIAL` on stdin makes thread `t` POST `BYTES` bytes to
/// `/load?id=N` for ids `FIRST + t * PER ..` on its own connection, all threads at once (or
/// one after another when SEQUENTIAL is 1), then prints `done OK` (the 201s counted).
const CONCURRENT_CLIENTS: &str = r#"
import http.client, sys, threading
port, threads = int(sys.argv[1]), int(sys.argv[2])
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(threads)]
for line in sys.stdin:
    first, per, size, sequential = map(int, line.split())
    body = b"x" * size
    ok = [0] * threads
    def run(t):
        for n in range(first + t * per, first + (t + 1) * per):
            conns[t].request("POST", "/load?id=%d" % n, body)
            r = conns[t].getresponse()
            r.read()
            ok[t] += r.status == 201
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
        if sequential:
            w.join()
    for w in workers:
        w.join()
    print("done %d" % sum(ok), flush=True)
"#;

/// A ring buffer far too small for the load (32 KiB, 16 clients posting 8 KiB each): the
/// kernel counts its drops; no SERVER span is ever paired with another request's CLIENT
/// span, during the load or after it; and once the load is over, one more request on each
/// connection is traced at both ends and linked: every stream found the next message start,
/// and every connection whose open event was lost was announced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_ring_buffer_drops_are_counted_and_never_mispair() {
    const THREADS: u32 = 16;
    const PER: u32 = 40;
    let server = tracer_testkit::workloads::python::python_app_server("127.0.0.1", false).unwrap();
    let mut clients = python_script(CONCURRENT_CLIENTS, &[&server.port, &THREADS]);
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let pids = [clients.pid(), server.pid()];
    let agent = agent_scoped(&rx, &pids, &["--ring-buffer-bytes", "32768"]).await;
    let mut ask = |line: &str| {
        clients
            .ask(line, |l| l.starts_with("done "))
            .expect("client report")
            .trim()
            .to_owned()
    };
    assert_eq!(
        ask(&format!("0 {PER} 8192 0")),
        format!("done {}", THREADS * PER)
    );
    let drops = "tracer_kernel_drops_total{reason=\"ring_buffer_full\"}";
    // The drop counters are copied in twice a second.
    let started = Instant::now();
    while agent.metric(drops).await.unwrap() == 0 && started.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dropped = agent.metric(drops).await.unwrap();
    assert!(
        dropped > 0,
        "the load must overflow the ring buffer to test anything"
    );
    // The agent has caught up before the last requests (every span it made is out, and it
    // made none for a poll): they test resynchronisation, not a ring buffer still full of
    // backlog. (A request whose response was lost stays held until its connection closes,
    // so the linker's gauge is no signal here.)
    let started = Instant::now();
    let mut last = u64::MAX;
    loop {
        let created = agent.metric("tracer_spans_created_total").await.unwrap();
        let exported = agent.metric("tracer_spans_exported_total").await.unwrap();
        if created == exported && created == last {
            break;
        }
        last = created;
        assert!(
            started.elapsed() < WAIT,
            "the agent never caught up: {created} spans created, {exported} exported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One request per connection, one connection at a time.
    let first = 10_000;
    assert_eq!(ask(&format!("{first} 1 16 1")), format!("done {THREADS}"));
    let finals = first..first + THREADS;
    // Both ends of every last request traced: each stream found the next message start.
    let traced_both = |s: &[tracer_testkit::ReceivedSpan]| {
        finals.clone().all(|id| {
            [(pids[0], "CLIENT"), (pids[1], "SERVER")]
                .iter()
                .all(|&(pid, kind)| {
                    s.iter()
                        .filter(|x| span_pid(x) == pid && x.kind == kind && id_of(x) == Some(id))
                        .count()
                        == 1
                })
        })
    };
    let waited = rx
        .wait_for_spans(|s| traced_both(s), Duration::from_secs(10))
        .await;
    let gaps = agent.metric("tracer_stream_gaps_total").await.unwrap();
    let desynchronised = agent
        .metric("tracer_http_desynchronised_total")
        .await
        .unwrap();
    agent.stop().expect("agent stops cleanly");
    let spans = tracer_testkit::spans::spans_of(&rx.spans(), &pids);
    let linked_under_load = spans
        .iter()
        .filter(|s| s.kind == "SERVER" && id_of(s).is_some_and(|id| id < first))
        .filter(|s| !s.parent_span_id.is_empty())
        .count();
    println!(
        "{dropped} events dropped, {gaps} stream gaps; {linked_under_load} of {} requests under load linked",
        THREADS * PER
    );
    let wrong = wrong_pairs(&spans, pids[0], pids[1]);
    assert!(wrong.is_empty(), "{} wrong pairs: {wrong:#?}", wrong.len());
    let of = |id: u32, pid: u32, kind: &str| -> Vec<&tracer_testkit::ReceivedSpan> {
        spans
            .iter()
            .filter(|x| span_pid(x) == pid && x.kind == kind && id_of(x) == Some(id))
            .collect()
    };
    let missing: Vec<(u32, &str, usize)> = finals
        .clone()
        .flat_map(|id| [(id, pids[0], "CLIENT"), (id, pids[1], "SERVER")])
        .map(|(id, pid, kind)| (id, kind, of(id, pid, kind).len()))
        .filter(|&(_, _, n)| n != 1)
        .collect();
    // For each of them, every span of its connection (the client's local port, found from
    // the other end's span): what the agent made of the stream.
    let connections: Vec<String> = missing
        .iter()
        .filter_map(|&(id, _, _)| {
            let port = of(id, pids[1], "SERVER")
                .first()
                .and_then(|s| s.attr_int("network.peer.port"))
                .or_else(|| {
                    of(id, pids[0], "CLIENT")
                        .first()
                        .and_then(|s| s.attr_int("network.local.port"))
                })?;
            let on_it: Vec<_> = spans
                .iter()
                .filter(|s| {
                    (span_pid(s) == pids[0] && s.attr_int("network.local.port") == Some(port))
                        || (span_pid(s) == pids[1] && s.attr_int("network.peer.port") == Some(port))
                })
                .map(|s| {
                    format!(
                        "{} id={:?} status={:?} err={:?}",
                        s.kind,
                        id_of(s),
                        s.attr_int("http.response.status_code"),
                        s.attr_str("error.type")
                    )
                })
                .collect();
            Some(format!("port {port}: {}", on_it.join("; ")))
        })
        .collect();
    assert!(
        waited.is_ok() && missing.is_empty(),
        "after the load, requests not traced once at each end (a stream that did not \
         resynchronise, or a connection whose open event was lost and never sent again), \
         (id, kind, spans found): {missing:?}; their connections:\n{}",
        connections.join("\n")
    );
    let unlinked = pairs_linked(&spans, pids[0], pids[1], finals.clone());
    assert!(
        unlinked.is_empty(),
        "last requests not linked: {unlinked:?}"
    );
    // The clients wait for each response: a loss must never be taken for pipelining, which
    // would give up pairing on the connection for good.
    assert_eq!(
        desynchronised, 0,
        "connections desynchronised by losses alone"
    );
}

/// One socket, a writer thread and a reader thread pinned to different CPUs, requests
/// pipelined while responses are read: every exchange is traced and linked, and no gap
/// is reported (losses are tracked per direction, so the two CPUs never clear or set each
/// other's state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_written_and_read_on_two_cpus() {
    const N: u32 = 200;
    let script = r#"
import os, socket, sys, threading, time
port, n = int(sys.argv[1]), int(sys.argv[2])
cpus = sorted(os.sched_getaffinity(0))
sys.stdin.readline()
s = socket.create_connection(("127.0.0.1", port))
def writer():
    os.sched_setaffinity(0, {cpus[0]})
    for i in range(n):
        s.sendall(b"GET /duplex?id=%d HTTP/1.1\r\nHost: duplex\r\n\r\n" % i)
        if i % 4 == 3:
            time.sleep(0.002)
ok = 0
def reader():
    global ok
    os.sched_setaffinity(0, {cpus[-1]})
    f = s.makefile("rb")
    for _ in range(n):
        status = f.readline()
        length = 0
        while True:
            h = f.readline()
            if h in (b"\r\n", b""):
                break
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":")[1])
        f.read(length)
        ok += status.split()[1] == b"200"
threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
for t in threads: t.start()
for t in threads: t.join()
print("ok %d cpus %d" % (ok, len(cpus)), flush=True)
"#;
    let server = tracer_testkit::workloads::python::python_app_server("127.0.0.1", false).unwrap();
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let mut client = python_script(script, &[&server.port, &N]);
    let pids = [client.pid(), server.pid()];
    let agent = agent_scoped(&rx, &pids, &[]).await;
    let report = client.ask("go", |l| l.starts_with("ok ")).unwrap();
    assert!(
        report.trim().starts_with(&format!("ok {N} ")),
        "every response read: {report}"
    );
    assert!(
        !report.trim().ends_with("cpus 1"),
        "needs two CPUs: {report}"
    );
    let waited = rx
        .wait_for_spans(
            |s| tracer_testkit::spans::spans_of(s, &pids).len() >= 2 * N as usize,
            WAIT,
        )
        .await;
    let gaps = agent.metric("tracer_stream_gaps_total").await.unwrap();
    if waited.is_err() {
        for l in agent.metrics().await.unwrap().lines() {
            if l.starts_with("tracer_") && !l.ends_with(" 0") {
                println!("DEBUG {l}");
            }
        }
    }
    let drops = agent.metrics().await.unwrap();
    agent.stop().expect("agent stops cleanly");
    let spans = tracer_testkit::spans::spans_of(&rx.spans(), &pids);
    assert!(waited.is_ok(), "{} of {} spans", spans.len(), 2 * N);
    assert_eq!(spans.len(), 2 * N as usize);
    assert_eq!(gaps, 0, "no gap reported: {drops}");
    let problems = pairs_linked(&spans, pids[0], pids[1], 0..N);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The collector is away for longer than the export budget (`OTEL_BSP_EXPORT_TIMEOUT`,
/// 1 s here instead of 30): the spans made
/// meanwhile are dropped and counted, exactly; capture goes on (every exchange is still
/// reconstructed), memory stays bounded; and once the collector is back, new spans are
/// delivered, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_away_longer_than_the_budget_drops_counted_capture_goes_on() {
    const N: usize = 20;
    let server = python_http_server("127.0.0.1", false).unwrap();
    let endpoint = unused_local_addr().unwrap();
    let agent = Agent::start(
        &["--pid", &server.pid().to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ("OTEL_BSP_EXPORT_TIMEOUT", "1000".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ],
    )
    .await
    .expect("agent starts");
    let get = |ids: std::ops::Range<usize>| {
        for i in ids {
            curl(&[
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{}/?id={i}", server.port),
            ])
            .expect("curl");
        }
    };
    let rss_at_start = tracer_testkit::workloads::rss_kib(agent.pid()).unwrap();
    // Two rounds while the collector is away; only the server is traced: one span each.
    get(0..N);
    wait_metric(&agent, "tracer_spans_dropped_export_failed_total", N as u64).await;
    get(N..2 * N);
    wait_metric(&agent, "tracer_http_exchanges_total", 2 * N as u64).await;
    wait_metric(
        &agent,
        "tracer_spans_dropped_export_failed_total",
        2 * N as u64,
    )
    .await;
    let rss = tracer_testkit::workloads::rss_kib(agent.pid()).unwrap();
    assert!(
        rss < rss_at_start + 16 * 1024,
        "agent RSS {rss} KiB during the outage, {rss_at_start} KiB at start"
    );
    let rx = OtlpReceiver::start_on(ReceiverProtocol::Grpc, endpoint)
        .await
        .unwrap();
    get(2 * N..3 * N);
    let mine = |spans: &[tracer_testkit::ReceivedSpan]| {
        spans
            .iter()
            .filter(|s| span_pid(s) == server.pid())
            .filter_map(id_of)
            .collect::<Vec<_>>()
    };
    let waited = rx.wait_for_spans(|s| mine(s).len() >= N, WAIT).await;
    let dropped = agent
        .metric("tracer_spans_dropped_export_failed_total")
        .await
        .unwrap();
    agent.stop().expect("agent stops cleanly");
    let mut got = mine(&rx.spans());
    got.sort_unstable();
    assert!(waited.is_ok(), "after the outage: {got:?}");
    let want: Vec<u32> = (2 * N as u32..3 * N as u32).collect();
    assert_eq!(got, want, "the requests after the outage, each once");
    assert_eq!(
        dropped,
        2 * N as u64,
        "exactly the outage's spans counted as dropped"
    );
    println!(
        "outage: {dropped} spans dropped and counted, RSS {rss} KiB ({rss_at_start} KiB at start)"
    );
}

/// New connections keep coming while the agent is restarted: every request that starts
/// after the new agent reports ready is traced, both ends, linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_traffic_traces_every_new_connection_after_readiness() {
    let script = r#"
import http.client, sys, threading, time
port = int(sys.argv[1])
log, stop, errors = [], threading.Event(), []
def run():
    n = 0
    while not stop.is_set():
        start = time.time_ns()
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/fresh?id=%d" % n)
            r = c.getresponse()
            r.read()
            c.close()
            status = r.status
        except Exception as e:
            errors.append("%d %r" % (n, e))
            status = 0
        log.append((n, start, status))
        n += 1
        time.sleep(0.01)
sys.stdin.readline()
t = threading.Thread(target=run)
t.start()
print("started", flush=True)
# `after T`: answers `enough` once 20 requests that started at or after T (ns) are done.
after = int(sys.stdin.readline().split()[1])
while sum(1 for _, start, _ in log[:] if start >= after) < 20:
    time.sleep(0.01)
print("enough", flush=True)
sys.stdin.readline()
stop.set()
t.join()
for n, start, status in log:
    print(n, start, status)
for e in errors:
    print("error", e)
print("end", flush=True)
"#;
    let server = tracer_testkit::workloads::python::python_app_server("127.0.0.1", false).unwrap();
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let mut load = python_script(script, &[&server.port]);
    let pids = [load.pid(), server.pid()];
    let first = agent_scoped(&rx, &pids, &[]).await;
    load.ask("go", |l| l == "started").unwrap();
    // Traffic under the first agent until it has traced some of it.
    wait_metric(&first, "tracer_http_exchanges_total", 20).await;
    first.stop().expect("first agent stops cleanly");
    let second = agent_scoped(&rx, &pids, &[]).await;
    let ready_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // The client's own count says when enough requests started after readiness (the
    // agent's counters would also count what it captured before it was ready).
    load.ask(&format!("after {ready_at}"), |l| l == "enough")
        .unwrap();
    let out = load.ask("stop", |l| l == "end").unwrap();
    let mut after = Vec::new();
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error")).collect();
    assert!(errors.is_empty(), "requests failed: {errors:?}");
    for line in out.lines().filter(|l| *l != "end") {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(f[2], 200, "request {} answered", f[0]);
        if f[1] >= ready_at {
            after.push(f[0] as u32);
        }
    }
    assert!(
        after.len() >= 20,
        "traffic after the restart: {} of {} requests, ready at {ready_at}: {:?}",
        after.len(),
        out.lines().count(),
        out.lines().rev().take(3).collect::<Vec<_>>()
    );
    let (lo, hi) = (after[0], after[after.len() - 1] + 1);
    assert_eq!(after.len() as u32, hi - lo, "consecutive ids");
    let waited = rx
        .wait_for_spans(
            |s| pairs_linked(s, pids[0], pids[1], lo..hi).is_empty(),
            WAIT,
        )
        .await;
    second.stop().expect("second agent stops cleanly");
    let problems = pairs_linked(&rx.spans(), pids[0], pids[1], lo..hi);
    assert!(
        waited.is_ok() && problems.is_empty(),
        "{} of {} requests after readiness not traced and linked: {problems:#?}",
        problems.len(),
        hi - lo
    );
}
