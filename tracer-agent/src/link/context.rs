//! Trace context carried in HTTP headers: W3C Trace Context (`traceparent`, `tracestate`)
//! parsed strictly by the specification, and B3 in its single (`b3`) and multi
//! (`x-b3-*`) forms. Pure.

use crate::spans::{SpanId, TraceId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    /// The caller's span: the parent of the span that receives this context.
    pub span_id: SpanId,
    /// The caller's sampling decision; `None` when it deferred it (B3 without a flag).
    pub sampled: Option<bool>,
    pub trace_state: String,
}

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lower-case hex only (the W3C spec forbids upper case); exactly `N` bytes.
fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = hex_nibble(pair[0])? << 4 | hex_nibble(pair[1])?;
    }
    Some(out)
}

/// B3 allows upper case in practice; ids of 16 hex digits are 64-bit and left-padded.
fn b3_trace_id(s: &str) -> Option<TraceId> {
    let lower = s.to_ascii_lowercase();
    match lower.len() {
        32 => lower_hex::<16>(&lower),
        16 => lower_hex::<8>(&lower).map(|short| {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&short);
            id
        }),
        _ => None,
    }
    .filter(|id| *id != [0; 16])
}

fn b3_span_id(s: &str) -> Option<SpanId> {
    lower_hex::<8>(&s.to_ascii_lowercase()).filter(|id| *id != [0; 8])
}

/// `traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
/// Version `ff` is invalid; unknown future versions are read by their first four fields
/// (and may carry more after a `-`), as the specification asks.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim_matches([' ', '\t']);
    let mut parts = value.split('-');
    let version = lower_hex::<1>(parts.next()?)?[0];
    if version == 0xff {
        return None;
    }
    let trace_id = lower_hex::<16>(parts.next()?)?;
    let span_id = lower_hex::<8>(parts.next()?)?;
    let flags = lower_hex::<1>(parts.next()?)?[0];
    let rest = parts.next();
    if version == 0 && (rest.is_some() || value.len() != 55) {
        return None;
    }
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        trace_state: String::new(),
    })
}

