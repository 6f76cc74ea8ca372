//! Root integration suite: HTTP fidelity against real programs. Each test runs real servers
//! and clients under the real agent and asserts the exact number of spans per process and
//! their key attributes: one SERVER span per request a server answered, one CLIENT span per
//! request a client made, never two, and each SERVER span the child of its CLIENT span when
//! both ends are traced.

use std::collections::BTreeSet;
use std::time::Duration;

use tracer_testkit::ReceivedSpan;
use tracer_testkit::spans::{
    WAIT, agent_exporting_to, assert_linked, collect, collect_pairs, counts, distinct, of_kind,
    one, receiver, span_pid, spans_of, summary,
};
use tracer_testkit::workloads::curl;
use tracer_testkit::workloads::go::{GO_CLIENT, GO_SERVER, go_build};
use tracer_testkit::workloads::nginx::Nginx;
use tracer_testkit::workloads::node::{node_client, node_server};
use tracer_testkit::workloads::python::python_http_server;
use tracer_testkit::workloads::python::{
    python_app_server, python_requests_client, python_vectored_client, require_python_requests,
};
use tracer_testkit::workloads::wrk::wrk_pipelined;
use tracer_testkit::workloads::{TempDir, reported, run_client, spawn_printing_port};

fn client_path(s: &ReceivedSpan) -> Option<String> {
    let full = s.attr_str("url.full")?;
    let rest = full.strip_prefix("http://")?;
    let path = &rest[rest.find('/')?..];
    Some(path.split('?').next().unwrap_or(path).to_owned())
}

/// curl as the client of a Python application server: HTTP/1.0 (`-0`), several URLs on one
/// keep-alive connection, a POST with `Expect: 100-continue`, a 2 MiB `-T` upload and a
/// chunked upload. The interim `100 Continue` never becomes a span; body sizes are exact.
/// The server reads chunked bodies through an 8 KiB buffer, so a chunk-size line can sit
/// anywhere in a read: the agent copies 16 KiB per syscall here to see every one of them
/// (with the default 4 KiB the size is then omitted, never wrong: see the HTTP unit tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http10_keep_alive_and_uploads() {
    let dir = TempDir::new("curl").unwrap();
    let body_256k: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let file_256k = dir.write("256k.bin", &body_256k).unwrap();
    let file_2m = dir.write("2m.bin", vec![b'u'; 2 * 1024 * 1024]).unwrap();
    let file_100k = dir.write("100k.bin", vec![b'c'; 100_000]).unwrap();

    let rx = receiver().await.unwrap();
    let server = python_app_server("127.0.0.1", false).unwrap();
    let agent = agent_exporting_to(&rx, &["--capture-bytes", "16384"])
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);

    let http10 = curl(&["-0", &format!("{base}/ten")]).unwrap();
    assert_eq!(http10.stdout, "hello /ten\n");
    let keep = curl(&[
        &format!("{base}/ka/1"),
        &format!("{base}/ka/2"),
        &format!("{base}/ka/3"),
    ])
    .unwrap();
    let expect = curl(&[
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", file_256k.display()),
        &format!("{base}/expect"),
    ])
    .unwrap();
    assert_eq!(expect.stdout, format!("received {}\n", 256 * 1024));
    let put = curl(&["-T", &file_2m.display().to_string(), &format!("{base}/put")]).unwrap();
    assert_eq!(put.stdout, format!("received {}\n", 2 * 1024 * 1024));
    let chunked = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file_100k.display()),
        &format!("{base}/chunked"),
    ])
    .unwrap();
    assert_eq!(chunked.stdout, "received 100000\n");

    let runs = [&http10, &keep, &expect, &put, &chunked];
    let mut pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
    pids.push(server.pid());
    let (spans, _) = collect(&rx, agent, &pids, 14, WAIT).await.unwrap();
    assert_eq!(spans.len(), 14, "7 requests, 7 pairs:\n{}", summary(&spans));
    assert_eq!(of_kind(&spans, server.pid(), "SERVER").len(), 7);
    assert_eq!(
        assert_linked(&spans, &pids[..5], &[server.pid()]),
        7,
        "{}",
        summary(&spans)
    );

    // HTTP/1.0: the version on both sides.
    let c = one(&spans, "HTTP/1.0 client", |s| {
        s.kind == "CLIENT" && span_pid(s) == http10.pid
    });
    assert_eq!(c.attr_str("network.protocol.version"), Some("1.0"));
    assert_eq!(c.attr_int("http.response.body.size"), Some(11));
    let s = one(&spans, "HTTP/1.0 server", |s| {
        s.kind == "SERVER" && s.attr_str("url.path") == Some("/ten")
    });
    assert_eq!(s.attr_str("network.protocol.version"), Some("1.0"));

    // Keep-alive: three requests, one connection.
    let ka = of_kind(&spans, keep.pid, "CLIENT");
    assert_eq!(ka.len(), 3);
    let ports = distinct(ka.iter().copied(), "network.local.port");
    assert_eq!(ports.len(), 1, "one connection: {ports:?}");
    let paths: BTreeSet<_> = ka.iter().filter_map(|s| client_path(s)).collect();
    assert_eq!(paths, ["/ka/1", "/ka/2", "/ka/3"].map(String::from).into());

    // Uploads: the final status (not 100), the exact body sizes on both sides.
    for (run, path, method, size) in [
        (&expect, "/expect", "POST", 256 * 1024),
        (&put, "/put", "PUT", 2 * 1024 * 1024),
        (&chunked, "/chunked", "POST", 100_000),
    ] {
        let c = one(&spans, path, |s| {
            s.kind == "CLIENT" && span_pid(s) == run.pid
        });
        let s = one(&spans, path, |s| {
            s.kind == "SERVER" && s.attr_str("url.path") == Some(path)
        });
        let received = format!("received {size}\n").len() as i64;
        for span in [c, s] {
            assert_eq!(
                span.attr_str("http.request.method"),
                Some(method),
                "{span:#?}"
            );
            assert_eq!(span.attr_int("http.response.status_code"), Some(201));
            assert_eq!(
                span.attr_int("http.request.body.size"),
                Some(size),
                "{span:#?}"
            );
            assert_eq!(span.attr_int("http.response.body.size"), Some(received));
            assert_eq!(span.attr_str("error.type"), None, "{span:#?}");
            assert_eq!(span.status_code, "UNSET");
        }
    }
}

