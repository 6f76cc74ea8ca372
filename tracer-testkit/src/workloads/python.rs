//! Python: the suites' servers (`http.server` based) and clients (`requests`, raw sockets),
//! run by the interpreter `cargo xtask test` provides packages for.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use super::{Server, spawn_printing_port};

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

/// Python's `http.server` on an ephemeral port of 127.0.0.1 (or `bind`). HTTP/1.1 with
/// keep-alive when `keep_alive`, else HTTP/1.0 (one request per connection). It prints the
/// port once it listens: that line is the readiness signal.
pub fn python_http_server(bind: &str, keep_alive: bool) -> Result<Server> {
    let script = format!(
        r#"
import http.server, socket, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "{proto}"
    def log_message(self, *args): pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in "{bind}" else socket.AF_INET
srv = Server(("{bind}", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#,
        proto = if keep_alive { "HTTP/1.1" } else { "HTTP/1.0" },
    );
    let mut cmd = python();
    cmd.arg("-c").arg(script);
    spawn_printing_port(cmd, "python3 http.server")
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
