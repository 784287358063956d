//! The W3C `baggage` header (<https://www.w3.org/TR/baggage/>): parse, drop, re-serialise.
//!
//! Policy, pinned by the tests below:
//! - All `baggage` headers of a request form one list, in order; the filter forwards one combined header.
//! - A malformed member (no `=`, a key that is not a token, a value with a byte outside `baggage-octet`, a broken
//!   `%` escape, a value that does not decode to UTF-8, a malformed property) is dropped on its own; the rest of
//!   the list survives. Empty members (`a=1,,b=2`, a trailing comma) are skipped silently.
//! - Kept members are re-emitted as `key=value` (value still percent-encoded, as received) plus their properties.
//! - Parsing keeps only what can matter, so a hostile list costs memory for 64 members, not for all of them (a
//!   wasm VM never gives memory back): the first [`MAX_MEMBERS`] well-formed members not of the gray-version key, and
//!   the first two of each key the filter reads ([`Keys`]: two tell a value from a duplicate). The rest are counted.
//! - At most [`MAX_MEMBERS`] members and [`MAX_BYTES`] bytes leave the filter. The gray-version member is placed
//!   first in the budget, since propagating it is the filter's job, and is charged in full, properties included;
//!   properties that would not fit leave it (the member itself always fits: a version is at most 64 bytes); the
//!   other members are kept in order until the next one would cross a limit, and that one and all after it are
//!   dropped whole: never a partial member.

use std::borrow::Cow;

/// W3C limit on list members per baggage string.
pub const MAX_MEMBERS: usize = 64;
/// W3C limit on bytes per baggage string (all `baggage` headers together).
pub const MAX_BYTES: usize = 8192;

/// One well-formed list member, borrowed from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: &'a str,
    /// The value as received: percent-encoded, OWS trimmed.
    pub value: &'a str,
    /// The properties after the first `;`, validated, outer OWS trimmed; empty when there are none.
    pub properties: &'a str,
}

impl<'a> Member<'a> {
    /// The percent-decoded value; `None` only if the encoding is broken, which [`parse`] already rules out.
    pub fn decoded_value(&self) -> Option<Cow<'a, str>> {
        decode(self.value)
    }

    fn encoded_len(&self) -> usize {
        let props = if self.properties.is_empty() {
            0
        } else {
            1 + self.properties.len()
        };
        self.key.len() + 1 + self.value.len() + props
    }

    fn write(&self, out: &mut String) {
        out.push_str(self.key);
        out.push('=');
        out.push_str(self.value);
        if !self.properties.is_empty() {
            out.push(';');
            out.push_str(self.properties);
        }
    }
}

/// The keys the filter reads from the list. Their members are kept wherever they stand (the first two of each), and
/// whether one of them had a malformed member is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys<'k> {
    /// The gray version's key. [`render`] replaces its members, so none of them is forwarded as received.
    pub gray: &'k str,
    /// Another key read from the list (the tenant's), whose members are forwarded like any other.
    pub other: Option<&'k str>,
}

/// Every `baggage` header of a request, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Well-formed members, in order: the first [`MAX_MEMBERS`] not of the gray key (none after them can be
    /// forwarded), and the first two of each of the [`Keys`].
    pub members: Vec<Member<'a>>,
    /// Well-formed members not kept: past the first [`MAX_MEMBERS`], so dropped over the limit by [`render`]
    /// whatever they hold (more members of the gray key than two are not counted: they are replaced, not dropped).
    pub not_kept: usize,
    /// Malformed members, dropped.
    pub malformed: usize,
    /// Whether a malformed member had the gray key.
    pub malformed_gray: bool,
    /// Whether a malformed member had the other key of the [`Keys`].
    pub malformed_other: bool,
    /// How many `baggage` headers there were.
    pub headers: usize,
}

/// Parses all `baggage` header values, in order, keeping what [`Parsed::members`] says.
pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>, keys: Keys<'_>) -> Parsed<'a> {
    let mut parsed = Parsed::default();
    // Kept members: not of the gray key; of the gray key; of the other key.
    let (mut plain, mut gray, mut other) = (0, 0, 0);
    for value in values {
        parsed.headers += 1;
        for raw in value.split(|&b| b == b',') {
            let raw = crate::gray::trim_ows(raw);
            if raw.is_empty() {
                continue;
            }
            match parse_member(raw) {
                Ok(m) if m.key == keys.gray => {
                    if gray < 2 {
                        gray += 1;
                        parsed.members.push(m);
                    }
                }
                Ok(m) => {
                    let read = keys.other == Some(m.key);
                    if plain < MAX_MEMBERS || (read && other < 2) {
                        plain += 1;
                        other += usize::from(read);
                        parsed.members.push(m);
                    } else {
                        parsed.not_kept += 1;
                    }
                }
                Err(key) => {
                    parsed.malformed += 1;
                    parsed.malformed_gray |= key == Some(keys.gray);
                    parsed.malformed_other |= key.is_some() && key == keys.other;
                }
            }
        }
    }
    parsed
}

