//! Counting the spans of an OTLP `ExportTraceServiceRequest` without decoding it.
//!
//! The benchmark's receiver shares the machine's cores with the load it measures. Decoding
//! every request in full (a string and a vector allocated per field) cost it about as much
//! CPU as the agent's whole user space, which then showed as the tracer's cost. This walks
//! the three levels down to the spans, checks the framing of every field it passes
//! (including each span's own fields) and allocates nothing.

/// Why a request is not a well-formed `ExportTraceServiceRequest`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A varint longer than 10 bytes, or cut off by the end of its message.
    #[error("malformed varint at byte {at}")]
    Varint { at: usize },
    /// A length-delimited field or fixed-width value running past its message.
    #[error("field at byte {at} runs past its message")]
    Truncated { at: usize },
    /// Wire types 3, 4 (groups) and 6, 7 (undefined), or field number 0.
    #[error("invalid field key {key} at byte {at}")]
    BadKey { at: usize, key: u64 },
    /// `resource_spans`, `scope_spans` or `spans` not length-delimited.
    #[error("field {field} has wire type {wire_type}, expected 2")]
    WrongType { field: u32, wire_type: u8 },
}

const LEN: u8 = 2;

/// The spans in an encoded `ExportTraceServiceRequest`.
pub fn count_spans(request: &[u8]) -> Result<u64, WireError> {
    let mut spans = 0;
    // ExportTraceServiceRequest.resource_spans = 1
    each_child(request, 1, &mut |resource_spans| {
        // ResourceSpans.scope_spans = 2
        each_child(resource_spans, 2, &mut |scope_spans| {
            // ScopeSpans.spans = 2
            each_child(scope_spans, 2, &mut |span| {
                Fields::new(span).try_for_each(|field| field.map(drop))?;
                spans += 1;
                Ok(())
            })
        })
    })?;
    Ok(spans)
}

/// Calls `f` with the payload of every occurrence of length-delimited field `number` in
/// `message`, checking the framing of all its fields.
fn each_child(
    message: &[u8],
    number: u32,
    f: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    for field in Fields::new(message) {
        let field = field?;
        if field.number != number {
            continue;
        }
        match field.payload {
            Some(payload) => f(payload)?,
            None => {
                return Err(WireError::WrongType {
                    field: number,
                    wire_type: field.wire_type,
                });
            }
        }
    }
    Ok(())
}

struct Field<'a> {
    number: u32,
    wire_type: u8,
    /// The bytes of a length-delimited field.
    payload: Option<&'a [u8]>,
}

/// The fields of one message, in order; stops at the first framing error.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields {
            buf,
            at: 0,
            failed: false,
        }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.buf.get(self.at) else {
                return Err(WireError::Varint { at: start });
            };
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Varint { at: start })
    }

    fn skip(&mut self, len: u64, field_at: usize) -> Result<&'a [u8], WireError> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.at.checked_add(len))
            .filter(|&end| end <= self.buf.len())
            .ok_or(WireError::Truncated { at: field_at })?;
        let payload = &self.buf[self.at..end];
        self.at = end;
        Ok(payload)
    }

    fn field(&mut self) -> Result<Field<'a>, WireError> {
        let field_at = self.at;
        let key = self.varint()?;
        let wire_type = (key & 7) as u8;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n != 0)
            .ok_or(WireError::BadKey { at: field_at, key })?;
        let payload = match wire_type {
            0 => {
                self.varint()?;
                None
            }
            1 => {
                self.skip(8, field_at)?;
                None
            }
            LEN => {
                let len = self.varint()?;
                Some(self.skip(len, field_at)?)
            }
            5 => {
                self.skip(4, field_at)?;
                None
            }
            _ => return Err(WireError::BadKey { at: field_at, key }),
        };
        Ok(Field {
            number,
            wire_type,
            payload,
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.buf.len() {
            return None;
        }
        let field = self.field();
        self.failed = field.is_err();
        Some(field)
    }
}

#[cfg(all(test, feature = "suites"))]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;

    fn span(i: u8) -> Span {
        Span {
            trace_id: vec![i; 16],
            span_id: vec![i; 8],
            name: format!("GET /{i}"),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(i),
            end_time_unix_nano: 1_700_000_000_000_000_100 + u64::from(i),
            attributes: vec![KeyValue {
                key: "http.response.status_code".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(200)),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Resources × scopes × spans, the shapes the agent and the SDKs send.
    fn request(shape: &[&[u8]]) -> ExportTraceServiceRequest {
        let mut next = 0u8;
        ExportTraceServiceRequest {
            resource_spans: shape
                .iter()
                .map(|scopes| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue("svc".into())),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    scope_spans: scopes
                        .iter()
                        .map(|&n| ScopeSpans {
                            spans: (0..n)
                                .map(|_| {
                                    next = next.wrapping_add(1);
                                    span(next)
                                })
                                .collect(),
                            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                            ..Default::default()
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    fn decoded_count(bytes: &[u8]) -> u64 {
        let request = ExportTraceServiceRequest::decode(bytes).expect("valid request");
        request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum()
    }

    #[test]
    fn counts_what_a_full_decode_counts() {
        let shapes: &[&[&[u8]]] = &[
            &[],
            &[&[]],
            &[&[1]],
            &[&[3, 0, 2]],
            &[&[200], &[1, 1], &[]],
            &[&[0], &[0]],
        ];
        for shape in shapes {
            let bytes = request(shape).encode_to_vec();
            assert_eq!(
                count_spans(&bytes),
                Ok(decoded_count(&bytes)),
                "shape {shape:?}"
            );
        }
    }

    #[test]
    fn a_request_cut_anywhere_is_an_error_or_a_prefix_count() {
        let bytes = request(&[&[2, 1], &[3]]).encode_to_vec();
        let whole = count_spans(&bytes).unwrap();
        assert_eq!(whole, 6);
        for cut in 0..bytes.len() {
            // A cut between top-level fields is itself a valid (shorter) request: it must
            // count exactly what a decoder counts. Anywhere else it must be refused.
            let prefix = &bytes[..cut];
            match ExportTraceServiceRequest::decode(prefix) {
                Ok(_) => assert_eq!(count_spans(prefix), Ok(decoded_count(prefix)), "cut {cut}"),
                Err(_) => assert!(count_spans(prefix).is_err(), "cut {cut} accepted"),
            }
        }
    }

    #[test]
    fn garbage_is_refused() {
        // Field 1 as a varint where a message belongs.
        assert_eq!(
            count_spans(&[0x08, 0x01]),
            Err(WireError::WrongType {
                field: 1,
                wire_type: 0
            })
        );
        // A group start (wire type 3).
        assert!(matches!(
            count_spans(&[0x0b]),
            Err(WireError::BadKey { .. })
        ));
        // Field number 0.
        assert!(matches!(
            count_spans(&[0x02, 0x00]),
            Err(WireError::BadKey { .. })
        ));
        // A length far past the end.
        assert!(matches!(
            count_spans(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(WireError::Truncated { .. })
        ));
        // An 11-byte varint.
        assert!(matches!(
            count_spans(&[0x80; 11]),
            Err(WireError::Varint { .. })
        ));
        // Unknown top-level fields are skipped, as a decoder does.
        assert_eq!(count_spans(&[0x10, 0x05, 0x1d, 1, 2, 3, 4]), Ok(0));
    }
}
