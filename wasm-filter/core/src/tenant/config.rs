//! The `tenant` section of the plugin configuration: its raw form and its validation, every bad value named by
//! its field (`tenant.header`, `tenant.tenants["acme"]`, ...). An absent section leaves the dimension off.

use std::{collections::HashMap, fmt, sync::Arc};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{validate_id, validate_label, MAX_ID_LEN};

/// Default of `tenant.max_tenants`: tier and hash labels per VM before `other`.
pub const DEFAULT_MAX_TENANTS: usize = 32;
/// Upper bound of `tenant.max_tenants` and of the allowlist: each label multiplies the histogram's series.
pub const MAX_TENANTS_CAP: usize = 1000;
/// Shortest `tenant.hash_key`, in bytes: below 128 bits a key adds little against guessing.
pub const MIN_KEY_BYTES: usize = 16;
/// Longest `tenant.hash_key`, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// The validated `tenant` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    /// Lowercase request header carrying the tenant id.
    pub header: Option<String>,
    /// Baggage member carrying the tenant id (read when the header is absent).
    pub baggage_key: Option<String>,
    /// Allowlist: raw id → label. The ids stay in memory only, for the lookup.
    pub tenants: HashMap<String, Arc<str>>,
    /// Lowercase request header whose validated value labels ids outside the allowlist.
    pub tier_header: Option<String>,
    pub max_tenants: usize,
    pub hash_key: Option<HashKey>,
}

impl TenantConfig {
    /// One line for the log when the plugin is configured: names and counts, never an id nor the key.
    pub fn summary(&self) -> String {
        format!(
            "tenant dimension on: header {:?}, baggage key {:?}, {} allowlisted ids, tier header {:?}, \
             max_tenants {}, hash {}",
            self.header.as_deref().unwrap_or("-"),
            self.baggage_key.as_deref().unwrap_or("-"),
            self.tenants.len(),
            self.tier_header.as_deref().unwrap_or("-"),
            self.max_tenants,
            if self.hash_key.is_some() {
                "HMAC-SHA-256 (keyed)"
            } else {
                "SHA-256 without a key (set tenant.hash_key: ids are guessable from their hash)"
            }
        )
    }
}

/// The key of the tenant hash, with its HMAC state precomputed. Never printed: `Debug` shows only its length.
#[derive(Clone)]
pub struct HashKey {
    bytes: Vec<u8>,
    mac: Hmac<Sha256>,
}

impl HashKey {
    /// `None` only if the HMAC refuses the key length, which HMAC never does (validation reports it all the same,
    /// rather than fall back to an unkeyed hash).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(bytes).ok()?;
        Some(Self {
            bytes: bytes.to_vec(),
            mac,
        })
    }

    pub(crate) fn mac(&self) -> &Hmac<Sha256> {
        &self.mac
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashKey(<{} bytes>)", self.bytes.len())
    }
}

impl PartialEq for HashKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for HashKey {}

/// The section as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawTenant {
    header: Option<String>,
    baggage_key: Option<String>,
    tenants: Option<HashMap<String, String>>,
    tier_header: Option<String>,
    max_tenants: Option<usize>,
    hash_key: Option<String>,
}

/// Validates the section; `gray_header` and `gray_baggage_key` are the gray version's, which the tenant may not
/// share (the filter rewrites those).
pub(crate) fn validate(
    raw: RawTenant,
    gray_header: &str,
    gray_baggage_key: &str,
    bad: &mut dyn FnMut(&str, String),
) -> TenantConfig {
    let header_name = |field: &str, v: Option<String>, bad: &mut dyn FnMut(&str, String)| {
        let v = v?.to_ascii_lowercase();
        let ok = !v.is_empty() && v.bytes().all(crate::baggage::is_tchar) && v != "baggage" && v != gray_header;
        if !ok {
            bad(
                field,
                format!("must be an HTTP header name other than baggage and gray.header, got {v:?}"),
            );
        }
        Some(v)
    };
    let header = header_name("tenant.header", raw.header, bad);
    let tier_header = header_name("tenant.tier_header", raw.tier_header, bad);
    if tier_header.is_some() && tier_header == header {
        bad("tenant.tier_header", "must differ from tenant.header".to_owned());
    }
    let baggage_key = raw.baggage_key;
    if let Some(k) = &baggage_key {
        if k.is_empty() || !k.bytes().all(crate::baggage::is_tchar) || k == gray_baggage_key {
            bad(
                "tenant.baggage_key",
                format!("must be a baggage key (an HTTP token) other than gray.baggage_key, got {k:?}"),
            );
        }
    }
    if header.is_none() && baggage_key.is_none() {
        bad(
            "tenant",
            "needs tenant.header or tenant.baggage_key (or both) to read the tenant id from".to_owned(),
        );
    }

    let mut tenants = HashMap::new();
    // Sorted, so the problems come out in a stable order.
    let mut listed: Vec<(String, String)> = raw.tenants.unwrap_or_default().into_iter().collect();
    listed.sort();
    if listed.len() > MAX_TENANTS_CAP {
        bad("tenant.tenants", format!("at most {MAX_TENANTS_CAP} tenants"));
    }
    for (id, label) in listed {
        // The id is configuration the operator wrote, so naming it in the error is no leak.
        let field = format!("tenant.tenants[{id:?}]");
        if validate_id(id.as_bytes()) != Ok(id.as_bytes()) {
            bad(
                &field,
                format!("the tenant id is not valid: 1-{MAX_ID_LEN} visible ASCII characters without , ; \" \\"),
            );
        }
        match validate_label(label.as_bytes()) {
            Ok(l) if l == label => {
                tenants.insert(id, Arc::from(label.as_str()));
            }
            _ => bad(
                &field,
                format!(
                    "label {label:?} is not valid: 1-64 characters of [A-Za-z0-9._-], not none, invalid, other, \
                     nor starting with t_"
                ),
            ),
        }
    }

    let max_tenants = match raw.max_tenants {
        None => DEFAULT_MAX_TENANTS,
        Some(n) if (1..=MAX_TENANTS_CAP).contains(&n) => n,
        Some(n) => {
            bad(
                "tenant.max_tenants",
                format!("must be between 1 and {MAX_TENANTS_CAP}, got {n}"),
            );
            DEFAULT_MAX_TENANTS
        }
    };
    let hash_key = raw.hash_key.and_then(|k| {
        // The key itself is never echoed.
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&k.len()) {
            bad(
                "tenant.hash_key",
                format!(
                    "must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (32 random bytes recommended), got {} bytes",
                    k.len()
                ),
            );
            return None;
        }
        let key = HashKey::new(k.as_bytes());
        if key.is_none() {
            bad("tenant.hash_key", "refused by HMAC-SHA-256".to_owned());
        }
        key
    });
    TenantConfig {
        header,
        baggage_key,
        tenants,
        tier_header,
        max_tenants,
        hash_key,
    }
}
