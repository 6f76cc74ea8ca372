//! Root integration suite: in-process linking, measured per runtime. A load client (16
//! workers, 160 requests, each with its own id) calls a middle service in the runtime under
//! test, which calls a downstream Python server once per request (twice in the fan-out).
//! Nothing forwards trace context, so the only thing that makes the middle's CLIENT span a
//! child of its SERVER span is the agent's in-process linking. Each downstream call is
//! judged from the ids in the URLs: RIGHT (child of its own request's SERVER span), WRONG
//! (child of another span), UNLINKED (a root) or MISSING (a span absent). WRONG must be zero
//! everywhere: a broken trace is worse than a missing link. Only thread-per-request, where
//! the serving thread provably makes the call, must also link (nearly) every call.

use std::collections::BTreeMap;

use tracer_testkit::spans::{WAIT, agent_exporting_to, collect, counts, receiver, summary};
use tracer_testkit::workloads::Server;
use tracer_testkit::workloads::python::python_app_server;
use tracer_testkit::workloads::{TempDir, run_client};
use tracer_tests::linking::{
    FIRST_ID, GoMode, Load, REQUESTS, Tally, aiohttp_middle, go_middle, go_middle_built,
    go_middle_by, link_metrics, load_client, node_middle, parse_load_report, peer_links, tally,
    threads_middle,
};

/// Runs the scenario against `middle` (which calls `downstream` once per entry of `parts`
/// per request) under a fresh agent, prints the tally and the agent's `tracer_link*`
/// metrics, and asserts exact span counts, nothing MISSING and nothing WRONG.
async fn measure(
    runtime: &str,
    middle: &Server,
    downstream: &Server,
    parts: &[Option<&str>],
    load: Load,
) -> (Tally, String) {
    let rx = receiver().await.unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let (load_pid, out) = run_client(load_client(middle.port, load), "load client").unwrap();
    let report = parse_load_report(&out).unwrap();
    let ids: Vec<u32> = (FIRST_ID..FIRST_ID + load.requests).collect();
    assert_eq!(report.sent, ids, "the load client sends each id once");
    assert_eq!(
        report.ok,
        u64::from(load.requests),
        "every request answered 200 (the load client's count): {out}"
    );

    let requests = load.requests as usize;
    let calls = requests * parts.len();
    let (spans, metrics) = collect(
        &rx,
        agent,
        &[load_pid, middle.pid(), downstream.pid()],
        2 * requests + 2 * calls,
        WAIT,
    )
    .await
    .unwrap();

    let t = tally(&spans, middle.pid(), &ids, parts);
    let line = format!("linking {runtime}: {t}");
    println!("{line}");
    // Peer links (the other rule) checked from the same keys: they show the keys pick the
    // right spans, and that the traces continue on both sides of the middle.
    let (into_middle, middle_servers) = peer_links(&spans, load_pid, middle.pid());
    let (into_down, down_servers) = peer_links(&spans, middle.pid(), downstream.pid());
    println!(
        "  peer links: load->middle {into_middle}/{middle_servers}, middle->downstream {into_down}/{down_servers}"
    );
    for (what, cases) in [("wrong", &t.wrong_cases), ("missing", &t.missing_cases)] {
        for c in cases.iter().take(10) {
            println!("  {what}: {c}");
        }
        if cases.len() > 10 {
            println!("  {what}: … and {} more", cases.len() - 10);
        }
    }
    for l in link_metrics(&metrics) {
        println!("  {l}");
    }

    let expected = BTreeMap::from([
        ((load_pid, "CLIENT".to_owned()), requests),
        ((middle.pid(), "SERVER".to_owned()), requests),
        ((middle.pid(), "CLIENT".to_owned()), calls),
        ((downstream.pid(), "SERVER".to_owned()), calls),
    ]);
    assert_eq!(
        counts(&spans),
        expected,
        "{line}: one SERVER and one CLIENT span per request on each side\n{}",
        summary(&spans)
    );
    assert_eq!(t.missing, 0, "{line}:\n{}", t.missing_cases.join("\n"));
    assert_eq!(
        t.wrong,
        0,
        "{line}: CLIENT spans linked to a span other than their request's SERVER span:\n{}",
        t.wrong_cases.join("\n")
    );
    (t, metrics)
}

