//! The gray-release version: what a valid one looks like, and why a value was refused.
//!
//! A version is a token of 1 to 64 characters of `[A-Za-z0-9._-]`: enough for `v2`, `canary`, `2024.06.1-rc.1`,
//! and nothing that could carry a header, a label separator or a script. Surrounding spaces and tabs (HTTP's
//! optional whitespace) are trimmed; case is kept, because rollout tools treat `V2` and `v2` as different.

/// Longest accepted version, in bytes.
pub const MAX_LEN: usize = 64;

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
}

impl Invalid {
    pub const ALL: [Invalid; 5] = [
        Self::Empty,
        Self::TooLong,
        Self::BadChar,
        Self::Duplicated,
        Self::BadEncoding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::BadChar => "bad_char",
            Self::Duplicated => "duplicated",
            Self::BadEncoding => "bad_encoding",
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
    }
}
