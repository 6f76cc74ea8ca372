//! Real HTTP/2 programs for the HTTP/2 + gRPC suite: gRPC servers and clients in Python
//! (grpcio, whose C core has its own HTTP/2 and HPACK) and Node.js (@grpc/grpc-js on Node's
//! nghttp2), and Go `net/http` speaking unencrypted HTTP/2 (h2c, prior knowledge) on both
//! sides. They are real implementations, not hand-made frames: the agent must follow what
//! runtimes actually send (many streams multiplexed on one connection, HPACK's dynamic
//! table, trailers, RST_STREAM on a deadline, messages larger than a frame).
//!
//! The programs live in `tests/grpc/`. Each client multiplexes all its calls on ONE
//! connection, carries its own id in every call (`id=<n>`, n = 1..calls) and prints one
//! report line ([`GrpcReport`], [`H2cReport`]) that counts what it saw, connections included,
//! so a suite can hold the agent's spans against the client's own account. A client exits
//! non-zero only on an outcome its mode does not expect (a `fail` call answering NOT_FOUND
//! is expected), so [`run_client`](tracer_testkit::workloads::run_client) fails exactly then.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use crate::linking::require_python_module;
use tracer_testkit::workloads::Server;
use tracer_testkit::workloads::go::{DEBIAN_GOPATH, go_build, go_build_by};
use tracer_testkit::workloads::python::{interpreter, python};
use tracer_testkit::workloads::{TempDir, reported, spawn_printing_port};

/// grpcio server of `demo.Greeter`: Say, Fail, Slow, Count (server streaming), Big, Echo,
/// Relay.
pub const PYTHON_SERVER: &str = include_str!("../grpc/server.py");
/// grpcio client: `PORT MODE CALLS CONCURRENCY`, one channel, [`PYTHON_MODES`].
pub const PYTHON_CLIENT: &str = include_str!("../grpc/client.py");
/// @grpc/grpc-js server of `demo.Greeter`: Say, Echo and Relay.
pub const NODE_SERVER: &str = include_str!("../grpc/server.js");
/// @grpc/grpc-js client: `PORT MODE CALLS CONCURRENCY`, one client, [`NODE_MODES`].
pub const NODE_CLIENT: &str = include_str!("../grpc/client.js");
/// Go gRPC server (grpc-go from Debian's golang-google-grpc-dev): Say, Relay.
pub const GO_GRPC_SERVER: &str = include_str!("../grpc/grpc_server.go");
/// Go gRPC client: `PORT MODE CALLS CONCURRENCY` (`say` or `relay`), one connection.
pub const GO_GRPC_CLIENT: &str = include_str!("../grpc/grpc_client.go");
/// Go `net/http` h2c server (Go ≥ 1.24): `/hello?id=N`, `/status/503`.
pub const GO_H2C_SERVER: &str = include_str!("../grpc/h2c_server.go");
/// Go `net/http` h2c client (Go ≥ 1.24): `PORT REQUESTS CONCURRENCY`.
pub const GO_H2C_CLIENT: &str = include_str!("../grpc/h2c_client.go");

/// The Python client's modes (see `tests/grpc/client.py`). The status each call ends with:
/// `say`, `stream`, `big`, `metadata` OK; `fail` NOT_FOUND; `deadline` DEADLINE_EXCEEDED;
/// `mixed` cycles through the six in this order (call n is mode (n-1) % 6); `relay` calls
/// `Relay`, which answers what the chain behind it answers.
///
/// `metadata` sends 40 distinct keys per call, but grpcio's encoder (gRPC's C core) writes
/// custom metadata as literals *without indexing*: they never enter HPACK's dynamic table.
/// The Node.js client's `metadata` mode is the one that fills the table and evicts.
pub const PYTHON_MODES: &[&str] = &[
    "say", "fail", "deadline", "stream", "big", "metadata", "mixed", "relay",
];

/// The Node.js client's modes: `say`, and `metadata` (40 distinct keys of about 100 bytes
/// per call, indexed by nghttp2: each call's headers overflow the 4 KiB dynamic table).
pub const NODE_MODES: &[&str] = &["say", "metadata"];

