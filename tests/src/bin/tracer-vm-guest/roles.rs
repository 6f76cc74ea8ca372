//! The guest's traffic: each role runs as its own process (the binary re-executes itself), so
//! the agent sees a real server and a real client, as it would on a node.

use std::io::{BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use anyhow::{Context as _, Result, bail};

use crate::http::{self, Connection};

/// `serve [--bind ADDR] [--proxy-to PORT|ADDR]`: listens (on an ephemeral port of 127.0.0.1
/// unless `--bind` says otherwise), prints `listening <port>` (the readiness signal) and
/// serves until killed, a thread per connection.
pub fn serve(args: &[String]) -> Result<()> {
    let usage = "usage: serve [--bind ADDR] [--proxy-to PORT|ADDR]";
    let mut bind = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut proxy_to = None;
    let mut rest = args;
    while let [flag, value, tail @ ..] = rest {
        match flag.as_str() {
            "--bind" => bind = value.parse().context(usage)?,
            "--proxy-to" => proxy_to = Some(address(value).context(usage)?),
            _ => bail!(usage),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        bail!(usage);
    }
    let listener = TcpListener::bind(bind)?;
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

/// `PORT` (on 127.0.0.1) or `ADDR:PORT`.
pub fn address(s: &str) -> Result<SocketAddr> {
    match s.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        Err(_) => s
            .parse()
            .with_context(|| format!("{s:?} is neither a port nor an address")),
    }
}

/// One fd for reading and writing (no `try_clone`: see [`Connection`]).
fn handle(stream: TcpStream, proxy_to: Option<SocketAddr>) -> Result<()> {
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

/// `/missing…` is 404, POST is 201, `/front` on a proxy calls the backend's `/back` (with
/// the same query) on this thread (so in-process causality links the two), anything else
/// is 200.
fn route(request: &http::Message, proxy_to: Option<SocketAddr>) -> (u16, String) {
    let method = request.start[0].as_str();
    let (path, query) = match request.start[1].split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.start[1].as_str(), None),
    };
    if path.starts_with("/missing") {
        return (404, format!("no {path} here"));
    }
    if method == "POST" {
        return (201, format!("stored {} bytes", request.body.len()));
    }
    if let (Some(backend), "/front") = (proxy_to, path) {
        let back = match query {
            Some(q) => format!("/back?{q}"),
            None => "/back".to_owned(),
        };
        return match http::request_once_to(backend, "GET", &back, b"") {
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

/// `client PORT|ADDR [--keep-alive] METHOD PATH [METHOD PATH]…`: sends the requests (on one
/// connection with `--keep-alive`, else one connection each) and prints one line per
/// exchange: `exchange <method> <path> <status> <local port>`.
pub fn client(args: &[String]) -> Result<()> {
    let usage = "usage: client PORT|ADDR [--keep-alive] METHOD PATH [METHOD PATH]...";
    let (addr, rest) = args.split_first().context(usage)?;
    let addr = address(addr).context(usage)?;
    let (keep_alive, rest) = match rest.split_first() {
        Some((flag, rest)) if flag == "--keep-alive" => (true, rest),
        _ => (false, rest),
    };
    if rest.is_empty() || rest.len() % 2 != 0 {
        bail!(usage);
    }
    let pairs: Vec<_> = rest.chunks(2).collect();
    let mut shared = if keep_alive {
        Some(Connection::open_to(addr)?)
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
            None => http::request_once_to(addr, method, path, body)?,
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
