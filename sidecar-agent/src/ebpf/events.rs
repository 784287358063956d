//! The kernel's event record (`ebpf/include/conn_event.h`) mirrored in Rust, and its decoding into
//! [`ConnEvent`].
//!
//! [`RawConnEvent`] pins the C layout: same fields, same order, explicit padding, and a compile-time size check
//! that fails the build when the two sides drift. Decoding reads each field at its `offset_of!` from the ring
//! buffer's bytes, so no `unsafe` transmute is needed.

use std::{
    mem::{offset_of, size_of},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `GS_EVENT_ESTABLISHED`, `GS_EVENT_ACCEPTED`, `GS_EVENT_CLOSED`: the `kind` byte.
pub(crate) const KIND_ESTABLISHED: u8 = 1;
const KIND_ACCEPTED: u8 = 2;
const KIND_CLOSED: u8 = 3;

/// Mirror of `struct gs_conn_event`; see the C header for the meaning of each field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawConnEvent {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub duration_ns: u64,
    pub proc_start_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub netns: u32,
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub kind: u8,
    pub role: u8,
    pub pad: [u8; 4],
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<RawConnEvent>() == 104);
const _: () = assert!(offset_of!(RawConnEvent, laddr) == 56);
const _: () = assert!(offset_of!(RawConnEvent, comm) == 88);

/// What happened to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The handshake completed; the 4-tuple is known.
    Established,
    /// `accept(2)` returned the socket: the event names the accepting process.
    Accepted,
    /// The socket reached `TCP_CLOSE`.
    Closed,
}

/// Which end of the connection the socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Opened with `connect(2)`.
    Client,
    /// Accepted from a local listener.
    Server,
}

/// The process that owns a socket, as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id (the "pid" users know).
    pub pid: u32,
    /// The thread that made the call.
    pub tid: u32,
    /// That thread's command name.
    pub comm: Comm,
    /// Start time of the process (ns since boot, `start_boottime`): tells a reused pid from the original.
    pub start_ns: u64,
}

/// A decoded connection event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    pub kind: EventKind,
    pub role: Role,
    /// Kernel address of the socket: the connection's identity while it lives.
    pub skaddr: u64,
    /// Kernel monotonic clock (ns) when the event was emitted.
    pub ts_ns: u64,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    /// Local end; a v4-mapped IPv6 address is reported as IPv4.
    pub local: SocketAddr,
    /// Remote end, same convention.
    pub remote: SocketAddr,
    /// The owning process; `None` for a server socket not accepted yet.
    pub owner: Option<Owner>,
    /// For [`EventKind::Closed`]: how long the connection was known to the kernel program.
    pub duration: Option<Duration>,
}

/// Why a ring buffer record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record does not have the size of `struct gs_conn_event`: the object and the agent disagree.
    #[error("event record of {0} bytes, expected {expected}", expected = size_of::<RawConnEvent>())]
    Size(usize),
    /// A field holds a value the agent does not know.
    #[error("unknown {field} value {value}")]
    Unknown { field: &'static str, value: u16 },
}

// === impl RawConnEvent ===

