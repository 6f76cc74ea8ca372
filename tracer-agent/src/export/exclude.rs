//! Requests not worth a trace, decided from the request head before any span is built:
//! kubelet probes (`User-Agent: kube-probe/…`) unless asked for, and configured paths
//! (`--exclude-path`, a prefix such as `/health` or a glob such as `/api/*/status`).
//!
//! An excluded request is still parsed and paired (the connection's later requests depend
//! on it), and the linker still places it, so the work it causes — the calls a health
//! handler makes downstream — is dropped with it instead of turning into orphan traces.
//! Callers on other nodes are told it is not sampled.

use crate::http::RequestHead;
use crate::spans::builder::split_target;

/// Why a request was excluded, for `tracer_requests_excluded_total{rule}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    KubeProbe,
    Path,
}

impl Rule {
    pub const ALL: [Rule; 2] = [Rule::KubeProbe, Rule::Path];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::KubeProbe => "kube_probe",
            Rule::Path => "path",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExcludeError {
    #[error("--exclude-path `{0}` must start with `/` (e.g. /health or /api/*/status)")]
    NotAPath(String),
}

/// A path rule: a glob when it holds `*` (any run of bytes, `/` included) or `?` (one
/// byte), else a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Prefix(String),
    Glob(String),
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<Self, ExcludeError> {
        let s = s.trim();
        if !s.starts_with('/') {
            return Err(ExcludeError::NotAPath(s.to_owned()));
        }
        Ok(if s.contains(['*', '?']) {
            PathPattern::Glob(s.to_owned())
        } else {
            PathPattern::Prefix(s.to_owned())
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
            PathPattern::Glob(g) => glob_match(g.as_bytes(), path.as_bytes()),
        }
    }
}

/// What is excluded. The default excludes kubelet probes only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusions {
    kube_probes: bool,
    paths: Vec<PathPattern>,
}

impl Default for Exclusions {
    fn default() -> Self {
        Exclusions {
            kube_probes: true,
            paths: Vec::new(),
        }
    }
}

impl Exclusions {
    /// `trace_probes`: keep kubelet probes. `paths`: `--exclude-path` values; empty ones
    /// (a trailing comma in the environment) are ignored.
    pub fn new(trace_probes: bool, paths: &[String]) -> Result<Self, ExcludeError> {
        Ok(Exclusions {
            kube_probes: !trace_probes,
            paths: paths
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| PathPattern::parse(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.kube_probes {
            parts.push("kubelet probes (--trace-probes keeps them)".to_owned());
        }
        for p in &self.paths {
            parts.push(match p {
                PathPattern::Prefix(s) => format!("paths under {s}"),
                PathPattern::Glob(s) => format!("paths matching {s}"),
            });
        }
        if parts.is_empty() {
            "nothing".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// The rule that excludes `head`, if any.
    pub fn check(&self, head: &RequestHead) -> Option<Rule> {
        if self.kube_probes
            && head
                .header("user-agent")
                .is_some_and(|ua| ua.starts_with("kube-probe/"))
        {
            return Some(Rule::KubeProbe);
        }
        if self.paths.is_empty() {
            return None;
        }
        // Origin or absolute form; `*` and authority forms match no rule (rules start with `/`).
        let path = split_target(&head.target).0;
        self.paths
            .iter()
            .any(|p| p.matches(path))
            .then_some(Rule::Path)
    }
}

/// `*` matches any run of bytes, `?` one byte; everything else itself. Iterative with one
/// backtrack point, so linear in practice and never recursive on hostile input.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Headers;

    fn head(target: &str, ua: Option<&str>) -> RequestHead {
        let mut headers = Headers::new();
        if let Some(ua) = ua {
            headers.push("user-agent", ua);
        }
        RequestHead {
            method: "GET".to_owned(),
            target: target.to_owned(),
            version: 1,
            headers,
        }
    }

    #[test]
    fn kubelet_probes_are_excluded_by_default_and_kept_on_request() {
        let probe = head("/healthz", Some("kube-probe/1.31"));
        assert_eq!(Exclusions::default().check(&probe), Some(Rule::KubeProbe));
        let keep = Exclusions::new(true, &[]).unwrap();
        assert_eq!(keep.check(&probe), None);
        // The same path from another client is traced.
        assert_eq!(
            Exclusions::default().check(&head("/healthz", Some("curl/8"))),
            None
        );
        assert_eq!(Exclusions::default().check(&head("/healthz", None)), None);
        // Only a prefix match on the product token.
        assert_eq!(
            Exclusions::default().check(&head("/", Some("my-kube-probe/1"))),
            None
        );
    }

    #[test]
    fn paths_by_prefix_and_glob() {
        let ex = Exclusions::new(
            false,
            &[
                "/health".into(),
                "/api/*/status".into(),
                " /metrics ".into(),
                "".into(),
                "/v?/ping".into(),
            ],
        )
        .unwrap();
        for (target, excluded) in [
            ("/health", true),
            ("/healthz", true),
            ("/health/live?verbose=1", true),
            ("/api/users/status", true),
            ("/api/users/7/status", true),
            ("/api/users/status/extra", false),
            ("/metrics", true),
            ("/v1/ping", true),
            ("/v10/ping", false),
            ("/checkout", false),
            ("/?/health", false),
            ("http://svc:8080/health?x", true),
            ("http://svc:8080", false),
            ("*", false),
            ("svc:443", false),
        ] {
            assert_eq!(
                ex.check(&head(target, None)),
                excluded.then_some(Rule::Path),
                "{target}"
            );
        }
    }

    #[test]
    fn bad_paths_are_refused_with_the_fix() {
        let err = Exclusions::new(false, &["health".into()]).unwrap_err();
        assert_eq!(err, ExcludeError::NotAPath("health".into()));
        assert!(err.to_string().contains("must start with `/`"));
    }

    #[test]
    fn glob_matching() {
        for (p, t, want) in [
            ("/*", "/", true),
            ("/*", "/a/b", true),
            ("/a*b", "/ab", true),
            ("/a*b", "/axxbyb", true),
            ("/a*b", "/axxbyc", false),
            ("/**", "/x", true),
            ("/a?c", "/abc", true),
            ("/a?c", "/ac", false),
            ("/a*", "/b", false),
        ] {
            assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
        // Hostile input stays fast: many stars against a long non-matching path.
        let pattern = "/*a*a*a*a*a*a*a*a*b".as_bytes();
        let text = vec![b'a'; 10_000];
        assert!(!glob_match(pattern, &text));
    }

    #[test]
    fn describes_itself() {
        assert_eq!(Exclusions::new(true, &[]).unwrap().describe(), "nothing");
        assert_eq!(
            Exclusions::new(false, &["/health".into(), "/a/*".into()])
                .unwrap()
                .describe(),
            "kubelet probes (--trace-probes keeps them), paths under /health, paths matching /a/*"
        );
    }
}