/// nginx with a master and two pre-forked workers accepting on one listener, serving static
/// files with `sendfile` (the body never passes through user memory: its bytes are counted
/// from the syscall's return value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_static_files_with_sendfile_and_prefork_workers() {
    let nginx = Nginx::start("location / { }").unwrap();
    nginx.html("small.txt", "hello, nginx\n").unwrap();
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 253) as u8).collect();
    nginx.html("big.bin", &big).unwrap();

    let rx = receiver().await.unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let base = format!("http://127.0.0.1:{}", nginx.port);
    // Three requests on one connection, then six one-request connections: both workers
    // get some (the kernel spreads accepts), each request is answered exactly once.
    let keep = curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &format!("{base}/small.txt"),
        &format!("{base}/big.bin"),
        &format!("{base}/missing"),
    ])
    .unwrap();
    let mut runs = vec![keep];
    for i in 0..6 {
        runs.push(curl(&["-o", "/dev/null", &format!("{base}/big.bin?i={i}")]).unwrap());
    }
    let mut pids = nginx.pids();
    pids.extend(runs.iter().map(|r| r.pid));
    let (spans, _) = collect(&rx, agent, &pids, 18, WAIT).await.unwrap();
    assert_eq!(spans.len(), 18, "9 requests, 9 pairs:\n{}", summary(&spans));
    assert_eq!(wait_for_count(|| nginx.logged_requests(), 9).await, 9);
    let client_pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
    assert_eq!(assert_linked(&spans, &client_pids, &nginx.pids()), 9);
    let served: usize = nginx
        .pids()
        .iter()
        .map(|&w| of_kind(&spans, w, "SERVER").len())
        .sum();
    assert_eq!(served, 9);

    let small = one(&spans, "small.txt", |s| {
        s.kind == "SERVER" && s.attr_str("url.path") == Some("/small.txt")
    });
    assert_eq!(small.attr_int("http.response.status_code"), Some(200));
    assert_eq!(small.attr_int("http.response.body.size"), Some(13));
    let bigs: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == "SERVER" && s.attr_str("url.path") == Some("/big.bin"))
        .collect();
    assert_eq!(bigs.len(), 7);
    for s in bigs {
        assert_eq!(s.attr_int("http.response.status_code"), Some(200));
        assert_eq!(
            s.attr_int("http.response.body.size"),
            Some(300 * 1024),
            "sendfile bytes counted: {s:#?}"
        );
        assert!(s.service_name().is_some_and(|n| n.starts_with("nginx")));
    }
    let missing = one(&spans, "missing", |s| {
        s.kind == "SERVER" && s.attr_str("url.path") == Some("/missing")
    });
    assert_eq!(missing.attr_int("http.response.status_code"), Some(404));
    assert_eq!(missing.status_code, "UNSET", "4xx is not a server error");
}

