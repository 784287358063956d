//! The tenant dimension: where a request's tenant id comes from, what a valid one is, and the bounded label it
//! becomes. Off unless the configuration has a `tenant` section.
//!
//! A tenant id is unbounded and often sensitive, so it never becomes a label, a log line or a record field as
//! received. It is read from a configured header (which wins) or W3C baggage member, validated, then mapped:
//! - an allowlisted id gets its configured label (a name or a tier), exempt from the cap since the configuration
//!   bounds it;
//! - else, when a tier header is configured and carries a valid tier, that tier is the label;
//! - else the label is `t_` + the first [`HASH_BYTES`] bytes of HMAC-SHA-256(`hash_key`, id) in lowercase hex (plain
//!   SHA-256 without a key; see the README for why a key matters).
//!
//! Tier and hash labels count against `max_tenants` per VM ([`crate::metrics`] applies the cap and `other`). A
//! request without a tenant is `none`; one whose id is refused is `invalid`. The headers themselves are never
//! rewritten: the filter only reads them.

mod config;

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub(crate) use self::config::validate as validate_config;
pub use self::config::{HashKey, RawTenant, TenantConfig, DEFAULT_MAX_TENANTS, MAX_TENANTS_CAP};
use crate::{baggage, gray::trim_ows, headers::Headers};

/// Longest accepted tenant id, in bytes (after trimming optional whitespace).
pub const MAX_ID_LEN: usize = 128;
/// Longest tier (or allowlist) label, in bytes: the gray version's rule.
pub const MAX_LABEL_LEN: usize = crate::gray::MAX_LEN;
/// Bytes of the digest kept in a hashed label (16 hex characters); the README explains the choice.
pub const HASH_BYTES: usize = 8;
/// Prefix of hashed labels; configured and tier labels may not start with it.
pub const HASH_PREFIX: &str = "t_";
/// Length of a hashed label.
pub const HASHED_LABEL_LEN: usize = HASH_PREFIX.len() + 2 * HASH_BYTES;

/// Label of a request that names no tenant.
pub const NONE: &str = "none";
/// Label of a request whose tenant id was refused.
pub const INVALID: &str = "invalid";
/// Label of the tier and hash labels past `max_tenants`.
pub const OTHER: &str = "other";
/// Labels the filter gives a meaning of its own; neither the allowlist nor a tier header may use them.
pub const RESERVED: [&str; 3] = [NONE, INVALID, OTHER];

/// Why a tenant id or tier was refused. Each is a `reason` of `grayscope_tenant_invalid_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invalid {
    Empty,
    TooLong,
    /// A byte outside the allowed set (see [`validate_id`] and [`validate_label`]).
    BadChar,
    /// Sent more than once: a request must not name two tenants (or tiers).
    Duplicated,
    /// A baggage value whose percent-encoding is broken.
    BadEncoding,
    /// A tier equal to a reserved label (`none`, `invalid`, `other`) or shaped like a hashed one (`t_…`).
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

/// Where a refused value was read from; the `source` of `grayscope_tenant_invalid_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Header,
    Baggage,
    TierHeader,
}

impl Source {
    pub const ALL: [Source; 3] = [Self::Header, Self::Baggage, Self::TierHeader];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Baggage => "baggage",
            Self::TierHeader => "tier_header",
        }
    }
}

/// A request's tenant, before the per-VM cap. Holds no raw id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenant {
    None,
    Invalid,
    /// The allowlist's label for the id (not capped).
    Allowed(std::sync::Arc<str>),
    /// The tier header's validated value (capped).
    Tier(String),
    /// The truncated digest of the id (capped).
    Hashed([u8; HASH_BYTES]),
}

impl Tenant {
    /// Whether the label counts against `max_tenants`.
    pub fn capped(&self) -> bool {
        matches!(self, Self::Tier(_) | Self::Hashed(_))
    }

    /// The label; a hashed one is written into `buf`, so reading it allocates nothing.
    pub fn label<'a>(&'a self, buf: &'a mut [u8; HASHED_LABEL_LEN]) -> &'a str {
        match self {
            Self::None => NONE,
            Self::Invalid => INVALID,
            Self::Allowed(l) => l,
            Self::Tier(t) => t,
            Self::Hashed(digest) => hex_label(digest, buf),
        }
    }
}