fn downstream() -> Server {
    // Answers 200 to any GET, one thread per connection, keep-alive.
    python_app_server("127.0.0.1", false).unwrap()
}

/// Go `net/http`: handlers are goroutines, which Go's scheduler moves between threads, and
/// a pooled connection's requests are written by its own `writeLoop` goroutine. The agent
/// follows the goroutines (uprobes): the handler's goroutine read the request, its
/// `roundTrip` names the connection, the connection's writer writes for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_net_http_one_call_per_request() {
    let down = downstream();
    let dir = TempDir::new("linking-go").unwrap();
    let middle = go_middle(&dir, GoMode::Plain, down.port).unwrap();
    let (t, _) = measure("go", &middle, &down, &[None], Load::default()).await;
    assert_eq!(
        t.right, REQUESTS as usize,
        "linking go: {t}: goroutines followed"
    );
}

/// The same at 64 concurrent clients, 640 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_net_http_64_concurrent_clients() {
    let down = downstream();
    let dir = TempDir::new("linking-go-64").unwrap();
    let middle = go_middle(&dir, GoMode::Plain, down.port).unwrap();
    let load = Load {
        requests: 640,
        workers: 64,
    };
    let (t, _) = measure("go-64", &middle, &down, &[None], load).await;
    assert_eq!(t.right, 640, "linking go-64: {t}");
}

/// The probes stay out of the program's way: 10,000 requests through the Go middle with
/// its goroutines followed, every one answered (the client's count) and linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_probes_hold_under_10000_requests() {
    let down = downstream();
    let dir = TempDir::new("linking-go-10k").unwrap();
    let middle = go_middle(&dir, GoMode::Plain, down.port).unwrap();
    let load = Load {
        requests: 10_000,
        workers: 16,
    };
    let (t, _) = measure("go-10k", &middle, &down, &[None], load).await;
    assert_eq!(t.right, 10_000, "linking go-10k: {t}");
    assert!(
        std::path::Path::new(&format!("/proc/{}", middle.pid())).exists(),
        "the Go program is still running"
    );
}

/// Node.js `http`: every request is in flight on one thread (the event loop) at once. Node
/// is not followed (README, "Known limits"): its calls abstain, none may be wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_http_one_call_per_request() {
    let down = downstream();
    let middle = node_middle(down.port, "http").unwrap();
    measure("node", &middle, &down, &[None], Load::default()).await;
}

/// Node.js `fetch` (undici), two calls in parallel per request, 64 clients: none wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fetch_fan_out_64_concurrent_clients() {
    let down = downstream();
    let middle = node_middle(down.port, "fetch-fanout").unwrap();
    let load = Load {
        requests: 640,
        workers: 64,
    };
    let parts = [Some("a"), Some("b")];
    measure("node-fetch-64", &middle, &down, &parts, load).await;
}

/// Python asyncio (aiohttp server and `ClientSession`): one event loop, like Node.js, with
/// every request in flight on it at once and handlers calling after a jitter. The agent
/// follows the tasks: a call belongs to the request its task answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_asyncio_aiohttp_one_call_per_request() {
    let down = downstream();
    let middle = aiohttp_middle(down.port, "plain").unwrap();
    let (t, metrics) = measure("asyncio", &middle, &down, &[None], Load::default()).await;
    assert_eq!(t.right, REQUESTS as usize, "linking asyncio: {t}");
    assert_eq!(
        metric(&metrics, "tracer_python_processes_unsupported_total"),
        0
    );
}

