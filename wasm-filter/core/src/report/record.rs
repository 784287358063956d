//! One call's record: a view of what the call already holds (the decision, the properties the shell read), every
//! text field bounded, encoded as a `grayscope.v1.CallRecord` straight into the batch being filled
//! ([`super::Reporter::push`]). Nothing is copied: a record costs no allocation, and once encoded it is bytes.
//!
//! Every text field is bounded when the record is built ([`MAX_FIELD_BYTES`]): a longer value is cut at a UTF-8
//! boundary and ends with [`TRUNCATED`], and the cut is counted. A client chooses some of these values (Envoy passes
//! a client's `x-request-id` through), so without the bound one request could make a batch the agent refuses, and
//! lose every other call in it. With it, [`MAX_RECORD_BYTES`] bounds an encoded record, so the byte budget of a
//! batch always fits at least one.
//!
//! The wire format is written by hand ([`Record::encode`]) straight from these views, so no `CallRecord` with its
//! dozen `String`s is ever built; the tests decode the output with prost to prove it is the same message.

use std::net::SocketAddr;

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use crate::{interface::Interface, metrics::Side, status::Status};

/// The longest text field a record carries, in bytes (the agent refuses fields over 4096).
pub const MAX_FIELD_BYTES: usize = 1024;
/// What ends a cut field.
pub const TRUNCATED: &str = "…";
/// An upper bound of one encoded record, with its framing as a `calls` element of `ReportRequest`.
pub const MAX_RECORD_BYTES: usize = 10 * 1024;

/// A bounded text field: up to three borrowed pieces written one after the other (a gRPC method is `service`, `/`,
/// `method`), cut at a UTF-8 boundary to a byte budget, and then followed by [`TRUNCATED`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text<'a> {
    pieces: [&'a str; 3],
    cut: bool,
}

impl<'a> Text<'a> {
    /// A text known to be short (a verb, a status name).
    fn plain(text: &'a str) -> Self {
        Self {
            pieces: [text, "", ""],
            cut: false,
        }
    }

    /// `text` cut to [`MAX_FIELD_BYTES`]; counts the cut in `truncated`.
    fn bounded(text: &'a str, truncated: &mut u8) -> Self {
        Self::bounded_to([text, "", ""], MAX_FIELD_BYTES, truncated)
    }

    /// The pieces cut to `max` bytes in all, the marker included, when longer; counts the cut in `truncated`.
    fn bounded_to(pieces: [&'a str; 3], max: usize, truncated: &mut u8) -> Self {
        if pieces.iter().map(|p| p.len()).sum::<usize>() <= max {
            return Self { pieces, cut: false };
        }
        *truncated = truncated.saturating_add(1);
        let mut room = max.saturating_sub(TRUNCATED.len());
        let mut kept = ["", "", ""];
        for (kept, piece) in kept.iter_mut().zip(pieces) {
            if piece.len() <= room {
                *kept = piece;
                room -= piece.len();
            } else {
                let mut end = room;
                while !piece.is_char_boundary(end) {
                    end -= 1;
                }
                *kept = piece.get(..end).unwrap_or_default();
                break;
            }
        }
        Self {
            pieces: kept,
            cut: true,
        }
    }

    fn len(&self) -> usize {
        self.pieces.iter().map(|p| p.len()).sum::<usize>() + if self.cut { TRUNCATED.len() } else { 0 }
    }

    fn write(&self, buf: &mut Vec<u8>) {
        for piece in self.pieces {
            buf.extend_from_slice(piece.as_bytes());
        }
        if self.cut {
            buf.extend_from_slice(TRUNCATED.as_bytes());
        }
    }
}

/// An address as Envoy gave it: `ip:port`, or other text (a pipe's path), bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr<'a> {
    Ip(SocketAddr),
    Text(Text<'a>),
}

/// One call, bounded: borrowed from the call's context until [`super::Reporter::push`] encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub(crate) side: Side,
    /// gRPC, or plain HTTP with `verb`.
    pub(crate) grpc: bool,
    pub(crate) verb: &'static str,
    /// `pkg.Service/Method` for gRPC, the route for HTTP.
    pub(crate) method: Text<'a>,
    pub(crate) service: Text<'a>,
    pub(crate) version: Text<'a>,
    pub(crate) status: Status,
    pub(crate) http_status: u32,
    pub(crate) duration_ns: u64,
    pub(crate) start_time_unix_nano: u64,
    /// client, server, upstream_local, upstream_peer.
    pub(crate) addrs: [Option<Addr<'a>>; 4],
    pub(crate) request_id: Text<'a>,
    pub(crate) trace_id: Text<'a>,
    /// The bounded tenant label; empty when the dimension is off.
    pub(crate) tenant: Text<'a>,
    /// Fields cut to [`MAX_FIELD_BYTES`] while building it.
    pub(crate) truncated: u8,
}

/// `1.2.3.4:80`, `[::1]:80` → an IP address; anything else (a pipe path) → its text, bounded.
fn addr<'a>(text: &'a str, truncated: &mut u8) -> Addr<'a> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Addr::Ip(a),
        Err(_) => Addr::Text(Text::bounded(text, truncated)),
    }
}

