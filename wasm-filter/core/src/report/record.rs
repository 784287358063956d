//! One call's record, compact while it waits in the buffer, encoded as a `grayscope.v1.CallRecord` only when its
//! batch is built.
//!
//! Every text field is bounded when the record is built ([`MAX_FIELD_BYTES`]): a longer value is cut at a UTF-8
//! boundary and ends with [`TRUNCATED`], and the cut is counted. A client chooses some of these values (Envoy passes
//! a client's `x-request-id` through), so without the bound one request could make a batch the agent refuses, and
//! lose every other call in it. With it, [`MAX_RECORD_BYTES`] bounds an encoded record, so the byte budget of a
//! batch always fits at least one.
//!
//! A record holds five small strings at most (method or route, service, version, request id, tenant label); the
//! addresses are parsed into `SocketAddr`s. The wire format is written by hand ([`Record::encode`]) straight from
//! these fields, so no `CallRecord` with its dozen `String`s is ever built; the tests decode the output with prost
//! to prove it is the same message.

use std::net::SocketAddr;

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use crate::{interface::Interface, metrics::Side, status::Status};

/// The longest text field a record carries, in bytes (the agent refuses fields over 4096).
pub const MAX_FIELD_BYTES: usize = 1024;
/// What ends a cut field.
pub const TRUNCATED: &str = "…";
/// An upper bound of one encoded record, with its framing as a `calls` element of `ReportRequest`.
pub const MAX_RECORD_BYTES: usize = 10 * 1024;

/// An address as Envoy gave it: `ip:port`, or other text (a pipe's path), bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Ip(SocketAddr),
    Text(String),
}

/// One call, bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub(crate) side: Side,
    /// gRPC, or plain HTTP with `verb`.
    pub(crate) grpc: bool,
    pub(crate) verb: &'static str,
    /// `pkg.Service/Method` for gRPC, the route for HTTP.
    pub(crate) method: String,
    pub(crate) service: String,
    pub(crate) version: String,
    pub(crate) status: Status,
    pub(crate) http_status: u32,
    pub(crate) duration_ns: u64,
    pub(crate) start_time_unix_nano: u64,
    /// client, server, upstream_local, upstream_peer.
    pub(crate) addrs: [Option<Addr>; 4],
    pub(crate) request_id: String,
    pub(crate) trace_id: String,
    /// The bounded tenant label; empty when the dimension is off.
    pub(crate) tenant: String,
    /// Fields cut to [`MAX_FIELD_BYTES`] while building it.
    pub(crate) truncated: u8,
}

/// Copies `text`, cut to [`MAX_FIELD_BYTES`] with the marker when longer; counts the cut in `truncated`.
pub(crate) fn bounded(text: &str, truncated: &mut u8) -> String {
    bounded_to(text, MAX_FIELD_BYTES, truncated)
}

fn bounded_to(text: &str, max: usize, truncated: &mut u8) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    *truncated = truncated.saturating_add(1);
    let mut end = max - TRUNCATED.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + TRUNCATED.len());
    out.push_str(&text[..end]);
    out.push_str(TRUNCATED);
    out
}

/// `1.2.3.4:80`, `[::1]:80` → an IP address; anything else (a pipe path) → its text, bounded.
pub(crate) fn addr(text: &str, truncated: &mut u8) -> Addr {
    match text.parse::<SocketAddr>() {
        Ok(a) => Addr::Ip(a),
        Err(_) => Addr::Text(bounded(text, truncated)),
    }
}

