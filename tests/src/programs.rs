//! Real servers and clients for the fidelity suites (`tests/tests/programs.rs`,
//! `tests/tests/abuse.rs`): nginx, Go and Node.js programs, Python `requests`, wrk, and the
//! span bookkeeping their assertions share. Each server reports readiness by printing its
//! port (or, for nginx, by accepting a connection); every wait is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use tracer_testkit::harness::{Agent, Server};
use tracer_testkit::spans::find_one;
pub use tracer_testkit::spans::{count_of, counts, of_kind, span_pid, spans_of, summary};
use tracer_testkit::{OtlpReceiver, ReceivedSpan, ReceiverProtocol};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracer-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let p = self.join(name);
        std::fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `cmd` with stdout piped and waits for the port it prints as its first line.
pub fn spawn_printing_port(mut cmd: Command, what: &str) -> Result<Server> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = match line.trim().parse() {
        Ok(p) => p,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not report its port: {line:?}");
        }
    };
    Ok(Server { child, port })
}

/// Waits until `addr` accepts a TCP connection: the readiness signal of servers that do not
/// print their port.
pub fn wait_for_listener(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a client to completion and returns its pid and stdout; fails with its stderr.
pub fn run_client(mut cmd: Command, what: &str) -> Result<(u32, String)> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((pid, stdout))
}

/// `key=value` from a client's report line (`requests=100 conns=4`).
pub fn reported(stdout: &str, key: &str) -> Result<u64> {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .with_context(|| format!("no {key}= in {stdout:?}"))
}

// ---- Python ----------------------------------------------------------------------------

/// Where `cargo xtask test` installs the Python packages the suites use (`requests`),
/// outside the system's site-packages.
pub fn python_packages_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/python")
}

/// `python3` with the suite's package directory on `PYTHONPATH`.
pub fn python() -> Command {
    interpreter("python3", "PYTHONPATH", python_packages_dir())
}

/// `program` with `dir` first on its module search path `var` (then whatever the
/// environment had), run from the temporary directory: no stray modules of the working
/// directory are picked up.
pub fn interpreter(program: &str, var: &str, dir: PathBuf) -> Command {
    let mut cmd = Command::new(program);
    let mut paths = vec![dir];
    if let Some(p) = std::env::var_os(var) {
        paths.extend(std::env::split_paths(&p));
    }
    cmd.env(var, std::env::join_paths(paths).expect("no separator"));
    cmd.current_dir(std::env::temp_dir());
    cmd
}