/// The same at 64 concurrent clients, 640 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_asyncio_64_concurrent_clients() {
    let down = downstream();
    let middle = aiohttp_middle(down.port, "plain").unwrap();
    let load = Load {
        requests: 640,
        workers: 64,
    };
    let (t, _) = measure("asyncio-64", &middle, &down, &[None], load).await;
    assert!(
        t.right >= 634,
        "linking asyncio-64: {t}: at least 99% whole"
    );
}

/// Two calls one after the other in the handler, more jitter between them: both are the
/// request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_asyncio_two_calls_in_sequence() {
    let down = downstream();
    let middle = aiohttp_middle(down.port, "sequence").unwrap();
    let parts = [Some("a"), Some("b")];
    let (t, _) = measure("asyncio-sequence", &middle, &down, &parts, Load::default()).await;
    assert_eq!(
        t.right,
        2 * REQUESTS as usize,
        "linking asyncio-sequence: {t}"
    );
}

/// Two calls in parallel through `asyncio.gather`: each runs in a task of its own, which
/// answers no request, and nothing the agent reads ties it to the handler's task. Every
/// such call abstains (counted) instead of guessing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_asyncio_gathered_calls_abstain() {
    let down = downstream();
    let middle = aiohttp_middle(down.port, "gather").unwrap();
    let parts = [Some("a"), Some("b")];
    let (t, metrics) = measure("asyncio-gather", &middle, &down, &parts, Load::default()).await;
    assert_eq!(
        t.unlinked,
        2 * REQUESTS as usize,
        "linking asyncio-gather: {t}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tracer_link_abstained_total{reason=\"task_unanswered\"}"
        ),
        2 * u64::from(REQUESTS)
    );
}

/// Python threads (`ThreadingHTTPServer`, `requests`): the thread that read the request
/// makes the call and serves nothing else meanwhile, so the link is provable and must be
/// made (two of 160 may still be missed, never mislinked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_threads_one_call_per_request() {
    let down = downstream();
    let middle = threads_middle(down.port).unwrap();
    let (t, _) = measure("python-threads", &middle, &down, &[None], Load::default()).await;
    assert!(
        t.right >= REQUESTS as usize - 2,
        "linking python-threads: {t}: thread per request must link"
    );
}

/// Go fan-out: two goroutines per request call downstream in parallel; both calls belong
/// to the request, on whatever threads they run (the goroutines a handler starts work for
/// its request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_fan_out_two_calls_per_request() {
    let down = downstream();
    let dir = TempDir::new("linking-go-fanout").unwrap();
    let middle = go_middle(&dir, GoMode::FanOut, down.port).unwrap();
    let parts = [Some("a"), Some("b")];
    let (t, _) = measure("go-fanout", &middle, &down, &parts, Load::default()).await;
    assert_eq!(t.right, 2 * REQUESTS as usize, "linking go-fanout: {t}");
}

/// Go worker pool: 4 goroutines started at boot make every call for the handlers. Nothing
/// ties the calling goroutine to a request, so every CLIENT span starts its own trace
/// (counted), never under a request picked by thread or by "the only one in flight".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_worker_pool_calls_for_the_handlers() {
    let down = downstream();
    let dir = TempDir::new("linking-go-pool").unwrap();
    let middle = go_middle(&dir, GoMode::WorkerPool, down.port).unwrap();
    let (t, metrics) = measure("go-pool", &middle, &down, &[None], Load::default()).await;
    assert_eq!(t.unlinked, REQUESTS as usize, "linking go-pool: {t}");
    assert_eq!(
        metric(
            &metrics,
            "tracer_link_abstained_total{reason=\"goroutine_unknown\"}"
        ),
        u64::from(REQUESTS)
    );
}

