//! Root integration suite: one trace across nodes. Two agents run on this kernel, each
//! scoped to its own "node" (a set of processes, `--pid`), as a DaemonSet runs one agent per
//! node: agent 1 traces the load client and the middle service, agent 2 the downstream
//! server. The hop middle → downstream is seen half by each agent; only the agent-to-agent
//! exchange (`--exchange-addr`, `--peer`) can join its halves.
//!
//! Ground truth is the load client's own ids: request N is `GET /work?id=N`, and the
//! middle (thread per request, or aiohttp's task per request) calls `GET /down?id=N`. A request is WHOLE when its four
//! spans (load CLIENT, middle SERVER, middle CLIENT, downstream SERVER) are one trace, parent
//! by parent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tracer_testkit::spans::{WAIT, receiver, span_pid, spans_of, summary};
use tracer_testkit::workloads::Server;
use tracer_testkit::workloads::TempDir;
use tracer_testkit::workloads::python::{python, python_app_server};
use tracer_testkit::{ReceivedSpan, ports::unused_local_addr};
use tracer_tests::kube_api::{FakeKubeApi, Kind};
use tracer_tests::linking::{
    LOAD_CLIENT, aiohttp_middle, parse_load_report, query_param, threads_middle,
};
use tracer_tests::nodes::{
    Discovery, EXCHANGE_TOKEN, GatedClient, TwoAgentsEnd, discovering_agent, finish_two_agents,
    node_agent,
};

/// One test at a time: each starts two agents that would otherwise see each other's
/// traffic counted.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The load client (`GET /work?id=N`, `count` requests from `workers` threads), gated.
fn gated_load_client(port: u16, count: u32, workers: u32) -> GatedClient {
    let mut cmd = python();
    cmd.arg("-c").arg(LOAD_CLIENT).args([
        port.to_string(),
        "1".into(),
        count.to_string(),
        workers.to_string(),
    ]);
    GatedClient::start(&cmd, "load client")
}

struct Scenario {
    downstream: Server,
    middle: Server,
}

/// The middle service's runtime.
#[derive(Debug, Clone, Copy)]
enum Middle {
    /// Python threads (`ThreadingHTTPServer`, `requests`): linked by thread.
    Threads,
    /// aiohttp on asyncio, jittered handlers: linked by following the tasks.
    Asyncio,
}

impl Scenario {
    fn start(middle: Middle) -> Scenario {
        let downstream = python_app_server("127.0.0.1", false).expect("downstream server");
        let middle = match middle {
            Middle::Threads => threads_middle(downstream.port),
            Middle::Asyncio => aiohttp_middle(downstream.port, "plain"),
        }
        .expect("middle service");
        Scenario { downstream, middle }
    }
}

/// Per request: whole, or which hop broke and how.
#[derive(Debug, Default)]
struct Verdict {
    whole: usize,
    /// Downstream SERVER spans whose parent is the middle CLIENT span of the same request.
    cross_node_right: usize,
    /// … of another span.
    cross_node_wrong: usize,
    /// … of nothing (exported on their own).
    cross_node_unlinked: usize,
    problems: Vec<String>,
    /// The two agents' `/metrics` at the end.
    metrics1: String,
    metrics2: String,
}

fn judge(spans: &[ReceivedSpan], load: u32, middle: u32, down: u32, count: u32) -> Verdict {
    judge_ids(spans, load, middle, down, 1..count + 1)
}