/// Messages `Count` streams per call in the `stream` mode.
pub const STREAM_MESSAGES: u64 = 5;
/// Bytes of `Big`'s answer: many of HTTP/2's default 16 KiB frames, more than its initial
/// 64 KiB flow-control window, and grpcio moves several hundred KiB per syscall with it
/// (more than one record of the agent's capture holds).
pub const BIG_BYTES: usize = 300_000;
/// Distinct metadata keys per call in the `metadata` modes.
pub const METADATA_KEYS: usize = 40;
/// The deadline the `deadline` mode sets on `Slow` (which answers after 2 s).
pub const DEADLINE_SECS: f64 = 0.3;

// ---- Python (grpcio) ---------------------------------------------------------------------

/// The grpcio server on 127.0.0.1 (16 worker threads); fails with the fix when grpcio is
/// not installed.
pub fn python_grpc_server() -> Result<Server> {
    require_python_module("grpc")?;
    let mut cmd = python();
    cmd.arg("-c").arg(PYTHON_SERVER);
    spawn_printing_port(cmd, "python3 grpc server")
}

/// The grpcio server whose `Relay` calls `method` (`Say` or `Relay`) of the server on
/// `downstream_port`, forwarding the request and its `x-request-id`.
pub fn python_grpc_relay(downstream_port: u16, method: &str) -> Result<Server> {
    require_python_module("grpc")?;
    let mut cmd = python();
    cmd.arg("-c").arg(PYTHON_SERVER);
    relaying(&mut cmd, downstream_port, method);
    spawn_printing_port(cmd, "python3 grpc relay")
}

fn relaying(cmd: &mut Command, downstream_port: u16, method: &str) {
    cmd.env("GRPC_RELAY_PORT", downstream_port.to_string())
        .env("GRPC_RELAY_METHOD", method);
}

/// The grpcio client against `port`: `calls` calls of `mode` ([`PYTHON_MODES`]) on one
/// channel, `concurrency` at once. Prints a [`GrpcReport`] line; run it with `run_client`.
pub fn python_grpc_client(port: u16, mode: &str, calls: u32, concurrency: u32) -> Command {
    let mut cmd = python();
    cmd.arg("-c").arg(PYTHON_CLIENT).args([
        port.to_string(),
        mode.to_owned(),
        calls.to_string(),
        concurrency.to_string(),
    ]);
    cmd
}

// ---- Node.js (@grpc/grpc-js) ---------------------------------------------------------------

/// Where `cargo xtask test` installs the npm packages the suites use (`@grpc/grpc-js`),
/// outside any global prefix: the `node_modules` put on `NODE_PATH`.
pub fn node_modules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/node/node_modules")
}

/// `node` with the suite's `node_modules` on `NODE_PATH`, run from the temporary directory
/// (no stray `node_modules` of the working directory is picked up).
pub fn node() -> Command {
    interpreter("node", "NODE_PATH", node_modules_dir())
}

/// Fails with the fix when `module` cannot be required from the suites' `node_modules`.
pub fn require_node_module(module: &str) -> Result<()> {
    let out = node()
        .args(["-e", &format!("require({module:?})")])
        .output()
        .context("cannot start node (install nodejs, or run `cargo xtask test` which does)")?;
    ensure!(
        out.status.success(),
        "node cannot require {module}: run `cargo xtask test`, which installs it into {}",
        node_modules_dir().display()
    );
    Ok(())
}

/// The @grpc/grpc-js server on 127.0.0.1 (`Say`, `Echo`); fails with the fix when the
/// package is not installed.
pub fn node_grpc_server() -> Result<Server> {
    require_node_module("@grpc/grpc-js")?;
    let mut cmd = node();
    cmd.arg("-e").arg(NODE_SERVER);
    spawn_printing_port(cmd, "node grpc server")
}

/// The @grpc/grpc-js server whose `Relay` calls `method` (`Say` or `Relay`) of the server
/// on `downstream_port` (after 0-4 ms of work), forwarding the request and its
/// `x-request-id`.
pub fn node_grpc_relay(downstream_port: u16, method: &str) -> Result<Server> {
    require_node_module("@grpc/grpc-js")?;
    let mut cmd = node();
    cmd.arg("-e").arg(NODE_SERVER);
    relaying(&mut cmd, downstream_port, method);
    spawn_printing_port(cmd, "node grpc relay")
}

