//! Where and how spans are exported, resolved from CLI flags and the standard `OTEL_*`
//! variables (OpenTelemetry "OTLP Exporter" and "Batch Span Processor" configuration).
//!
//! Resolution is a pure function over a lookup closure so tests never touch the process
//! environment (which is global and racy under the parallel test runner).

use std::time::Duration;

use reqwest::Url;

pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENV_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const ENV_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const ENV_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const ENV_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
pub const ENV_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const ENV_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
pub const ENV_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
pub const ENV_BSP_EXPORT_TIMEOUT: &str = "OTEL_BSP_EXPORT_TIMEOUT";
pub const ENV_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
pub const ENV_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// Not in the specification; the OpenTelemetry Rust SDK reads it.
pub const ENV_BSP_MAX_CONCURRENT_EXPORTS: &str = "OTEL_BSP_MAX_CONCURRENT_EXPORTS";

/// Names used in error messages for values that came from [`ExportOverrides`].
pub const FLAG_ENDPOINT: &str = "--otlp-endpoint";
pub const FLAG_TRACES_ENDPOINT: &str = "--otlp-traces-endpoint";
pub const FLAG_PROTOCOL: &str = "--otlp-protocol";
pub const FLAG_HEADERS: &str = "--otlp-headers";

/// The HTTP path for traces that the spec appends to a base endpoint.
const TRACES_PATH: &str = "v1/traces";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Batch span processor settings (`OTEL_BSP_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Longest time a span waits in a partial batch before the batch is sent.
    pub schedule_delay: Duration,
    /// Spans held while waiting for export; beyond it new spans are dropped and counted.
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    /// Budget for one batch including all its retries.
    pub export_timeout: Duration,
    /// Batches exported (or retried) at the same time. While all are in flight the queue
    /// is not read, so memory stays bounded by the queue plus these batches.
    pub max_concurrent_exports: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            schedule_delay: Duration::from_millis(5000),
            // The SDKs' 2048 is sized for one process; the agent speaks for every process
            // on the node, and 2048 spans are 0.1 s of a 10k req/s server's traffic.
            max_queue_size: 8192,
            max_export_batch_size: 512,
            export_timeout: Duration::from_millis(30_000),
            // One batch at a time caps export at a batch per round trip: with a collector
            // across the network that, not the collector, would set the rate.
            max_concurrent_exports: 4,
        }
    }
}

/// Retry policy for retryable export failures: exponential backoff with jitter.
/// Not configurable through the environment (the spec defines no variables for it);
/// tests shorten it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts per batch, the first one included.
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            // Retries are bounded by the batch's export timeout (OTEL_BSP_EXPORT_TIMEOUT,
            // 30 s), not by a count: five attempts gave up after about 1.5 s, so a collector
            // restarting for a few seconds lost every batch in flight.
            max_attempts: u32::MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// gRPC: the collector's base URL (`http://host:4317`).
    /// HTTP: the full traces URL (`http://host:4318/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Lower-case names, values already URL-decoded and checked to be valid header values.
    pub headers: Vec<(String, String)>,
    /// Per-request timeout.
    pub timeout: Duration,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
}

impl ExportConfig {
    /// One line for logs: where and how. Header values are left out (they carry secrets).
    pub fn describe(&self) -> String {
        let mut out = format!("{} ({})", self.endpoint, self.protocol.as_str());
        if !self.headers.is_empty() {
            let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
            out.push_str(&format!(" with headers {}", names.join(", ")));
        }
        out
    }

    /// A config for `endpoint` (used as-is) with every other setting at its default.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        ExportConfig {
            endpoint: endpoint.into(),
            protocol,
            headers: Vec::new(),
            timeout: Duration::from_millis(10_000),
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
        }
    }
}