/// `t_` + lowercase hex, written by hand: sixteen characters do not justify a dependency.
fn hex_label<'a>(digest: &[u8; HASH_BYTES], buf: &'a mut [u8; HASHED_LABEL_LEN]) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf[..HASH_PREFIX.len()].copy_from_slice(HASH_PREFIX.as_bytes());
    for (i, b) in digest.iter().enumerate() {
        buf[HASH_PREFIX.len() + 2 * i] = HEX[usize::from(b >> 4)];
        buf[HASH_PREFIX.len() + 2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    // Only ASCII was written.
    std::str::from_utf8(buf).unwrap_or(INVALID)
}

/// The truncated digest of a valid id: HMAC-SHA-256 under the key, or SHA-256 without one.
pub fn digest(key: Option<&HashKey>, id: &[u8]) -> [u8; HASH_BYTES] {
    let full: [u8; 32] = match key {
        // The keyed state (inner and outer pads already absorbed) is cloned, not rebuilt, per request.
        Some(k) => {
            let mut mac: Hmac<Sha256> = k.mac().clone();
            mac.update(id);
            mac.finalize().into_bytes().into()
        }
        None => Sha256::digest(id).into(),
    };
    let mut out = [0; HASH_BYTES];
    out.copy_from_slice(&full[..HASH_BYTES]);
    out
}

/// The label of an id: for tests, tools and documentation (the filter keeps the digest and formats it lazily).
pub fn hashed_label(key: Option<&HashKey>, id: &str) -> String {
    let mut buf = [0; HASHED_LABEL_LEN];
    hex_label(&digest(key, id.as_bytes()), &mut buf).to_owned()
}

fn is_id_byte(b: u8) -> bool {
    // Visible ASCII but the list, quoting and parameter separators of HTTP and baggage: room for slugs, UUIDs,
    // URNs, e-mail addresses and base64, nothing that could hide a second value.
    b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'"' | b'\\')
}

/// Validates a raw tenant id (trimming optional whitespace): 1 to [`MAX_ID_LEN`] bytes of visible ASCII without
/// `,` `;` `"` `\`.
pub fn validate_id(raw: &[u8]) -> Result<&[u8], Invalid> {
    let id = trim_ows(raw);
    if id.is_empty() {
        return Err(Invalid::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(Invalid::TooLong);
    }
    if !id.iter().all(|&b| is_id_byte(b)) {
        return Err(Invalid::BadChar);
    }
    Ok(id)
}

/// Validates a label (a tier, or an allowlist label): the gray version's syntax, and not a reserved label.
pub fn validate_label(raw: &[u8]) -> Result<&str, Invalid> {
    let label = crate::gray::token(raw).map_err(|e| match e {
        crate::gray::Invalid::Empty => Invalid::Empty,
        crate::gray::Invalid::TooLong => Invalid::TooLong,
        _ => Invalid::BadChar,
    })?;
    if RESERVED.contains(&label) || label.starts_with(HASH_PREFIX) {
        return Err(Invalid::Reserved);
    }
    Ok(label)
}

/// A request's tenant and the values refused on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub tenant: Tenant,
    pub invalid: Vec<(Source, Invalid)>,
}

/// Resolves a request's tenant from its headers and its already parsed baggage (parsed with this dimension's
/// `baggage_key` as the other of its [`baggage::Keys`]).
pub fn resolve(cfg: &TenantConfig, headers: &Headers<'_>, baggage: &baggage::Parsed<'_>) -> Resolved {
    let mut invalid = Vec::new();
    let from_header = cfg.header.as_deref().and_then(|name| {
        let mut values = headers.all(name);
        match (values.next(), values.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => Some(Err((Source::Header, Invalid::Duplicated))),
            (Some(v), None) => Some(validate_id(v).map(Cow::Borrowed).map_err(|r| (Source::Header, r))),
        }
    });
    // The header wins: baggage is only read when the header is absent.
    let candidate = from_header.or_else(|| {
        let key = cfg.baggage_key.as_deref()?;
        if baggage.malformed_other {
            return Some(Err((Source::Baggage, Invalid::BadEncoding)));
        }
        let mut members = baggage.members.iter().filter(|m| m.key == key);
        match (members.next(), members.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => Some(Err((Source::Baggage, Invalid::Duplicated))),
            // A value without escapes is borrowed from the request, so the common case copies nothing.
            (Some(m), None) => Some(
                match m.decoded_value() {
                    Some(Cow::Borrowed(v)) => validate_id(v.as_bytes()).map(Cow::Borrowed),
                    Some(Cow::Owned(v)) => validate_id(v.as_bytes()).map(|id| Cow::Owned(id.to_vec())),
                    None => Err(Invalid::BadEncoding),
                }
                .map_err(|r| (Source::Baggage, r)),
            ),
        }
    });
    let tenant = match candidate {
        None => Tenant::None,
        Some(Err(refused)) => {
            invalid.push(refused);
            Tenant::Invalid
        }
        Some(Ok(id)) => match std::str::from_utf8(&id).ok().and_then(|id| cfg.tenants.get(id)) {
            Some(label) => Tenant::Allowed(label.clone()),
            None => match tier(cfg, headers) {
                Some(Ok(t)) => Tenant::Tier(t.to_owned()),
                refused => {
                    if let Some(Err(r)) = refused {
                        invalid.push((Source::TierHeader, r));
                    }
                    Tenant::Hashed(digest(cfg.hash_key.as_ref(), &id))
                }
            },
        },
    };
    Resolved { tenant, invalid }
}

/// The tier header's value, validated; `None` when it is not configured or absent.
fn tier<'h>(cfg: &TenantConfig, headers: &Headers<'h>) -> Option<Result<&'h str, Invalid>> {
    let mut values = headers.all(cfg.tier_header.as_deref()?);
    match (values.next(), values.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => Some(Err(Invalid::Duplicated)),
        (Some(v), None) => Some(validate_label(v)),
    }
}

#[cfg(test)]
mod tests;
