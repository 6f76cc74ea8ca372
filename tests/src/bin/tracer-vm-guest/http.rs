//! Just enough HTTP/1.1 over `std::net` for the guest's servers and clients: requests and
//! responses with `Content-Length` bodies, keep-alive, one `write` per message. No python,
//! no curl: the guest carries nothing but this binary and the agent.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

/// A parsed request or response head plus its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `GET /path HTTP/1.1` or `HTTP/1.1 200 OK`, split on spaces (the reason keeps its own).
    pub start: [String; 3],
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Connection: close` was asked for (HTTP/1.1 keeps the connection otherwise).
    pub fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn status(&self) -> io::Result<u16> {
        self.start[1]
            .parse()
            .map_err(|_| bad(format!("bad status line {:?}", self.start)))
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one message. `Ok(None)`: the peer closed the connection before a new message began.
pub fn read_message(reader: &mut impl BufRead) -> io::Result<Option<Message>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let start = [(); 3].map(|_| parts.next().unwrap_or_default().to_owned());
    if start[0].is_empty() || start[1].is_empty() {
        return Err(bad(format!("bad start line {line:?}")));
    }
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed inside the head".into()));
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {trimmed:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut message = Message {
        start,
        headers,
        body: Vec::new(),
    };
    let length: usize = match message.header("content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| bad(format!("bad content-length {v:?}")))?,
        None => 0,
    };
    message.body.resize(length, 0);
    reader.read_exact(&mut message.body)?;
    Ok(Some(message))
}

/// Serialises a message; the caller sends it with one `write_all`.
pub fn encode(start: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// One response as the client saw it, with the connection's local port (the server span's
/// peer port) so spans can be matched to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub local_port: u16,
    pub body: Vec<u8>,
}

/// A client connection (to 127.0.0.1:`port`, or any address). Reads and writes use the one socket fd the
/// process connected: the agent follows connections by fd, so a `try_clone` (a `dup`) would
/// be a different, untracked descriptor.
pub struct Connection {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
    local_port: u16,
}

impl Connection {
    pub fn open_to(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        let local_port = stream.local_addr()?.port();
        Ok(Connection {
            reader: BufReader::new(stream),
            addr,
            local_port,
        })
    }

    /// Sends one request and reads its response. `close` asks the server to close after it.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        close: bool,
    ) -> io::Result<Exchange> {
        let mut headers = vec![
            ("Host", self.addr.to_string()),
            ("User-Agent", "tracer-vm-guest/1".to_owned()),
        ];
        if close {
            headers.push(("Connection", "close".to_owned()));
        }
        self.reader.get_mut().write_all(&encode(
            &format!("{method} {path} HTTP/1.1"),
            &headers,
            body,
        ))?;
        let response = read_message(&mut self.reader)?
            .ok_or_else(|| bad(format!("no response to {method} {path}")))?;
        Ok(Exchange {
            method: method.to_owned(),
            path: path.to_owned(),
            status: response.status()?,
            local_port: self.local_port,
            body: response.body,
        })
    }
}

/// One request on a fresh connection, closed afterwards.
pub fn request_once(port: u16, method: &str, path: &str, body: &[u8]) -> io::Result<Exchange> {
    request_once_to(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        method,
        path,
        body,
    )
}

pub fn request_once_to(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<Exchange> {
    Connection::open_to(addr)?.request(method, path, body, true)
}

/// Writes a response with one `write_all`.
pub fn respond(stream: &mut TcpStream, status: u16, body: &[u8], close: bool) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Other",
    };
    let mut headers = vec![("Content-Type", "text/plain".to_owned())];
    if close {
        headers.push(("Connection", "close".to_owned()));
    }
    stream.write_all(&encode(
        &format!("HTTP/1.1 {status} {reason}"),
        &headers,
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_request_with_body() {
        let bytes = encode(
            "POST /submit HTTP/1.1",
            &[("Host", "x".to_owned())],
            b"hello",
        );
        let mut reader = &bytes[..];
        let m = read_message(&mut reader).unwrap().unwrap();
        assert_eq!(m.start, ["POST", "/submit", "HTTP/1.1"].map(String::from));
        assert_eq!(m.header("host"), Some("x"));
        assert_eq!(m.header("content-length"), Some("5"));
        assert_eq!(m.body, b"hello");
        assert!(read_message(&mut reader).unwrap().is_none());
    }

    #[test]
    fn parses_status_and_reason_with_spaces() {
        let bytes = encode("HTTP/1.1 404 Not Found", &[], b"");
        let m = read_message(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(m.status().unwrap(), 404);
        assert_eq!(m.start[2], "Not Found");
    }

    #[test]
    fn rejects_truncated_heads() {
        assert!(read_message(&mut &b"GET / HTTP/1.1\r\nHost: x\r\n"[..]).is_err());
    }
}