/// Values from CLI flags; each one wins over the environment variables it mirrors.
#[derive(Debug, Clone, Default)]
pub struct ExportOverrides {
    /// Like `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL (HTTP appends `/v1/traces`).
    pub endpoint: Option<String>,
    /// Like `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: used as-is; wins over `endpoint`.
    pub traces_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<String>,
    /// Same syntax as `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: Option<String>,
    /// Like `OTEL_BSP_SCHEDULE_DELAY`.
    pub schedule_delay_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} is not a valid URL ({reason}); use e.g. http://localhost:4318")]
    InvalidEndpoint {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "{var}={value:?} uses https, but this build has no TLS support; use an http:// endpoint (e.g. a collector on the node)"
    )]
    TlsUnsupported { var: &'static str, value: String },
    #[error("{var}={value:?} is not a supported protocol; use \"grpc\" or \"http/protobuf\"")]
    UnknownProtocol { var: &'static str, value: String },
    #[error(
        "{var}: bad header entry {entry:?} ({reason}); use comma-separated key=value pairs with URL-encoded values"
    )]
    BadHeader {
        var: &'static str,
        entry: String,
        reason: &'static str,
    },
    #[error("{var}={value:?} is not valid; use a whole number {what}")]
    InvalidNumber {
        var: &'static str,
        value: String,
        what: &'static str,
    },
}

/// Resolves the export configuration. `Ok(None)` means no endpoint is configured anywhere:
/// the caller falls back to printing traces on the console.
///
/// Precedence per setting: CLI override, then the traces-specific variable, then the
/// generic one, then the spec default. Empty variables count as unset (spec rule).
pub fn resolve(
    lookup: impl Fn(&str) -> Option<String>,
    overrides: &ExportOverrides,
) -> Result<Option<ExportConfig>, ConfigError> {
    let get = |name: &'static str| {
        lookup(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|v| (name, v))
    };
    let flag = |name: &'static str, v: &Option<String>| {
        v.as_ref()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|v| (name, v))
    };

    let protocol = match flag(FLAG_PROTOCOL, &overrides.protocol)
        .or_else(|| get(ENV_TRACES_PROTOCOL))
        .or_else(|| get(ENV_PROTOCOL))
    {
        None => Protocol::HttpProtobuf,
        Some((var, value)) => parse_protocol(var, &value)?,
    };

    // Flags first, then variables; within each, the traces-specific one.
    let endpoint =
        if let Some((var, value)) = flag(FLAG_TRACES_ENDPOINT, &overrides.traces_endpoint) {
            // Signal-specific endpoints are used exactly as given (spec).
            parse_url(var, &value)?;
            value
        } else if let Some((var, value)) = flag(FLAG_ENDPOINT, &overrides.endpoint) {
            endpoint_from_base(parse_url(var, &value)?, protocol)
        } else if let Some((var, value)) = get(ENV_TRACES_ENDPOINT) {
            parse_url(var, &value)?;
            value
        } else if let Some((var, value)) = get(ENV_ENDPOINT) {
            endpoint_from_base(parse_url(var, &value)?, protocol)
        } else {
            return Ok(None);
        };

    let headers = match flag(FLAG_HEADERS, &overrides.headers)
        .or_else(|| get(ENV_TRACES_HEADERS))
        .or_else(|| get(ENV_HEADERS))
    {
        None => Vec::new(),
        Some((var, value)) => parse_headers(var, &value)?,
    };

    let timeout_ms = positive_ms(get(ENV_TRACES_TIMEOUT).or_else(|| get(ENV_TIMEOUT)), 10_000)?;

    let defaults = BatchConfig::default();
    let max_queue_size = positive(get(ENV_BSP_MAX_QUEUE_SIZE), defaults.max_queue_size)?;
    // The spec requires batch size <= queue size; SDKs clamp rather than fail.
    let max_export_batch_size = positive(
        get(ENV_BSP_MAX_EXPORT_BATCH_SIZE),
        defaults.max_export_batch_size,
    )?
    .min(max_queue_size);
    let schedule_delay = match overrides.schedule_delay_ms {
        Some(ms) => Duration::from_millis(ms),
        None => match get(ENV_BSP_SCHEDULE_DELAY) {
            None => defaults.schedule_delay,
            Some((var, value)) => match value.parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => {
                    return Err(ConfigError::InvalidNumber {
                        var,
                        value,
                        what: "of milliseconds",
                    });
                }
            },
        },
    };
    let export_timeout = Duration::from_millis(positive_ms(
        get(ENV_BSP_EXPORT_TIMEOUT),
        defaults.export_timeout.as_millis() as u64,
    )?);
    // Each batch in flight holds its encoded request: keep the bound meaningful.
    let max_concurrent_exports = positive(
        get(ENV_BSP_MAX_CONCURRENT_EXPORTS),
        defaults.max_concurrent_exports,
    )?
    .min(64);

    Ok(Some(ExportConfig {
        endpoint,
        protocol,
        headers,
        timeout: Duration::from_millis(timeout_ms),
        batch: BatchConfig {
            schedule_delay,
            max_queue_size,
            max_export_batch_size,
            export_timeout,
            max_concurrent_exports,
        },
        retry: RetryConfig::default(),
    }))
}

