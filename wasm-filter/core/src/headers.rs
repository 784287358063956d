//! A zero-copy view of the header map as the proxy-wasm host serialises it.
//!
//! `proxy_get_header_map_pairs` returns one buffer: a little-endian `u32` pair count, then a `(u32 key length,
//! u32 value length)` table, then every key and value each followed by a NUL byte. Reading the whole map in one
//! hostcall is cheaper than one call per header, and it is the only way to see repeated headers (the single-value
//! hostcall returns only the first). Values are bytes, not strings: a client may send anything, and the filter must
//! not fail on it.

use thiserror::Error;

/// The buffer is not a well-formed serialized map; the host never produces one, so this is logged, not fatal.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed serialized header map: {0}")]
pub struct MalformedMap(&'static str);

/// The request's headers, borrowed from the host's buffer. Names are lowercase, as Envoy stores them.
#[derive(Debug, Default, Clone)]
pub struct Headers<'a> {
    pairs: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Headers<'a> {
    /// Parses the host's serialized pairs; never reads out of bounds, whatever the bytes.
    pub fn parse(buf: &'a [u8]) -> Result<Self, MalformedMap> {
        if buf.is_empty() {
            return Ok(Self::default());
        }
        let count = read_u32(buf, 0).ok_or(MalformedMap("truncated pair count"))? as usize;
        // Each pair needs 8 bytes of lengths and 2 NULs: a count the buffer cannot hold is rejected before
        // anything is allocated for it.
        if count > buf.len() / 10 {
            return Err(MalformedMap("pair count larger than the buffer"));
        }
        let mut lens = 4;
        let mut data = 4 + count * 8;
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            let klen = read_u32(buf, lens).ok_or(MalformedMap("truncated length table"))? as usize;
            let vlen = read_u32(buf, lens + 4).ok_or(MalformedMap("truncated length table"))? as usize;
            lens += 8;
            let key = take(buf, &mut data, klen)?;
            let value = take(buf, &mut data, vlen)?;
            pairs.push((key, value));
        }
        Ok(Self { pairs })
    }

    /// Builds a map from pairs, for tests and for hosts that hand headers over one by one.
    pub fn from_pairs(pairs: Vec<(&'a [u8], &'a [u8])>) -> Self {
        Self { pairs }
    }

    /// Every value of `name` (lowercase), in the order the client sent them.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        let name = name.as_bytes();
        self.pairs.iter().filter(move |(k, _)| *k == name).map(|(_, v)| *v)
    }

    /// The first value of `name`, as the single-value hostcall would return it.
    pub fn first(&self, name: &str) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    /// All pairs, in order.
    pub fn pairs(&self) -> &[(&'a [u8], &'a [u8])] {
        &self.pairs
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Takes `len` bytes at `*at` followed by the NUL terminator, and advances past both.
fn take<'a>(buf: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], MalformedMap> {
    let end = at.checked_add(len).ok_or(MalformedMap("length overflow"))?;
    let bytes = buf.get(*at..end).ok_or(MalformedMap("truncated key or value"))?;
    if buf.get(end) != Some(&0) {
        return Err(MalformedMap("missing NUL terminator"));
    }
    *at = end + 1;
    Ok(bytes)
}

/// Serialises pairs the way the host does; the inverse of [`Headers::parse`], used by tests and fuzz seeds.
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_pairs_including_repeats_and_binary_values() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a"), (b"baggage", b"a=1"), (b"baggage", b"b=\xff\x00")];
        let buf = serialize(&pairs);
        let h = Headers::parse(&buf).unwrap();
        assert_eq!(h.pairs(), &pairs[..]);
        assert_eq!(
            h.all("baggage").collect::<Vec<_>>(),
            vec![&b"a=1"[..], &b"b=\xff\x00"[..]]
        );
        assert_eq!(h.first(":path"), Some(&b"/a"[..]));
        assert_eq!(h.first("x-none"), None);
    }

    #[test]
    fn empty_buffer_is_an_empty_map() {
        assert!(Headers::parse(&[]).unwrap().pairs().is_empty());
    }

    #[test]
    fn rejects_truncated_and_lying_buffers() {
        let buf = serialize(&[(b"k", b"v")]);
        for cut in 1..buf.len() {
            assert!(Headers::parse(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Headers::parse(&huge).unwrap_err(),
            MalformedMap("pair count larger than the buffer")
        );
        let mut no_nul = buf;
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(Headers::parse(&no_nul).is_err());
    }
}