/// A stripped Go binary (`-ldflags=-s -w`) has no symbol table: the functions to probe are
/// found in its `.gopclntab`, which the Go runtime keeps for its own stack traces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_stripped_binary_is_followed_too() {
    let down = downstream();
    let dir = TempDir::new("linking-go-stripped").unwrap();
    let middle = go_middle_built(&dir, GoMode::Plain, down.port, &["-ldflags=-s -w"]).unwrap();
    let symbols = std::process::Command::new("nm")
        .arg(dir.join("middle"))
        .output()
        .expect("nm (binutils)");
    assert!(
        !String::from_utf8_lossy(&symbols.stdout).contains("roundTrip"),
        "the binary is stripped"
    );
    let (t, metrics) = measure("go-stripped", &middle, &down, &[None], Load::default()).await;
    assert_eq!(t.right, REQUESTS as usize, "linking go-stripped: {t}");
    assert_eq!(metric(&metrics, "tracer_go_processes_unsupported_total"), 0);
}

/// A Go middle built by a newer release (Debian trixie's Go 1.24, fetched by `cargo xtask
/// test`): `runtime.g` changed layout since Debian 12's Go 1.19, and the agent must find the
/// goroutine id (and the functions) there too. Stripped as well, at 64 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_newer_release_is_followed() {
    let go = std::env::var_os("TRACER_GO_NEWER").expect(
        "TRACER_GO_NEWER is not set: run the suite with `cargo xtask test`, which fetches a newer Go",
    );
    let version = std::process::Command::new(&go)
        .arg("version")
        .output()
        .expect("go version");
    println!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let down = downstream();
    let dir = TempDir::new("linking-go-newer").unwrap();
    let middle = go_middle_by(
        std::path::Path::new(&go),
        &dir,
        GoMode::FanOut,
        down.port,
        &["-ldflags=-s -w"],
    )
    .unwrap();
    let load = Load {
        requests: 320,
        workers: 64,
    };
    let parts = [Some("a"), Some("b")];
    let (t, metrics) = measure("go-newer", &middle, &down, &parts, load).await;
    assert_eq!(t.right, 640, "linking go-newer: {t}");
    assert_eq!(metric(&metrics, "tracer_go_processes_unsupported_total"), 0);
}

/// Go → Go → Python: both Go services in the middle, 16 clients. Each Go hop links its
/// own calls; the trace runs whole from the load client to Python.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_calling_go_calling_python() {
    let down = downstream();
    let dir_b = TempDir::new("linking-go-b").unwrap();
    let back = go_middle(&dir_b, GoMode::Plain, down.port).unwrap();
    let dir_a = TempDir::new("linking-go-a").unwrap();
    let front = go_middle(&dir_a, GoMode::Plain, back.port).unwrap();
    let rx = receiver().await.unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let load = Load::default();
    let (load_pid, out) = run_client(load_client(front.port, load), "load client").unwrap();
    let report = parse_load_report(&out).unwrap();
    assert_eq!(report.ok, u64::from(load.requests), "{out}");
    let n = load.requests as usize;
    let pids = [load_pid, front.pid(), back.pid(), down.pid()];
    let (spans, metrics) = collect(&rx, agent, &pids, 6 * n, WAIT).await.unwrap();
    assert_eq!(spans.len(), 6 * n, "{}", summary(&spans));
    let ids: Vec<u32> = (FIRST_ID..FIRST_ID + load.requests).collect();
    let (a, b) = (
        tally(&spans, front.pid(), &ids, &[None]),
        tally(&spans, back.pid(), &ids, &[None]),
    );
    println!("linking go->go front: {a}\nlinking go->go back: {b}");
    for l in link_metrics(&metrics) {
        println!("  {l}");
    }
    assert_eq!((a.right, a.wrong, b.right, b.wrong), (n, 0, n, 0));
    assert_eq!(peer_links(&spans, front.pid(), back.pid()), (n, n));
    let traces: std::collections::HashSet<&str> =
        spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), n, "one trace per request");
}

/// A value from the agent's `/metrics` text (0 when absent).
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}
