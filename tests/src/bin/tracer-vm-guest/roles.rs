//! The guest's traffic: each role runs as its own process (the binary re-executes itself), so
//! the agent sees a real server and a real client, as it would on a node.

use std::io::{BufReader, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};

use anyhow::{Context as _, Result, bail};

use crate::http::{self, Connection};

/// `serve [--proxy-to PORT]`: listens on an ephemeral port of 127.0.0.1, prints
/// `listening <port>` (the readiness signal) and serves until killed, a thread per connection.
pub fn serve(args: &[String]) -> Result<()> {
    let proxy_to = match args {
        [] => None,
        [flag, port] if flag == "--proxy-to" => Some(port.parse().context("--proxy-to PORT")?),
        _ => bail!("usage: serve [--proxy-to PORT]"),
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {port}")?;
    out.flush()?;
    drop(out);
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            if let Err(e) = handle(stream, proxy_to) {
                eprintln!("server {port}: {e:#}");
            }
        });
    }
    Ok(())
}

/// One fd for reading and writing (no `try_clone`: see [`Connection`]).
fn handle(stream: TcpStream, proxy_to: Option<u16>) -> Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some(request) = http::read_message(&mut reader)? {
        let close = request.wants_close();
        let (status, body) = route(&request, proxy_to);
        http::respond(reader.get_mut(), status, body.as_bytes(), close)?;
        if close {
            break;
        }
    }
    Ok(())
}

/// `/missing…` is 404, POST is 201, `/front` on a proxy calls the backend's `/back` on this
/// thread (so in-process causality links the two), anything else is 200.
fn route(request: &http::Message, proxy_to: Option<u16>) -> (u16, String) {
    let method = request.start[0].as_str();
    let path = request.start[1].split('?').next().unwrap_or_default();
    if path.starts_with("/missing") {
        return (404, format!("no {path} here"));
    }
    if method == "POST" {
        return (201, format!("stored {} bytes", request.body.len()));
    }
    if let (Some(backend), "/front") = (proxy_to, path) {
        return match http::request_once(backend, "GET", "/back", b"") {
            Ok(exchange) => (
                200,
                format!(
                    "front got {} from the backend: {}",
                    exchange.status,
                    String::from_utf8_lossy(&exchange.body)
                ),
            ),
            Err(e) => (502, format!("backend failed: {e}")),
        };
    }
    (200, format!("hello from {path}"))
}

/// `client PORT [--keep-alive] METHOD PATH [METHOD PATH]…`: sends the requests (on one
/// connection with `--keep-alive`, else one connection each) and prints one line per
/// exchange: `exchange <method> <path> <status> <local port>`.
pub fn client(args: &[String]) -> Result<()> {
    let usage = "usage: client PORT [--keep-alive] METHOD PATH [METHOD PATH]...";
    let (port, rest) = args.split_first().context(usage)?;
    let port: u16 = port.parse().context(usage)?;
    let (keep_alive, rest) = match rest.split_first() {
        Some((flag, rest)) if flag == "--keep-alive" => (true, rest),
        _ => (false, rest),
    };
    if rest.is_empty() || rest.len() % 2 != 0 {
        bail!(usage);
    }
    let pairs: Vec<_> = rest.chunks(2).collect();
    let mut shared = if keep_alive {
        Some(Connection::open(port)?)
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    for (i, pair) in pairs.iter().enumerate() {
        let (method, path) = (&pair[0], &pair[1]);
        let body: &[u8] = if method == "POST" { b"name=vm" } else { b"" };
        let last = i + 1 == pairs.len();
        let exchange = match shared.as_mut() {
            Some(conn) => conn.request(method, path, body, last)?,
            None => http::request_once(port, method, path, body)?,
        };
        writeln!(
            out,
            "exchange {} {} {} {}",
            exchange.method, exchange.path, exchange.status, exchange.local_port
        )?;
    }
    out.flush()?;
    Ok(())
}
