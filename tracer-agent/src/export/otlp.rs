//! The agent's spans as the protobuf bytes of an OTLP `ExportTraceServiceRequest`.
//!
//! Written directly from [`SpanRecord`]s instead of building the `opentelemetry-proto`
//! structs and letting prost encode them: those structs need an owned `String` per
//! attribute key and value and a `Vec` per list, which made encoding cost more than
//! capturing, parsing and linking the span. Each message's length is computed before it is
//! written (protobuf prefixes a nested message with its length), so a batch is written
//! into one exactly-sized buffer. Fields are written in the order prost writes them (by field number), so the
//! bytes are those prost would produce for the same request.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind as ProtoKind, status::StatusCode};

use crate::spans::{AttrValue, Resource, SpanKind, SpanRecord, SpanStatus};

/// W3C trace-flags "sampled". Everything that reaches the exporter was sampled.
const FLAG_SAMPLED: u32 = 0x01;

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// Field numbers, from opentelemetry-proto's `.proto` files.
mod field {
    // ExportTraceServiceRequest
    pub const REQUEST_RESOURCE_SPANS: u32 = 1;
    // ResourceSpans
    pub const RESOURCE: u32 = 1;
    pub const SCOPE_SPANS: u32 = 2;
    // Resource
    pub const RESOURCE_ATTRIBUTES: u32 = 1;
    // ScopeSpans
    pub const SCOPE: u32 = 1;
    pub const SPANS: u32 = 2;
    // InstrumentationScope
    pub const SCOPE_NAME: u32 = 1;
    pub const SCOPE_VERSION: u32 = 2;
    // Span
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const TRACE_STATE: u32 = 3;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START_TIME: u32 = 7;
    pub const END_TIME: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const STATUS: u32 = 15;
    pub const FLAGS: u32 = 16;
    // Status
    pub const STATUS_MESSAGE: u32 = 2;
    pub const STATUS_CODE: u32 = 3;
    // KeyValue
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
    // AnyValue (a oneof: always written, even when the value is the default)
    pub const STRING_VALUE: u32 = 1;
    pub const BOOL_VALUE: u32 = 2;
    pub const INT_VALUE: u32 = 3;
}

/// The protobuf bytes of one request for a batch. Spans are grouped by resource so a
/// collector sees one `ResourceSpans` per service instance, as a node agent speaking for
/// many services must. Groups are in order of their first span; spans of one resource keep
/// their relative order.
pub fn encode_request(spans: &[SpanRecord], scope_name: &str, scope_version: &str) -> Vec<u8> {
    let Grouped { groups, order } = group_by_resource(spans);
    let scope_len = scope_len(scope_name, scope_version);

    // Sizes first: every enclosing message is prefixed by its length. A span's size is
    // kept so the write pass does not compute it again.
    let mut span_lens = vec![0usize; spans.len()];
    let mut scope_spans_lens = Vec::with_capacity(groups.len());
    let mut total = 0;
    let mut at = 0;
    for group in &groups {
        let mut scope_spans = message_len(field::SCOPE, scope_len);
        for &i in &order[at..at + group.count] {
            let len = span_len(&spans[i]);
            span_lens[i] = len;
            scope_spans += message_len(field::SPANS, len);
        }
        at += group.count;
        let resource_spans = message_len(field::RESOURCE, resource_len(group.resource))
            + message_len(field::SCOPE_SPANS, scope_spans);
        scope_spans_lens.push(scope_spans);
        total += message_len(field::REQUEST_RESOURCE_SPANS, resource_spans);
    }

    let mut out = Vec::with_capacity(total);
    let mut at = 0;
    for (group, &scope_spans) in groups.iter().zip(&scope_spans_lens) {
        let resource = resource_len(group.resource);
        let resource_spans =
            message_len(field::RESOURCE, resource) + message_len(field::SCOPE_SPANS, scope_spans);
        put_len_prefix(&mut out, field::REQUEST_RESOURCE_SPANS, resource_spans);
        put_len_prefix(&mut out, field::RESOURCE, resource);
        for (k, v) in &group.resource.attributes {
            put_key_value(&mut out, field::RESOURCE_ATTRIBUTES, k, v);
        }
        put_len_prefix(&mut out, field::SCOPE_SPANS, scope_spans);
        put_len_prefix(&mut out, field::SCOPE, scope_len);
        put_string(&mut out, field::SCOPE_NAME, scope_name);
        put_string(&mut out, field::SCOPE_VERSION, scope_version);
        for &i in &order[at..at + group.count] {
            put_len_prefix(&mut out, field::SPANS, span_lens[i]);
            put_span(&mut out, &spans[i]);
        }
        at += group.count;
    }
    debug_assert_eq!(out.len(), total);
    out
}