impl RawConnEvent {
    /// Reads a record from the bytes of a ring buffer item.
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != size_of::<Self>() {
            return Err(DecodeError::Size(b.len()));
        }
        Ok(Self {
            ts_ns: u64::from_ne_bytes(arr(b, offset_of!(Self, ts_ns))),
            skaddr: u64::from_ne_bytes(arr(b, offset_of!(Self, skaddr))),
            duration_ns: u64::from_ne_bytes(arr(b, offset_of!(Self, duration_ns))),
            proc_start_ns: u64::from_ne_bytes(arr(b, offset_of!(Self, proc_start_ns))),
            pid: u32::from_ne_bytes(arr(b, offset_of!(Self, pid))),
            tid: u32::from_ne_bytes(arr(b, offset_of!(Self, tid))),
            netns: u32::from_ne_bytes(arr(b, offset_of!(Self, netns))),
            family: u16::from_ne_bytes(arr(b, offset_of!(Self, family))),
            lport: u16::from_ne_bytes(arr(b, offset_of!(Self, lport))),
            rport: u16::from_ne_bytes(arr(b, offset_of!(Self, rport))),
            kind: b[offset_of!(Self, kind)],
            role: b[offset_of!(Self, role)],
            pad: arr(b, offset_of!(Self, pad)),
            laddr: arr(b, offset_of!(Self, laddr)),
            raddr: arr(b, offset_of!(Self, raddr)),
            comm: arr(b, offset_of!(Self, comm)),
        })
    }

    /// The record's bytes, as the kernel would write them (for tests and fuzzing of the decoder).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<Self>()];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(offset_of!(Self, ts_ns), &self.ts_ns.to_ne_bytes());
        put(offset_of!(Self, skaddr), &self.skaddr.to_ne_bytes());
        put(offset_of!(Self, duration_ns), &self.duration_ns.to_ne_bytes());
        put(offset_of!(Self, proc_start_ns), &self.proc_start_ns.to_ne_bytes());
        put(offset_of!(Self, pid), &self.pid.to_ne_bytes());
        put(offset_of!(Self, tid), &self.tid.to_ne_bytes());
        put(offset_of!(Self, netns), &self.netns.to_ne_bytes());
        put(offset_of!(Self, family), &self.family.to_ne_bytes());
        put(offset_of!(Self, lport), &self.lport.to_ne_bytes());
        put(offset_of!(Self, rport), &self.rport.to_ne_bytes());
        put(offset_of!(Self, kind), &[self.kind]);
        put(offset_of!(Self, role), &[self.role]);
        put(offset_of!(Self, laddr), &self.laddr);
        put(offset_of!(Self, raddr), &self.raddr);
        put(offset_of!(Self, comm), &self.comm);
        b
    }

    /// Interprets the record.
    pub fn decode(&self) -> Result<ConnEvent, DecodeError> {
        let kind = match self.kind {
            KIND_ESTABLISHED => EventKind::Established,
            KIND_ACCEPTED => EventKind::Accepted,
            KIND_CLOSED => EventKind::Closed,
            v => {
                return Err(DecodeError::Unknown {
                    field: "kind",
                    value: v.into(),
                })
            }
        };
        let role = match self.role {
            1 => Role::Client,
            2 => Role::Server,
            v => {
                return Err(DecodeError::Unknown {
                    field: "role",
                    value: v.into(),
                })
            }
        };
        let local = SocketAddr::new(ip(self.family, &self.laddr)?, self.lport);
        let remote = SocketAddr::new(ip(self.family, &self.raddr)?, self.rport);
        let owner = (self.pid != 0).then(|| Owner {
            pid: self.pid,
            tid: self.tid,
            comm: Comm::from_raw(&self.comm),
            start_ns: self.proc_start_ns,
        });
        Ok(ConnEvent {
            kind,
            role,
            skaddr: self.skaddr,
            ts_ns: self.ts_ns,
            netns: self.netns,
            local,
            remote,
            owner,
            duration: (kind == EventKind::Closed).then(|| Duration::from_nanos(self.duration_ns)),
        })
    }
}

/// Decodes one ring buffer item.
pub fn decode(bytes: &[u8]) -> Result<ConnEvent, DecodeError> {
    RawConnEvent::from_bytes(bytes)?.decode()
}

pub(crate) fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[off..off + N]);
    out
}

fn ip(family: u16, bytes: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            Ok(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        v => Err(DecodeError::Unknown {
            field: "family",
            value: v,
        }),
    }
}

/// A thread's command name as the kernel keeps it: at most 16 bytes, NUL-padded. Held inline (no heap string per
/// event and per table entry: with 100,000 tracked connections that was 3 MiB of 16-byte allocations).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm([u8; 16]);

impl Comm {
    /// From the kernel's bytes; everything after the first NUL is dropped.
    pub fn from_raw(bytes: &[u8; 16]) -> Self {
        let mut out = [0u8; 16];
        let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
        out[..end].copy_from_slice(&bytes[..end]);
        Self(out)
    }

    /// The name's bytes, without the padding.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// The name as text (bytes that are not UTF-8 become U+FFFD, as before).
    pub fn to_str_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl From<&str> for Comm {
    /// Truncated to 16 bytes at a character boundary, as the kernel would hold it.
    fn from(s: &str) -> Self {
        let mut end = s.len().min(16);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut out = [0u8; 16];
        out[..end].copy_from_slice(&s.as_bytes()[..end]);
        Self(out)
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.to_str_lossy())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_str_lossy(), f)
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

#[cfg(test)]
mod tests;