fn judge_ids(
    spans: &[ReceivedSpan],
    load: u32,
    middle: u32,
    down: u32,
    ids: impl IntoIterator<Item = u32>,
) -> Verdict {
    let id_of = |s: &ReceivedSpan| -> Option<u32> {
        let q = s.attr_str("url.query").map(str::to_owned).or_else(|| {
            s.attr_str("url.full")
                .and_then(|u| u.split_once('?').map(|(_, q)| q.to_owned()))
        })?;
        query_param(&q, "id")?.parse().ok()
    };
    let mut by_role: HashMap<(u32, &str, u32), Vec<&ReceivedSpan>> = HashMap::new();
    for s in spans {
        if let Some(id) = id_of(s) {
            by_role
                .entry((span_pid(s), s.kind.as_str(), id))
                .or_default()
                .push(s);
        }
    }
    let mut v = Verdict::default();
    for id in ids {
        let get = |pid: u32, kind: &str| -> Option<&ReceivedSpan> {
            match by_role.get(&(pid, kind, id)).map(Vec::as_slice) {
                Some([one]) => Some(*one),
                _ => None,
            }
        };
        let chain = [
            get(load, "CLIENT"),
            get(middle, "SERVER"),
            get(middle, "CLIENT"),
            get(down, "SERVER"),
        ];
        let [Some(a), Some(b), Some(c), Some(d)] = chain else {
            v.problems
                .push(format!("request {id}: spans missing or doubled"));
            continue;
        };
        if d.parent_span_id == c.span_id && d.trace_id == c.trace_id {
            v.cross_node_right += 1;
        } else if d.parent_span_id.is_empty() {
            v.cross_node_unlinked += 1;
        } else {
            v.cross_node_wrong += 1;
            v.problems.push(format!(
                "request {id}: downstream parent {} is not its caller",
                d.parent_span_id
            ));
        }
        let whole = a.is_root()
            && b.parent_span_id == a.span_id
            && c.parent_span_id == b.span_id
            && d.parent_span_id == c.span_id
            && [b, c, d].iter().all(|s| s.trace_id == a.trace_id);
        if whole {
            v.whole += 1;
        }
    }
    v
}

/// How the two agents of `run_across_nodes` find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peering {
    /// `--peer` on each.
    Static,
    /// Both discover the other through a (replayed) Kubernetes API.
    Kubernetes,
}

/// Runs `count` requests from `workers` client threads through the two nodes, prints the
/// verdict with both agents' exchange counters, and returns it with no problem in it.
async fn run_across_nodes(label: &str, middle: Middle, count: u32, workers: u32) -> Verdict {
    run_peered(label, middle, Peering::Static, count, workers).await
}

async fn run_peered(
    label: &str,
    middle: Middle,
    peering: Peering,
    count: u32,
    workers: u32,
) -> Verdict {
    let scenario = Scenario::start(middle);
    let client = gated_load_client(scenario.middle.port, count, workers);
    let rx = receiver().await.expect("receiver");
    let (ex1, ex2) = (unused_local_addr().unwrap(), unused_local_addr().unwrap());
    let dir = TempDir::new("nodes-kube").expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let _api = match peering {
        Peering::Static => None,
        Peering::Kubernetes => Some(fake_cluster(&kubeconfig, ex1, ex2).await),
    };
    let (to1, to2) = ([ex1], [ex2]);
    // As deployed: default export settings on both agents.
    let node2 = discovering_agent(
        &rx,
        &[scenario.downstream.pid()],
        ex2,
        discovery(peering, &to1, &kubeconfig, "node-2"),
        None,
        &[],
    )
    .await;
    let node1 = discovering_agent(
        &rx,
        &[client.pid(), scenario.middle.pid()],
        ex1,
        discovery(peering, &to2, &kubeconfig, "node-1"),
        None,
        &[],
    )
    .await;
    let load = client.pid();
    let out = client.run();
    let report = parse_load_report(&out).expect("load report");
    assert_eq!(
        report.ok,
        u64::from(count),
        "every request answered 200: {out}"
    );

    let pids = [load, scenario.middle.pid(), scenario.downstream.pid()];
    let want = 4 * count as usize;
    let TwoAgentsEnd {
        spans,
        complete,
        metrics: [m1, m2],
    } = finish_two_agents(&rx, [node1, node2], &pids, want).await;
    assert!(
        complete && spans.len() == want,
        "want {want} spans, got {}:\n{}",
        spans.len(),
        summary(&spans)
    );
    let v = judge(
        &spans,
        load,
        scenario.middle.pid(),
        scenario.downstream.pid(),
        count,
    );
    println!(
        "two nodes, {label}: whole={} cross-node right={} wrong={} unlinked={}\nagent 1:\n{}\nagent 2:\n{}",
        v.whole,
        v.cross_node_right,
        v.cross_node_wrong,
        v.cross_node_unlinked,
        exchange_lines(&m1),
        exchange_lines(&m2)
    );
    assert!(v.problems.is_empty(), "{:#?}", v.problems);
    Verdict {
        metrics1: m1,
        metrics2: m2,
        ..v
    }
}