/// nginx as a reverse proxy in front of a Python server: per proxied request exactly one
/// SERVER and one CLIENT span in the nginx worker that handled it, and one trace from curl
/// through nginx to Python.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_reverse_proxy_one_server_and_one_client_span_per_request() {
    let backend = python_app_server("127.0.0.1", false).unwrap();
    let nginx = Nginx::start(&format!(
        "location /api/ {{ proxy_pass http://127.0.0.1:{}; }}",
        backend.port
    ))
    .unwrap();
    let rx = receiver().await.unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let base = format!("http://127.0.0.1:{}", nginx.port);
    const N: usize = 5;
    let mut runs = Vec::new();
    for i in 0..N {
        let run = curl(&[&format!("{base}/api/item/{i}")]).unwrap();
        assert_eq!(run.stdout, format!("hello /api/item/{i}\n"));
        runs.push(run);
    }
    let client_pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
    let mut pids = nginx.pids();
    pids.extend(&client_pids);
    pids.push(backend.pid());
    let (spans, _) = collect(&rx, agent, &pids, 4 * N, WAIT).await.unwrap();
    assert_eq!(spans.len(), 4 * N, "{}", summary(&spans));

    let nginx_servers: usize = nginx
        .pids()
        .iter()
        .map(|&w| of_kind(&spans, w, "SERVER").len())
        .sum();
    let nginx_clients: usize = nginx
        .pids()
        .iter()
        .map(|&w| of_kind(&spans, w, "CLIENT").len())
        .sum();
    assert_eq!(
        (nginx_servers, nginx_clients),
        (N, N),
        "{}",
        summary(&spans)
    );
    assert_eq!(of_kind(&spans, backend.pid(), "SERVER").len(), N);
    // curl → nginx and nginx → python: each SERVER span under its CLIENT span.
    assert_eq!(assert_linked(&spans, &client_pids, &nginx.pids()), N);
    assert_eq!(assert_linked(&spans, &nginx.pids(), &[backend.pid()]), N);
    // Inside nginx: the upstream request is the child of the request being served, in the
    // same worker, for the same path.
    for i in 0..N {
        let path = format!("/api/item/{i}");
        let server = one(&spans, "nginx SERVER", |s| {
            s.kind == "SERVER"
                && nginx.pids().contains(&span_pid(s))
                && s.attr_str("url.path") == Some(&path)
        });
        let upstream = one(&spans, "nginx CLIENT", |s| {
            s.kind == "CLIENT"
                && nginx.pids().contains(&span_pid(s))
                && client_path(s).as_deref() == Some(&path)
        });
        assert_eq!(span_pid(upstream), span_pid(server));
        assert_eq!(upstream.parent_span_id, server.span_id, "{upstream:#?}");
        assert_eq!(upstream.trace_id, server.trace_id);
        assert_eq!(upstream.attr_int("server.port"), Some(backend.port as i64));
        assert_eq!(upstream.attr_int("http.response.status_code"), Some(200));
        let curl_span = one(&spans, "curl CLIENT", |s| {
            s.kind == "CLIENT"
                && client_pids.contains(&span_pid(s))
                && client_path(s).as_deref() == Some(&path)
        });
        assert!(curl_span.is_root());
        assert_eq!(server.trace_id, curl_span.trace_id, "one trace end to end");
    }
}

/// Python `requests` (a Session: one keep-alive connection) against Python's http.server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_session_against_http_server() {
    require_python_requests().unwrap();
    let rx = receiver().await.unwrap();
    let server = python_app_server("127.0.0.1", false).unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    const GETS: usize = 20;
    let (pid, out) = run_client(
        python_requests_client(server.port, GETS, 5000),
        "python requests client",
    )
    .unwrap();
    let n = reported(&out, "requests").unwrap() as usize;
    assert_eq!(n, GETS + 1);
    let spans = collect_pairs(&rx, agent, pid, server.pid(), n).await;
    let ports = distinct(of_kind(&spans, pid, "CLIENT"), "network.local.port");
    assert_eq!(ports.len(), 1, "a Session keeps one connection");
    let post = one(&spans, "POST", |s| {
        s.kind == "CLIENT" && s.attr_str("http.request.method") == Some("POST")
    });
    assert_eq!(post.attr_int("http.request.body.size"), Some(5000));
    assert_eq!(post.attr_int("http.response.status_code"), Some(201));
    assert!(
        post.attr_str("user_agent.original")
            .is_some_and(|ua| ua.starts_with("python-requests/"))
    );
}

