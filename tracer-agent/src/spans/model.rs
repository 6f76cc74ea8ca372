//! The span as the agent holds it between building, linking and export.
//! Independent of any wire format so the builder and linker stay pure.

use std::sync::Arc;

use rand::{RngCore, SeedableRng, rngs::SmallRng};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// Makes the ids of spans and traces: random (W3C Trace Context asks for it), never all
/// zeroes (invalid there).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(AttrStr),
    Int(i64),
    Bool(bool),
}

/// The text of a string attribute. Most strings of a span are the same for every span
/// (`http`, `tcp`, the method) or for every span of a connection (its addresses): those
/// are static or shared rather than allocated per span, which was most of building one.
/// Compares, hashes and prints as the text.
#[derive(Clone)]
pub struct AttrStr(StrRepr);

#[derive(Clone)]
enum StrRepr {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl AttrStr {
    pub const fn from_static(s: &'static str) -> Self {
        AttrStr(StrRepr::Static(s))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            StrRepr::Static(s) => s,
            StrRepr::Shared(s) => s,
            StrRepr::Owned(s) => s,
        }
    }
}

impl std::ops::Deref for AttrStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for AttrStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for AttrStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for AttrStr {}

impl std::hash::Hash for AttrStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq<str> for AttrStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for AttrStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Debug for AttrStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for AttrStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for AttrStr {
    fn from(v: &str) -> Self {
        AttrStr(StrRepr::Owned(v.to_owned()))
    }
}

impl From<String> for AttrStr {
    fn from(v: String) -> Self {
        AttrStr(StrRepr::Owned(v))
    }
}

impl From<Arc<str>> for AttrStr {
    fn from(v: Arc<str>) -> Self {
        AttrStr(StrRepr::Shared(v))
    }
}

impl From<Arc<str>> for AttrValue {
    fn from(v: Arc<str>) -> Self {
        AttrValue::Str(v.into())
    }
}
impl From<AttrStr> for AttrValue {
    fn from(v: AttrStr) -> Self {
        AttrValue::Str(v)
    }
}
impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.into())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v.into())
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

impl std::fmt::Display for AttrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrValue::Str(s) => write!(f, "{s}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

pub type Attributes = Vec<(&'static str, AttrValue)>;

/// The OpenTelemetry resource of the process (later: pod/container) that produced a span.
/// Shared by all spans of that process; exporters group spans by it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub attributes: Vec<(String, AttrValue)>,
}

impl Resource {
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn service_name(&self) -> &str {
        match self.get("service.name") {
            Some(AttrValue::Str(s)) => s.as_str(),
            _ => "unknown_service",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Error { description: String },
}

#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// W3C tracestate carried in from the parent context, if any.
    pub trace_state: String,
    /// The sampling decision of the caller whose context this trace continues (its
    /// `traceparent` flag); `None` for traces this agent started or a deferred B3 decision.
    pub parent_sampled: Option<bool>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Attributes,
    pub status: SpanStatus,
    pub resource: Arc<Resource>,
}

#[cfg(test)]
impl SpanRecord {
    /// A span with only its kind and name set, for tests to fill in the rest.
    pub(crate) fn for_test(kind: SpanKind, name: &str) -> SpanRecord {
        SpanRecord {
            trace_id: [0; 16],
            span_id: [0; 8],
            parent_span_id: None,
            trace_state: String::new(),
            parent_sampled: None,
            name: name.into(),
            kind,
            start_unix_nanos: 0,
            end_unix_nanos: 0,
            attributes: Vec::new(),
            status: SpanStatus::Unset,
            resource: Arc::new(Resource {
                attributes: Vec::new(),
            }),
        }
    }
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