fn discovery<'a>(
    peering: Peering,
    peers: &'a [SocketAddr],
    kubeconfig: &'a std::path::Path,
    node: &'a str,
) -> Discovery<'a> {
    match peering {
        Peering::Static => Discovery::Static(peers),
        Peering::Kubernetes => Discovery::Kubernetes { kubeconfig, node },
    }
}

/// `tracer_peer_lookups_total{peer=…,result=…}` from an agent's metrics text.
fn lookups(metrics: &str, peer: &str, result: &str) -> u64 {
    let prefix = format!("tracer_peer_lookups_total{{peer=\"{peer}\",result=\"{result}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A replayed API server for two nodes: node-1 owns 127.0.0.1 (the load client and the
/// middle), node-2 owns 127.0.0.2 and a pod CIDR; one agent pod on each, its exchange port
/// declared as a named container port. Writes the kubeconfig both agents read.
async fn fake_cluster(
    kubeconfig: &std::path::Path,
    ex1: SocketAddr,
    ex2: SocketAddr,
) -> FakeKubeApi {
    let api = FakeKubeApi::start().await.expect("fake API server");
    api.write_kubeconfig(kubeconfig).expect("kubeconfig");
    let node = |name: &str, ip: &str, cidr: &str| {
        json!({"metadata": {"name": name},
               "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
               "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                        {"type": "Hostname", "address": name}]}})
    };
    api.put(Kind::Nodes, node("node-1", "127.0.0.1", "10.244.1.0/24"));
    api.put(Kind::Nodes, node("node-2", "127.0.0.2", "10.244.2.0/24"));
    let agent = |name: &str, node: &str, ex: SocketAddr| {
        json!({"metadata": {"name": name, "namespace": "tracing", "labels": {"app": "tracer-agent"}},
               "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "tracer-agent",
                        "ports": [{"name": "exchange", "containerPort": ex.port()}]}]},
               "status": {"phase": "Running", "podIP": ex.ip().to_string()}})
    };
    api.put(Kind::Pods, agent("tracer-agent-a", "node-1", ex1));
    api.put(Kind::Pods, agent("tracer-agent-b", "node-2", ex2));
    // Not an agent: another namespace, and a pod without the label.
    let mut other = agent("tracer-agent-x", "node-2", "127.0.0.1:1".parse().unwrap());
    other["metadata"]["namespace"] = json!("shop");
    api.put(Kind::Pods, other);
    let mut unlabelled = agent("web", "node-2", "127.0.0.1:2".parse().unwrap());
    unlabelled["metadata"]["labels"] = json!({"app": "web"});
    api.put(Kind::Pods, unlabelled);
    api
}

fn exchange_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("tracer_peer_lookups_total")
                || l.starts_with("tracer_exchange_requests_total")
                || l.starts_with("tracer_links_by_remote_peer_total")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// 100 requests one after another through two nodes: 100 whole traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sequential_requests_give_whole_traces() {
    let _serial = SERIAL.lock().await;
    let v = run_across_nodes("100 sequential", Middle::Threads, 100, 1).await;
    assert_eq!(v.whole, 100, "every request one whole trace");
}

/// 400 requests from 16 concurrent clients: the cross-node hop links every request to
/// its own caller, like a local peer match, and nothing is linked wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_concurrent_requests_link_like_one_node() {
    let _serial = SERIAL.lock().await;
    let v = run_across_nodes("400 from 16 clients", Middle::Threads, 400, 16).await;
    assert_eq!(v.cross_node_right, 400, "the cross-node hop is exact");
    assert_eq!(v.whole, 400, "every request one whole trace");
}

/// The agents find each other through Kubernetes (Nodes and the agent DaemonSet's pods),
/// as deployed: each caller is asked of its own node's agent only, none of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_find_each_other_through_kubernetes() {
    let _serial = SERIAL.lock().await;
    let v = run_peered(
        "kubernetes discovery, 400 from 16 clients",
        Middle::Threads,
        Peering::Kubernetes,
        400,
        16,
    )
    .await;
    assert_eq!(v.cross_node_right, 400, "the cross-node hop is exact");
    assert_eq!(v.whole, 400, "every request one whole trace");
    assert!(
        !v.metrics2.contains("peer=\"127.0.0.1:1\"")
            && !v.metrics2.contains("peer=\"127.0.0.1:2\""),
        "only agent pods are asked:\n{}",
        v.metrics2
    );
    assert_eq!(
        lookups(&v.metrics1, "*", "skipped") + lookups(&v.metrics2, "*", "skipped"),
        0
    );
}

