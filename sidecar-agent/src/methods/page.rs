//! `ListMethods` pages (AIP-158): how large a page may be, and the token that says where the next one starts.
//!
//! The token names the last entry sent (its whole key), not a position, so the table needs no snapshot and keeps
//! no state per lister: a row added or evicted between two pages cannot make the next page repeat or skip a row
//! that stayed. It is opaque to clients (URL-safe base64 of the encoding below), versioned by its first byte, and
//! signed: a token this agent did not issue is refused, never trusted. That covers one a client made up or
//! altered (it would start the next page wherever it liked, past rows never sent) and one an earlier agent issued
//! (a restart between two pages: it names a place in a table that is gone, and the listing would go on in the new
//! one as if nothing had been skipped). The client then lists again from the first page.
//!
//! Encoding, version 2: `2`, then `r` and a row key (service, method, gray version, tenant as length-prefixed
//! strings; direction as 4 bytes; rpc system as a string; pid as 4 bytes; start as 8 bytes), or `d` and a
//! declaration key (pid as 4 bytes; service and method as strings; start as 8 bytes). Integers little-endian,
//! lengths as 4 bytes. Then the first [`TAG_BYTES`] of the HMAC-SHA256 of all that, keyed with the table's
//! [`TokenKey`]: random, made when the table is, and never shown.
//! Written by hand: a dozen lines, where a serialization crate would be a dependency for one struct.

use std::hash::BuildHasher as _;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{digest::KeyInit, Hmac, Mac as _};
use proto::v1::MethodStats;
use sha2::Sha256;

use super::{key::Key, DeclKey};

/// The largest page, in encoded bytes of its rows: gRPC clients refuse a message over 4 MiB by default
/// (grpc-core, grpc-go, grpc-java, tonic), so a page stays well under it, leaving room for the token and framing.
/// A page always holds at least one row; the largest row is far smaller: its strings are bounded (names and
/// addresses by the agent's checks on what it takes, a process's command line by
/// [`crate::procinfo::MAX_COMMAND_LINE_BYTES`]).
pub const MAX_PAGE_BYTES: usize = 3 << 20;

/// Where a page ends: the last entry it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Cursor {
    /// A row of calls.
    Row(Key),
    /// A declaration with no call yet.
    Declared(DeclKey),
}

/// Why a page token is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "page_token is not a token this agent issued (made up, altered, or issued by an agent since restarted): pass \
     the previous answer's next_page_token, or none to list again from the first page"
)]
pub struct BadToken;

const VERSION: u8 = 2;

/// Bytes of the HMAC kept in a token: 128 bits, which no client guesses.
pub(super) const TAG_BYTES: usize = 16;

type TokenMac = Hmac<Sha256>;

/// The key a table signs its page tokens with: random, so a token is good only for the table (the agent) that
/// issued it.
#[derive(Clone)]
pub(super) struct TokenKey(hmac::digest::Key<TokenMac>);

// === impl TokenKey ===

