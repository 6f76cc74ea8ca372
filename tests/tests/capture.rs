//! Root integration suite: the real agent traces a real server (Python http.server) and a
//! real client (curl), and exports to an OTLP receiver run by the test, over gRPC and over
//! HTTP/protobuf.

use std::time::Duration;

use tracer_testkit::harness::Agent;
use tracer_testkit::spans::{agent_exporting_to, check_encloses, one, span_pid};
use tracer_testkit::workloads::python::{python, python_app_server, python_http_server};
use tracer_testkit::workloads::{CurlRun, LineChild, Server, curl, reported};
use tracer_testkit::{OtlpReceiver, ReceivedSpan, ReceiverProtocol};

async fn collect(rx: &OtlpReceiver, agent: Agent, pids: &[u32], want: usize) -> Vec<ReceivedSpan> {
    tracer_testkit::spans::collect(rx, agent, pids, want, Duration::from_secs(20))
        .await
        .unwrap()
        .0
}

/// For one curl run: exactly one CLIENT span (curl's pid) and exactly one SERVER span (the
/// server's pid) on the same connection, with the expected attributes and timing.
fn assert_pair(
    spans: &[ReceivedSpan],
    run: &CurlRun,
    server: &Server,
    path: &str,
    status: i64,
) -> (ReceivedSpan, ReceivedSpan) {
    let client = one(
        spans,
        &format!("CLIENT span of curl {} for {path}", run.pid),
        |s| {
            s.kind == "CLIENT"
                && span_pid(s) == run.pid
                && s.attr_str("url.full").is_some_and(|u| u.contains(path))
        },
    );
    let local_port = client
        .attr_int("network.local.port")
        .expect("client local port");
    let server_span = one(
        spans,
        &format!("SERVER span for {path} from port {local_port}"),
        |s| {
            s.kind == "SERVER"
                && span_pid(s) == server.pid()
                && s.attr_int("network.peer.port") == Some(local_port)
                && s.attr_str("url.path") == Some(path)
        },
    );

    assert_eq!(client.service_name(), Some("curl"));
    assert_eq!(client.attr_str("http.request.method"), Some("GET"));
    assert_eq!(client.attr_int("http.response.status_code"), Some(status));
    assert_eq!(client.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(client.attr_int("server.port"), Some(server.port as i64));
    assert_eq!(client.attr_str("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(
        client.attr_int("network.peer.port"),
        Some(server.port as i64)
    );
    assert_eq!(client.attr_str("network.protocol.version"), Some("1.1"));
    assert!(
        client
            .attr_str("user_agent.original")
            .is_some_and(|ua| ua.starts_with("curl/"))
    );
    assert_eq!(
        client.status_code,
        if status >= 400 { "ERROR" } else { "UNSET" }
    );

    assert_eq!(server_span.name, format!("GET {path}"));
    assert_eq!(server_span.attr_str("url.template"), Some(path));
    assert_eq!(server_span.attr_str("http.request.method"), Some("GET"));
    assert_eq!(
        server_span.attr_int("http.response.status_code"),
        Some(status)
    );
    assert_eq!(server_span.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(
        server_span.attr_str("network.peer.address"),
        Some("127.0.0.1")
    );
    assert_eq!(
        server_span.attr_int("server.port"),
        Some(server.port as i64)
    );
    assert_eq!(server_span.attr_str("url.scheme"), Some("http"));
    assert!(
        server_span
            .service_name()
            .is_some_and(|s| s.starts_with("python"))
    );
    // 4xx is the client's problem: not an error on the server side.
    assert_eq!(
        server_span.status_code,
        if status >= 500 { "ERROR" } else { "UNSET" }
    );

    check_encloses(client, server_span).unwrap();
    // Both ends are traced: one trace, the server span a child of the client span.
    assert_eq!(server_span.trace_id, client.trace_id);
    assert_eq!(server_span.parent_span_id, client.span_id);
    assert!(
        client.is_root(),
        "curl was not serving anything: {client:#?}"
    );
    (client.clone(), server_span.clone())
}

async fn requests_on_separate_connections(protocol: ReceiverProtocol) {
    let rx = OtlpReceiver::start(protocol)
        .await
        .expect("receiver starts");
    let server = python_http_server("127.0.0.1", false).expect("python server starts");
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);

    let ok = curl(&[&format!("{base}/")]).unwrap();
    let missing = curl(&[&format!("{base}/missing?token=s3cr3t&x=1")]).unwrap();
    let again = curl(&[&format!("{base}/")]).unwrap();
    let pids = [ok.pid, missing.pid, again.pid, server.pid()];
    let spans = collect(&rx, agent, &pids, 6).await;

    assert_eq!(
        spans.len(),
        6,
        "3 requests give exactly 3 CLIENT + 3 SERVER spans: {spans:#?}"
    );
    assert_pair(&spans, &ok, &server, "/", 200);
    assert_pair(&spans, &again, &server, "/", 200);
    let (client, server_span) = assert_pair(&spans, &missing, &server, "/missing", 404);
    // Credentials in the query never leave the agent.
    assert_eq!(
        server_span.attr_str("url.query"),
        Some("token=REDACTED&x=1")
    );
    assert!(!client.attr_str("url.full").unwrap().contains("s3cr3t"));
    // Each process is its own resource.
    assert_ne!(client.resource, server_span.resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_python_over_otlp_grpc() {
    requests_on_separate_connections(ReceiverProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_python_over_otlp_http_protobuf() {
    requests_on_separate_connections(ReceiverProtocol::HttpProtobuf).await;
}

/// With the kernel's default hooks (the socket tracepoints where it has them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_gives_one_pair_per_request() {
    keep_alive_pairs(&[]).await;
}

/// With the syscall tracepoints every kernel has, whatever this one has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_gives_one_pair_per_request_with_syscall_hooks() {
    keep_alive_pairs(&["--data-hooks", "syscalls"]).await;
}

async fn keep_alive_pairs(agent_args: &[&str]) {
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let server = python_http_server("127.0.0.1", true).unwrap();
    let agent = agent_exporting_to(&rx, agent_args).await.unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);
    // One curl, three URLs: curl reuses the connection.
    let run = curl(&[
        &format!("{base}/?n=1"),
        &format!("{base}/?n=2"),
        &format!("{base}/?n=3"),
    ])
    .unwrap();
    let spans = collect(&rx, agent, &[run.pid, server.pid()], 6).await;
    assert_eq!(spans.len(), 6, "{spans:#?}");

    let clients: Vec<_> = spans.iter().filter(|s| s.kind == "CLIENT").collect();
    let servers: Vec<_> = spans.iter().filter(|s| s.kind == "SERVER").collect();
    assert_eq!((clients.len(), servers.len()), (3, 3));
    let port = clients[0].attr_int("network.local.port");
    assert!(
        clients
            .iter()
            .all(|c| c.attr_int("network.local.port") == port),
        "one connection"
    );
    for n in 1..=3 {
        let query = format!("n={n}");
        let client = one(&spans, "client", |s| {
            s.kind == "CLIENT" && s.attr_str("url.full").is_some_and(|u| u.ends_with(&query))
        });
        let server_span = one(&spans, "server", |s| {
            s.kind == "SERVER" && s.attr_str("url.query") == Some(query.as_str())
        });
        assert_eq!(server_span.attr_int("network.peer.port"), port);
        assert_eq!(server_span.parent_span_id, client.span_id, "request {n}");
        assert_eq!(client.attr_int("http.response.status_code"), Some(200));
        assert!(client.start_unix_nanos <= server_span.start_unix_nanos);
        assert!(server_span.end_unix_nanos <= client.end_unix_nanos);
    }
}

/// Steps `CLOCK_REALTIME` by `delta_ns` (as NTP does, or a VM resumed and re-synchronised),
/// and back when dropped.
struct WallClockStep(i128);

impl WallClockStep {
    fn by(delta_ns: i128) -> WallClockStep {
        step_wall_clock(delta_ns);
        WallClockStep(delta_ns)
    }
}

impl Drop for WallClockStep {
    fn drop(&mut self) {
        step_wall_clock(-self.0);
    }
}

fn step_wall_clock(delta_ns: i128) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointers; CLOCK_REALTIME exists and the suite runs as root.
    unsafe {
        assert_eq!(libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts), 0);
        let ns = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128 + delta_ns;
        ts.tv_sec = (ns / 1_000_000_000) as libc::time_t;
        ts.tv_nsec = (ns % 1_000_000_000) as libc::c_long;
        assert_eq!(
            libc::clock_settime(libc::CLOCK_REALTIME, &ts),
            0,
            "setting the wall clock: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The wall clock steps back 300 ms under traffic. Span times are converted from the
/// kernel's monotonic clock, so the agent's next resync of the offset (every 10 s) must not
/// tear the traffic apart: the requests of one keep-alive connection keep their order and
/// every CLIENT span still encloses its SERVER span, whichever side of the resync each was
/// built on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_times_keep_their_order_when_the_wall_clock_steps() {
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let server = python_app_server("127.0.0.1", false).unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    // One connection, requests one after another, `run <seconds>` at a time.
    let mut cmd = python();
    cmd.arg("-c").arg(format!(
        r#"
import http.client, sys, time
c = http.client.HTTPConnection("127.0.0.1", {port})
n = 0
for line in sys.stdin:
    end = time.monotonic() + float(line.split()[1])
    while time.monotonic() < end:
        c.request("GET", "/seq/%d" % n)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        n += 1
        time.sleep(0.002)
    print("requests=%d" % n, flush=True)
"#,
        port = server.port
    ));
    let mut client = LineChild::spawn(&mut cmd).unwrap();
    client.ask("run 1", |l| l.starts_with("requests=")).unwrap();
    let n = {
        let _step = WallClockStep::by(-300_000_000);
        // Longer than the agent's resync interval: one resync falls in it.
        let out = client
            .ask("run 11", |l| l.starts_with("requests="))
            .unwrap();
        reported(&out, "requests").unwrap() as usize
    };
    let spans = collect(&rx, agent, &[client.pid(), server.pid()], 2 * n).await;
    let by_index = |kind: &str, pid: u32| {
        let mut v: Vec<(usize, &ReceivedSpan)> = spans
            .iter()
            .filter(|s| s.kind == kind && span_pid(s) == pid)
            .map(|s| {
                let path = s.attr_str("url.path").or(s.attr_str("url.full")).unwrap();
                let i = path.rsplit('/').next().unwrap().parse().unwrap();
                (i, s)
            })
            .collect();
        v.sort_by_key(|(i, _)| *i);
        v
    };
    let clients = by_index("CLIENT", client.pid());
    let servers = by_index("SERVER", server.pid());
    assert_eq!((clients.len(), servers.len()), (n, n));
    for (i, ((ci, c), (si, s))) in clients.iter().zip(&servers).enumerate() {
        assert_eq!((*ci, *si), (i, i), "one span of each kind per request");
        assert_eq!(s.parent_span_id, c.span_id, "request {i}");
        check_encloses(c, s).unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    for pair in clients.windows(2).chain(servers.windows(2)) {
        let ((i, a), (_, b)) = (pair[0], pair[1]);
        assert!(
            a.end_unix_nanos <= b.start_unix_nanos,
            "{} request {i} ends at {} after the next one starts at {}",
            a.kind,
            a.end_unix_nanos,
            b.start_unix_nanos
        );
    }
}

/// The default a developer sees first: no endpoint, a trace tree on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_mode_prints_trace_trees() {
    let server = python_http_server("127.0.0.1", false).unwrap();
    let agent = Agent::start(&["--pid", &server.pid().to_string()], &[])
        .await
        .unwrap();
    curl(&[&format!("http://127.0.0.1:{}/hello", server.port)]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agent.metric("tracer_spans_exported_total").await.unwrap() < 1 {
        assert!(std::time::Instant::now() < deadline, "no span printed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stdout, _) = agent.stop().unwrap();
    assert!(stdout.contains("trace "), "{stdout}");
    assert!(stdout.contains("SERVER GET /hello 404"), "{stdout}");
    // --pid restricts tracing to the server: curl's CLIENT span is absent.
    assert!(!stdout.contains("CLIENT"), "{stdout}");
}

/// A request carrying `Authorization`, `Cookie` and credentials in its query, answered
/// with `Set-Cookie`: both spans are exported, and no credential value is in any of them
/// (every attribute, event and resource of every span the two processes produced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_collector() {
    const SECRETS: [&str; 6] = [
        "bearer-5ecret-1",
        "cookie-5ecret-2",
        "query-5ecret-3",
        "query-5ecret-4",
        "set-cookie-5ecret-5",
        "basic-5ecret-6",
    ];
    let script = format!(
        r#"
import http.server, socketserver
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_GET(self):
        body = b"welcome\n"
        self.send_response(200)
        self.send_header("Set-Cookie", "session={cookie}; HttpOnly")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = socketserver.TCPServer(("127.0.0.1", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#,
        cookie = SECRETS[4]
    );
    let mut cmd = tracer_testkit::workloads::python::python();
    cmd.arg("-c").arg(script);
    let server =
        tracer_testkit::workloads::spawn_printing_port(cmd, "python3 cookie server").unwrap();
    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let agent = agent_exporting_to(&rx, &[]).await.unwrap();
    let bearer = format!("Authorization: Bearer {}", SECRETS[0]);
    let cookie = format!("Cookie: sid={}", SECRETS[1]);
    let url = format!(
        "http://127.0.0.1:{}/login?user=ann&access_token={}&password={}",
        server.port, SECRETS[2], SECRETS[3]
    );
    let first = curl(&["-o", "/dev/null", "-H", &bearer, "-H", &cookie, &url]).unwrap();
    // Basic credentials in the URL's user part travel as an Authorization header.
    let basic_url = format!("http://ann:{}@127.0.0.1:{}/basic", SECRETS[5], server.port);
    let second = curl(&["-o", "/dev/null", &basic_url]).unwrap();
    let spans = collect(&rx, agent, &[first.pid, second.pid, server.pid()], 4).await;
    assert_eq!(spans.len(), 4, "{}", tracer_testkit::spans::summary(&spans));
    let login = one(&spans, "SERVER span of /login", |s| {
        s.kind == "SERVER" && s.attr_str("url.path") == Some("/login")
    });
    // The request was captured in full (the query is there, values redacted).
    assert_eq!(
        login.attr_str("url.query"),
        Some("user=ann&access_token=REDACTED&password=REDACTED")
    );
    let exported = format!("{spans:?}");
    for secret in SECRETS {
        assert!(
            !exported.contains(secret),
            "{secret} reached the collector: {spans:#?}"
        );
    }
}

/// Real TLS (`openssl s_server`, curl over https) makes no span and no parse error: each
/// server end is counted once as not HTTP, by protocol. (HTTP/2 with prior knowledge is
/// traced: the `http2` suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_counted_as_not_http() {
    const N: usize = 4;
    let dir = tracer_testkit::workloads::TempDir::new("tls").unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed (`apt-get install openssl`)");
    assert!(made.status.success(), "{made:?}");
    let tls_port = tracer_testkit::ports::free_port().unwrap();
    let tls = Server {
        child: std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(tls_port.to_string())
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server starts"),
        port: tls_port,
    };
    tracer_testkit::workloads::wait_for_listener(
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
        Duration::from_secs(10),
    )
    .unwrap();

    let rx = OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap();
    let pids = [tls.pid()];
    let agent = agent_exporting_to(&rx, &["--pid", &pids[0].to_string()])
        .await
        .unwrap();
    for _ in 0..N {
        let page = curl(&["-k", &format!("https://127.0.0.1:{tls_port}/")]).unwrap();
        assert!(page.stdout.contains("s_server"), "{}", page.stdout);
    }
    let tls_metric = "tracer_connections_not_http_total{protocol=\"tls\"}";
    let deadline = std::time::Instant::now() + tracer_testkit::spans::WAIT;
    while agent.metric(tls_metric).await.unwrap() < N as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "not counted: {}",
            agent.metrics().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = agent.metrics().await.unwrap();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(value(tls_metric), N as u64, "one per TLS server end");
    assert_eq!(
        value("tracer_connections_not_http_total{protocol=\"http2\"}"),
        0
    );
    assert_eq!(
        value("tracer_connections_not_http_total{protocol=\"other\"}"),
        0
    );
    assert_eq!(
        value("tracer_http_parse_errors_total"),
        0,
        "no parse-error storm"
    );
    assert_eq!(value("tracer_http_exchanges_total"), 0);
    agent.stop().unwrap();
    assert_eq!(tracer_testkit::spans::spans_of(&rx.spans(), &pids).len(), 0);
}

/// The agent's feature probes on the machine running the suites: they load programs, so
/// they run here with the root suites. This kernel has everything the agent requires.
#[test]
fn feature_probes_on_the_running_kernel() {
    tracer_testkit::harness::require_root();
    use tracer_agent::capture::features::{Feature, Probe, decide, probe};
    let p = probe();
    assert_eq!(*p.get(Feature::RingBuffer), Probe::Yes, "{p:?}");
    assert!(decide(&p).is_ok(), "{p:?}");
}