/// The same through an asyncio middle: its calls wait for their task to answer before
/// their parent is known, so the other node's lookups are answered "pending" first, then
/// with the call's context once the task has answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_asyncio_middle_gives_whole_traces() {
    let _serial = SERIAL.lock().await;
    let v = run_across_nodes("asyncio, 400 from 16 clients", Middle::Asyncio, 400, 16).await;
    assert_eq!(v.cross_node_right, 400, "the cross-node hop is exact");
    assert_eq!(v.whole, 400, "every request one whole trace");
}

/// A peer that is down, or that does not hold the token, costs the span its caller and
/// nothing else: spans are exported on their own within the link window, counted, and the
/// agent keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_or_hostile_peers_never_stall_the_agent() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::start(Middle::Threads);
    let rx = receiver().await.expect("receiver");
    // The peer address: nothing listens there.
    let dead = unused_local_addr().unwrap();
    let ex = unused_local_addr().unwrap();
    // Short batches: the time to export is measured, and it must be the link window's.
    let agent = node_agent(&rx, &[scenario.downstream.pid()], ex, &[dead], Some(100)).await;
    let started = std::time::Instant::now();
    for n in 0..5 {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!(
                "http://127.0.0.1:{}/down?id={n}",
                scenario.downstream.port
            ))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    let pids = [scenario.downstream.pid()];
    rx.wait_for_spans(|s| spans_of(s, &pids).len() >= 5, Duration::from_secs(10))
        .await
        .expect("spans exported without their caller");
    let took = started.elapsed();
    let spans = spans_of(&rx.spans(), &pids);
    assert!(
        spans.iter().all(ReceivedSpan::is_root),
        "{}",
        summary(&spans)
    );
    // The link window (1 s) plus export batching; a stalled lookup would show here.
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // Someone without the token, then someone sending garbage: refused, counted.
    let http = reqwest::Client::new();
    let url = format!("http://{ex}/v1/callers");
    let lookup = r#"{"lookups":[{"client":"127.0.0.1:1","seq":0}]}"#;
    let no_token = http.post(&url).body(lookup).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert!(
        no_token.bytes().await.unwrap().is_empty(),
        "nothing but the status"
    );
    let wrong = http
        .post(&url)
        .bearer_auth("not-the-token-at-all-0000")
        .body(lookup)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let garbage = http
        .post(&url)
        .bearer_auth(EXCHANGE_TOKEN)
        .body(vec![0xffu8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let huge = http
        .post(&url)
        .bearer_auth(EXCHANGE_TOKEN)
        .body(vec![b' '; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let ok = http
        .post(&url)
        .bearer_auth(EXCHANGE_TOKEN)
        .body(lookup)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.text().await.unwrap(),
        r#"{"answers":[{"state":"unknown"}]}"#
    );

    let metrics = agent.metrics().await.unwrap();
    let value = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        value("tracer_exchange_requests_total{result=\"unauthorized\"}"),
        2
    );
    assert_eq!(
        value("tracer_exchange_requests_total{result=\"malformed\"}"),
        1
    );
    assert_eq!(
        value("tracer_exchange_requests_total{result=\"answered\"}"),
        1
    );
    let failed = value(&format!(
        "tracer_peer_lookups_total{{peer=\"{dead}\",result=\"failed\"}}"
    ));
    let skipped = value(&format!(
        "tracer_peer_lookups_total{{peer=\"{dead}\",result=\"skipped\"}}"
    ));
    assert!(
        failed >= 1,
        "failed lookups counted:\n{}",
        exchange_lines(&metrics)
    );
    assert!(
        failed + skipped >= 5,
        "every lookup accounted:\n{}",
        exchange_lines(&metrics)
    );
    agent.stop().expect("agent stops cleanly");
}

/// The load client, kept running across phases: a line `FIRST COUNT WORKERS` on stdin runs
/// the linking suite's load client for those ids, then `END`.
struct PhasedClient(tracer_testkit::workloads::LineChild);

impl PhasedClient {
    fn start(port: u16) -> PhasedClient {
        let mut cmd = python();
        cmd.arg("-c")
            .arg(
                "import sys\nsrc = sys.argv[1]\nport = sys.argv[2]\nfor line in sys.stdin:\n    sys.argv = ['load', port] + line.split()\n    exec(src, {'__name__': '__main__'})\n    print('END', flush=True)\n",
            )
            .arg(LOAD_CLIENT)
            .arg(port.to_string());
        PhasedClient(tracer_testkit::workloads::LineChild::spawn(&mut cmd).expect("load client"))
    }

    /// Runs ids `first..first + count`; asserts each was answered 200.
    fn run(&mut self, first: u32, count: u32, workers: u32) {
        let out = self
            .0
            .ask(&format!("{first} {count} {workers}"), |l| l == "END")
            .expect("load client");
        let report = parse_load_report(&out).expect("load report");
        assert_eq!(
            report.ok,
            u64::from(count),
            "every request answered 200: {out}"
        );
    }
}

/// The caller's agent is restarted in the middle of the traffic, as a rolling update does,
/// with the middle's pooled connections to the downstream open throughout. While it is
/// gone, the other agent exports the downstream spans on their own within the link window.
/// Once it is back it finds those connections again (they predate it) and both agents key
/// their requests by TCP sequence number, so the hop joins again: after at most a few
/// seconds of the other agent's backoff, every request is one whole trace again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_joins_the_traces_again() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::start(Middle::Threads);
    let mut client = PhasedClient::start(scenario.middle.port);
    let rx = receiver().await.expect("receiver");
    let (ex1, ex2) = (unused_local_addr().unwrap(), unused_local_addr().unwrap());
    let (load, middle, down) = (
        client.0.pid(),
        scenario.middle.pid(),
        scenario.downstream.pid(),
    );
    let pids = [load, middle, down];
    let node2 = node_agent(&rx, &[down], ex2, &[ex1], None).await;
    let node1 = node_agent(&rx, &[load, middle], ex1, &[ex2], None).await;
    let wait = |want: usize| {
        let rx = &rx;
        async move {
            rx.wait_for_spans(|s| spans_of(s, &pids).len() >= want, WAIT)
                .await
                .expect("spans arrive");
        }
    };

    client.run(1, 100, 16);
    wait(400).await;
    let v = judge_ids(&spans_of(&rx.spans(), &pids), load, middle, down, 1..101);
    assert_eq!(v.whole, 100, "before the restart: {:#?}", v.problems);

    // The caller's agent goes away; requests go on.
    node1.stop().expect("agent 1 stops");
    let stopped = std::time::Instant::now();
    client.run(101, 50, 16);
    wait(450).await;
    let spans = spans_of(&rx.spans(), &pids);
    let alone: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| span_pid(s) == down)
        .filter(|s| {
            s.attr_str("url.query")
                .and_then(|q| query_param(q, "id")?.parse::<u32>().ok())
                .is_some_and(|id| (101..151).contains(&id))
        })
        .collect();
    assert_eq!(alone.len(), 50, "the downstream spans of the gap");
    assert!(alone.iter().all(|s| s.is_root()), "no caller to join");
    println!("agent 1 away {:?}", stopped.elapsed());

    // It comes back: batches of 10 until one is whole (the other agent's backoff on it),
    // then 100 requests, every one whole.
    let node1 = node_agent(&rx, &[load, middle], ex1, &[ex2], None).await;
    let back = std::time::Instant::now();
    let (mut next, mut have) = (151u32, 450usize);
    loop {
        client.run(next, 10, 4);
        have += 40;
        wait(have).await;
        let v = judge_ids(
            &spans_of(&rx.spans(), &pids),
            load,
            middle,
            down,
            next..next + 10,
        );
        next += 10;
        if v.whole == 10 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the hop never joined again: {:#?}",
            v.problems
        );
    }
    println!("whole again {:?} after agent 1 was back", back.elapsed());
    client.run(next, 100, 16);
    wait(have + 400).await;
    let m2 = node2.metrics().await.unwrap_or_default();
    node1.stop().expect("agent 1 stops");
    node2.stop().expect("agent 2 stops");
    let v = judge_ids(
        &spans_of(&rx.spans(), &pids),
        load,
        middle,
        down,
        next..next + 100,
    );
    println!(
        "after the restart: whole={} cross-node right={} wrong={} unlinked={}\n{}",
        v.whole,
        v.cross_node_right,
        v.cross_node_wrong,
        v.cross_node_unlinked,
        exchange_lines(&m2)
    );
    assert_eq!(v.whole, 100, "{:#?}", v.problems);
    assert_eq!(v.cross_node_wrong, 0);
}