struct Group<'a> {
    resource: &'a Resource,
    count: usize,
}

struct Grouped<'a> {
    groups: Vec<Group<'a>>,
    /// Span indices, group after group, each group's in batch order.
    order: Vec<usize>,
}

fn group_by_resource(spans: &[SpanRecord]) -> Grouped<'_> {
    // Spans of one process share an `Arc`, so pointer identity finds the group without
    // comparing attributes; equal resources behind different `Arc`s still merge.
    let mut by_ptr: HashMap<*const Resource, usize> = HashMap::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut group_of = Vec::with_capacity(spans.len());
    // Consecutive spans usually share a resource: skip the map for them.
    let mut last: Option<(*const Resource, usize)> = None;
    for span in spans {
        let ptr = Arc::as_ptr(&span.resource);
        let idx = match last {
            Some((p, i)) if p == ptr => i,
            _ => match by_ptr.get(&ptr) {
                Some(&i) => i,
                None => {
                    let i = groups
                        .iter()
                        .position(|g| *g.resource == *span.resource)
                        .unwrap_or_else(|| {
                            groups.push(Group {
                                resource: &span.resource,
                                count: 0,
                            });
                            groups.len() - 1
                        });
                    by_ptr.insert(ptr, i);
                    i
                }
            },
        };
        last = Some((ptr, idx));
        if let Some(g) = groups.get_mut(idx) {
            g.count += 1;
        }
        group_of.push(idx);
    }
    // A counting sort: stable, so each group keeps its spans' batch order.
    let mut next: Vec<usize> = Vec::with_capacity(groups.len());
    let mut start = 0;
    for g in &groups {
        next.push(start);
        start += g.count;
    }
    let mut order = vec![0; spans.len()];
    for (i, &g) in group_of.iter().enumerate() {
        if let Some(slot) = next.get_mut(g) {
            if let Some(o) = order.get_mut(*slot) {
                *o = i;
            }
            *slot += 1;
        }
    }
    Grouped { groups, order }
}

fn kind(kind: SpanKind) -> u64 {
    let kind = match kind {
        SpanKind::Server => ProtoKind::Server,
        SpanKind::Client => ProtoKind::Client,
    };
    kind as i32 as u64
}

const STATUS_ERROR: u64 = StatusCode::Error as i32 as u64;

fn scope_len(name: &str, version: &str) -> usize {
    string_len(field::SCOPE_NAME, name) + string_len(field::SCOPE_VERSION, version)
}

fn resource_len(resource: &Resource) -> usize {
    resource
        .attributes
        .iter()
        .map(|(k, v)| message_len(field::RESOURCE_ATTRIBUTES, key_value_len(k, v)))
        .sum()
}

fn span_len(span: &SpanRecord) -> usize {
    let mut len = bytes_len(field::TRACE_ID, &span.trace_id)
        + bytes_len(field::SPAN_ID, &span.span_id)
        + string_len(field::TRACE_STATE, &span.trace_state)
        + span
            .parent_span_id
            .as_ref()
            .map_or(0, |p| bytes_len(field::PARENT_SPAN_ID, p))
        + key_len(field::FLAGS)
        + 4
        + string_len(field::NAME, &span.name)
        + uint_len(field::KIND, kind(span.kind))
        + fixed64_len(field::START_TIME, span.start_unix_nanos)
        + fixed64_len(field::END_TIME, span.end_unix_nanos);
    for (k, v) in &span.attributes {
        len += message_len(field::ATTRIBUTES, key_value_len(k, v));
    }
    if let SpanStatus::Error { description } = &span.status {
        len += message_len(field::STATUS, status_len(description));
    }
    len
}

