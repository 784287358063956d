//! The gray-release version: what a valid one looks like, and why a value was refused.
//!
//! A version is a token of 1 to 64 characters of `[A-Za-z0-9._-]`: enough for `v2`, `canary`, `2024.06.1-rc.1`,
//! and nothing that could carry a header, a label separator or a script. Surrounding spaces and tabs (HTTP's
//! optional whitespace) are trimmed; case is kept, because rollout tools treat `V2` and `v2` as different.
//! `none`, `unknown` and `other` are not versions: they are the `gray_version` labels the filter gives calls without
//! one, outside the allowlist and past the cap ([`RESERVED`]). Like labels, they are compared as they are, so `Other`
//! is a version.

use crate::metrics::{NONE, OTHER, UNKNOWN};

/// Longest accepted version, in bytes.
pub const MAX_LEN: usize = 64;
/// The `gray_version` labels of the filter's own; a request or the configuration may not name them as a version.
pub const RESERVED: [&str; 3] = [NONE, UNKNOWN, OTHER];

/// Why a candidate version was not accepted. Each reason is a label value of
/// `grayscope_gray_version_invalid_total`, so the set is small and fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    /// Present but empty (or only whitespace).
    Empty,
    /// Longer than [`MAX_LEN`].
    TooLong,
    /// A character outside `[A-Za-z0-9._-]`: control characters, non-ASCII bytes, separators.
    BadChar,
    /// Sent more than once: a request must not carry two opinions about its version.
    Duplicated,
    /// A baggage value whose percent-encoding is broken or does not decode to UTF-8.
    BadEncoding,
    /// One of the labels of the filter's own ([`RESERVED`]: `none`, `unknown`, `other`).
    Reserved,
}

impl Invalid {
    pub const ALL: [Invalid; 6] = [
        Self::Empty,
        Self::TooLong,
        Self::BadChar,
        Self::Duplicated,
        Self::BadEncoding,
        Self::Reserved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::BadChar => "bad_char",
            Self::Duplicated => "duplicated",
            Self::BadEncoding => "bad_encoding",
            Self::Reserved => "reserved",
        }
    }
}

/// Where a version was read from; also a label value of the invalid counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Header,
    Baggage,
}

impl Source {
    pub const ALL: [Source; 2] = [Self::Header, Self::Baggage];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Baggage => "baggage",
        }
    }
}

/// Validates a raw value (trimming optional whitespace) and returns the normalised version.
pub fn validate(raw: &[u8]) -> Result<&str, Invalid> {
    let version = token(raw)?;
    if is_reserved(version) {
        return Err(Invalid::Reserved);
    }
    Ok(version)
}

/// The version's syntax alone (trimming optional whitespace), without the reserved labels: the tenant's labels
/// share the syntax and reserve labels of their own.
pub fn token(raw: &[u8]) -> Result<&str, Invalid> {
    let trimmed = trim_ows(raw);
    if trimmed.is_empty() {
        return Err(Invalid::Empty);
    }
    if trimmed.len() > MAX_LEN {
        return Err(Invalid::TooLong);
    }
    if !trimmed.iter().all(|&b| is_version_byte(b)) {
        return Err(Invalid::BadChar);
    }
    // Every byte is ASCII, so this cannot fail; the error arm keeps the filter panic-free regardless.
    std::str::from_utf8(trimmed).map_err(|_| Invalid::BadChar)
}

/// Whether a configured version (from the plugin configuration) is acceptable as it stands, untrimmed.
pub fn is_valid(v: &str) -> bool {
    validate(v.as_bytes()) == Ok(v)
}

/// Whether `v` is one of the [`RESERVED`] labels, exactly (labels are case-sensitive).
pub fn is_reserved(v: &str) -> bool {
    RESERVED.contains(&v)
}

fn is_version_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Trims HTTP optional whitespace (SP and HTAB) from both ends.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_tokens_and_trims_whitespace() {
        assert_eq!(validate(b"v2"), Ok("v2"));
        assert_eq!(validate(b" \tcanary-2024.06_1 "), Ok("canary-2024.06_1"));
        assert_eq!(validate(b"V2"), Ok("V2"));
        let max = "a".repeat(MAX_LEN);
        assert_eq!(validate(max.as_bytes()), Ok(max.as_str()));
    }

    #[test]
    fn refuses_with_the_reason() {
        assert_eq!(validate(b""), Err(Invalid::Empty));
        assert_eq!(validate(b"  \t"), Err(Invalid::Empty));
        assert_eq!(validate("a".repeat(MAX_LEN + 1).as_bytes()), Err(Invalid::TooLong));
        assert_eq!(validate(&[b'a'; 1024]), Err(Invalid::TooLong));
        for bad in [
            &b"v 2"[..],
            b"v2;x",
            b"v2,v3",
            b"v\x002",
            b"v\r\n2",
            b"\xff\xfe",
            "vü".as_bytes(),
            b"a=b",
            b"<s>",
        ] {
            assert_eq!(validate(bad), Err(Invalid::BadChar), "{bad:?}");
        }
    }

    #[test]
    fn configured_values_must_be_exact() {
        assert!(is_valid("v2"));
        assert!(!is_valid(" v2"));
        assert!(!is_valid(""));
        assert!(!is_valid("other"));
    }

    #[test]
    fn the_labels_of_the_filters_own_are_refused_as_reserved() {
        assert_eq!(
            RESERVED,
            [crate::metrics::NONE, crate::metrics::UNKNOWN, crate::metrics::OTHER]
        );
        for reserved in RESERVED {
            assert_eq!(validate(reserved.as_bytes()), Err(Invalid::Reserved), "{reserved}");
            assert_eq!(
                token(reserved.as_bytes()),
                Ok(reserved),
                "the syntax alone accepts {reserved}"
            );
        }
        // Optional whitespace is trimmed first, as for any version.
        assert_eq!(validate(b" other\t"), Err(Invalid::Reserved));
        // Exact and case-sensitive, as labels are compared: these are versions.
        for version in [
            &b"Other"[..],
            b"NONE",
            b"Unknown",
            b"others",
            b"none1",
            b"other-v2",
            b"v-other",
        ] {
            assert_eq!(validate(version).map(str::as_bytes), Ok(version), "{version:?}");
        }
        // The syntax is checked first: a bad value keeps its own reason.
        assert_eq!(validate(b"other;x"), Err(Invalid::BadChar));
        assert_eq!(Invalid::Reserved.as_str(), "reserved");
        assert!(Invalid::ALL.contains(&Invalid::Reserved));
    }
}