/// `sendmsg` with many iovecs: bytes past the copied iovecs are counted, so a Content-Length
/// body in 12 iovecs is sized exactly, and a chunked body written in 8 keeps its framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectored_writes_are_counted_exactly() {
    let rx = receiver().await.unwrap();
    let server = python_app_server("127.0.0.1", false).unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let (pid, out) = run_client(python_vectored_client(server.port), "vectored client").unwrap();
    assert_eq!(reported(&out, "requests").unwrap(), 2);
    let spans = collect_pairs(&rx, agent, pid, server.pid(), 2).await;
    for (path, size) in [("/vectored/length", 1100), ("/vectored/chunked", 11)] {
        let server_span = one(&spans, path, |s| {
            s.kind == "SERVER" && s.attr_str("url.path") == Some(path)
        });
        let client_span = one(&spans, path, |s| {
            s.kind == "CLIENT" && client_path(s).as_deref() == Some(path)
        });
        for s in [server_span, client_span] {
            assert_eq!(s.attr_int("http.request.body.size"), Some(size), "{s:#?}");
            assert_eq!(s.attr_int("http.response.status_code"), Some(201));
        }
    }
}

/// Node.js `http`: a server and a client with a keep-alive agent (two sockets, requests
/// queued on them), GETs and POSTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_http_server_and_keep_alive_client() {
    let rx = receiver().await.unwrap();
    let server = node_server().unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    const TOTAL: usize = 40;
    let (pid, out) = run_client(node_client(server.port, TOTAL, 2, 3000), "node client").unwrap();
    assert_eq!(reported(&out, "requests").unwrap() as usize, TOTAL);
    let spans = collect_pairs(&rx, agent, pid, server.pid(), TOTAL).await;
    let ports = distinct(of_kind(&spans, pid, "CLIENT"), "network.local.port");
    assert_eq!(ports.len(), 2, "two keep-alive sockets: {ports:?}");
    let posts: Vec<_> = of_kind(&spans, server.pid(), "SERVER")
        .into_iter()
        .filter(|s| s.attr_str("http.request.method") == Some("POST"))
        .collect();
    assert_eq!(posts.len(), TOTAL / 4);
    for p in posts {
        assert_eq!(p.attr_int("http.request.body.size"), Some(3000));
        assert_eq!(p.attr_int("http.response.status_code"), Some(201));
        assert_eq!(p.attr_int("http.response.body.size"), Some(14));
    }
}

/// Go `net/http`: a server, and a client whose Transport keeps a pool of keep-alive
/// connections used by concurrent goroutines (non-blocking connects, completed later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_net_http_server_and_keep_alive_pool() {
    let dir = TempDir::new("go").unwrap();
    let server_bin = go_build(&dir, "server", GO_SERVER).unwrap();
    let client_bin = go_build(&dir, "client", GO_CLIENT).unwrap();
    let rx = receiver().await.unwrap();
    let server = spawn_printing_port(std::process::Command::new(&server_bin), "go server").unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    const TOTAL: usize = 200;
    let mut cmd = std::process::Command::new(&client_bin);
    cmd.args([
        format!("http://127.0.0.1:{}", server.port),
        TOTAL.to_string(),
        "4".to_owned(),
    ]);
    let (pid, out) = run_client(cmd, "go client").unwrap();
    assert_eq!(reported(&out, "requests").unwrap() as usize, TOTAL);
    let conns = reported(&out, "conns").unwrap() as usize;
    let spans = collect_pairs(&rx, agent, pid, server.pid(), TOTAL).await;
    let ports = distinct(of_kind(&spans, pid, "CLIENT"), "network.local.port");
    let peer_ports = distinct(of_kind(&spans, server.pid(), "SERVER"), "client.port");
    assert_eq!(ports, peer_ports, "both ends see the same connections");
    assert!(
        !ports.contains(&None),
        "every CLIENT span has its local port"
    );
    // Go's own count of fresh connections is a lower bound: a connection dialed for a
    // request that another, freed connection then served enters the pool unused, and its
    // first request reports `Reused`.
    assert!(
        (conns..=4).contains(&ports.len()),
        "{} connections seen, Go dialed at least {conns}, the pool holds at most 4",
        ports.len()
    );
    for s in of_kind(&spans, server.pid(), "SERVER") {
        assert_eq!(
            s.attr_str("user_agent.original"),
            Some("Go-http-client/1.1")
        );
        if s.attr_str("http.request.method") == Some("POST") {
            assert_eq!(s.attr_int("http.request.body.size"), Some(1000));
            assert_eq!(s.attr_int("http.response.status_code"), Some(201));
        }
    }
}