/// An HTTP/1.1 application server in Python (`http.server` underneath): `GET` answers
/// `hello <path>`; `POST`/`PUT` read the body (Content-Length or chunked; `Expect:
/// 100-continue` is answered by `http.server` itself) and answer `201 received <n>`.
/// `fork`: one process per connection (`ForkingMixIn`: the parent accepts, the child
/// serves), else one thread per connection.
pub fn python_app_server(bind: &str, fork: bool) -> Result<Server> {
    let script = format!(
        r#"
import http.server, socket, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def reply(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(200, "hello %s\n" % self.path)
    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            n = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return n
                n += len(self.rfile.read(size))
                self.rfile.readline()
        return len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
    def do_POST(self):
        self.reply(201, "received %d\n" % self.read_body())
    do_PUT = do_POST
base = socketserver.ForkingMixIn if {fork} else socketserver.ThreadingMixIn
class Server(base, http.server.HTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 overflows under the suites' 64 concurrent
    # clients; a production server listens with a deep one.
    request_queue_size = 1024
    address_family = socket.AF_INET6 if ":" in "{bind}" else socket.AF_INET
srv = Server(("{bind}", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#,
        fork = if fork { "True" } else { "False" },
    );
    let mut cmd = python();
    cmd.arg("-c").arg(script);
    spawn_printing_port(cmd, "python3 app server")
}

/// A Python server that accepts connections and holds them open without reading: idle
/// connections by the thousand, in one thread.
pub fn python_holding_server() -> Result<Server> {
    let script = r#"
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c = s.accept()[0]
    c.send(b"H")
    held.append(c)
"#;
    let mut cmd = python();
    cmd.arg("-c").arg(script);
    spawn_printing_port(cmd, "python3 holding server")
}

/// A `requests.Session` (one keep-alive connection) making `gets` GETs and one POST of
/// `post_bytes`; prints `requests=N`.
pub fn python_requests_client(port: u16, gets: usize, post_bytes: usize) -> Command {
    let script = format!(
        r#"
import requests
s = requests.Session()
n = 0
for i in range({gets}):
    r = s.get("http://127.0.0.1:{port}/requests/%d" % i)
    assert r.status_code == 200, r.status_code
    n += 1
r = s.post("http://127.0.0.1:{port}/requests/post", data=b"x" * {post_bytes})
assert r.status_code == 201 and r.text == "received {post_bytes}\n", r.text
n += 1
print("requests=%d" % n, flush=True)
"#
    );
    let mut cmd = python();
    cmd.arg("-c").arg(script);
    cmd
}

/// A client that writes each request with one `sendmsg` of many iovecs: a Content-Length
/// POST of 11 × 100 bytes in 12 iovecs (more than the kernel side copies: the rest is
/// counted), then a chunked POST (`hello world`, 11 bytes) in 8, the way Node.js and nginx
/// write chunked messages. Prints `requests=2`.
pub fn python_vectored_client(port: u16) -> Command {
    let script = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}))
f = s.makefile("rb")
def answer():
    status = f.readline()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = f.read(length)
    assert status.split()[1] == b"201", status
    return body
parts = [b"v" * 100] * 11
head = b"POST /vectored/length HTTP/1.1\r\nHost: t\r\nContent-Length: 1100\r\n\r\n"
assert s.sendmsg([head] + parts) == len(head) + 1100
assert answer() == b"received 1100\n"
chunked = [
    b"POST /vectored/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"5\r\n", b"hello", b"\r\n", b"6\r\n", b" world", b"\r\n", b"0\r\n\r\n",
]
assert s.sendmsg(chunked) == sum(map(len, chunked))
assert answer() == b"received 11\n"
print("requests=2", flush=True)
"#
    );
    let mut cmd = python();
    cmd.arg("-c").arg(script);
    cmd
}

/// Fails with the fix when `requests` cannot be imported.
pub fn require_python_requests() -> Result<()> {
    let out = python()
        .args(["-c", "import requests"])
        .output()
        .context("cannot start python3")?;
    ensure!(
        out.status.success(),
        "python3 cannot import requests: run `cargo xtask test`, which installs it into {}",
        python_packages_dir().display()
    );
    Ok(())
}

// ---- Node.js ---------------------------------------------------------------------------

pub const NODE_SERVER: &str = r#"
const http = require("http");
const server = http.createServer((req, res) => {
  let n = 0;
  req.on("data", (c) => (n += c.length));
  req.on("end", () => {
    const body = req.method === "GET" ? `node ${req.url}\n` : `received ${n}\n`;
    res.writeHead(req.method === "GET" ? 200 : 201, { "Content-Type": "text/plain" });
    res.end(body);
  });
});
server.keepAliveTimeout = 30000;
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
"#;

/// `node -e NODE_CLIENT port total concurrency post_bytes`: a keep-alive agent with at
/// most `concurrency` sockets; every fourth request is a POST. Prints `requests=N`.
pub const NODE_CLIENT: &str = r#"
const http = require("http");
const [port, total, concurrency, postBytes] = process.argv.slice(1).map(Number);
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const body = Buffer.alloc(postBytes, 120);
function one(i) {
  return new Promise((resolve, reject) => {
    const post = i % 4 === 3;
    const req = http.request(
      { host: "127.0.0.1", port, agent, path: `/node/${i}`, method: post ? "POST" : "GET",
        headers: post ? { "Content-Length": body.length } : {} },
      (res) => {
        let n = 0;
        res.on("data", (c) => (n += c.length));
        res.on("end", () => (res.statusCode === (post ? 201 : 200) ? resolve() : reject(new Error(`status ${res.statusCode}`))));
      });
    req.on("error", reject);
    if (post) req.write(body);
    req.end();
  });
}
(async () => {
  let next = 0, done = 0;
  async function worker() {
    while (next < total) { const i = next++; await one(i); done++; }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  console.log(`requests=${done}`);
  agent.destroy();
})().catch((e) => { console.error(e); process.exit(1); });
"#;

pub fn node_server() -> Result<Server> {
    let mut cmd = Command::new("node");
    cmd.arg("-e").arg(NODE_SERVER);
    spawn_printing_port(cmd, "node server")
}

pub fn node_client(port: u16, total: usize, concurrency: usize, post_bytes: usize) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg("-e").arg(NODE_CLIENT).args([
        port.to_string(),
        total.to_string(),
        concurrency.to_string(),
        post_bytes.to_string(),
    ]);
    cmd
}