impl Record {
    /// Builds the record of one call from what the request context knows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        side: Side,
        interface: &Interface,
        service: &str,
        version: Option<&str>,
        status: Status,
        request_id: Option<&str>,
        trace_id: Option<&str>,
        ctx: &super::CallContext<'_>,
    ) -> Self {
        let mut truncated = 0;
        let (grpc, verb, method) = match interface {
            Interface::Grpc { service, method } => {
                let mut text = String::with_capacity(service.len() + 1 + method.len());
                text.push_str(service);
                text.push('/');
                text.push_str(method);
                let method = if text.len() > MAX_FIELD_BYTES {
                    bounded(&text, &mut truncated)
                } else {
                    text
                };
                (true, "", method)
            }
            Interface::Http { verb, route } => (false, *verb, bounded(route, &mut truncated)),
        };
        let mut a = |t: Option<&str>| t.map(|t| addr(t, &mut truncated));
        let addrs = [
            a(ctx.client),
            a(ctx.server),
            a(ctx.upstream_local),
            a(ctx.upstream_peer),
        ];
        Self {
            side,
            grpc,
            verb,
            method,
            service: bounded(service, &mut truncated),
            version: bounded(version.unwrap_or_default(), &mut truncated),
            status,
            http_status: ctx.http_status.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
            duration_ns: ctx.duration_ns,
            start_time_unix_nano: ctx.start_time_unix_nano,
            addrs,
            request_id: bounded(request_id.unwrap_or_default(), &mut truncated),
            trace_id: bounded(trace_id.unwrap_or_default(), &mut truncated),
            tenant: String::new(),
            truncated,
        }
    }

    /// Sets the call's bounded tenant label: at most 64 bytes by construction, cut there all the same, so the
    /// field costs [`MAX_RECORD_BYTES`] almost nothing.
    pub fn with_tenant(mut self, label: Option<&str>) -> Self {
        if let Some(label) = label {
            self.tenant = bounded_to(label, crate::tenant::MAX_LABEL_LEN, &mut self.truncated);
        }
        self
    }

    fn direction(&self) -> u64 {
        // grayscope.v1.Direction
        match self.side {
            Side::Unspecified => 0,
            Side::Inbound => 1,
            Side::Outbound => 2,
        }
    }

    fn grpc_code(&self) -> i32 {
        match (self.grpc, self.status) {
            (true, Status::Grpc(code)) => i32::from(code),
            _ => -1,
        }
    }

    /// The text fields, by field number of `CallRecord`.
    fn texts(&self) -> [(u32, &str); 10] {
        let system = if self.grpc { "grpc" } else { "http" };
        let (rpc_method, route) = if self.grpc {
            (self.method.as_str(), "")
        } else {
            ("", self.method.as_str())
        };
        [
            (2, system),
            (3, rpc_method),
            (4, self.verb),
            (5, route),
            (6, self.service.as_str()),
            (7, self.version.as_str()),
            (8, self.status.as_str()),
            (17, self.request_id.as_str()),
            (18, self.trace_id.as_str()),
            (19, self.tenant.as_str()),
        ]
    }

    /// The length of the encoded `CallRecord` (without its own framing).
    pub fn encoded_len(&self) -> usize {
        let mut n = 0;
        let direction = self.direction();
        if direction != 0 {
            n += key_len(1) + encoded_len_varint(direction);
        }
        for (tag, text) in self.texts() {
            n += string_len(tag, text);
        }
        if self.http_status != 0 {
            n += key_len(9) + encoded_len_varint(u64::from(self.http_status));
        }
        n += key_len(10) + encoded_len_varint(i64::from(self.grpc_code()) as u64);
        for (tag, v) in [(11, self.duration_ns), (12, self.start_time_unix_nano)] {
            if v != 0 {
                n += key_len(tag) + encoded_len_varint(v);
            }
        }
        for (tag, a) in (13..).zip(&self.addrs) {
            if let Some(a) = a {
                let len = addr_len(a);
                n += key_len(tag) + encoded_len_varint(len as u64) + len;
            }
        }
        n
    }

    /// Appends the encoded `CallRecord` (without its own framing) to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let direction = self.direction();
        if direction != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(direction, buf);
        }
        let texts = self.texts();
        for &(tag, text) in texts.iter().take(7) {
            put_string(tag, text, buf);
        }
        if self.http_status != 0 {
            encode_key(9, WireType::Varint, buf);
            encode_varint(u64::from(self.http_status), buf);
        }
        // int32 is sign-extended to 64 bits on the wire; -1 is always sent (0 would mean OK).
        encode_key(10, WireType::Varint, buf);
        encode_varint(i64::from(self.grpc_code()) as u64, buf);
        for (tag, v) in [(11, self.duration_ns), (12, self.start_time_unix_nano)] {
            if v != 0 {
                encode_key(tag, WireType::Varint, buf);
                encode_varint(v, buf);
            }
        }
        for (tag, a) in (13..).zip(&self.addrs) {
            if let Some(a) = a {
                encode_key(tag, WireType::LengthDelimited, buf);
                encode_varint(addr_len(a) as u64, buf);
                put_addr(a, buf);
            }
        }
        for &(tag, text) in texts.iter().skip(7) {
            put_string(tag, text, buf);
        }
    }
}

fn string_len(tag: u32, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(text.len() as u64) + text.len()
    }
}

fn put_string(tag: u32, text: &str, buf: &mut Vec<u8>) {
    if !text.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(text.len() as u64, buf);
        buf.extend_from_slice(text.as_bytes());
    }
}

/// `SocketAddress { address = 1; port = 2; }`: the IP is written as text, as `Display` writes it (no brackets).
fn addr_parts(a: &Addr) -> (AddrText<'_>, u16) {
    match a {
        Addr::Ip(s) => (AddrText::Ip(s.ip()), s.port()),
        Addr::Text(t) => (AddrText::Text(t), 0),
    }
}

enum AddrText<'a> {
    Ip(std::net::IpAddr),
    Text(&'a str),
}

impl AddrText<'_> {
    /// The IP's text in a stack buffer (at most 45 bytes for IPv6), so encoding allocates nothing.
    fn with<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            AddrText::Text(t) => f(t),
            AddrText::Ip(ip) => {
                use std::io::Write as _;
                let mut buf = [0u8; 64];
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                let len = match write!(cursor, "{ip}") {
                    Ok(()) => usize::try_from(cursor.position()).unwrap_or(0),
                    Err(_) => 0,
                };
                f(std::str::from_utf8(&buf[..len]).unwrap_or_default())
            }
        }
    }
}

fn addr_len(a: &Addr) -> usize {
    let (text, port) = addr_parts(a);
    let port_len = if port == 0 {
        0
    } else {
        key_len(2) + encoded_len_varint(u64::from(port))
    };
    text.with(|t| string_len(1, t)) + port_len
}

fn put_addr(a: &Addr, buf: &mut Vec<u8>) {
    let (text, port) = addr_parts(a);
    text.with(|t| put_string(1, t, buf));
    if port != 0 {
        encode_key(2, WireType::Varint, buf);
        encode_varint(u64::from(port), buf);
    }
}