/// wrk with its pipelining script against nginx: three requests per write, 3,000 in all,
/// stopping on a batch boundary. wrk's count, nginx's access log, the SERVER spans and the
/// CLIENT spans must all agree exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrk_pipelined_requests_against_nginx() {
    const REQUESTS: u64 = 3000;
    let dir = TempDir::new("wrk").unwrap();
    let nginx = Nginx::start("location / { }").unwrap();
    nginx.html("small.txt", "pipelined\n").unwrap();
    let rx = receiver().await.unwrap();
    let agent = agent_exporting_to(&rx, &["--ring-buffer-bytes", "67108864"])
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", nginx.port);
    let (wrk_pid, responses) = wrk_pipelined(&dir, &base, REQUESTS).unwrap();
    assert_eq!(responses, REQUESTS, "wrk's own count");
    // nginx logs a request once it has answered it; wrk has exited with nothing in flight.
    let logged = wait_for_count(|| nginx.logged_requests(), REQUESTS as usize).await;
    assert_eq!(logged as u64, REQUESTS, "nginx's access log");
    let mut pids = nginx.pids();
    pids.push(wrk_pid);
    let (spans, metrics) = collect(&rx, agent, &pids, 2 * REQUESTS as usize, WAIT)
        .await
        .unwrap();
    println!("wrk: {responses} responses, nginx logged {logged} requests");
    let served: usize = nginx
        .pids()
        .iter()
        .map(|&w| of_kind(&spans, w, "SERVER").len())
        .sum();
    assert_eq!(served as u64, REQUESTS, "one SERVER span per request");
    let clients = of_kind(&spans, wrk_pid, "CLIENT");
    assert_eq!(
        clients.len() as u64,
        REQUESTS,
        "one CLIENT span per request"
    );
    assert_eq!(spans.len() as u64, 2 * REQUESTS);
    assert_eq!(
        assert_linked(&spans, &[wrk_pid], &nginx.pids()) as u64,
        REQUESTS
    );
    assert!(
        metrics.contains("tracer_kernel_drops_total{reason=\"ring_buffer_full\"} 0"),
        "{metrics}"
    );
    for s in &clients {
        assert_eq!(s.attr_int("http.response.status_code"), Some(200));
        assert_eq!(s.attr_int("http.response.body.size"), Some(10));
    }
    // All on one connection, pipelined: one local port.
    let ports = distinct(clients.iter().copied(), "network.local.port");
    assert_eq!(ports.len(), 1);
}