// ---- Go --------------------------------------------------------------------------------

pub const GO_SERVER: &str = r#"package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodGet {
			fmt.Fprintf(w, "go %s\n", r.URL.Path)
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "received %d\n", n)
	})
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	panic(http.Serve(ln, nil))
}
"#;

/// `go-client URL TOTAL CONCURRENCY`: a keep-alive pool of at most CONCURRENCY
/// connections; every fifth request is a POST. Prints `requests=N conns=M` (M: connections
/// the pool opened, from httptrace).
pub const GO_CLIENT: &str = r#"package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
)

func main() {
	base := os.Args[1]
	total, _ := strconv.Atoi(os.Args[2])
	concurrency, _ := strconv.Atoi(os.Args[3])
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: concurrency,
		MaxConnsPerHost:     concurrency,
	}}
	var next, done, conns int64
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			atomic.AddInt64(&conns, 1)
		}
	}}
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&next, 1) - 1
				if i >= int64(total) {
					return
				}
				method, body, want := http.MethodGet, []byte(nil), http.StatusOK
				if i%5 == 4 {
					method, body, want = http.MethodPost, bytes.Repeat([]byte("g"), 1000), http.StatusCreated
				}
				req, _ := http.NewRequest(method, fmt.Sprintf("%s/go/%d", base, i), bytes.NewReader(body))
				req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
				resp, err := client.Do(req)
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					fmt.Fprintln(os.Stderr, "status", resp.StatusCode)
					os.Exit(1)
				}
				atomic.AddInt64(&done, 1)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("requests=%d conns=%d\n", done, conns)
}
"#;

/// Builds a single-file, stdlib-only Go program into `dir` (Go's build cache makes
/// rebuilds cheap).
pub fn go_build(dir: &TempDir, name: &str, source: &str) -> Result<PathBuf> {
    go_build_with(dir, name, source, &[])
}

/// [`go_build`] with extra `go build` flags (`-ldflags=-s -w` for a stripped binary).
pub fn go_build_with(dir: &TempDir, name: &str, source: &str, flags: &[&str]) -> Result<PathBuf> {
    go_build_by(Path::new("go"), dir, name, source, flags)
}

