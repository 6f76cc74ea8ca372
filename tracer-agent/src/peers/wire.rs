//! The exchange's messages, pure: a batch of lookups in, one answer per lookup out.
//!
//! ```text
//! POST /v1/callers            Authorization: Bearer <token>
//! {"lookups":[{"client":"10.0.0.7:41000","seq":3}, ...]}
//! 200 {"answers":[{"state":"found","trace_id":"<32 hex>","span_id":"<16 hex>","sampled":true},
//!                 {"state":"pending"}, {"state":"unknown"}, ...]}
//! ```
//!
//! `client` is the caller's address:port as the server saw it (its peer address), `seq` the
//! request's position on that connection. Answers carry ids and the sampling decision only,
//! never an attribute.
//!
//! ```text
//! POST /v1/keep               Authorization: Bearer <token>
//! {"traces":["<32 hex>", ...]}
//! 204
//! ```
//!
//! Tail sampling kept these traces on the sender's node (an error or a slow span there):
//! the receiver keeps its own parts of them too.

use std::net::SocketAddr;

use serde_json::{Value, json};
use thiserror::Error;

use crate::link::{Answer, PeerKey, SpanContext};

/// Lookups in one request at most; larger batches are refused, not truncated.
pub const MAX_LOOKUPS: usize = 1024;
/// Largest request body accepted (a full batch is about 50 KiB).
pub const MAX_BODY_BYTES: usize = 128 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("missing or invalid field {0}")]
    Field(&'static str),
    #[error("more than {MAX_LOOKUPS} lookups in one request")]
    TooMany,
    #[error("{got} answers for {want} lookups")]
    Count { got: usize, want: usize },
}

pub fn encode_lookups(keys: &[PeerKey]) -> Vec<u8> {
    let lookups: Vec<Value> = keys
        .iter()
        .map(|(client, seq)| json!({"client": client.to_string(), "seq": seq}))
        .collect();
    json!({ "lookups": lookups }).to_string().into_bytes()
}

pub fn decode_lookups(body: &[u8]) -> Result<Vec<PeerKey>, WireError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    let list = v
        .get("lookups")
        .and_then(Value::as_array)
        .ok_or(WireError::Field("lookups"))?;
    if list.len() > MAX_LOOKUPS {
        return Err(WireError::TooMany);
    }
    list.iter()
        .map(|l| {
            let client: SocketAddr = l
                .get("client")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or(WireError::Field("client"))?;
            let seq = l
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or(WireError::Field("seq"))?;
            Ok((client, seq))
        })
        .collect()
}

pub fn encode_answers(answers: &[Answer]) -> Vec<u8> {
    let list: Vec<Value> = answers
        .iter()
        .map(|a| match a {
            Answer::Found(ctx) => json!({
                "state": "found",
                "trace_id": hex(&ctx.trace_id),
                "span_id": hex(&ctx.span_id),
                "sampled": ctx.sampled,
            }),
            Answer::Pending => json!({"state": "pending"}),
            Answer::Unknown => json!({"state": "unknown"}),
        })
        .collect();
    json!({ "answers": list }).to_string().into_bytes()
}

/// The answers to `want` lookups, in order. A malformed answer fails the whole batch: a
/// peer that says something unparseable is not trusted for the rest of it either.
pub fn decode_answers(body: &[u8], want: usize) -> Result<Vec<Answer>, WireError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    let list = v
        .get("answers")
        .and_then(Value::as_array)
        .ok_or(WireError::Field("answers"))?;
    if list.len() != want {
        return Err(WireError::Count {
            got: list.len(),
            want,
        });
    }
    list.iter()
        .map(|a| match a.get("state").and_then(Value::as_str) {
            Some("pending") => Ok(Answer::Pending),
            Some("unknown") => Ok(Answer::Unknown),
            Some("found") => {
                let trace_id = a
                    .get("trace_id")
                    .and_then(Value::as_str)
                    .and_then(unhex::<16>)
                    .filter(|id| *id != [0; 16])
                    .ok_or(WireError::Field("trace_id"))?;
                let span_id = a
                    .get("span_id")
                    .and_then(Value::as_str)
                    .and_then(unhex::<8>)
                    .filter(|id| *id != [0; 8])
                    .ok_or(WireError::Field("span_id"))?;
                let sampled = match a.get("sampled") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => return Err(WireError::Field("sampled")),
                };
                Ok(Answer::Found(SpanContext {
                    trace_id,
                    span_id,
                    sampled,
                    trace_state: String::new(),
                }))
            }
            _ => Err(WireError::Field("state")),
        })
        .collect()
}