/// The @grpc/grpc-js client calling `Say` `calls` times, `concurrency` at once, on one
/// connection. Prints a [`GrpcReport`] line.
pub fn node_grpc_client(port: u16, calls: u32, concurrency: u32) -> Command {
    node_grpc_client_mode(port, "say", calls, concurrency)
}

/// [`node_grpc_client`] in another of [`NODE_MODES`].
pub fn node_grpc_client_mode(port: u16, mode: &str, calls: u32, concurrency: u32) -> Command {
    let mut cmd = node();
    cmd.arg("-e").arg(NODE_CLIENT).args([
        port.to_string(),
        mode.to_owned(),
        calls.to_string(),
        concurrency.to_string(),
    ]);
    cmd
}

// ---- Go (net/http h2c) --------------------------------------------------------------------

/// The newer Go the h2c programs need (`http.Server.Protocols` is Go 1.24's), from
/// `TRACER_GO_NEWER`.
pub fn newer_go() -> Result<PathBuf> {
    std::env::var_os("TRACER_GO_NEWER").map(PathBuf::from).context(
        "TRACER_GO_NEWER is not set: run the suite with `cargo xtask test`, which fetches Go 1.24",
    )
}

fn build_h2c(go: &Path, dir: &TempDir, name: &str, source: &str) -> Result<PathBuf> {
    go_build_by(go, dir, name, source, &[]).with_context(|| {
        format!(
            "building {name} with {} (it needs Go 1.24 or later: `cargo xtask test` fetches one into TRACER_GO_NEWER)",
            go.display()
        )
    })
}

/// Builds (into `dir`, with `go`) and starts the h2c server on 127.0.0.1: unencrypted HTTP/2
/// with prior knowledge only (an HTTP/1.1 request is refused). `GET /hello?id=N` answers 200
/// `hello N` (no newline), `GET /status/503` answers 503 `unavailable`.
pub fn go_h2c_server(go: &Path, dir: &TempDir) -> Result<Server> {
    let bin = build_h2c(go, dir, "h2c_server", GO_H2C_SERVER)?;
    spawn_printing_port(Command::new(bin), "go h2c server")
}

/// [`go_h2c_server`] whose `/hello?id=N` first calls `GET /down?id=N` on
/// 127.0.0.1:`downstream_port` (HTTP/1.1, after 0-4 ms of work) from its handler goroutine.
pub fn go_h2c_relay(go: &Path, dir: &TempDir, downstream_port: u16) -> Result<Server> {
    let bin = build_h2c(go, dir, "h2c_server", GO_H2C_SERVER)?;
    let mut cmd = Command::new(bin);
    cmd.env("H2C_RELAY_PORT", downstream_port.to_string());
    spawn_printing_port(cmd, "go h2c relay")
}

/// Builds (into `dir`, with `go`) the h2c client against `port`: `GET /hello?id=N` for N =
/// 1..=`requests`, request 1 alone (it brings the server's SETTINGS), then `concurrency` at
/// once, all on one connection while `concurrency` is within the server's stream limit (250
/// for Go's server; beyond it Go's transport dials more). Prints an [`H2cReport`] line.
pub fn go_h2c_client(
    go: &Path,
    dir: &TempDir,
    port: u16,
    requests: u32,
    concurrency: u32,
) -> Result<Command> {
    let bin = build_h2c(go, dir, "h2c_client", GO_H2C_CLIENT)?;
    let mut cmd = Command::new(bin);
    cmd.args([
        port.to_string(),
        requests.to_string(),
        concurrency.to_string(),
    ]);
    Ok(cmd)
}

// ---- Go (grpc-go) -----------------------------------------------------------------------------

fn build_go_grpc(dir: &TempDir, name: &str, source: &str) -> Result<PathBuf> {
    go_build(dir, name, source).with_context(|| {
        format!(
            "building {name} (it needs grpc-go under {DEBIAN_GOPATH}: `cargo xtask test` installs Debian's golang-google-grpc-dev)"
        )
    })
}