/// Where Debian's Go library packages (golang-*-dev) put their sources: the GOPATH of
/// every build here (GOPATH mode, offline), so a program may import them (grpc-go).
pub const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// [`go_build_with`] by a given `go` command (another Go release).
pub fn go_build_by(
    go: &Path,
    dir: &TempDir,
    name: &str,
    source: &str,
    flags: &[&str],
) -> Result<PathBuf> {
    let src = dir.write(&format!("{name}.go"), source)?;
    let bin = dir.join(name);
    let out = Command::new(go)
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        // GOPATH mode, offline: library imports resolve only in Debian's Go packages.
        .env("GOPATH", DEBIAN_GOPATH)
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        // Never reach for another toolchain over the network.
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("cannot start go (install golang-go, or run `cargo xtask test` which does)")?;
    ensure!(
        out.status.success(),
        "go build {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(bin)
}

// ---- nginx -----------------------------------------------------------------------------

/// nginx as a pre-fork server: a master (as root) and two workers accepting on one shared
/// listener, configured from a generated file in a temporary prefix.
pub struct Nginx {
    master: Child,
    pub port: u16,
    pub workers: Vec<u32>,
    pub dir: TempDir,
}

impl Nginx {
    /// `locations`: the `location` blocks of the one server.
    pub fn start(locations: &str) -> Result<Nginx> {
        let dir = TempDir::new("nginx")?;
        std::fs::create_dir_all(dir.join("html"))?;
        let port = tracer_testkit::ports::free_port()?;
        let p = dir.path().display();
        let conf = format!(
            r#"
daemon off;
master_process on;
worker_processes 2;
user root;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    sendfile on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {p}/html;
        {locations}
    }}
}}
"#
        );
        let conf_path = dir.write("nginx.conf", conf)?;
        let master = Command::new(nginx_binary()?)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start nginx (install it, or run `cargo xtask test` which does)")?;
        let mut nginx = Nginx {
            master,
            port,
            workers: Vec::new(),
            dir,
        };
        wait_for_listener(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).with_context(
            || {
                format!(
                    "nginx: {}",
                    std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
                )
            },
        )?;
        // The readiness probe above is one connection without a request: nginx logs
        // nothing for it and the agent builds no span from it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            nginx.workers = children(nginx.master.id());
            if nginx.workers.len() == 2 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "nginx has workers {:?}",
                nginx.workers
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    pub fn html(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        self.dir.write(&format!("html/{name}"), contents)
    }

    /// Requests nginx has logged (one access-log line each, written when it finishes).
    pub fn logged_requests(&self) -> usize {
        std::fs::read_to_string(self.dir.join("access.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.clone()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (fast shutdown) before exiting.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for w in &self.workers {
            // SAFETY: kill(2); the workers are this test's grandchildren.
            unsafe { libc::kill(*w as i32, libc::SIGKILL) };
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

fn nginx_binary() -> Result<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("nginx not found: install it, or run `cargo xtask test` which does")
}

/// Direct children of `pid` (from `/proc/<pid>/task/*/children`).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out
}

// ---- wrk -------------------------------------------------------------------------------

/// wrk's own pipelining example (`scripts/pipeline.lua`): each write carries three
/// requests, the next three go out when all three answers arrived. Added: it stops the
/// thread after `args[1]` responses (a multiple of three, on one connection), so no request
/// is in flight when wrk exits and every count below is exact.
pub const WRK_PIPELINE_LUA: &str = r#"
local stop_after = 0
local seen = 0

init = function(args)
   stop_after = tonumber(args[1])
   local r = {}
   r[1] = wrk.format(nil, "/small.txt?p=1")
   r[2] = wrk.format(nil, "/small.txt?p=2")
   r[3] = wrk.format(nil, "/small.txt?p=3")
   req = table.concat(r)
end

request = function()
   return req
end

response = function(status, headers, body)
   seen = seen + 1
   if seen >= stop_after then
      wrk.thread:stop()
   end
end
"#;

/// Runs wrk on one connection with the pipelining script until it has `requests`
/// responses (at most 60 s); returns its pid and the requests it reports.
pub fn wrk_pipelined(dir: &TempDir, base_url: &str, requests: u64) -> Result<(u32, u64)> {
    ensure!(requests.is_multiple_of(3), "wrk pipelines by three");
    let script = dir.write("pipeline.lua", WRK_PIPELINE_LUA)?;
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c1", "-d60s", "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(base_url)
        .arg("--")
        .arg(requests.to_string());
    let (pid, out) = run_client(cmd, "wrk (install it, or run `cargo xtask test`)")?;
    // "  12345 requests in 1.00s, 3.45MB read"
    let reported = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse().ok())
        .with_context(|| format!("no request count in wrk's output: {out}"))?;
    ensure!(
        !out.contains("Socket errors") && !out.contains("Non-2xx"),
        "wrk saw errors: {out}"
    );
    Ok((pid, reported))
}

// ---- spans -----------------------------------------------------------------------------

/// The agent, exporting to `rx` over gRPC with short batches and a queue large enough
/// that no span of a test is dropped.
pub async fn agent_exporting_to(rx: &OtlpReceiver, args: &[&str]) -> Result<Agent> {
    Agent::start(
        args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                rx.protocol().otel_name().to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "200000".to_owned()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2000".to_owned()),
        ],
    )
    .await
}

pub async fn receiver() -> Result<OtlpReceiver> {
    OtlpReceiver::start(ReceiverProtocol::Grpc).await
}

