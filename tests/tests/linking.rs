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

use tracer_tests::harness::Server;
use tracer_tests::linking::{
    FIRST_ID, GoMode, REQUESTS, Tally, aiohttp_middle, go_middle, link_metrics, load_client,
    node_middle, parse_load_report, peer_links, tally, threads_middle,
};
use tracer_tests::programs::{
    TempDir, WAIT, agent_exporting_to, collect, counts, python_app_server, receiver, run_client,
    summary,
};

/// Runs the scenario against `middle` (which calls `downstream` once per entry of `parts`
/// per request) under a fresh agent, prints the tally and the agent's `tracer_link*`
/// metrics, and asserts exact span counts, nothing MISSING and nothing WRONG.
async fn measure(
    runtime: &str,
    middle: &Server,
    downstream: &Server,
    parts: &[Option<&str>],
) -> Tally {
    let rx = receiver().await.unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let (load_pid, out) = run_client(load_client(middle.port), "load client").unwrap();
    let report = parse_load_report(&out).unwrap();
    let ids: Vec<u32> = (FIRST_ID..FIRST_ID + REQUESTS).collect();
    assert_eq!(report.sent, ids, "the load client sends each id once");
    assert_eq!(
        report.ok,
        u64::from(REQUESTS),
        "every request answered 200 (the load client's count): {out}"
    );

    let requests = REQUESTS as usize;
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
    t
}

fn downstream() -> Server {
    // Answers 200 to any GET, one thread per connection, keep-alive.
    python_app_server("127.0.0.1", false).unwrap()
}

/// Go `net/http`: handlers are goroutines, which Go's scheduler moves between threads, and
/// a pooled connection is written by whichever thread runs the goroutine at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_net_http_one_call_per_request() {
    let down = downstream();
    let dir = TempDir::new("linking-go").unwrap();
    let middle = go_middle(&dir, GoMode::Plain, down.port).unwrap();
    measure("go", &middle, &down, &[None]).await;
}

/// Node.js `http`: every request is in flight on one thread (the event loop) at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_http_one_call_per_request() {
    let down = downstream();
    let middle = node_middle(down.port).unwrap();
    measure("node", &middle, &down, &[None]).await;
}

/// Python asyncio (aiohttp server and `ClientSession`): one event loop, like Node.js.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_asyncio_aiohttp_one_call_per_request() {
    let down = downstream();
    let middle = aiohttp_middle(down.port).unwrap();
    measure("asyncio", &middle, &down, &[None]).await;
}

/// Python threads (`ThreadingHTTPServer`, `requests`): the thread that read the request
/// makes the call and serves nothing else meanwhile, so the link is provable and must be
/// made (two of 160 may still be missed, never mislinked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_threads_one_call_per_request() {
    let down = downstream();
    let middle = threads_middle(down.port).unwrap();
    let t = measure("python-threads", &middle, &down, &[None]).await;
    assert!(
        t.right >= REQUESTS as usize - 2,
        "linking python-threads: {t}: thread per request must link"
    );
}

/// Go fan-out: two goroutines per request call downstream in parallel; both calls belong
/// to the request, on whatever threads they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_fan_out_two_calls_per_request() {
    let down = downstream();
    let dir = TempDir::new("linking-go-fanout").unwrap();
    let middle = go_middle(&dir, GoMode::FanOut, down.port).unwrap();
    measure("go-fanout", &middle, &down, &[Some("a"), Some("b")]).await;
}

/// Go worker pool: 4 goroutines started at boot make every call for the handlers. Nothing
/// on the calling goroutine belongs to the request, so the CLIENT span must never be
/// attached to one picked by thread or by "the only request in flight" (a link here is
/// only acceptable if it is the right one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_worker_pool_calls_for_the_handlers() {
    let down = downstream();
    let dir = TempDir::new("linking-go-pool").unwrap();
    let middle = go_middle(&dir, GoMode::WorkerPool, down.port).unwrap();
    measure("go-pool", &middle, &down, &[None]).await;
}