impl TokenKey {
    /// A new random key, drawn from std's `RandomState`: its SipHash keys (128 bits) come from the operating
    /// system's random source, as every `HashMap`'s do. Infallible, and no dependency of its own.
    pub(super) fn random() -> Self {
        let state = std::hash::RandomState::new();
        let mut key = hmac::digest::Key::<TokenMac>::default();
        for (i, chunk) in key.chunks_mut(8).enumerate() {
            let word = state.hash_one(i).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Self(key)
    }

    fn mac(&self, payload: &[u8]) -> TokenMac {
        let mut mac = <TokenMac as KeyInit>::new(&self.0);
        mac.update(payload);
        mac
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

// === impl Cursor ===

impl Cursor {
    /// The token for the page after this entry, signed with `key`.
    pub(super) fn token(&self, key: &TokenKey) -> String {
        let mut b = vec![VERSION];
        match self {
            Self::Row(k) => {
                b.push(b'r');
                for s in [&k.service, &k.method, &k.gray_version, &k.tenant] {
                    put_str(&mut b, s);
                }
                b.extend_from_slice(&k.direction.to_le_bytes());
                put_str(&mut b, &k.rpc_system_name);
                b.extend_from_slice(&k.pid.to_le_bytes());
                b.extend_from_slice(&k.start.to_le_bytes());
            }
            Self::Declared(d) => {
                b.push(b'd');
                b.extend_from_slice(&d.pid.to_le_bytes());
                put_str(&mut b, &d.service);
                put_str(&mut b, &d.method);
                b.extend_from_slice(&d.start.to_le_bytes());
            }
        }
        let tag = key.mac(&b).finalize().into_bytes();
        b.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(b)
    }

    /// The entry a token names, if `key` signed it.
    pub(super) fn parse(token: &str, key: &TokenKey) -> Result<Self, BadToken> {
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| BadToken)?;
        let at = bytes.len().checked_sub(TAG_BYTES).ok_or(BadToken)?;
        let (payload, tag) = bytes.split_at(at);
        key.mac(payload).verify_truncated_left(tag).map_err(|_| BadToken)?;
        let mut r = Reader(payload);
        if r.take(1)? != [VERSION] {
            return Err(BadToken);
        }
        let cursor = match r.take(1)? {
            b"r" => Self::Row(Key {
                service: r.string()?,
                method: r.string()?,
                gray_version: r.string()?,
                tenant: r.string()?,
                direction: i32::from_le_bytes(r.array()?),
                rpc_system_name: r.string()?,
                pid: u32::from_le_bytes(r.array()?),
                start: u64::from_le_bytes(r.array()?),
            }),
            b"d" => Self::Declared(DeclKey {
                pid: u32::from_le_bytes(r.array()?),
                service: r.string()?,
                method: r.string()?,
                start: u64::from_le_bytes(r.array()?),
            }),
            _ => return Err(BadToken),
        };
        if r.0.is_empty() {
            Ok(cursor)
        } else {
            Err(BadToken)
        }
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    // The strings are bounded far below 4 GiB (the agent refuses longer fields), so the length fits.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// The unread rest of a token.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadToken> {
        if self.0.len() < n {
            return Err(BadToken);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BadToken> {
        self.take(N)?.try_into().map_err(|_| BadToken)
    }

    fn string(&mut self) -> Result<String, BadToken> {
        let len = usize::try_from(u32::from_le_bytes(self.array()?)).map_err(|_| BadToken)?;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| BadToken)
    }
}

/// The entries of one page, and what they take of its bounds.
pub(super) struct Page {
    pub(super) out: Vec<MethodStats>,
    bytes: usize,
    max_rows: usize,
    max_bytes: usize,
}

impl Page {
    pub(super) fn new(max_rows: usize, max_bytes: usize) -> Self {
        Self {
            out: Vec::new(),
            bytes: 0,
            max_rows,
            max_bytes,
        }
    }

    /// Adds `stats` if the page has room for it (an empty page always has); false when it is full.
    pub(super) fn push(&mut self, stats: MethodStats) -> bool {
        // As the message encodes it: the field's tag, its length and the row.
        let len = prost::Message::encoded_len(&stats);
        let bytes = 1 + prost::encoding::encoded_len_varint(u64::try_from(len).unwrap_or(u64::MAX)) + len;
        if !self.out.is_empty()
            && (self.out.len() >= self.max_rows || self.bytes.saturating_add(bytes) > self.max_bytes)
        {
            return false;
        }
        self.bytes = self.bytes.saturating_add(bytes);
        self.out.push(stats);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `payload` as a token signed with `key`: what a token of this layout would be had the agent issued it.
    fn signed(payload: &[u8], key: &TokenKey) -> String {
        let tag = key.mac(payload).finalize().into_bytes();
        URL_SAFE_NO_PAD.encode([payload, &tag[..TAG_BYTES]].concat())
    }

    #[test]
    fn a_token_names_the_entry_it_was_made_from() {
        let key = TokenKey::random();
        let row = Cursor::Row(Key {
            service: "pkg.Greeter".into(),
            method: "SayHello".into(),
            gray_version: "v2".into(),
            tenant: String::new(),
            direction: 2,
            rpc_system_name: "grpc".into(),
            pid: 4242,
            start: u64::MAX - 1,
        });
        let declared = Cursor::Declared(DeclKey {
            pid: 7,
            service: "pkg.Greeter".into(),
            method: "GET /users/{id}".into(),
            start: 1_800_000_000_000_000_000,
        });
        for cursor in [row, declared] {
            let token = cursor.token(&key);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            assert_eq!(Cursor::parse(&token, &key), Ok(cursor));
        }
    }

    /// Another table's key (another agent's) refuses the token; each byte of it altered is refused too.
    #[test]
    fn a_token_is_good_only_for_its_key_and_as_it_was_issued() {
        let key = TokenKey::random();
        let cursor = Cursor::Declared(DeclKey {
            pid: 7,
            service: "s".into(),
            method: "m".into(),
            start: 0,
        });
        let token = cursor.token(&key);
        assert_eq!(Cursor::parse(&token, &TokenKey::random()), Err(BadToken));
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap_or_default();
        for i in 0..raw.len() {
            let mut altered = raw.clone();
            altered[i] ^= 1;
            assert_eq!(
                Cursor::parse(&URL_SAFE_NO_PAD.encode(altered), &key),
                Err(BadToken),
                "byte {i}"
            );
        }
        assert_eq!(Cursor::parse(&token, &key), Ok(cursor));
    }

    /// Even signed, a token that does not parse is refused (the layout of an older version, say).
    #[test]
    fn a_signed_token_of_another_layout_is_refused() {
        let key = TokenKey::random();
        let good = Cursor::Declared(DeclKey {
            pid: 7,
            service: "s".into(),
            method: "m".into(),
            start: 0,
        })
        .token(&key);
        let raw = URL_SAFE_NO_PAD.decode(&good).unwrap_or_default();
        let payload = &raw[..raw.len() - TAG_BYTES];
        let mut longer = payload.to_vec();
        longer.push(0);
        let mut version = payload.to_vec();
        version[0] = 1;
        let mut kind = payload.to_vec();
        kind[1] = b'x';
        // A string's length claiming more bytes than there are.
        let mut overlong = payload.to_vec();
        overlong[6] = 0xff;
        let bad = [
            String::new(),
            "not base64!".to_owned(),
            URL_SAFE_NO_PAD.encode(&raw[..TAG_BYTES - 1]),
            signed(&[], &key),
            signed(&payload[..payload.len() - 1], &key),
            signed(&longer, &key),
            signed(&version, &key),
            signed(&kind, &key),
            signed(&overlong, &key),
            signed(
                &[
                    2, b'd', 0, 0, 0, 0, 1, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                &key,
            ),
        ];
        for token in bad {
            assert_eq!(Cursor::parse(&token, &key), Err(BadToken), "{token:?}");
        }
    }
}