/// [`resolve`] against the process environment.
pub fn from_env(overrides: &ExportOverrides) -> Result<Option<ExportConfig>, ConfigError> {
    resolve(|name| std::env::var(name).ok(), overrides)
}

fn parse_protocol(var: &'static str, value: &str) -> Result<Protocol, ConfigError> {
    match value {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        _ => Err(ConfigError::UnknownProtocol {
            var,
            value: value.to_owned(),
        }),
    }
}

fn parse_url(var: &'static str, value: &str) -> Result<Url, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidEndpoint {
        var,
        value: value.to_owned(),
        reason,
    };
    let url = Url::parse(value).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "http" => {}
        // Neither tonic nor reqwest is built with a TLS stack here; failing at startup
        // beats failing on every export.
        "https" => {
            return Err(ConfigError::TlsUnsupported {
                var,
                value: value.to_owned(),
            });
        }
        // `host:4317` parses as scheme "host"; the spec requires a scheme, so say so.
        other => return Err(invalid(format!("scheme {other:?} is not http"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    Ok(url)
}

/// Applies the spec's rule for the generic endpoint: HTTP appends `v1/traces` to the base
/// path; gRPC uses the base as-is (the method path is fixed by the service definition).
fn endpoint_from_base(mut url: Url, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => url.to_string().trim_end_matches('/').to_owned(),
        Protocol::HttpProtobuf => {
            let base = url.path().trim_end_matches('/').to_owned();
            url.set_path(&format!("{base}/{TRACES_PATH}"));
            url.to_string()
        }
    }
}

/// Parses `key1=value1,key2=value2` with percent-encoded values (W3C Baggage syntax, which
/// the spec prescribes for `OTEL_EXPORTER_OTLP_HEADERS`).
pub fn parse_headers(var: &'static str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for entry in value.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let bad = |reason| ConfigError::BadHeader {
            var,
            entry: entry.trim().to_owned(),
            reason,
        };
        let (k, v) = entry.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let key = k.trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        if !key.bytes().all(is_token_byte) {
            return Err(bad("key is not a valid header name"));
        }
        let value = percent_decode(v.trim()).ok_or_else(|| bad("invalid %-encoding"))?;
        // The same rule satisfies HTTP header values and ASCII gRPC metadata.
        if !value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err(bad("value has control or non-ASCII characters"));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn positive_ms(found: Option<(&'static str, String)>, default: u64) -> Result<u64, ConfigError> {
    match found {
        None => Ok(default),
        Some((var, value)) => match value.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError::InvalidNumber {
                var,
                value,
                what: "of milliseconds greater than 0",
            }),
        },
    }
}

