//! HTTP route templates: the configured ones first, then a normaliser for paths that no template matches.
//!
//! The route becomes a metric label, so it must never be a value the client chooses freely. Templates say exactly
//! which shapes exist (`/api/v1/orders/{id}`); the normaliser guesses for the rest by replacing identifier-like
//! segments with `{id}`, and bounds the length of what it returns. What still varies after that is capped by the
//! interface limit in [`crate::metrics`].

use thiserror::Error;

/// The placeholder that stands for an identifier-like path segment.
pub const PLACEHOLDER: &str = "{id}";
/// Segments after this many are folded into one `{rest}` segment.
pub const MAX_SEGMENTS: usize = 16;
/// A segment at least this long is an opaque token whatever its characters.
const OPAQUE_LEN: usize = 32;

/// A configured route template: literal segments and `{name}` parameters, each matching one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The template as written; this is the label value.
    pub text: String,
    /// Upper-case HTTP method this template applies to, or any method.
    pub method: Option<String>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("must start with '/'")]
    NoLeadingSlash,
    #[error("must not contain '?' or '#'")]
    Query,
    #[error("segment {0:?}: a parameter is a whole segment '{{name}}' with a name of [A-Za-z0-9_]")]
    BadParam(String),
    #[error("segment {0:?} contains a character that is not allowed in a path")]
    BadChar(String),
}

impl Template {
    pub fn parse(text: &str, method: Option<String>) -> Result<Self, TemplateError> {
        if !text.starts_with('/') {
            return Err(TemplateError::NoLeadingSlash);
        }
        if text.contains(['?', '#']) {
            return Err(TemplateError::Query);
        }
        let mut segments = Vec::new();
        for seg in text.split('/').filter(|s| !s.is_empty()) {
            if seg.contains(['{', '}']) {
                let name = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
                match name {
                    Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                        segments.push(Segment::Param)
                    }
                    _ => return Err(TemplateError::BadParam(seg.to_owned())),
                }
            } else if seg.bytes().all(is_path_char) {
                segments.push(Segment::Literal(seg.to_owned()));
            } else {
                return Err(TemplateError::BadChar(seg.to_owned()));
            }
        }
        Ok(Self {
            text: text.to_owned(),
            method,
            segments,
        })
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        if self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        let mut segs = path_segments(path);
        for want in &self.segments {
            match (want, segs.next()) {
                (Segment::Literal(lit), Some(got)) if lit.as_bytes() == got => {}
                (Segment::Param, Some(_)) => {}
                _ => return false,
            }
        }
        segs.next().is_none()
    }
}

/// RFC 3986 `pchar` without percent-encoding: what a literal template segment may hold.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// The path without query or fragment.
pub fn strip_query(path: &[u8]) -> &[u8] {
    let end = path.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(path.len());
    &path[..end]
}

/// Non-empty segments: `//` and a trailing `/` do not make routes of their own.
fn path_segments(path: &str) -> impl Iterator<Item = &[u8]> {
    path.as_bytes().split(|&b| b == b'/').filter(|s| !s.is_empty())
}

/// The route of a request: the first matching template, else the normalised path.
pub fn route(templates: &[Template], method: &str, path: &[u8]) -> String {
    let path = strip_query(path);
    if let Ok(text) = std::str::from_utf8(path) {
        if let Some(t) = templates.iter().find(|t| t.matches(method, text)) {
            return t.text.clone();
        }
    }
    normalise(path)
}

