//! Span names with a low-cardinality route: `{method} {route}`.
//!
//! * A configured pattern (`--route /api/users/{id}`) that matches the path names the span
//!   and, on SERVER spans, sets `http.route` (on CLIENT spans, where the semantic
//!   conventions have no route, `url.template`). `{name}` matches one path segment; a last
//!   segment `*` matches the rest of the path.
//! * Otherwise a template is guessed: numeric, UUID, hexadecimal and long token segments
//!   become `{id}`, `{uuid}`, `{hex}` and `{token}`. It names the span and sets
//!   `url.template`, never `http.route` (it is a guess, not the application's route).
//!
//! Guessed templates are bounded per service: past the cap a new template is not made, and
//! the span keeps the method alone as its name (counted). A path with no variable segment
//! is its own template, so a service with unbounded literal paths reaches the cap, not the
//! backend's index.

use std::collections::{HashMap, HashSet};

use super::{AttrValue, SpanKind, SpanRecord};

/// Distinct guessed templates kept per service by default.
pub const DEFAULT_TEMPLATES_PER_SERVICE: usize = 200;
/// Services whose templates are tracked; spans of further services keep the method name.
const MAX_SERVICES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("--route `{0}` must start with `/` (e.g. /api/users/{{id}})")]
    NotAPath(String),
    #[error("--route `{0}`: `*` may only be the last segment (e.g. /static/*)")]
    StarNotLast(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param,
    /// `*` as the last segment: the rest of the path, possibly nothing.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    fn parse(s: &str) -> Result<Self, RouteError> {
        let text = s.trim();
        let Some(rest) = text.strip_prefix('/') else {
            return Err(RouteError::NotAPath(text.to_owned()));
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            segments.push(if *p == "*" {
                if i + 1 != parts.len() {
                    return Err(RouteError::StarNotLast(text.to_owned()));
                }
                Segment::Rest
            } else if p.starts_with('{') && p.ends_with('}') && p.len() > 2 {
                Segment::Param
            } else {
                Segment::Literal((*p).to_owned())
            });
        }
        Ok(Pattern {
            text: text.to_owned(),
            segments,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut parts = if rest.is_empty() {
            None
        } else {
            Some(rest.split('/'))
        };
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::Param => match parts.as_mut().and_then(Iterator::next) {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(l) => match parts.as_mut().and_then(Iterator::next) {
                    Some(p) if p == l => {}
                    _ => return false,
                },
            }
        }
        parts.is_none_or(|mut p| p.next().is_none())
    }
}

/// Names spans by route; see the module docs.
#[derive(Debug, Clone)]
pub struct RouteNamer {
    patterns: Vec<Pattern>,
    per_service: usize,
    templates: HashMap<String, HashSet<String>>,
    /// Spans left with the method alone because their service reached its cap.
    capped: u64,
}

impl Default for RouteNamer {
    fn default() -> Self {
        RouteNamer {
            patterns: Vec::new(),
            per_service: DEFAULT_TEMPLATES_PER_SERVICE,
            templates: HashMap::new(),
            capped: 0,
        }
    }
}

/// What names a span.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Configured(&'a str),
    Template(String),
}

impl RouteNamer {
    /// `patterns`: `--route` values (empty ones ignored), tried in order. `per_service`:
    /// the cap on guessed templates per service (0 turns guessing off).
    pub fn new(patterns: &[String], per_service: usize) -> Result<Self, RouteError> {
        Ok(RouteNamer {
            patterns: patterns
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
            per_service,
            ..Default::default()
        })
    }

    /// The route of `path` for `service`, if one may name it.
    pub fn route(&mut self, service: &str, path: &str) -> Option<Route<'_>> {
        if let Some(p) = self.patterns.iter().find(|p| p.matches(path)) {
            return Some(Route::Configured(&p.text));
        }
        if self.per_service == 0 {
            return None;
        }
        let template = template(path);
        let services = self.templates.len();
        let known = match self.templates.get_mut(service) {
            Some(set) => {
                if set.contains(&template) {
                    true
                } else if set.len() < self.per_service {
                    set.insert(template.clone());
                    true
                } else {
                    false
                }
            }
            None if services < MAX_SERVICES => {
                self.templates
                    .insert(service.to_owned(), HashSet::from([template.clone()]));
                true
            }
            None => false,
        };
        if known {
            Some(Route::Template(template))
        } else {
            self.capped += 1;
            None
        }
    }

    /// Renames `span` (named by its method) to `{method} {route}` and sets the route
    /// attribute, when a route is known for `path`. False when the service's cap left the
    /// span with its method alone.
    pub fn apply(&mut self, span: &mut SpanRecord, path: &str) -> bool {
        let resource = span.resource.clone();
        let kind = span.kind;
        let (route, attr) = match self.route(resource.service_name(), path) {
            Some(Route::Configured(p)) if kind == SpanKind::Server => (p.to_owned(), "http.route"),
            Some(Route::Configured(p)) => (p.to_owned(), "url.template"),
            Some(Route::Template(t)) => (t, "url.template"),
            None => return self.per_service == 0,
        };
        span.name.push(' ');
        span.name.push_str(&route);
        span.attributes.push((attr, AttrValue::from(route)));
        true
    }
}