fn positive(found: Option<(&'static str, String)>, default: usize) -> Result<usize, ConfigError> {
    match found {
        None => Ok(default),
        Some((var, value)) => match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError::InvalidNumber {
                var,
                value,
                what: "greater than 0",
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve_env(pairs: &[(&str, &str)]) -> Result<Option<ExportConfig>, ConfigError> {
        resolve(env(pairs), &ExportOverrides::default())
    }

    #[test]
    fn no_endpoint_means_console() {
        assert_eq!(resolve_env(&[]).unwrap(), None);
        // Empty counts as unset, even when other settings are present.
        assert_eq!(
            resolve_env(&[(ENV_ENDPOINT, " "), (ENV_PROTOCOL, "grpc")]).unwrap(),
            None
        );
    }

    #[test]
    fn generic_endpoint_gets_traces_path_for_http_default_protocol() {
        let cfg = resolve_env(&[(ENV_ENDPOINT, "http://collector:4318")])
            .unwrap()
            .unwrap();
        assert_eq!(cfg.protocol, Protocol::HttpProtobuf);
        assert_eq!(cfg.endpoint, "http://collector:4318/v1/traces");
        let cfg = resolve_env(&[(ENV_ENDPOINT, "http://collector:4318/prefix/")])
            .unwrap()
            .unwrap();
        assert_eq!(cfg.endpoint, "http://collector:4318/prefix/v1/traces");
    }

    #[test]
    fn grpc_endpoint_is_used_as_base() {
        let cfg = resolve_env(&[
            (ENV_ENDPOINT, "http://collector:4317/"),
            (ENV_PROTOCOL, "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(cfg.protocol, Protocol::Grpc);
        assert_eq!(cfg.endpoint, "http://collector:4317");
    }

    #[test]
    fn traces_specific_variables_win_and_are_used_as_is() {
        let cfg = resolve_env(&[
            (ENV_ENDPOINT, "http://generic:4318"),
            (ENV_TRACES_ENDPOINT, "http://specific:9999/custom"),
            (ENV_PROTOCOL, "grpc"),
            (ENV_TRACES_PROTOCOL, "http/protobuf"),
            (ENV_HEADERS, "a=1"),
            (ENV_TRACES_HEADERS, "b=2"),
            (ENV_TIMEOUT, "1000"),
            (ENV_TRACES_TIMEOUT, "2000"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(cfg.endpoint, "http://specific:9999/custom");
        assert_eq!(cfg.protocol, Protocol::HttpProtobuf);
        assert_eq!(cfg.headers, vec![("b".to_owned(), "2".to_owned())]);
        assert_eq!(cfg.timeout, Duration::from_millis(2000));
    }

    #[test]
    fn overrides_win_over_environment() {
        let overrides = ExportOverrides {
            endpoint: Some("http://flag:4317".into()),
            protocol: Some("grpc".into()),
            headers: Some("x-flag=yes".into()),
            schedule_delay_ms: Some(1234),
            ..Default::default()
        };
        let cfg = resolve(
            env(&[
                (ENV_TRACES_ENDPOINT, "http://env:4318/v1/traces"),
                (ENV_TRACES_PROTOCOL, "http/protobuf"),
                (ENV_TRACES_HEADERS, "x-env=yes"),
                (ENV_BSP_SCHEDULE_DELAY, "99"),
            ]),
            &overrides,
        )
        .unwrap()
        .unwrap();
        assert_eq!(cfg.endpoint, "http://flag:4317");
        assert_eq!(cfg.protocol, Protocol::Grpc);
        assert_eq!(cfg.headers, vec![("x-flag".to_owned(), "yes".to_owned())]);
        assert_eq!(cfg.batch.schedule_delay, Duration::from_millis(1234));
    }

    #[test]
    fn endpoint_flags_follow_the_variables_rules() {
        let base = ExportOverrides {
            endpoint: Some("http://flag:4318".into()),
            ..Default::default()
        };
        let cfg = resolve(env(&[]), &base).unwrap().unwrap();
        assert_eq!(cfg.endpoint, "http://flag:4318/v1/traces");
        let both = ExportOverrides {
            traces_endpoint: Some("http://flag:4318/custom".into()),
            ..base
        };
        let cfg = resolve(env(&[]), &both).unwrap().unwrap();
        assert_eq!(cfg.endpoint, "http://flag:4318/custom");
        let bad = ExportOverrides {
            traces_endpoint: Some("flag:4318".into()),
            ..Default::default()
        };
        assert!(matches!(
            resolve(env(&[]), &bad),
            Err(ConfigError::InvalidEndpoint {
                var: FLAG_TRACES_ENDPOINT,
                ..
            })
        ));
    }

    #[test]
    fn describe_names_headers_but_not_their_values() {
        let mut cfg = ExportConfig::new("http://c:4317", Protocol::Grpc);
        cfg.headers = vec![("authorization".into(), "secret".into())];
        assert_eq!(
            cfg.describe(),
            "http://c:4317 (grpc) with headers authorization"
        );
    }

    #[test]
    fn defaults_follow_the_spec_but_a_node_sized_queue() {
        let cfg = resolve_env(&[(ENV_ENDPOINT, "http://c:4318")])
            .unwrap()
            .unwrap();
        assert_eq!(cfg.timeout, Duration::from_secs(10));
        assert_eq!(cfg.batch, BatchConfig::default());
        assert_eq!(cfg.batch.schedule_delay, Duration::from_secs(5));
        assert_eq!(cfg.batch.max_queue_size, 8192);
        assert_eq!(cfg.batch.max_export_batch_size, 512);
        assert!(cfg.headers.is_empty());
    }

    #[test]
    fn batch_variables_are_read_and_batch_is_clamped_to_queue() {
        let cfg = resolve_env(&[
            (ENV_ENDPOINT, "http://c:4318"),
            (ENV_BSP_SCHEDULE_DELAY, "250"),
            (ENV_BSP_MAX_QUEUE_SIZE, "100"),
            (ENV_BSP_MAX_EXPORT_BATCH_SIZE, "1000"),
            (ENV_BSP_EXPORT_TIMEOUT, "7000"),
            (ENV_BSP_MAX_CONCURRENT_EXPORTS, "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(cfg.batch.schedule_delay, Duration::from_millis(250));
        assert_eq!(cfg.batch.max_queue_size, 100);
        assert_eq!(cfg.batch.max_export_batch_size, 100);
        assert_eq!(cfg.batch.export_timeout, Duration::from_secs(7));
        assert_eq!(cfg.batch.max_concurrent_exports, 2);
        let many = [
            (ENV_ENDPOINT, "http://c:4318"),
            (ENV_BSP_MAX_CONCURRENT_EXPORTS, "100000"),
        ];
        let cfg = resolve_env(&many).unwrap().unwrap();
        assert_eq!(cfg.batch.max_concurrent_exports, 64, "clamped");
        let zero = [
            (ENV_ENDPOINT, "http://c:4318"),
            (ENV_BSP_MAX_CONCURRENT_EXPORTS, "0"),
        ];
        assert!(resolve_env(&zero).is_err());
    }

    #[test]
    fn headers_are_split_trimmed_lowercased_and_url_decoded() {
        let h = parse_headers(
            ENV_HEADERS,
            "Authorization=Basic%20dXNlcjpwdw%3D%3D , x-tenant = acme,,api-key=a=b",
        )
        .unwrap();
        assert_eq!(
            h,
            vec![
                ("authorization".to_owned(), "Basic dXNlcjpwdw==".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned()),
                // Only the first '=' separates key from value.
                ("api-key".to_owned(), "a=b".to_owned()),
            ]
        );
    }

    #[test]
    fn bad_headers_name_the_variable() {
        for bad in ["novalue", "=v", "bad key=v", "k=%zz", "k=%0a", "k=%"] {
            let err =
                resolve_env(&[(ENV_ENDPOINT, "http://c:4318"), (ENV_HEADERS, bad)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::BadHeader {
                        var: ENV_HEADERS,
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().starts_with(ENV_HEADERS), "{err}");
        }
    }

    #[test]
    fn unknown_protocol_is_an_error() {
        let err = resolve_env(&[
            (ENV_ENDPOINT, "http://c:4318"),
            (ENV_TRACES_PROTOCOL, "http/json"),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            ConfigError::UnknownProtocol {
                var: ENV_TRACES_PROTOCOL,
                value: "http/json".into()
            }
        );
        assert!(
            err.to_string()
                .contains("use \"grpc\" or \"http/protobuf\"")
        );
    }

    #[test]
    fn invalid_urls_are_errors() {
        for (bad, var) in [
            ("not a url", ENV_ENDPOINT),
            ("collector:4317", ENV_ENDPOINT),
            ("ftp://c:21", ENV_TRACES_ENDPOINT),
        ] {
            let err = resolve_env(&[(var, bad)]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::InvalidEndpoint { var: v, .. } if *v == var),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().starts_with(var));
        }
        let err = resolve_env(&[(ENV_ENDPOINT, "https://c:4318")]).unwrap_err();
        assert!(matches!(err, ConfigError::TlsUnsupported { .. }));
    }

    #[test]
    fn invalid_numbers_are_errors() {
        for (var, bad) in [
            (ENV_TIMEOUT, "10s"),
            (ENV_TRACES_TIMEOUT, "0"),
            (ENV_BSP_MAX_QUEUE_SIZE, "0"),
            (ENV_BSP_MAX_EXPORT_BATCH_SIZE, "-1"),
            (ENV_BSP_SCHEDULE_DELAY, "soon"),
        ] {
            let err = resolve_env(&[(ENV_ENDPOINT, "http://c:4318"), (var, bad)]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::InvalidNumber { var: v, .. } if *v == var),
                "{var}={bad}: {err:?}"
            );
        }
    }
}
