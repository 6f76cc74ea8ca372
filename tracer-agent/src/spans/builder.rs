//! Exchange → span, following the stable OpenTelemetry HTTP semantic conventions.
//!
//! Timing (documented in the README): a SERVER span starts when the read that carried the
//! first request byte returned and ends when the write carrying the last response byte was
//! entered; a CLIENT span starts when the write of the first request byte was entered and
//! ends when the read carrying the last response byte returned. So a client span encloses the
//! server span of the same exchange.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::{RngCore, SeedableRng, rngs::SmallRng};
use tracer_common::Role;

use super::clock::Clock;
use super::model::{
    AttrValue, Attributes, Resource, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId,
};
use crate::http::{Exchange, RequestHead};

/// What the span builder needs to know about the connection an exchange travelled on.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub role: Role,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

pub struct IdGenerator {
    rng: SmallRng,
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator {
            rng: SmallRng::from_os_rng(),
        }
    }
}

impl IdGenerator {
    pub fn trace_id(&mut self) -> TraceId {
        loop {
            let mut id = [0u8; 16];
            self.rng.fill_bytes(&mut id);
            if id != [0; 16] {
                return id;
            }
        }
    }
    pub fn span_id(&mut self) -> SpanId {
        loop {
            let mut id = [0u8; 8];
            self.rng.fill_bytes(&mut id);
            if id != [0; 8] {
                return id;
            }
        }
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

fn split_target(target: &str) -> (&str, Option<&str>) {
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
    if KNOWN_METHODS.contains(&req.method.as_str()) {
        attrs.push(("http.request.method", req.method.as_str().into()));
        req.method.clone()
    } else {
        attrs.push(("http.request.method", "_OTHER".into()));
        attrs.push(("http.request.method_original", req.method.as_str().into()));
        "HTTP".to_owned()
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
    let name = method_attrs(req, &mut attrs);
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
            attrs.push(("url.scheme", "http".into()));
            let (address, port) = match host {
                Some((h, p)) => (Some(h.to_owned()), p.or(conn.local.map(|l| l.port()))),
                None => (
                    conn.local.map(|l| l.ip().to_string()),
                    conn.local.map(|l| l.port()),
                ),
            };
            if let Some(a) = address {
                attrs.push(("server.address", a.into()));
            }
            if let Some(p) = port {
                attrs.push(("server.port", AttrValue::Int(p.into())));
            }
            if let Some(peer) = conn.peer {
                attrs.push(("client.address", peer.ip().to_string().into()));
                attrs.push(("client.port", AttrValue::Int(peer.port().into())));
            }
        }
        SpanKind::Client => {
            let (address, port) = match host {
                Some((h, p)) => (h.to_owned(), p.or(conn.peer.map(|p| p.port()))),
                None => (
                    conn.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
                    conn.peer.map(|p| p.port()),
                ),
            };
            let authority = match port {
                Some(p) if p != 80 => {
                    if address.contains(':') {
                        format!("[{address}]:{p}")
                    } else {
                        format!("{address}:{p}")
                    }
                }
                _ => address.clone(),
            };
            let full = match query {
                Some(q) => format!("http://{authority}{path}?{}", redact_query(q)),
                None => format!("http://{authority}{path}"),
            };
            attrs.push(("url.full", full.into()));
            if !address.is_empty() {
                attrs.push(("server.address", address.into()));
            }
            if let Some(p) = port {
                attrs.push(("server.port", AttrValue::Int(p.into())));
            }
        }
    }
    if let Some(peer) = conn.peer {
        attrs.push(("network.peer.address", peer.ip().to_string().into()));
        attrs.push(("network.peer.port", AttrValue::Int(peer.port().into())));
    }
    if let Some(local) = conn.local {
        attrs.push(("network.local.address", local.ip().to_string().into()));
        attrs.push(("network.local.port", AttrValue::Int(local.port().into())));
    }
    attrs.push(("network.transport", "tcp".into()));
    attrs.push((
        "network.protocol.version",
        if req.version == 0 { "1.0" } else { "1.1" }.into(),
    ));
    if let Some(ua) = req.header("user-agent") {
        attrs.push(("user_agent.original", ua.into()));
    }
    if let Some(id) = req.header("x-request-id") {
        attrs.push(("http.request.header.x-request-id", id.into()));
    }
    if exchange.request_body_bytes > 0 {
        attrs.push((
            "http.request.body.size",
            AttrValue::Int(exchange.request_body_bytes as i64),
        ));
    }

    let mut status = SpanStatus::Unset;
    if let Some(resp) = &exchange.response {
        attrs.push((
            "http.response.status_code",
            AttrValue::Int(resp.status.into()),
        ));
        attrs.push((
            "http.response.body.size",
            AttrValue::Int(exchange.response_body_bytes as i64),
        ));
        let failed = match kind {
            SpanKind::Server => resp.status >= 500,
            SpanKind::Client => resp.status >= 400,
        };
        if failed {
            attrs.push(("error.type", resp.status.to_string().into()));
            status = SpanStatus::Error {
                description: String::new(),
            };
        }
    }
    if let Some(err) = &exchange.error {
        attrs.push(("error.type", err.error_type().into()));
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