impl<'a> Record<'a> {
    /// Builds the record of one call from what the request context knows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        side: Side,
        interface: &'a Interface,
        service: &'a str,
        version: Option<&'a str>,
        status: Status,
        request_id: Option<&'a str>,
        trace_id: Option<&'a str>,
        ctx: &super::CallContext<'a>,
    ) -> Self {
        let mut truncated = 0;
        let (grpc, verb, method) = match interface {
            Interface::Grpc { service, method } => (
                true,
                "",
                Text::bounded_to([service, "/", method], MAX_FIELD_BYTES, &mut truncated),
            ),
            Interface::Http { verb, route } => (false, *verb, Text::bounded(route, &mut truncated)),
        };
        let mut a = |t: Option<&'a str>| t.map(|t| addr(t, &mut truncated));
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
            service: Text::bounded(service, &mut truncated),
            version: Text::bounded(version.unwrap_or_default(), &mut truncated),
            status,
            http_status: ctx.http_status.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
            duration_ns: ctx.duration_ns,
            start_time_unix_nano: ctx.start_time_unix_nano,
            addrs,
            request_id: Text::bounded(request_id.unwrap_or_default(), &mut truncated),
            trace_id: Text::bounded(trace_id.unwrap_or_default(), &mut truncated),
            tenant: Text::default(),
            truncated,
        }
    }

    /// Sets the call's bounded tenant label: at most 64 bytes by construction, cut there all the same, so the
    /// field costs [`MAX_RECORD_BYTES`] almost nothing.
    pub fn with_tenant(mut self, label: Option<&'a str>) -> Self {
        if let Some(label) = label {
            self.tenant = Text::bounded_to([label, "", ""], crate::tenant::MAX_LABEL_LEN, &mut self.truncated);
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
    fn texts(&self) -> [(u32, Text<'a>); 10] {
        let system = Text::plain(if self.grpc { "grpc" } else { "http" });
        let (rpc_method, route) = if self.grpc {
            (self.method, Text::default())
        } else {
            (Text::default(), self.method)
        };
        [
            (2, system),
            (3, rpc_method),
            (4, Text::plain(self.verb)),
            (5, route),
            (6, self.service),
            (7, self.version),
            (8, Text::plain(self.status.as_str())),
            (17, self.request_id),
            (18, self.trace_id),
            (19, self.tenant),
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

fn string_len(tag: u32, text: Text<'_>) -> usize {
    let len = text.len();
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

fn put_string(tag: u32, text: Text<'_>, buf: &mut Vec<u8>) {
    let len = text.len();
    if len != 0 {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
        text.write(buf);
    }
}

/// Calls `f` with the IP's text, written into a stack buffer (at most 45 bytes for IPv6) as `Display` writes it
/// (no brackets), so encoding allocates nothing.
fn with_ip<R>(ip: std::net::IpAddr, f: impl FnOnce(&str) -> R) -> R {
    use std::io::Write as _;
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let len = match write!(cursor, "{ip}") {
        Ok(()) => usize::try_from(cursor.position()).unwrap_or(0),
        Err(_) => 0,
    };
    f(std::str::from_utf8(buf.get(..len).unwrap_or_default()).unwrap_or_default())
}

fn port_len(port: u16) -> usize {
    if port == 0 {
        0
    } else {
        key_len(2) + encoded_len_varint(u64::from(port))
    }
}

/// `SocketAddress { address = 1; port = 2; }`; a text address (a pipe) has no port.
fn addr_len(a: &Addr<'_>) -> usize {
    match a {
        Addr::Ip(s) => with_ip(s.ip(), |t| string_len(1, Text::plain(t))) + port_len(s.port()),
        Addr::Text(t) => string_len(1, *t),
    }
}

fn put_addr(a: &Addr<'_>, buf: &mut Vec<u8>) {
    match a {
        Addr::Ip(s) => {
            with_ip(s.ip(), |t| put_string(1, Text::plain(t), buf));
            if s.port() != 0 {
                encode_key(2, WireType::Varint, buf);
                encode_varint(u64::from(s.port()), buf);
            }
        }
        Addr::Text(t) => put_string(1, *t, buf),
    }
}