pub fn encode_keeps(traces: &[crate::spans::TraceId]) -> Vec<u8> {
    let list: Vec<Value> = traces.iter().map(|t| Value::from(hex(t))).collect();
    json!({ "traces": list }).to_string().into_bytes()
}

/// Trace ids to keep; bounded like lookups, and one malformed id fails the batch.
pub fn decode_keeps(body: &[u8]) -> Result<Vec<crate::spans::TraceId>, WireError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    let list = v
        .get("traces")
        .and_then(Value::as_array)
        .ok_or(WireError::Field("traces"))?;
    if list.len() > MAX_LOOKUPS {
        return Err(WireError::TooMany);
    }
    list.iter()
        .map(|t| {
            t.as_str()
                .and_then(unhex::<16>)
                .filter(|id| *id != [0; 16])
                .ok_or(WireError::Field("traces"))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(sampled: Option<bool>) -> SpanContext {
        SpanContext {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            sampled,
            trace_state: String::new(),
        }
    }

    #[test]
    fn lookups_and_answers_round_trip() {
        let keys: Vec<PeerKey> = vec![
            ("10.0.0.7:41000".parse().unwrap(), 0),
            ("[fd00::1]:5000".parse().unwrap(), u64::MAX),
        ];
        assert_eq!(decode_lookups(&encode_lookups(&keys)).unwrap(), keys);
        let answers = vec![
            Answer::Found(ctx(Some(true))),
            Answer::Found(ctx(None)),
            Answer::Pending,
            Answer::Unknown,
        ];
        assert_eq!(
            decode_answers(&encode_answers(&answers), answers.len()).unwrap(),
            answers
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"lookups\":{}}",
            b"{\"lookups\":[{\"client\":\"nonsense\",\"seq\":1}]}",
            b"{\"lookups\":[{\"client\":\"10.0.0.1:1\",\"seq\":-1}]}",
            b"{\"lookups\":[{\"client\":\"10.0.0.1:1\"}]}",
        ] {
            assert!(
                decode_lookups(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<PeerKey> = (0..=MAX_LOOKUPS as u64)
            .map(|i| ("10.0.0.1:1".parse().unwrap(), i))
            .collect();
        assert_eq!(
            decode_lookups(&encode_lookups(&many)),
            Err(WireError::TooMany)
        );

        let found = |extra: &str| {
            format!(
                "{{\"answers\":[{{\"state\":\"found\",\"trace_id\":\"{}\",\"span_id\":\"{}\"{extra}}}]}}",
                "ab".repeat(16),
                "01".repeat(8)
            )
        };
        assert!(decode_answers(found("").as_bytes(), 1).is_ok());
        assert!(decode_answers(found(",\"sampled\":\"yes\"").as_bytes(), 1).is_err());
        assert!(
            decode_answers(found("").as_bytes(), 2).is_err(),
            "count must match"
        );
        for bad in [
            "{\"answers\":[{\"state\":\"maybe\"}]}",
            "{\"answers\":[{\"state\":\"found\",\"trace_id\":\"00000000000000000000000000000000\",\"span_id\":\"0101010101010101\"}]}",
            "{\"answers\":[{\"state\":\"found\",\"trace_id\":\"abab\",\"span_id\":\"0101010101010101\"}]}",
            "{\"answers\":[{\"state\":\"found\",\"trace_id\":\"ABABABABABABABABABABABABABABABAB\",\"span_id\":\"zz01010101010101\"}]}",
        ] {
            assert!(decode_answers(bad.as_bytes(), 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn keeps_round_trip_and_garbage_is_refused() {
        let traces = vec![[1u8; 16], [0xab; 16]];
        assert_eq!(decode_keeps(&encode_keeps(&traces)).unwrap(), traces);
        for bad in [
            &b"{}"[..],
            br#"{"traces":["xyz"]}"#,
            br#"{"traces":["00000000000000000000000000000000"]}"#,
            br#"{"traces":[1]}"#,
            b"not json",
        ] {
            assert!(
                decode_keeps(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<_> = (0..=MAX_LOOKUPS).map(|_| [7u8; 16]).collect();
        assert_eq!(decode_keeps(&encode_keeps(&many)), Err(WireError::TooMany));
    }
}