/// A downstream server answering `/down?id=N` with 404 when N is a multiple of 4, else 200.
fn picky_downstream() -> Server {
    let script = r#"
import http.server, urllib.parse
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_GET(self):
        n = int(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["id"][0])
        status = 404 if n % 4 == 0 else 200
        body = b"down\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
srv = Server(("127.0.0.1", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
    let mut cmd = python();
    cmd.arg("-c").arg(script);
    tracer_testkit::workloads::spawn_printing_port(cmd, "python3 picky downstream")
        .expect("downstream")
}

/// Tail sampling across nodes, ratio 0: only failed requests are kept. The failure is an
/// error on node 1 only (the middle's call got a 404, the middle answered 502); node 2's
/// downstream SERVER span answered 404, which is no error for a server, so node 2 keeps it
/// only because node 1's agent told it. Every failed request is one whole trace of four
/// spans across the two nodes, and nothing else is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_tail_sampling_keeps_failed_traces_whole() {
    const COUNT: u32 = 40;
    let _serial = SERIAL.lock().await;
    let downstream = picky_downstream();
    let middle = threads_middle(downstream.port).expect("middle service");
    let client = gated_load_client(middle.port, COUNT, 4);
    let rx = receiver().await.expect("receiver");
    let (ex1, ex2) = (unused_local_addr().unwrap(), unused_local_addr().unwrap());
    let tail = [
        "--sample-ratio",
        "0",
        "--sample-errors",
        "--tail-wait-ms",
        "1500",
    ];
    let node2 = discovering_agent(
        &rx,
        &[downstream.pid()],
        ex2,
        Discovery::Static(&[ex1]),
        Some(100),
        &tail,
    )
    .await;
    let node1 = discovering_agent(
        &rx,
        &[client.pid(), middle.pid()],
        ex1,
        Discovery::Static(&[ex2]),
        Some(100),
        &tail,
    )
    .await;
    let load = client.pid();
    let out = client.run();
    let report = parse_load_report(&out).expect("load report");
    let failed: Vec<u32> = (1..=COUNT).filter(|n| n % 4 == 0).collect();
    assert_eq!(report.ok, u64::from(COUNT) - failed.len() as u64, "{out}");
    let pids = [load, middle.pid(), downstream.pid()];
    let want = 4 * failed.len();
    let TwoAgentsEnd {
        spans,
        complete: waited,
        metrics: [m1, m2],
    } = finish_two_agents(&rx, [node1, node2], &pids, want).await;
    let tail_lines = |m: &str| -> String {
        m.lines()
            .filter(|l| l.starts_with("tracer_tail") || l.starts_with("tracer_peer_keeps"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        waited && spans.len() == want,
        "want {want} spans (the failed requests only), got {}:\n{}\nnode 1: {}\nnode 2: {}",
        spans.len(),
        summary(&spans),
        tail_lines(&m1),
        tail_lines(&m2)
    );
    let v = judge_ids(
        &spans,
        load,
        middle.pid(),
        downstream.pid(),
        failed.iter().copied(),
    );
    assert_eq!(
        v.whole,
        failed.len(),
        "every failed request one whole trace across the nodes: {v:?}\nnode 1: {}\nnode 2: {}",
        tail_lines(&m1),
        tail_lines(&m2)
    );
    println!(
        "{} failed requests kept whole across two nodes; node 1: {}; node 2: {}",
        v.whole,
        tail_lines(&m1),
        tail_lines(&m2)
    );
}
