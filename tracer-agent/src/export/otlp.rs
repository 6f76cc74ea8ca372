//! Pure mapping from the agent's spans to the OTLP protobuf messages.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind as ProtoKind, status::StatusCode,
};

use crate::spans::{AttrValue, Resource, SpanKind, SpanRecord, SpanStatus};

/// W3C trace-flags "sampled". Everything that reaches the exporter was sampled.
const FLAG_SAMPLED: u32 = 0x01;

/// Builds one request for a batch. Spans are grouped by resource so a collector sees one
/// `ResourceSpans` per service instance, as a node agent speaking for many services must.
/// Spans of one resource keep their relative order.
pub fn encode_request(
    spans: &[SpanRecord],
    scope_name: &str,
    scope_version: &str,
) -> ExportTraceServiceRequest {
    // Spans of one process share an `Arc`, so pointer identity finds the group without
    // comparing attributes; equal resources behind different `Arc`s still merge.
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
        groups[idx].1.push(encode_span(span));
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

pub fn encode_span(span: &SpanRecord) -> Span {
    let kind = match span.kind {
        SpanKind::Server => ProtoKind::Server,
        SpanKind::Client => ProtoKind::Client,
    };
    // An unset status is encoded as absent: the protobuf default means the same thing.
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
        // Roots carry an empty parent id (the proto's convention), not zeros.
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost::Message;

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

    #[test]
    fn two_resources_become_two_resource_spans() {
        let (a, b) = (resource("frontend"), resource("backend"));
        let spans = [
            span(&a, 1, None),
            span(&b, 2, Some(1)),
            span(&a, 3, Some(2)),
        ];
        let req = encode_request(&spans, "tracer-agent", "0.1.0");
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
        let req = encode_request(&[span(&a1, 1, None), span(&a2, 2, None)], "s", "v");
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
        let bytes = encode_request(std::slice::from_ref(&s), "s", "v").encode_to_vec();
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
        let req = encode_request(&[span(&r, 1, None)], "s", "v");
        let p = &req.resource_spans[0].scope_spans[0].spans[0];
        assert!(p.parent_span_id.is_empty());
        assert_eq!(p.kind, ProtoKind::Server as i32);
        assert!(p.status.is_none());
    }

    #[test]
    fn empty_batch_is_an_empty_request() {
        assert!(encode_request(&[], "s", "v").resource_spans.is_empty());
    }
}