/// Parses one list member; on failure returns the key if it was readable.
fn parse_member(raw: &[u8]) -> Result<Member<'_>, Option<&str>> {
    let (pair, properties) = match raw.iter().position(|&b| b == b';') {
        Some(i) => (&raw[..i], crate::gray::trim_ows(&raw[i + 1..])),
        None => (raw, &[][..]),
    };
    let eq = pair.iter().position(|&b| b == b'=').ok_or(None)?;
    let key = crate::gray::trim_ows(&pair[..eq]);
    let key = as_token(key).ok_or(None)?;
    let value = crate::gray::trim_ows(&pair[eq + 1..]);
    if !value.iter().all(|&b| is_baggage_octet(b)) {
        return Err(Some(key));
    }
    // Only ASCII left, so this is a cheap view, never a failure.
    let value = std::str::from_utf8(value).map_err(|_| Some(key))?;
    decode(value).ok_or(Some(key))?;
    if !properties.is_empty() && !properties.split(|&b| b == b';').all(valid_property) {
        return Err(Some(key));
    }
    let properties = std::str::from_utf8(properties).map_err(|_| Some(key))?;
    Ok(Member { key, value, properties })
}

fn valid_property(raw: &[u8]) -> bool {
    let raw = crate::gray::trim_ows(raw);
    match raw.iter().position(|&b| b == b'=') {
        None => as_token(raw).is_some(),
        Some(i) => {
            let value = crate::gray::trim_ows(&raw[i + 1..]);
            as_token(crate::gray::trim_ows(&raw[..i])).is_some()
                && value.iter().all(|&b| is_baggage_octet(b))
                && std::str::from_utf8(value).ok().and_then(decode).is_some()
        }
    }
}

/// RFC 7230 `token`: one or more `tchar`.
fn as_token(s: &[u8]) -> Option<&str> {
    let ok = !s.is_empty() && s.iter().all(|&b| is_tchar(b));
    if ok {
        std::str::from_utf8(s).ok()
    } else {
        None
    }
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

/// `baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// Percent-decodes into UTF-8; `None` for a broken escape or invalid UTF-8.
fn decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The combined header, or `None` when no member is left (the header is then removed).
    pub header: Option<String>,
    /// Members dropped to stay within [`MAX_MEMBERS`] and [`MAX_BYTES`].
    pub dropped_over_limit: usize,
}

/// Serialises the parsed members with the member `key=value` replacing every member named `key` (in the position of
/// the first, keeping its properties if its value was already `value`), or appended when there was none;
/// `value: None` removes the key's members. `key` is the gray key the list was parsed with; `value` must already be
/// a valid baggage value (gray versions are). The members parsing did not keep count as dropped over the limit.
pub fn render(parsed: &Parsed<'_>, key: &str, value: Option<&str>) -> Rendered {
    let members = parsed.members.as_slice();
    let gray_pos = members.iter().position(|m| m.key == key);
    // An existing member with the same value keeps its properties, as long as they fit: the gray member is charged
    // to the budget like any other, and leaves without its properties rather than past the limit.
    let gray = value.map(|value| match gray_pos.map(|i| &members[i]) {
        Some(m) if m.decoded_value().as_deref() == Some(value) && m.encoded_len() <= MAX_BYTES => m.clone(),
        _ => Member {
            key,
            value,
            properties: "",
        },
    });
    let (mut count, mut bytes) = match &gray {
        Some(g) => (1, g.encoded_len()),
        None => (0, 0),
    };
    let mut kept: Vec<&Member<'_>> = Vec::with_capacity(members.len().min(MAX_MEMBERS));
    let mut gray_index = None;
    let mut dropped_over_limit = parsed.not_kept;
    let mut full = false;
    for (i, m) in members.iter().enumerate() {
        if Some(i) == gray_pos {
            gray_index = Some(kept.len());
        }
        if m.key == key {
            continue;
        }
        // Separators: one comma between each pair of members.
        let cost = m.encoded_len() + usize::from(count > 0);
        if full || count + 1 > MAX_MEMBERS || bytes + cost > MAX_BYTES {
            full = true;
            dropped_over_limit += 1;
            continue;
        }
        count += 1;
        bytes += cost;
        kept.push(m);
    }
    if let Some(g) = &gray {
        kept.insert(gray_index.unwrap_or(kept.len()).min(kept.len()), g);
    }
    if kept.is_empty() {
        return Rendered {
            header: None,
            dropped_over_limit,
        };
    }
    let mut out = String::with_capacity(bytes);
    for (i, m) in kept.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        m.write(&mut out);
    }
    Rendered {
        header: Some(out),
        dropped_over_limit,
    }
}

#[cfg(test)]
mod tests;