/// Polls `f` (bounded) until it reaches `want`, for counts a server updates just after its
/// clients have their answers (nginx writes its access-log line after the response), then
/// returns it: a count past `want` shows in the caller's equality check.
async fn wait_for_count(f: impl Fn() -> usize, want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while f() < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// IPv6 on [::1], and IPv4 clients of a dual-stack server (v4-mapped addresses, reported
/// as plain IPv4 so both ends of a connection still match).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_and_v4_mapped_dual_stack() {
    let rx = receiver().await.unwrap();
    let v6 = python_http_server("::1", true).unwrap();
    let dual = python_app_server("::", false).unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let run6 = curl(&[
        "-g",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &format!("http://[::1]:{}/?v=6", v6.port),
        &format!("http://[::1]:{}/?v=66", v6.port),
    ])
    .unwrap();
    let run4 = curl(&[&format!("http://127.0.0.1:{}/mapped", dual.port)]).unwrap();
    assert_eq!(run4.stdout, "hello /mapped\n");
    let pids = [run6.pid, v6.pid(), run4.pid, dual.pid()];
    let (spans, _) = collect(&rx, agent, &pids, 6, WAIT).await.unwrap();
    assert_eq!(spans.len(), 6, "{}", summary(&spans));
    assert_eq!(assert_linked(&spans, &[run6.pid], &[v6.pid()]), 2);
    assert_eq!(assert_linked(&spans, &[run4.pid], &[dual.pid()]), 1);
    for s in spans
        .iter()
        .filter(|s| [run6.pid, v6.pid()].contains(&span_pid(s)))
    {
        assert_eq!(s.attr_str("network.peer.address"), Some("::1"), "{s:#?}");
        assert_eq!(s.attr_str("network.local.address"), Some("::1"), "{s:#?}");
        assert_eq!(s.attr_str("server.address"), Some("::1"), "{s:#?}");
    }
    let c6 = of_kind(&spans, run6.pid, "CLIENT");
    assert!(
        c6.iter().all(|s| s
            .attr_str("url.full")
            .is_some_and(|u| u.starts_with(&format!("http://[::1]:{}/", v6.port)))),
        "{c6:#?}"
    );
    let mapped = one(&spans, "dual-stack SERVER", |s| span_pid(s) == dual.pid());
    assert_eq!(mapped.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(mapped.attr_str("network.local.address"), Some("127.0.0.1"));
}

/// A forking server (Python's `ForkingMixIn`): the parent accepts each connection and a
/// forked child serves it. The child never called accept on that socket; the agent follows
/// it because its parent had the socket traced (fork tracepoint + socket identity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forking_server_child_serves_inherited_socket() {
    let rx = receiver().await.unwrap();
    let server = python_app_server("127.0.0.1", true).unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);
    const N: usize = 3;
    let mut runs = Vec::new();
    for i in 0..N {
        let run = curl(&[&format!("{base}/forked/{i}")]).unwrap();
        assert_eq!(run.stdout, format!("hello /forked/{i}\n"));
        runs.push(run);
    }
    let client_pids: Vec<u32> = runs.iter().map(|r| r.pid).collect();
    // The children are gone by now: their spans are the SERVER spans on the server's port.
    let port = server.port as i64;
    let ours = |s: &ReceivedSpan| {
        client_pids.contains(&span_pid(s))
            || (s.kind == "SERVER" && s.attr_int("network.local.port") == Some(port))
    };
    let waited = rx
        .wait_for_spans(
            |spans| spans.iter().filter(|s| ours(s)).count() >= 2 * N,
            WAIT,
        )
        .await;
    agent.stop().unwrap();
    let spans: Vec<ReceivedSpan> = rx.spans().into_iter().filter(|s| ours(s)).collect();
    waited.unwrap_or_else(|e| panic!("{e}:\n{}", summary(&spans)));
    assert_eq!(spans.len(), 2 * N, "{}", summary(&spans));
    let servers: Vec<_> = spans.iter().filter(|s| s.kind == "SERVER").collect();
    assert_eq!(servers.len(), N);
    let children: BTreeSet<u32> = servers.iter().map(|s| span_pid(s)).collect();
    assert_eq!(children.len(), N, "one child per connection");
    assert!(
        !children.contains(&server.pid()),
        "the parent only accepted: {}",
        summary(&spans)
    );
    assert_eq!(
        assert_linked(&spans, &client_pids, &Vec::from_iter(children)),
        N
    );
    for i in 0..N {
        let path = format!("/forked/{i}");
        let s = one(&spans, &path, |s| s.attr_str("url.path") == Some(&path));
        assert_eq!(s.attr_int("http.response.status_code"), Some(200));
        assert_eq!(
            s.attr_int("http.response.body.size"),
            Some(format!("hello {path}\n").len() as i64)
        );
    }
}