/// Replaces identifier-like segments with [`PLACEHOLDER`] and folds segments past [`MAX_SEGMENTS`].
pub fn normalise(path: &[u8]) -> String {
    let path = strip_query(path);
    let mut out = String::new();
    for (i, seg) in path.split(|&b| b == b'/').filter(|s| !s.is_empty()).enumerate() {
        if i == MAX_SEGMENTS {
            out.push_str("/{rest}");
            break;
        }
        out.push('/');
        match std::str::from_utf8(seg) {
            Ok(s) if !is_identifier_like(seg) => match file_stem(s) {
                // `/img/1234.png` is a route of files, not of each file: keep the extension only.
                Some((stem, ext)) if is_identifier_like(stem.as_bytes()) => {
                    out.push_str(PLACEHOLDER);
                    out.push('.');
                    out.push_str(ext);
                }
                _ => out.push_str(s),
            },
            _ => out.push_str(PLACEHOLDER),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Numbers, UUIDs, long hex, long or mixed opaque tokens, and anything that is not plain path text.
pub fn is_identifier_like(seg: &[u8]) -> bool {
    let digits = seg.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = seg.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let all_hex = seg.iter().all(u8::is_ascii_hexdigit);
    digits == seg.len()
        || is_uuid(seg)
        || (all_hex && seg.len() >= 16)
        || seg.len() >= OPAQUE_LEN
        || (seg.len() >= 16 && digits > 0 && letters > 0)
        || seg.contains(&b'%')
        || !seg.iter().all(|&b| is_path_char(b))
}

/// `name.ext` with a short alphanumeric extension, split at the last dot.
fn file_stem(seg: &str) -> Option<(&str, &str)> {
    let (stem, ext) = seg.rsplit_once('.')?;
    let short_ext = (1..=5).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric());
    (!stem.is_empty() && short_ext).then_some((stem, ext))
}

fn is_uuid(seg: &[u8]) -> bool {
    seg.len() == 36
        && seg.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str, method: Option<&str>) -> Template {
        Template::parse(text, method.map(str::to_owned)).unwrap()
    }

    #[test]
    fn templates_match_by_segments_and_method() {
        let ts = [
            t("/api/v1/orders/{id}", Some("GET")),
            t("/api/v1/orders/{id}", None),
            t("/api/v1/orders", None),
        ];
        assert_eq!(route(&ts, "GET", b"/api/v1/orders/42?x=1"), "/api/v1/orders/{id}");
        assert_eq!(route(&ts, "POST", b"/api/v1/orders"), "/api/v1/orders");
        assert_eq!(route(&ts, "DELETE", b"/api/v1/orders/abc/"), "/api/v1/orders/{id}");
        assert_eq!(
            route(&ts, "GET", b"/api/v1/orders/42/items"),
            "/api/v1/orders/{id}/items"
        );
    }

    #[test]
    fn first_matching_template_wins() {
        let ts = [t("/users/me", None), t("/users/{user}", None)];
        assert_eq!(route(&ts, "GET", b"/users/me"), "/users/me");
        assert_eq!(route(&ts, "GET", b"/users/bob"), "/users/{user}");
    }

    #[test]
    fn normaliser_replaces_identifiers_only() {
        let cases: &[(&[u8], &str)] = &[
            (b"/", "/"),
            (b"", "/"),
            (b"/api/v1/orders/12345", "/api/v1/orders/{id}"),
            (b"/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301/cart", "/users/{id}/cart"),
            (b"/objects/5f1d7a2b9c3e4d6f8a0b1c2d", "/objects/{id}"),
            (b"/files/deadbeefdeadbeef", "/files/{id}"),
            (b"/t/eyJhbGciOiJIUzI1NiJ9abcdefghijklmno", "/t/{id}"),
            (b"/s/AbC123dEf456GhI7", "/s/{id}"),
            (b"/docs/report.pdf", "/docs/report.pdf"),
            (b"/static/img/1234.png", "/static/img/{id}.png"),
            (b"/dl/3f2504e0-4f89-11d3-9a0c-0305e82c3301.tar.gz", "/dl/{id}"),
            (b"/dl/12345.tar.gz", "/dl/12345.tar.gz"),
            (b"/v1.2/x", "/v1.2/x"),
            (b"/healthz?probe=1#x", "/healthz"),
            (b"//a///b/", "/a/b"),
            (b"/caf%C3%A9/menu", "/{id}/menu"),
            (b"/bad\xff/x", "/{id}/x"),
            (b"/v2/beta", "/v2/beta"),
        ];
        for (path, want) in cases {
            assert_eq!(normalise(path), *want, "{:?}", String::from_utf8_lossy(path));
        }
    }

    #[test]
    fn normaliser_bounds_length() {
        let long = "/a".repeat(1000);
        let out = normalise(long.as_bytes());
        assert_eq!(out, format!("{}/{{rest}}", "/a".repeat(MAX_SEGMENTS)));
        let huge_segment = format!("/{}", "x".repeat(60_000));
        assert_eq!(normalise(huge_segment.as_bytes()), "/{id}");
    }

    #[test]
    fn bad_templates_say_why() {
        assert_eq!(Template::parse("api", None).unwrap_err(), TemplateError::NoLeadingSlash);
        assert_eq!(Template::parse("/a?b=1", None).unwrap_err(), TemplateError::Query);
        assert_eq!(
            Template::parse("/a/{}", None).unwrap_err(),
            TemplateError::BadParam("{}".into())
        );
        assert_eq!(
            Template::parse("/a/x{id}", None).unwrap_err(),
            TemplateError::BadParam("x{id}".into())
        );
        assert_eq!(
            Template::parse("/a b", None).unwrap_err(),
            TemplateError::BadChar("a b".into())
        );
    }
}