/// The path with its variable segments replaced by placeholders.
pub fn template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(placeholder(seg).unwrap_or(seg));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn placeholder(seg: &str) -> Option<&'static str> {
    let b = seg.as_bytes();
    if b.is_empty() {
        return None;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return Some("{id}");
    }
    if is_uuid(b) {
        return Some("{uuid}");
    }
    let has_digit = b.iter().any(u8::is_ascii_digit);
    if b.len() >= 8 && has_digit && b.iter().all(u8::is_ascii_hexdigit) {
        return Some("{hex}");
    }
    if b.len() >= 20
        && has_digit
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b'='))
    {
        return Some("{token}");
    }
    None
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_replace_variable_segments() {
        for (path, want) in [
            ("/", "/"),
            ("", "/"),
            ("/api/users/42", "/api/users/{id}"),
            ("/api/users/42/orders/7", "/api/users/{id}/orders/{id}"),
            ("/o/123e4567-e89b-12d3-a456-426614174000", "/o/{uuid}"),
            ("/blob/9f86d081884c7d65", "/blob/{hex}"),
            ("/blob/deadbeef", "/blob/deadbeef"),
            ("/v1/status", "/v1/status"),
            ("/s/eyJhbGciOiJIUzI1NiJ9abc123", "/s/{token}"),
            ("/files/report-2024.pdf", "/files/report-2024.pdf"),
            ("/a//b/", "/a//b/"),
        ] {
            assert_eq!(template(path), want, "{path}");
        }
    }

    #[test]
    fn configured_patterns_match_whole_paths() {
        let mut n = RouteNamer::new(
            &[
                "/api/users/{id}".into(),
                "/static/*".into(),
                "".into(),
                "/".into(),
            ],
            10,
        )
        .unwrap();
        for (path, want) in [
            ("/api/users/42", Some("/api/users/{id}")),
            ("/api/users/alice", Some("/api/users/{id}")),
            ("/api/users/42/orders", None),
            ("/api/users/", None),
            ("/api/users", None),
            ("/static/a/b.css", Some("/static/*")),
            ("/static", Some("/static/*")),
            ("/", Some("/")),
        ] {
            let got = match n.route("svc", path) {
                Some(Route::Configured(p)) => Some(p.to_owned()),
                _ => None,
            };
            assert_eq!(got.as_deref(), want, "{path}");
        }
        assert_eq!(
            RouteNamer::new(&["api".into()], 1).unwrap_err(),
            RouteError::NotAPath("api".into())
        );
        assert_eq!(
            RouteNamer::new(&["/a/*/b".into()], 1).unwrap_err(),
            RouteError::StarNotLast("/a/*/b".into())
        );
    }

    #[test]
    fn guessed_templates_are_capped_per_service() {
        let mut n = RouteNamer::new(&[], 2).unwrap();
        assert!(n.route("a", "/x/1").is_some());
        assert!(n.route("a", "/y/2").is_some());
        // A third distinct template for `a` is refused, known ones still named.
        assert_eq!(n.route("a", "/z"), None);
        assert_eq!(
            n.route("a", "/x/99"),
            Some(Route::Template("/x/{id}".into()))
        );
        // Another service has its own budget.
        assert!(n.route("b", "/z").is_some());
        assert_eq!(n.capped, 1);
        // Configured routes never count against it.
        let mut n = RouteNamer::new(&["/z".into()], 0).unwrap();
        assert_eq!(n.route("a", "/z"), Some(Route::Configured("/z")));
        assert_eq!(n.route("a", "/q/1"), None);
    }

    fn span(kind: SpanKind) -> SpanRecord {
        SpanRecord::for_test(kind, "GET")
    }

    #[test]
    fn names_and_attributes_by_kind() {
        let mut n = RouteNamer::new(&["/api/users/{id}".into()], 10).unwrap();
        let mut s = span(SpanKind::Server);
        n.apply(&mut s, "/api/users/7");
        assert_eq!(s.name, "GET /api/users/{id}");
        assert_eq!(
            s.attr("http.route"),
            Some(&AttrValue::from("/api/users/{id}".to_owned()))
        );
        let mut c = span(SpanKind::Client);
        n.apply(&mut c, "/api/users/7");
        assert_eq!(c.attr("http.route"), None);
        assert!(c.attr("url.template").is_some());
        let mut g = span(SpanKind::Server);
        n.apply(&mut g, "/items/12");
        assert_eq!(g.name, "GET /items/{id}");
        assert_eq!(g.attr("http.route"), None);
        assert_eq!(
            g.attr("url.template"),
            Some(&AttrValue::from("/items/{id}".to_owned()))
        );
    }
}