/// Builds (into `dir`, with Debian's `go`) and starts the Go gRPC server on 127.0.0.1:
/// `Say`, and `Relay` when `relay_to` names a downstream (port, method).
pub fn go_grpc_server(dir: &TempDir, relay_to: Option<(u16, &str)>) -> Result<Server> {
    let bin = build_go_grpc(dir, "grpc_server", GO_GRPC_SERVER)?;
    let mut cmd = Command::new(bin);
    if let Some((port, method)) = relay_to {
        relaying(&mut cmd, port, method);
    }
    spawn_printing_port(cmd, "go grpc server")
}

/// Builds (into `dir`) the Go gRPC client against `port`: `calls` calls of `mode` (`say` or
/// `relay`), `concurrency` at once on one connection. Prints a [`GrpcReport`] line.
pub fn go_grpc_client(
    dir: &TempDir,
    port: u16,
    mode: &str,
    calls: u32,
    concurrency: u32,
) -> Result<Command> {
    let bin = build_go_grpc(dir, "grpc_client", GO_GRPC_CLIENT)?;
    let mut cmd = Command::new(bin);
    cmd.args([
        port.to_string(),
        mode.to_owned(),
        calls.to_string(),
        concurrency.to_string(),
    ]);
    Ok(cmd)
}

// ---- reports -------------------------------------------------------------------------------

/// A gRPC client's own account:
/// `calls=N ok=K codes=OK:K,NOT_FOUND:F,DEADLINE_EXCEEDED:D messages=M conns=C`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcReport {
    pub calls: u64,
    /// Calls that ended with status OK.
    pub ok: u64,
    /// Calls by final status name; OK, NOT_FOUND and DEADLINE_EXCEEDED are always there.
    pub codes: BTreeMap<String, u64>,
    /// Response messages received (a `stream` call counts 5, a failed call 0).
    pub messages: u64,
    /// TCP connections to the server the client process had open during the run.
    pub conns: u64,
}

impl GrpcReport {
    /// Calls that ended with `code` (`"NOT_FOUND"`).
    pub fn code(&self, code: &str) -> u64 {
        self.codes.get(code).copied().unwrap_or(0)
    }
}

pub fn parse_grpc_report(stdout: &str) -> Result<GrpcReport> {
    let codes = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("codes="))
        .with_context(|| format!("no codes= in {stdout:?}"))?
        .split(',')
        .map(|kv| {
            let (code, n) = kv
                .split_once(':')
                .with_context(|| format!("bad code count {kv:?}"))?;
            Ok((code.to_owned(), n.parse()?))
        })
        .collect::<Result<BTreeMap<String, u64>>>()?;
    Ok(GrpcReport {
        calls: reported(stdout, "calls")?,
        ok: reported(stdout, "ok")?,
        codes,
        messages: reported(stdout, "messages")?,
        conns: reported(stdout, "conns")?,
    })
}

/// The h2c client's own account: `requests=N ok=K conns=C` (C: TCP connections dialed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2cReport {
    pub requests: u64,
    pub ok: u64,
    pub conns: u64,
}

pub fn parse_h2c_report(stdout: &str) -> Result<H2cReport> {
    Ok(H2cReport {
        requests: reported(stdout, "requests")?,
        ok: reported(stdout, "ok")?,
        conns: reported(stdout, "conns")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse() {
        let r = parse_grpc_report(
            "calls=12 ok=8 codes=OK:8,NOT_FOUND:2,DEADLINE_EXCEEDED:2 messages=16 conns=1\n",
        )
        .unwrap();
        assert_eq!((r.calls, r.ok, r.messages, r.conns), (12, 8, 16, 1));
        assert_eq!(
            (
                r.code("OK"),
                r.code("NOT_FOUND"),
                r.code("DEADLINE_EXCEEDED")
            ),
            (8, 2, 2)
        );
        assert_eq!(r.code("UNAVAILABLE"), 0);
        let h = parse_h2c_report("requests=100 ok=100 conns=1\n").unwrap();
        assert_eq!(
            h,
            H2cReport {
                requests: 100,
                ok: 100,
                conns: 1
            }
        );
        assert!(parse_grpc_report("calls=1 ok=1").is_err());
    }
}