/// `tracestate` is kept verbatim when well-formed enough to pass on (at most 32 members,
/// 512 bytes as the specification suggests as a minimum to propagate); otherwise dropped.
pub fn valid_tracestate(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() || value.len() > 512 {
        return None;
    }
    let members: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    if members.len() > 32 {
        return None;
    }
    for m in &members {
        let (k, v) = m.split_once('=')?;
        if k.is_empty() || v.is_empty() || k.contains(' ') || v.contains('=') {
            return None;
        }
    }
    Some(members.join(","))
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`; `b3: 0` carries no context.
pub fn parse_b3_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
        trace_state: String::new(),
    })
}

/// `x-b3-traceid` + `x-b3-spanid` (+ `x-b3-sampled`, `x-b3-flags: 1` for debug).
pub fn parse_b3_multi(header: impl Fn(&str) -> Option<String>) -> Option<SpanContext> {
    let trace_id = b3_trace_id(header("x-b3-traceid")?.trim())?;
    let span_id = b3_span_id(header("x-b3-spanid")?.trim())?;
    let debug = header("x-b3-flags").is_some_and(|f| f.trim() == "1");
    let sampled = match header("x-b3-sampled").as_deref().map(str::trim) {
        _ if debug => Some(true),
        None => None,
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(_) => return None,
    };
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
        trace_state: String::new(),
    })
}

/// The names `extract` reads; the HTTP layer keeps only these from each request head.
pub const CONTEXT_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// Context from a request's headers (names lower-case): W3C first, then B3 single, then B3
/// multi. A header that is present but invalid is ignored, never half-used. With several
/// `traceparent` fields the request is ambiguous and carries no context.
pub fn extract(headers: &[(String, String)]) -> Option<SpanContext> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let traceparents = headers.iter().filter(|(k, _)| k == "traceparent").count();
    if traceparents == 1 {
        if let Some(mut ctx) = get("traceparent").as_deref().and_then(parse_traceparent) {
            // tracestate may be split over several fields: they are one list.
            let joined: Vec<&str> = headers
                .iter()
                .filter(|(k, _)| k == "tracestate")
                .map(|(_, v)| v.as_str())
                .collect();
            if !joined.is_empty() {
                ctx.trace_state = valid_tracestate(&joined.join(",")).unwrap_or_default();
            }
            return Some(ctx);
        }
    } else if traceparents > 1 {
        return None;
    }
    if let Some(ctx) = get("b3").as_deref().and_then(parse_b3_single) {
        return Some(ctx);
    }
    parse_b3_multi(get)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn traceparent_valid() {
        let ctx = parse_traceparent(TP).unwrap();
        assert_eq!(ctx.trace_id[0], 0x4b);
        assert_eq!(ctx.span_id[7], 0xb7);
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(
            parse_traceparent(&TP.replace("-01", "-00"))
                .unwrap()
                .sampled,
            Some(false)
        );
    }

    #[test]
    fn traceparent_rejects_what_the_spec_rejects() {
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  // short span id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  // short flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 + extra
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "garbage",
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A future version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abc")
                .is_some()
        );
    }

    #[test]
    fn tracestate_is_carried_with_traceparent() {
        let ctx = extract(&h(&[
            ("traceparent", TP),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]))
        .unwrap();
        assert_eq!(ctx.trace_state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        let ctx = extract(&h(&[("traceparent", TP), ("tracestate", "bad state")])).unwrap();
        assert_eq!(ctx.trace_state, "");
    }

    #[test]
    fn duplicate_traceparent_is_ambiguous() {
        assert_eq!(
            extract(&h(&[("traceparent", TP), ("traceparent", TP)])),
            None
        );
    }

    #[test]
    fn b3_single_forms() {
        let full = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
        let ctx = parse_b3_single(full).unwrap();
        assert_eq!(ctx.span_id[0], 0xe4);
        assert_eq!(ctx.sampled, Some(true));
        let short = parse_b3_single("a3ce929d0e0e4736-00f067aa0ba902b7-0").unwrap();
        assert_eq!(&short.trace_id[..8], &[0; 8]);
        assert_eq!(short.trace_id[8], 0xa3);
        assert_eq!(short.sampled, Some(false));
        let deferred = parse_b3_single("A3CE929D0E0E4736-00F067AA0BA902B7").unwrap();
        assert_eq!(deferred.sampled, None, "no flag: the receiver decides");
        for bad in [
            "0",
            "1",
            "abc-def",
            "a3ce929d0e0e4736-00f067aa0ba902b7-x",
            "",
        ] {
            assert_eq!(parse_b3_single(bad), None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_forms() {
        let headers = h(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ]);
        let ctx = extract(&headers).unwrap();
        assert_eq!(ctx.trace_id[0], 0x46);
        assert_eq!(ctx.span_id[0], 0xa2);
        assert_eq!(ctx.sampled, Some(true));
        let short = extract(&h(&[
            ("x-b3-traceid", "48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(short.sampled, Some(true), "debug flag implies sampled");
        assert_eq!(extract(&h(&[("x-b3-traceid", "48485a3953bb6124")])), None);
        assert_eq!(
            extract(&h(&[
                ("x-b3-traceid", "00000000000000000000000000000000"),
                ("x-b3-spanid", "a2fb4a1d1a96d312")
            ])),
            None
        );
    }

    #[test]
    fn w3c_wins_over_b3_and_invalid_w3c_falls_back() {
        let both = h(&[
            ("traceparent", TP),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
        assert_eq!(extract(&both).unwrap().trace_id[0], 0x4b);
        let bad_w3c = h(&[
            ("traceparent", "garbage"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
        assert_eq!(extract(&bad_w3c).unwrap().trace_id[0], 0x80);
        assert_eq!(extract(&h(&[("traceparent", "garbage")])), None);
    }
}