fn put_span(out: &mut Vec<u8>, span: &SpanRecord) {
    put_bytes(out, field::TRACE_ID, &span.trace_id);
    put_bytes(out, field::SPAN_ID, &span.span_id);
    put_string(out, field::TRACE_STATE, &span.trace_state);
    // Roots carry no parent id (the proto's convention: empty), not zeros.
    if let Some(parent) = &span.parent_span_id {
        put_bytes(out, field::PARENT_SPAN_ID, parent);
    }
    put_string(out, field::NAME, &span.name);
    put_uint(out, field::KIND, kind(span.kind));
    put_fixed64(out, field::START_TIME, span.start_unix_nanos);
    put_fixed64(out, field::END_TIME, span.end_unix_nanos);
    for (k, v) in &span.attributes {
        put_key_value(out, field::ATTRIBUTES, k, v);
    }
    // An unset status is left out: the protobuf default means the same thing.
    if let SpanStatus::Error { description } = &span.status {
        put_len_prefix(out, field::STATUS, status_len(description));
        put_string(out, field::STATUS_MESSAGE, description);
        put_uint(out, field::STATUS_CODE, STATUS_ERROR);
    }
    put_key(out, field::FLAGS, FIXED32);
    out.extend_from_slice(&FLAG_SAMPLED.to_le_bytes());
}

fn status_len(description: &str) -> usize {
    string_len(field::STATUS_MESSAGE, description) + uint_len(field::STATUS_CODE, STATUS_ERROR)
}

fn any_value_len(value: &AttrValue) -> usize {
    match value {
        AttrValue::Str(s) => message_len(field::STRING_VALUE, s.len()),
        AttrValue::Int(i) => key_len(field::INT_VALUE) + varint_len(*i as u64),
        AttrValue::Bool(_) => key_len(field::BOOL_VALUE) + 1,
    }
}

fn key_value_len(key: &str, value: &AttrValue) -> usize {
    string_len(field::KEY, key) + message_len(field::VALUE, any_value_len(value))
}

/// A `KeyValue` as field `tag` of the enclosing message.
fn put_key_value(out: &mut Vec<u8>, tag: u32, key: &str, value: &AttrValue) {
    put_len_prefix(out, tag, key_value_len(key, value));
    put_string(out, field::KEY, key);
    put_len_prefix(out, field::VALUE, any_value_len(value));
    match value {
        AttrValue::Str(s) => {
            put_len_prefix(out, field::STRING_VALUE, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        // int64: negative values are their two's complement as a 10-byte varint.
        AttrValue::Int(i) => put_varint_field(out, field::INT_VALUE, *i as u64),
        AttrValue::Bool(b) => put_varint_field(out, field::BOOL_VALUE, u64::from(*b)),
    }
}

// The protobuf primitives. Proto3 leaves scalar fields holding their default (0, empty)
// out of the message; `put_*` and `*_len` agree on which.

fn varint_len(v: u64) -> usize {
    // 7 bits per byte; `| 1` makes 0 take one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3))
}

/// Size of a length-delimited field (bytes, string, message) of `len` bytes, written
/// even when empty.
fn message_len(tag: u32, len: usize) -> usize {
    key_len(tag) + varint_len(len as u64) + len
}

fn string_len(tag: u32, s: &str) -> usize {
    bytes_len(tag, s.as_bytes())
}

fn bytes_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        message_len(tag, b.len())
    }
}

fn uint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + varint_len(v)
    }
}

fn fixed64_len(tag: u32, v: u64) -> usize {
    if v == 0 { 0 } else { key_len(tag) + 8 }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, tag: u32, wire_type: u32) {
    put_varint(out, u64::from(tag << 3 | wire_type));
}

/// Key and length of a length-delimited field; the caller writes the `len` bytes.
fn put_len_prefix(out: &mut Vec<u8>, tag: u32, len: usize) {
    put_key(out, tag, LEN);
    put_varint(out, len as u64);
}

fn put_bytes(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    if !b.is_empty() {
        put_len_prefix(out, tag, b.len());
        out.extend_from_slice(b);
    }
}

fn put_string(out: &mut Vec<u8>, tag: u32, s: &str) {
    put_bytes(out, tag, s.as_bytes());
}

/// A varint field written even when 0 (oneof members).
fn put_varint_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    put_key(out, tag, VARINT);
    put_varint(out, v);
}

fn put_uint(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        put_varint_field(out, tag, v);
    }
}

