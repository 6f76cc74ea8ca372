//! Exchange → span, following the stable OpenTelemetry HTTP semantic conventions.
//!
//! Timing (documented in the README): a SERVER span starts when the read that carried the
//! first request byte returned and ends when the write carrying the last response byte was
//! entered; a CLIENT span starts when the write of the first request byte was entered and
//! ends when the read carrying the last response byte returned. So a client span encloses the
//! server span of the same exchange.

use std::net::SocketAddr;
use std::sync::Arc;

use tracer_common::Role;

use super::clock::Clock;
use super::model::{
    AttrStr, AttrValue, Attributes, Resource, SpanId, SpanKind, SpanRecord, SpanStatus,
};
use crate::http::{Exchange, RequestHead};

/// What the span builder needs to know about the connection an exchange travelled on.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    role: Role,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    /// The addresses as attribute text, formatted once per connection and shared by its
    /// spans (formatting an IP costs more than the rest of an attribute).
    local_ip: Option<Arc<str>>,
    peer_ip: Option<Arc<str>>,
}

impl ConnMeta {
    pub fn new(role: Role, local: Option<SocketAddr>, peer: Option<SocketAddr>) -> Self {
        ConnMeta {
            role,
            local,
            peer,
            local_ip: local.map(|a| a.ip().to_string().into()),
            peer_ip: peer.map(|a| a.ip().to_string().into()),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn local(&self) -> Option<SocketAddr> {
        self.local
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }
}

/// Appends `n` in decimal without going through `fmt`.
fn push_u16(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(d as char);
    }
}

const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

/// Query parameters whose values never leave the agent.
const SENSITIVE_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "key",
    "auth",
    "authorization",
    "signature",
    "sig",
    "x-goog-signature",
    "awsaccesskeyid",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "session",
    "sessionid",
    "code",
];

pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if SENSITIVE_PARAMS.contains(&name.to_ascii_lowercase().as_str()) => {
                format!("{name}=REDACTED")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Splits `Host` into host and port, handling `[v6]:port`.
fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            return (h, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (host, None),
    }
}

/// The path and query of a request target (origin or absolute form).
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    // Absolute-form (proxies): keep only the path.
    let target = if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map(|i| &rest[i..]).unwrap_or("/")
    } else {
        target
    };
    let target = target.split('#').next().unwrap_or(target);
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}

fn method_attrs(req: &RequestHead, attrs: &mut Attributes) -> String {
    if let Some(&known) = KNOWN_METHODS.iter().find(|&&m| m == req.method) {
        attrs.push(("http.request.method", AttrStr::from_static(known).into()));
        req.method.clone()
    } else {
        attrs.push(("http.request.method", AttrStr::from_static("_OTHER").into()));
        attrs.push(("http.request.method_original", req.method.as_str().into()));
        "HTTP".to_owned()
    }
}