/// Every program at once: Go, Node.js and Python clients against their servers, curl and
/// wrk against nginx (static and proxied to Python). At least 10,000 requests, counted from
/// the clients' own reports and nginx's access log; the agent must give exactly one SERVER
/// span and one CLIENT span per request, nginx's upstream requests included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_spans_equal_requests() {
    require_python_requests().unwrap();
    let dir = TempDir::new("mixed").unwrap();
    let go_server_bin = go_build(&dir, "server", GO_SERVER).unwrap();
    let go_client_bin = go_build(&dir, "client", GO_CLIENT).unwrap();
    let py = python_app_server("127.0.0.1", false).unwrap();
    let node = node_server().unwrap();
    let go = spawn_printing_port(std::process::Command::new(&go_server_bin), "go server").unwrap();
    let nginx = Nginx::start(&format!(
        "location /api/ {{ proxy_pass http://127.0.0.1:{}; }} location / {{ }}",
        py.port
    ))
    .unwrap();
    nginx.html("small.txt", "pipelined\n").unwrap();
    nginx.html("page.html", vec![b'p'; 20_000]).unwrap();

    let rx = receiver().await.unwrap();
    let agent = agent_exporting_to(&rx, &["--ring-buffer-bytes", "67108864"])
        .await
        .unwrap();

    const GO_REQUESTS: usize = 5000;
    const NODE_REQUESTS: usize = 2500;
    const PY_GETS: usize = 999;
    const CURL_URLS: usize = 500;
    const WRK_REQUESTS: u64 = 3000;
    let go_run = {
        let bin = go_client_bin.clone();
        let port = go.port;
        std::thread::spawn(move || {
            let mut cmd = std::process::Command::new(bin);
            cmd.args([
                format!("http://127.0.0.1:{port}"),
                GO_REQUESTS.to_string(),
                "8".to_owned(),
            ]);
            run_client(cmd, "go client")
        })
    };
    let node_port = node.port;
    let node_run = std::thread::spawn(move || {
        run_client(
            node_client(node_port, NODE_REQUESTS, 4, 2000),
            "node client",
        )
    });
    let py_port = py.port;
    let py_run = std::thread::spawn(move || {
        run_client(
            python_requests_client(py_port, PY_GETS, 10_000),
            "python requests client",
        )
    });
    // curl: one keep-alive connection with many URLs, static and proxied.
    let base = format!("http://127.0.0.1:{}", nginx.port);
    let curl_static = {
        let mut args = vec!["-o".to_owned(), "/dev/null".to_owned()];
        for i in 0..CURL_URLS {
            args.push(format!("{base}/page.html?i={i}"));
            args.push("-o".to_owned());
            args.push("/dev/null".to_owned());
        }
        args.pop();
        args.pop();
        std::thread::spawn(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&a)
        })
    };
    let curl_proxied = {
        let mut args = Vec::new();
        for i in 0..CURL_URLS {
            args.push(format!("{base}/api/p/{i}"));
        }
        std::thread::spawn(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&a)
        })
    };
    let (wrk_pid, wrk_responses) = wrk_pipelined(&dir, &base, WRK_REQUESTS).unwrap();
    assert_eq!(wrk_responses, WRK_REQUESTS);

    let (go_pid, go_out) = go_run.join().unwrap().unwrap();
    let (node_pid, node_out) = node_run.join().unwrap().unwrap();
    let (py_pid, py_out) = py_run.join().unwrap().unwrap();
    let curl_static = curl_static.join().unwrap().unwrap();
    let curl_proxied = curl_proxied.join().unwrap().unwrap();
    let go_n = reported(&go_out, "requests").unwrap() as usize;
    let node_n = reported(&node_out, "requests").unwrap() as usize;
    let py_n = reported(&py_out, "requests").unwrap() as usize;
    assert_eq!(
        (go_n, node_n, py_n),
        (GO_REQUESTS, NODE_REQUESTS, PY_GETS + 1)
    );
    let nginx_n = wait_for_count(
        || nginx.logged_requests(),
        2 * CURL_URLS + WRK_REQUESTS as usize,
    )
    .await;
    // nginx answered curl's static and proxied requests plus wrk's.
    assert_eq!(nginx_n, 2 * CURL_URLS + WRK_REQUESTS as usize);

    // Requests answered, per server; requests completed, per traced client.
    let server_requests = go_n + node_n + (py_n + CURL_URLS) + nginx_n;
    let client_requests = go_n + node_n + py_n + 2 * CURL_URLS + CURL_URLS + wrk_responses as usize;
    // Every request on the wire, nginx's upstream requests included: as many made as
    // answered.
    assert_eq!(client_requests, server_requests);
    let requests = server_requests;
    assert!(requests >= 10_000, "only {requests} requests");

    let mut pids = vec![
        go.pid(),
        node.pid(),
        py.pid(),
        go_pid,
        node_pid,
        py_pid,
        curl_static.pid,
        curl_proxied.pid,
        wrk_pid,
    ];
    pids.extend(nginx.pids());
    let (spans, metrics) = collect(
        &rx,
        agent,
        &pids,
        server_requests + client_requests,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let c = counts(&spans);
    let n = |pid: u32, kind: &str| c.get(&(pid, kind.to_owned())).copied().unwrap_or(0);
    let nginx_servers: usize = nginx.pids().iter().map(|&w| n(w, "SERVER")).sum();
    let nginx_clients: usize = nginx.pids().iter().map(|&w| n(w, "CLIENT")).sum();
    let server_spans =
        n(go.pid(), "SERVER") + n(node.pid(), "SERVER") + n(py.pid(), "SERVER") + nginx_servers;
    let client_spans = n(go_pid, "CLIENT")
        + n(node_pid, "CLIENT")
        + n(py_pid, "CLIENT")
        + n(curl_static.pid, "CLIENT")
        + n(curl_proxied.pid, "CLIENT")
        + nginx_clients
        + n(wrk_pid, "CLIENT");
    println!(
        "mixed workload: {requests} requests, {server_spans} server spans, {client_spans} client spans"
    );
    println!(
        "  go {go_n}, node {node_n}, python requests {py_n}, curl {} (static {CURL_URLS}, proxied {CURL_URLS} + {CURL_URLS} upstream by nginx), wrk {wrk_responses} pipelined",
        2 * CURL_URLS
    );
    let drops = metrics
        .lines()
        .filter(|l| l.starts_with("tracer_kernel_drops_total"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(server_spans, server_requests, "SERVER spans\n{drops}");
    assert_eq!(client_spans, client_requests, "CLIENT spans\n{drops}");
    assert_eq!((n(go.pid(), "SERVER"), n(go_pid, "CLIENT")), (go_n, go_n));
    assert_eq!(
        (n(node.pid(), "SERVER"), n(node_pid, "CLIENT")),
        (node_n, node_n)
    );
    assert_eq!(n(py.pid(), "SERVER"), py_n + CURL_URLS);
    assert_eq!(nginx_servers, nginx_n);
    assert_eq!(nginx_clients, CURL_URLS);
    assert_eq!(n(wrk_pid, "CLIENT") as u64, wrk_responses);
    // Every traced pair is linked, none across connections.
    assert_eq!(assert_linked(&spans, &[go_pid], &[go.pid()]), go_n);
    assert_eq!(assert_linked(&spans, &[node_pid], &[node.pid()]), node_n);
    assert_eq!(
        assert_linked(
            &spans,
            &[py_pid, nginx.pids()[0], nginx.pids()[1]],
            &[py.pid()]
        ),
        py_n + CURL_URLS
    );
    // Not a single span of another process slipped in under these pids.
    assert_eq!(spans_of(&spans, &pids).len(), spans.len());
    // Every exchange was seen whole: nothing lost, nothing mis-framed.
    let broken: Vec<_> = spans
        .iter()
        .filter(|s| s.attr_str("error.type").is_some())
        .cloned()
        .collect();
    assert!(
        broken.is_empty(),
        "{} spans with errors:\n{}\n{drops}",
        broken.len(),
        summary(&broken)
    );
}

/// `--sample-ratio 0.5`: each trace (curl's CLIENT span and the server's SERVER span, linked)
/// is exported whole or not at all, and spans not exported are counted. Requests that
/// carry a `traceparent` follow its `sampled` flag instead (parent-based, like the SDKs):
/// flagged ids are picked so that the ratio alone would decide the other way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_keeps_or_drops_whole_traces() {
    const REQUESTS: u64 = 40;
    const FLAGGED: u64 = 5;
    let rx = receiver().await.unwrap();
    let server = python_app_server("127.0.0.1", false).unwrap();
    let agent = agent_exporting_to(&rx, &["--sample-ratio", "0.5"])
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);
    let mut pids = vec![server.pid()];
    for i in 0..REQUESTS {
        pids.push(curl(&[&format!("{base}/sampled/{i}")]).unwrap().pid);
    }
    // Low 8 bytes all `f`: above any ratio below 1; all `0` but the last: below any above 0.
    let kept_by_flag = |i: u64| format!("{i:016x}ffffffffffffffff");
    let dropped_by_flag = |i: u64| format!("{i:016x}0000000000000001");
    for i in 1..=FLAGGED {
        for (trace, flags) in [(kept_by_flag(i), "01"), (dropped_by_flag(i), "00")] {
            let tp = format!("traceparent: 00-{trace}-00f067aa0ba902b7-{flags}");
            let url = format!("{base}/flagged/{flags}/{i}");
            pids.push(curl(&["-H", &tp, &url]).unwrap().pid);
        }
    }
    // Stopping flushes every decided span; the unsampled ones were counted.
    let deadline = std::time::Instant::now() + WAIT;
    while agent.metric("tracer_spans_unsampled_total").await.unwrap() < 2 * FLAGGED {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer spans counted as unsampled than the caller asked to drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().unwrap();
    let spans = spans_of(&rx.spans(), &pids);
    let mut traces: std::collections::BTreeMap<&str, Vec<&ReceivedSpan>> = Default::default();
    for s in &spans {
        traces.entry(s.trace_id.as_str()).or_default().push(s);
    }
    for (id, t) in &traces {
        let kinds: BTreeSet<_> = t.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(
            (t.len(), kinds),
            (2, ["CLIENT", "SERVER"].into()),
            "trace {id} exported whole:\n{}",
            summary(&spans)
        );
    }
    for i in 1..=FLAGGED {
        assert!(
            traces.contains_key(kept_by_flag(i).as_str()),
            "sampled=1 caller {i} kept:\n{}",
            summary(&spans)
        );
        assert!(
            !traces.contains_key(dropped_by_flag(i).as_str()),
            "sampled=0 caller {i} dropped"
        );
    }
    // 40 independent halves: all kept or all dropped has odds of 2^-39.
    let by_ratio = traces.len() - FLAGGED as usize;
    assert!(
        (1..REQUESTS as usize).contains(&by_ratio),
        "{by_ratio} of {REQUESTS} traces kept"
    );
}