/// Waits until at least `want` spans of `pids` arrived, stops the agent (which flushes
/// whatever it still holds) and returns every span of `pids`: the count is then final, so
/// duplicates would show. The agent's metrics are returned too.
pub async fn collect(
    rx: &OtlpReceiver,
    agent: Agent,
    pids: &[u32],
    want: usize,
    timeout: Duration,
) -> Result<(Vec<ReceivedSpan>, String)> {
    let started = std::time::Instant::now();
    let waited = rx
        .wait_for_spans(|spans| count_of(spans, pids) >= want, timeout)
        .await;
    println!("  collect: waited {:?} for {want} spans", started.elapsed());
    let metrics = agent.metrics().await.unwrap_or_default();
    let (_, stderr) = agent.stop()?;
    if let Err(e) = waited {
        let got = spans_of(&rx.spans(), pids);
        // Short first: a CI log keeps a failure's first lines, so the counts, the non-zero
        // counters and the agent's last words come before the span list.
        let nonzero: Vec<&str> = metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            .collect();
        let stderr_lines: Vec<&str> = stderr.lines().collect();
        let tail = &stderr_lines[stderr_lines.len().saturating_sub(30)..];
        let listed = summary(&got);
        let listed: Vec<&str> = listed.lines().collect();
        bail!(
            "expected {want} spans of {pids:?}, got {} {:?}: {e}\nnon-zero metrics:\n{}\nagent stderr (last {} lines):\n{}\nspans (first {} of {}):\n{}",
            got.len(),
            counts(&got),
            nonzero.join("\n"),
            tail.len(),
            tail.join("\n"),
            listed.len().min(60),
            listed.len(),
            listed[..listed.len().min(60)].join("\n"),
        );
    }
    Ok((spans_of(&rx.spans(), pids), metrics))
}

/// How long a test waits for the spans it expects.
pub const WAIT: Duration = Duration::from_secs(30);

/// The one span `f` picks; fails with a summary of all of them when there are none or
/// several.
pub fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    f: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    find_one(spans, what, f).unwrap_or_else(|e| panic!("{e}"))
}

/// [`collect`] for one client process talking to one server process: exactly `n` CLIENT
/// spans of `client`, `n` SERVER spans of `server`, and each server span the child of its
/// client span ([`assert_linked`]).
pub async fn collect_pairs(
    rx: &OtlpReceiver,
    agent: Agent,
    client: u32,
    server: u32,
    n: usize,
) -> Vec<ReceivedSpan> {
    let (spans, _) = collect(rx, agent, &[client, server], 2 * n, WAIT)
        .await
        .unwrap();
    assert_eq!(spans.len(), 2 * n, "{}", summary(&spans));
    assert_eq!(of_kind(&spans, client, "CLIENT").len(), n);
    assert_eq!(of_kind(&spans, server, "SERVER").len(), n);
    assert_eq!(assert_linked(&spans, &[client], &[server]), n);
    for s in &spans {
        assert_eq!(s.attr_str("error.type"), None, "{s:#?}");
    }
    spans
}

/// The distinct values of an integer attribute, e.g. `network.local.port`: one per
/// connection.
pub fn distinct<'a>(
    spans: impl IntoIterator<Item = &'a ReceivedSpan>,
    attr: &str,
) -> BTreeSet<Option<i64>> {
    spans.into_iter().map(|s| s.attr_int(attr)).collect()
}

/// Every SERVER span of `servers` whose client is one of `clients` has that CLIENT span
/// (same connection: the client's local port is the server's peer port, n-th request on
/// both) as its parent, and the client span encloses it. Returns how many pairs matched.
pub fn assert_linked(spans: &[ReceivedSpan], clients: &[u32], servers: &[u32]) -> usize {
    let by_id: BTreeMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut pairs = 0;
    for server in spans
        .iter()
        .filter(|s| s.kind == "SERVER" && servers.contains(&span_pid(s)))
    {
        let parent = by_id
            .get(server.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("SERVER span without a traced parent: {server:#?}"));
        assert!(
            parent.kind == "CLIENT" && clients.contains(&span_pid(parent)),
            "parent of {server:#?} is {parent:#?}"
        );
        assert_eq!(parent.trace_id, server.trace_id);
        assert_eq!(
            parent.attr_int("network.local.port"),
            server.attr_int("network.peer.port"),
            "linked across connections: {parent:#?} {server:#?}"
        );
        assert_eq!(
            parent.attr_str("http.request.method"),
            server.attr_str("http.request.method")
        );
        assert_eq!(
            parent.attr_int("http.response.status_code"),
            server.attr_int("http.response.status_code")
        );
        assert_eq!(
            parent.attr_int("http.response.body.size"),
            server.attr_int("http.response.body.size")
        );
        assert!(
            parent.start_unix_nanos <= server.start_unix_nanos
                && server.end_unix_nanos <= parent.end_unix_nanos,
            "client span must enclose its server span: {parent:#?} {server:#?}"
        );
        pairs += 1;
    }
    pairs
}

/// Agent RSS in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .context("no VmRSS in /proc/<pid>/status")
}

/// Sends raw bytes on a fresh connection and returns everything read until the peer
/// closes or `timeout` passes.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    Ok(out)
}