fn put_fixed64(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        put_key(out, tag, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
    use prost::Message;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use crate::spans::AttrStr;

    /// The request as it was built before the direct writer: the opentelemetry-proto
    /// structs, for prost to encode. The oracle the writer is checked against.
    mod oracle {
        use std::collections::HashMap;
        use std::sync::Arc;

        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{
            AnyValue, InstrumentationScope, KeyValue, any_value::Value,
        };
        use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
        use opentelemetry_proto::tonic::trace::v1::{
            ResourceSpans, ScopeSpans, Span, Status, span::SpanKind as ProtoKind,
            status::StatusCode,
        };

        use super::super::FLAG_SAMPLED;
        use crate::spans::{AttrValue, Resource, SpanKind, SpanRecord, SpanStatus};

        pub fn build_request(
            spans: &[SpanRecord],
            scope_name: &str,
            scope_version: &str,
        ) -> ExportTraceServiceRequest {
            let mut by_ptr: HashMap<*const Resource, usize> = HashMap::new();
            let mut groups: Vec<(&Arc<Resource>, Vec<Span>)> = Vec::new();
            for span in spans {
                let ptr = Arc::as_ptr(&span.resource);
                let idx = match by_ptr.get(&ptr) {
                    Some(&i) => i,
                    None => {
                        let i = groups
                            .iter()
                            .position(|(r, _)| **r == span.resource)
                            .unwrap_or_else(|| {
                                groups.push((&span.resource, Vec::new()));
                                groups.len() - 1
                            });
                        by_ptr.insert(ptr, i);
                        i
                    }
                };
                groups[idx].1.push(build_span(span));
            }
            let scope = InstrumentationScope {
                name: scope_name.to_owned(),
                version: scope_version.to_owned(),
                ..Default::default()
            };
            ExportTraceServiceRequest {
                resource_spans: groups
                    .into_iter()
                    .map(|(resource, spans)| ResourceSpans {
                        resource: Some(ProtoResource {
                            attributes: resource
                                .attributes
                                .iter()
                                .map(|(k, v)| key_value(k, v))
                                .collect(),
                            ..Default::default()
                        }),
                        scope_spans: vec![ScopeSpans {
                            scope: Some(scope.clone()),
                            spans,
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect(),
            }
        }

        fn build_span(span: &SpanRecord) -> Span {
            let kind = match span.kind {
                SpanKind::Server => ProtoKind::Server,
                SpanKind::Client => ProtoKind::Client,
            };
            let status = match &span.status {
                SpanStatus::Unset => None,
                SpanStatus::Error { description } => Some(Status {
                    message: description.clone(),
                    code: StatusCode::Error as i32,
                }),
            };
            Span {
                trace_id: span.trace_id.to_vec(),
                span_id: span.span_id.to_vec(),
                trace_state: span.trace_state.clone(),
                parent_span_id: span.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
                flags: FLAG_SAMPLED,
                name: span.name.clone(),
                kind: kind as i32,
                start_time_unix_nano: span.start_unix_nanos,
                end_time_unix_nano: span.end_unix_nanos,
                attributes: span
                    .attributes
                    .iter()
                    .map(|(k, v)| key_value(k, v))
                    .collect(),
                status,
                ..Default::default()
            }
        }

        fn key_value(key: &str, value: &AttrValue) -> KeyValue {
            let value = match value {
                AttrValue::Str(s) => Value::StringValue(s.as_str().to_owned()),
                AttrValue::Int(i) => Value::IntValue(*i),
                AttrValue::Bool(b) => Value::BoolValue(*b),
            };
            KeyValue {
                key: key.to_owned(),
                value: Some(AnyValue { value: Some(value) }),
                ..Default::default()
            }
        }
    }

    /// The writer's bytes, decoded as a collector would.
    fn decoded(
        spans: &[SpanRecord],
        scope_name: &str,
        scope_version: &str,
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(
            encode_request(spans, scope_name, scope_version).as_slice(),
        )
        .expect("the writer's bytes decode")
    }

    /// Decodes to the oracle's request and, since fields go in prost's order, is byte for
    /// byte what prost writes for it.
    fn assert_matches_oracle(spans: &[SpanRecord], scope_name: &str, scope_version: &str) {
        let bytes = encode_request(spans, scope_name, scope_version);
        let expected = oracle::build_request(spans, scope_name, scope_version);
        let got = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(got, expected);
        assert_eq!(bytes, expected.encode_to_vec());
    }

    pub(crate) fn resource(service: &str) -> Arc<Resource> {
        Arc::new(Resource {
            attributes: vec![
                ("service.name".into(), service.into()),
                ("process.pid".into(), AttrValue::Int(42)),
            ],
        })
    }

    pub(crate) fn span(resource: &Arc<Resource>, id: u8, parent: Option<u8>) -> SpanRecord {
        SpanRecord {
            trace_id: [7; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            trace_state: String::new(),
            parent_sampled: None,
            name: format!("GET /{id}"),
            kind: SpanKind::Server,
            start_unix_nanos: 1_000_000 * id as u64,
            end_unix_nanos: 1_000_000 * id as u64 + 500_000,
            attributes: vec![("http.request.method", "GET".into())],
            status: SpanStatus::Unset,
            resource: resource.clone(),
        }
    }

    fn str_value(kv: &KeyValue) -> Option<&Value> {
        kv.value.as_ref().and_then(|v| v.value.as_ref())
    }

    /// Strings that stress the length prefixes and UTF-8: empty, one byte, around the
    /// one/two-byte varint boundary (127/128), long, multi-byte.
    fn text(rng: &mut SmallRng) -> String {
        match rng.random_range(0..8) {
            0 => String::new(),
            1 => "x".into(),
            2 => "a".repeat(127),
            3 => "b".repeat(128),
            4 => "c".repeat(rng.random_range(129..20_000)),
            5 => "é漢字🦀\u{0}\u{7f}".repeat(rng.random_range(1..40)),
            6 => format!(
                "/api/v{}/items?id={}",
                rng.random_range(0..9),
                rng.random::<u32>()
            ),
            _ => "GET".into(),
        }
    }

    fn value(rng: &mut SmallRng) -> AttrValue {
        match rng.random_range(0..9) {
            0 => AttrValue::Int(0),
            1 => AttrValue::Int(-1),
            2 => AttrValue::Int(i64::MIN),
            3 => AttrValue::Int(i64::MAX),
            4 => AttrValue::Int(rng.random()),
            5 => AttrValue::Bool(rng.random()),
            6 => AttrValue::Str(AttrStr::from_static("http")),
            7 => AttrValue::Str(Arc::<str>::from(text(rng)).into()),
            _ => text(rng).into(),
        }
    }

    const KEYS: [&str; 6] = [
        "",
        "k",
        "http.request.method",
        "url.full",
        "ключ",
        "server.port",
    ];

    fn random_resource(rng: &mut SmallRng) -> Arc<Resource> {
        let n = rng.random_range(0..5);
        Arc::new(Resource {
            attributes: (0..n).map(|_| (text(rng), value(rng))).collect(),
        })
    }

    fn random_span(rng: &mut SmallRng, resources: &[Arc<Resource>]) -> SpanRecord {
        let n_attrs = rng.random_range(0..12);
        SpanRecord {
            trace_id: if rng.random_bool(0.1) {
                [0; 16]
            } else {
                rng.random()
            },
            span_id: rng.random(),
            parent_span_id: rng.random_bool(0.5).then(|| rng.random()),
            trace_state: if rng.random_bool(0.5) {
                String::new()
            } else {
                text(rng)
            },
            parent_sampled: None,
            name: text(rng),
            kind: if rng.random() {
                SpanKind::Server
            } else {
                SpanKind::Client
            },
            start_unix_nanos: match rng.random_range(0..4) {
                0 => 0,
                1 => u64::MAX,
                _ => rng.random(),
            },
            end_unix_nanos: if rng.random_bool(0.1) {
                0
            } else {
                rng.random()
            },
            attributes: (0..n_attrs)
                .map(|_| (KEYS[rng.random_range(0..KEYS.len())], value(rng)))
                .collect(),
            status: match rng.random_range(0..3) {
                0 => SpanStatus::Unset,
                1 => SpanStatus::Error {
                    description: String::new(),
                },
                _ => SpanStatus::Error {
                    description: text(rng),
                },
            },
            resource: resources[rng.random_range(0..resources.len())].clone(),
        }
    }

    #[test]
    fn writer_matches_the_struct_encoding() {
        let mut rng = SmallRng::seed_from_u64(0x07e1);
        assert_matches_oracle(&[], SCOPE, "");
        for round in 0..200 {
            let mut resources: Vec<Arc<Resource>> = (0..rng.random_range(1..5))
                .map(|_| random_resource(&mut rng))
                .collect();
            // Equal resources behind different `Arc`s, which must share a group.
            let copy = Arc::new((*resources[0]).clone());
            resources.push(copy);
            let n = rng.random_range(0..if round % 20 == 0 { 600 } else { 30 });
            let spans: Vec<SpanRecord> =
                (0..n).map(|_| random_span(&mut rng, &resources)).collect();
            let (name, version) = match round % 3 {
                0 => (SCOPE, "0.1.0"),
                1 => ("", ""),
                _ => ("スコープ", "v"),
            };
            assert_matches_oracle(&spans, name, version);
        }
    }

    const SCOPE: &str = "tracer-agent";

    #[test]
    fn two_resources_become_two_resource_spans() {
        let (a, b) = (resource("frontend"), resource("backend"));
        let spans = [
            span(&a, 1, None),
            span(&b, 2, Some(1)),
            span(&a, 3, Some(2)),
        ];
        let req = decoded(&spans, "tracer-agent", "0.1.0");
        assert_eq!(req.resource_spans.len(), 2);
        let names: Vec<Vec<&str>> = req
            .resource_spans
            .iter()
            .map(|rs| {
                assert_eq!(rs.scope_spans.len(), 1);
                rs.scope_spans[0]
                    .spans
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(names, vec![vec!["GET /1", "GET /3"], vec!["GET /2"]]);
        let service = |i: usize| {
            let attrs = &req.resource_spans[i].resource.as_ref().unwrap().attributes;
            str_value(attrs.iter().find(|kv| kv.key == "service.name").unwrap()).cloned()
        };
        assert_eq!(service(0), Some(Value::StringValue("frontend".into())));
        assert_eq!(service(1), Some(Value::StringValue("backend".into())));
        let scope = req.resource_spans[1].scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("tracer-agent", "0.1.0")
        );
    }

    #[test]
    fn equal_resources_behind_different_arcs_merge() {
        let (a1, a2) = (resource("frontend"), resource("frontend"));
        assert!(!Arc::ptr_eq(&a1, &a2));
        let req = decoded(&[span(&a1, 1, None), span(&a2, 2, None)], "s", "v");
        assert_eq!(req.resource_spans.len(), 1);
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 2);
    }

    #[test]
    fn span_fields_round_trip_through_protobuf() {
        let r = resource("backend");
        let mut s = span(&r, 9, Some(4));
        s.kind = SpanKind::Client;
        s.trace_state = "vendor=abc".into();
        s.status = SpanStatus::Error {
            description: "HTTP 503".into(),
        };
        s.attributes = vec![
            ("url.path", "/api/data".into()),
            ("http.response.status_code", AttrValue::Int(503)),
            ("net.truncated", AttrValue::Bool(true)),
        ];
        let bytes = encode_request(std::slice::from_ref(&s), "s", "v");
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let p = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(p.trace_id, vec![7; 16]);
        assert_eq!(p.span_id, vec![9; 8]);
        assert_eq!(p.parent_span_id, vec![4; 8]);
        assert_eq!(p.trace_state, "vendor=abc");
        assert_eq!(p.name, "GET /9");
        assert_eq!(p.kind, ProtoKind::Client as i32);
        assert_eq!(p.flags & 0xff, FLAG_SAMPLED);
        assert_eq!(p.start_time_unix_nano, 9_000_000);
        assert_eq!(p.end_time_unix_nano, 9_500_000);
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "HTTP 503");
        let attrs: Vec<(&str, Option<&Value>)> = p
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), str_value(kv)))
            .collect();
        assert_eq!(
            attrs,
            vec![
                ("url.path", Some(&Value::StringValue("/api/data".into()))),
                ("http.response.status_code", Some(&Value::IntValue(503))),
                ("net.truncated", Some(&Value::BoolValue(true))),
            ]
        );
    }

    #[test]
    fn root_span_has_empty_parent_and_unset_status() {
        let r = resource("frontend");
        let req = decoded(&[span(&r, 1, None)], "s", "v");
        let p = &req.resource_spans[0].scope_spans[0].spans[0];
        assert!(p.parent_span_id.is_empty());
        assert_eq!(p.kind, ProtoKind::Server as i32);
        assert!(p.status.is_none());
    }

    #[test]
    fn empty_batch_is_an_empty_request() {
        assert!(encode_request(&[], "s", "v").is_empty());
    }
}