/// `(service, method)` of a gRPC call: a `/package.Service/Method` path with a gRPC
/// content type.
pub fn grpc_method(req: &RequestHead) -> Option<(&str, &str)> {
    let grpc = req
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/grpc"));
    if !grpc {
        return None;
    }
    let (service, method) = req.target.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// Whether gRPC status `code` makes the span an error: every non-OK status for a client;
/// for a server only those that mean the server failed (the RPC conventions: UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
fn grpc_failed(kind: SpanKind, code: u32) -> bool {
    match kind {
        SpanKind::Client => code != 0,
        _ => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// The span of one exchange. Its trace id and parent are left for the linker to decide.
pub fn build_span(
    exchange: &Exchange,
    conn: &ConnMeta,
    resource: Arc<Resource>,
    clock: &Clock,
    span_id: SpanId,
) -> SpanRecord {
    let req = &exchange.request;
    let mut attrs: Attributes = Vec::with_capacity(16);
    let mut name = method_attrs(req, &mut attrs);
    let (path, query) = split_target(&req.target);
    let kind = match conn.role {
        Role::Client => SpanKind::Client,
        _ => SpanKind::Server,
    };
    let host = req.header("host").map(split_host);

    match kind {
        SpanKind::Server => {
            attrs.push(("url.path", path.into()));
            if let Some(q) = query {
                attrs.push(("url.query", redact_query(q).into()));
            }
            attrs.push(("url.scheme", AttrStr::from_static("http").into()));
            let (address, port) = match host {
                Some((h, p)) => (Some(h.into()), p.or(conn.local.map(|l| l.port()))),
                None => (
                    conn.local_ip.clone().map(AttrStr::from),
                    conn.local.map(|l| l.port()),
                ),
            };
            if let Some(a) = address {
                attrs.push(("server.address", a.into()));
            }
            if let Some(p) = port {
                attrs.push(("server.port", AttrValue::Int(p.into())));
            }
            if let (Some(peer), Some(ip)) = (conn.peer, &conn.peer_ip) {
                attrs.push(("client.address", ip.clone().into()));
                attrs.push(("client.port", AttrValue::Int(peer.port().into())));
            }
        }
        SpanKind::Client => {
            let (address, port) = match host {
                Some((h, p)) => (h.to_owned(), p.or(conn.peer.map(|p| p.port()))),
                None => (
                    conn.peer_ip.as_deref().unwrap_or_default().to_owned(),
                    conn.peer.map(|p| p.port()),
                ),
            };
            // `http://{authority}{path}[?{query}]`, built in place: `format!` costs more than
            // the rest of the span.
            let query = query.map(redact_query);
            let mut full = String::with_capacity(
                "http://[]:65535?".len()
                    + address.len()
                    + path.len()
                    + query.as_ref().map_or(0, String::len),
            );
            full.push_str("http://");
            match port {
                Some(p) if p != 80 => {
                    if address.contains(':') {
                        full.push('[');
                        full.push_str(&address);
                        full.push(']');
                    } else {
                        full.push_str(&address);
                    }
                    full.push(':');
                    push_u16(&mut full, p);
                }
                _ => full.push_str(&address),
            }
            full.push_str(path);
            if let Some(q) = query {
                full.push('?');
                full.push_str(&q);
            }
            attrs.push(("url.full", full.into()));
            if !address.is_empty() {
                attrs.push(("server.address", address.into()));
            }
            if let Some(p) = port {
                attrs.push(("server.port", AttrValue::Int(p.into())));
            }
        }
    }
    if let (Some(peer), Some(ip)) = (conn.peer, &conn.peer_ip) {
        attrs.push(("network.peer.address", ip.clone().into()));
        attrs.push(("network.peer.port", AttrValue::Int(peer.port().into())));
    }
    if let (Some(local), Some(ip)) = (conn.local, &conn.local_ip) {
        attrs.push(("network.local.address", ip.clone().into()));
        attrs.push(("network.local.port", AttrValue::Int(local.port().into())));
    }
    attrs.push(("network.transport", AttrStr::from_static("tcp").into()));
    attrs.push((
        "network.protocol.version",
        AttrStr::from_static(match req.version {
            0 => "1.0",
            1 => "1.1",
            _ => "2",
        })
        .into(),
    ));
    if let Some(ua) = req.header("user-agent") {
        attrs.push(("user_agent.original", ua.into()));
    }
    if let Some(id) = req.header("x-request-id") {
        attrs.push(("http.request.header.x-request-id", id.into()));
    }
    // A size counted across lost framing is only a lower bound: better none than a wrong one.
    if exchange.request_body_bytes > 0 && !exchange.request_incomplete {
        attrs.push((
            "http.request.body.size",
            AttrValue::Int(exchange.request_body_bytes as i64),
        ));
    }

    // gRPC over HTTP/2: an RPC span (`package.Service/Method`) by the RPC conventions.
    let grpc = grpc_method(req);
    if let Some((service, method)) = grpc {
        name = format!("{service}/{method}");
        attrs.push(("rpc.system", AttrStr::from_static("grpc").into()));
        attrs.push(("rpc.service", service.into()));
        attrs.push(("rpc.method", method.into()));
    }

    let mut status = SpanStatus::Unset;
    if let Some(resp) = &exchange.response {
        attrs.push((
            "http.response.status_code",
            AttrValue::Int(resp.status.into()),
        ));
        if !exchange.response_incomplete {
            attrs.push((
                "http.response.body.size",
                AttrValue::Int(exchange.response_body_bytes as i64),
            ));
        }
        let failed = match kind {
            SpanKind::Server => resp.status >= 500,
            SpanKind::Client => resp.status >= 400,
        };
        let grpc_status = grpc
            .is_some()
            .then(|| resp.header("grpc-status")?.trim().parse::<u32>().ok())
            .flatten();
        if let Some(code) = grpc_status {
            attrs.push(("rpc.grpc.status_code", AttrValue::Int(code.into())));
        }
        if let Some(code) = grpc_status.filter(|&c| grpc_failed(kind, c)) {
            attrs.push(("error.type", code.to_string().into()));
            status = SpanStatus::Error {
                description: resp.header("grpc-message").unwrap_or_default().to_owned(),
            };
        } else if failed {
            attrs.push(("error.type", resp.status.to_string().into()));
            status = SpanStatus::Error {
                description: String::new(),
            };
        }
    }
    if let Some(err) = &exchange.error {
        attrs.push(("error.type", AttrStr::from_static(err.error_type()).into()));
        status = SpanStatus::Error {
            description: err.to_string(),
        };
    }

    let (start, end) = span_bounds(exchange, kind);
    SpanRecord {
        trace_id: [0; 16],
        span_id,
        parent_span_id: None,
        trace_state: String::new(),
        parent_sampled: None,
        name,
        kind,
        start_unix_nanos: clock.to_unix_nanos(start),
        end_unix_nanos: clock.to_unix_nanos(end.max(start)),
        attributes: attrs,
        status,
        resource,
    }
}

/// Monotonic (start, end) of the span; see the module docs.
pub fn span_bounds(exchange: &Exchange, kind: SpanKind) -> (u64, u64) {
    let req = &exchange.request_timing;
    let resp = exchange.response_timing.as_ref();
    // Without a response, the exchange ended when the connection closed (or, lacking that,
    // with the last request byte).
    let unanswered_end = exchange.closed_at_ns.unwrap_or(req.last_exit_ns);
    match kind {
        SpanKind::Server => (
            req.first_exit_ns,
            resp.map(|r| r.last_enter_ns).unwrap_or(unanswered_end),
        ),
        SpanKind::Client => (
            req.first_enter_ns,
            resp.map(|r| r.last_exit_ns).unwrap_or(unanswered_end),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Headers, MessageTiming, ResponseHead};

    fn exchange(target: &str, host: Option<&str>) -> Exchange {
        let headers: Headers = host.map(|h| ("host", h)).into_iter().collect();
        Exchange {
            seq: 0,
            request: RequestHead {
                method: "GET".into(),
                target: target.into(),
                version: 1,
                headers,
            },
            request_body_bytes: 0,
            request_timing: MessageTiming::default(),
            response: None,
            response_body_bytes: 0,
            response_timing: None,
            error: None,
            request_incomplete: false,
            response_incomplete: false,
            closed_at_ns: None,
        }
    }

    fn span(role: Role, target: &str, host: Option<&str>, local: &str, peer: &str) -> SpanRecord {
        let conn = ConnMeta::new(role, local.parse().ok(), peer.parse().ok());
        let resource = Arc::new(Resource {
            attributes: Vec::new(),
        });
        let clock = Clock::from_offset(0);
        build_span(&exchange(target, host), &conn, resource, &clock, [1; 8])
    }

    fn attr(span: &SpanRecord, key: &str) -> Option<String> {
        span.attr(key).map(ToString::to_string)
    }

    #[test]
    fn client_url_full_and_addresses() {
        let client = |target, host, peer| span(Role::Client, target, host, "10.0.0.1:40000", peer);
        let url = |s: SpanRecord| attr(&s, "url.full").unwrap_or_default();
        assert_eq!(
            url(client("/a?token=x&b=1", Some("api:8080"), "10.0.0.2:9")),
            "http://api:8080/a?token=REDACTED&b=1"
        );
        assert_eq!(url(client("/", Some("api"), "10.0.0.2:80")), "http://api/");
        assert_eq!(url(client("/x", None, "[::1]:8080")), "http://[::1]:8080/x");
        assert_eq!(url(client("/x", None, "[::1]:80")), "http://::1/x");
        assert_eq!(url(client("/x", None, "10.0.0.2:0")), "http://10.0.0.2:0/x");
        let s = client("/x", None, "10.0.0.2:65535");
        assert_eq!(attr(&s, "url.full").unwrap(), "http://10.0.0.2:65535/x");
        assert_eq!(attr(&s, "server.address").unwrap(), "10.0.0.2");
        assert_eq!(attr(&s, "network.peer.address").unwrap(), "10.0.0.2");
        assert_eq!(attr(&s, "network.local.address").unwrap(), "10.0.0.1");
        assert_eq!(s.attr("http.request.method"), Some(&AttrValue::from("GET")));
        assert_eq!(s.attr("url.scheme"), None);
    }

    #[test]
    fn server_attributes() {
        let s = span(
            Role::Server,
            "/p?q=1",
            None,
            "10.0.0.2:8080",
            "10.0.0.1:40000",
        );
        for (key, value) in [
            ("url.path", "/p"),
            ("url.query", "q=1"),
            ("url.scheme", "http"),
            ("server.address", "10.0.0.2"),
            ("server.port", "8080"),
            ("client.address", "10.0.0.1"),
            ("network.transport", "tcp"),
            ("network.protocol.version", "1.1"),
        ] {
            assert_eq!(attr(&s, key).as_deref(), Some(value), "{key}");
        }
        assert_eq!(s.name, "GET");
    }

    #[test]
    fn body_sizes_only_when_fully_seen() {
        let conn = ConnMeta::new(
            Role::Server,
            "10.0.0.2:80".parse().ok(),
            "10.0.0.1:4000".parse().ok(),
        );
        let resource = Arc::new(Resource {
            attributes: Vec::new(),
        });
        let mut e = exchange("/up", None);
        e.request_body_bytes = 61_434;
        e.response = Some(ResponseHead {
            status: 201,
            reason: "Created".into(),
            version: 1,
            headers: Headers::default(),
        });
        e.response_body_bytes = 16;
        let build =
            |e: &Exchange| build_span(e, &conn, resource.clone(), &Clock::from_offset(0), [1; 8]);
        let s = build(&e);
        assert_eq!(attr(&s, "http.request.body.size").as_deref(), Some("61434"));
        assert_eq!(attr(&s, "http.response.body.size").as_deref(), Some("16"));
        e.request_incomplete = true;
        let s = build(&e);
        assert_eq!(attr(&s, "http.request.body.size"), None);
        assert_eq!(attr(&s, "http.response.body.size").as_deref(), Some("16"));
        e.response_incomplete = true;
        assert_eq!(attr(&build(&e), "http.response.body.size"), None);
    }

    fn grpc_span(role: Role, grpc_status: Option<&str>) -> SpanRecord {
        let mut e = exchange("/demo.Greeter/Say", Some("greeter:50051"));
        e.request.method = "POST".into();
        e.request.version = crate::http2::VERSION_2;
        e.request
            .headers
            .push("content-type", "application/grpc+proto");
        let mut headers: Headers = [("content-type", "application/grpc")].into_iter().collect();
        if let Some(code) = grpc_status {
            headers.push("grpc-status", code);
            headers.push("grpc-message", "why");
        }
        e.response = Some(ResponseHead {
            status: 200,
            version: crate::http2::VERSION_2,
            reason: String::new(),
            headers,
        });
        let conn = ConnMeta::new(
            role,
            "10.0.0.1:40000".parse().ok(),
            "10.0.0.2:50051".parse().ok(),
        );
        let resource = Arc::new(Resource {
            attributes: Vec::new(),
        });
        build_span(&e, &conn, resource, &Clock::from_offset(0), [1; 8])
    }

    #[test]
    fn grpc_calls_follow_the_rpc_conventions() {
        let s = grpc_span(Role::Server, Some("0"));
        assert_eq!(s.name, "demo.Greeter/Say");
        assert_eq!(attr(&s, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attr(&s, "rpc.service").as_deref(), Some("demo.Greeter"));
        assert_eq!(attr(&s, "rpc.method").as_deref(), Some("Say"));
        assert_eq!(attr(&s, "rpc.grpc.status_code").as_deref(), Some("0"));
        assert_eq!(attr(&s, "network.protocol.version").as_deref(), Some("2"));
        assert_eq!(s.status, SpanStatus::Unset);
        // NOT_FOUND is the caller's error, not the server's.
        let server = grpc_span(Role::Server, Some("5"));
        assert_eq!(server.status, SpanStatus::Unset);
        assert_eq!(attr(&server, "error.type"), None);
        let client = grpc_span(Role::Client, Some("5"));
        assert_eq!(
            client.status,
            SpanStatus::Error {
                description: "why".into()
            }
        );
        assert_eq!(attr(&client, "error.type").as_deref(), Some("5"));
        // DEADLINE_EXCEEDED and INTERNAL are the server's too.
        for code in ["4", "13"] {
            assert!(matches!(
                grpc_span(Role::Server, Some(code)).status,
                SpanStatus::Error { .. }
            ));
        }
        // No status (a reset stream): no code, and the HTTP 200 is no error by itself.
        let none = grpc_span(Role::Client, None);
        assert_eq!(attr(&none, "rpc.grpc.status_code"), None);
        assert_eq!(none.status, SpanStatus::Unset);
    }

    #[test]
    fn a_path_without_grpc_content_type_is_plain_http() {
        let mut e = exchange("/demo.Greeter/Say", None);
        e.request.version = crate::http2::VERSION_2;
        assert_eq!(grpc_method(&e.request), None);
        e.request.headers.push("content-type", "application/grpc");
        assert_eq!(grpc_method(&e.request), Some(("demo.Greeter", "Say")));
        e.request.target = "/only-one".into();
        assert_eq!(grpc_method(&e.request), None);
    }
}
