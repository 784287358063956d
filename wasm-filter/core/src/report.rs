//! Call records for the agent: built per call, buffered per VM, sent in batches, every record accounted for.
//!
//! The filter never waits for the agent. Records go into a bounded buffer; the root context's timer takes batches
//! out (when one is full, or when the flush interval has passed) and dispatches them as unary `Report` calls.
//! At every moment `produced == sent + dropped + buffered`, where buffered counts records in the buffer and in
//! calls not yet answered. A record is dropped when the buffer is full, when a call cannot be dispatched, or when
//! the agent answers with any status but OK (down, hung past the timeout, refusing): the batch is not retried,
//! so a dead agent costs a bounded amount of memory and nothing else.

use std::collections::{HashMap, VecDeque};

use prost::Message;
use proto::v1::{CallRecord, Direction, ReportRequest, SocketAddress};

use crate::{
    interface::Interface,
    metrics::{Kind, MetricHost, Side},
    status::Status,
};

pub const PRODUCED: &str = "grayscope_report_records_total";
pub const BUFFERED: &str = "grayscope_report_records_buffered";

/// The `report` section of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportConfig {
    pub enabled: bool,
    /// The Envoy cluster whose endpoint is the agent's Unix socket (HTTP/2).
    pub cluster: String,
    /// A partial batch is sent after this long.
    pub flush_interval_ms: u64,
    pub max_batch: usize,
    /// Records held at most (buffer and unanswered calls together); more are dropped.
    pub max_buffer: usize,
    /// Timeout of one `Report` call.
    pub timeout_ms: u64,
    /// `Report` calls in flight at most.
    pub max_in_flight: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cluster: "grayscope_agent".to_owned(),
            flush_interval_ms: 1000,
            max_batch: 256,
            max_buffer: 4096,
            timeout_ms: 2000,
            max_in_flight: 4,
        }
    }
}

/// The addresses and times Envoy knows of a finished call (its properties, as `ip:port` text).
#[derive(Debug, Clone, Default)]
pub struct CallContext<'a> {
    pub start_time_unix_nano: u64,
    pub duration_ns: u64,
    pub http_status: Option<u64>,
    pub client: Option<&'a str>,
    pub server: Option<&'a str>,
    pub upstream_local: Option<&'a str>,
    pub upstream_peer: Option<&'a str>,
}

/// Builds the record of one call.
#[allow(clippy::too_many_arguments)]
pub fn record(
    side: Side,
    interface: &Interface,
    service: &str,
    version: Option<&str>,
    status: Status,
    request_id: Option<&str>,
    trace_id: Option<&str>,
    ctx: &CallContext<'_>,
) -> CallRecord {
    let (rpc_method, http_request_method, http_route) = match interface {
        Interface::Grpc { service, method } => (format!("{service}/{method}"), String::new(), String::new()),
        Interface::Http { verb, route } => (String::new(), (*verb).to_owned(), route.clone()),
    };
    let direction = match side {
        Side::Inbound => Direction::Inbound,
        Side::Outbound => Direction::Outbound,
        Side::Unspecified => Direction::Unspecified,
    };
    CallRecord {
        direction: direction as i32,
        rpc_system_name: interface.system().as_str().to_owned(),
        rpc_method,
        http_request_method,
        http_route,
        service: service.to_owned(),
        gray_version: version.unwrap_or_default().to_owned(),
        status: status.as_str().to_owned(),
        http_response_status_code: ctx.http_status.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
        rpc_grpc_status_code: match (interface, status) {
            (Interface::Grpc { .. }, Status::Grpc(code)) => i32::from(code),
            _ => -1,
        },
        duration_ns: ctx.duration_ns,
        start_time_unix_nano: ctx.start_time_unix_nano,
        client: ctx.client.map(socket_address),
        server: ctx.server.map(socket_address),
        upstream_local: ctx.upstream_local.map(socket_address),
        upstream_peer: ctx.upstream_peer.map(socket_address),
        request_id: request_id.unwrap_or_default().to_owned(),
        trace_id: trace_id.unwrap_or_default().to_owned(),
    }
}

/// `1.2.3.4:80`, `[::1]:80` → address and port; anything else (a pipe path) → the text with port 0.
pub fn socket_address(text: &str) -> SocketAddress {
    if let Some((host, port)) = text.rsplit_once(':') {
        if let Ok(port) = port.parse::<u16>() {
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            return SocketAddress {
                address: host.to_owned(),
                port: u32::from(port),
            };
        }
    }
    SocketAddress {
        address: text.to_owned(),
        port: 0,
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); `None` unless well-formed and non-zero.
pub fn trace_id(traceparent: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(traceparent).ok()?.trim();
    let mut parts = text.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let ok = hex(version, 2) && version != "ff" && hex(trace, 32) && hex(span, 16) && hex(flags, 2);
    (ok && trace.bytes().any(|b| b != b'0')).then(|| trace.to_owned())
}

/// A batch ready to dispatch: the encoded `ReportRequest` and how many records it holds.
#[derive(Debug)]
pub struct Batch {
    pub message: Vec<u8>,
    pub records: usize,
}

/// The per-VM buffer and its accounting.
pub struct Reporter {
    cfg: ReportConfig,
    reporter: String,
    buffer: VecDeque<CallRecord>,
    in_flight: HashMap<u32, usize>,
    since_flush_ms: u64,
    ids: Ids,
}

struct Ids {
    produced: u32,
    sent: u32,
    dropped: u32,
    buffered: u32,
}

impl Reporter {
    pub fn new<H: MetricHost>(cfg: ReportConfig, reporter: String, host: &mut H) -> Result<Self, H::Error> {
        let outcome = |o: &str| crate::metrics::stat_name(PRODUCED, &[("outcome", o)]);
        let ids = Ids {
            produced: host.define(Kind::Counter, &outcome("produced"))?,
            sent: host.define(Kind::Counter, &outcome("sent"))?,
            dropped: host.define(Kind::Counter, &outcome("dropped"))?,
            buffered: host.define(Kind::Gauge, BUFFERED)?,
        };
        Ok(Self {
            cfg,
            reporter,
            buffer: VecDeque::new(),
            in_flight: HashMap::new(),
            since_flush_ms: 0,
            ids,
        })
    }

    pub fn config(&self) -> &ReportConfig {
        &self.cfg
    }

    /// Records held: in the buffer and in unanswered calls.
    pub fn buffered(&self) -> usize {
        self.buffer.len() + self.in_flight.values().sum::<usize>()
    }

    /// Takes one record; drops it (counted) when the buffer is full.
    pub fn push<H: MetricHost>(&mut self, host: &mut H, record: CallRecord) -> Result<(), H::Error> {
        host.increment(self.ids.produced, 1)?;
        if self.buffered() >= self.cfg.max_buffer {
            return host.increment(self.ids.dropped, 1);
        }
        self.buffer.push_back(record);
        host.add(self.ids.buffered, 1)
    }

    /// Called by the root's timer every `elapsed_ms`: the batches to dispatch now.
    pub fn tick(&mut self, elapsed_ms: u64) -> Vec<Batch> {
        self.since_flush_ms = self.since_flush_ms.saturating_add(elapsed_ms);
        let due = self.since_flush_ms >= self.cfg.flush_interval_ms;
        let mut batches = Vec::new();
        while !self.buffer.is_empty()
            && self.in_flight.len() + batches.len() < self.cfg.max_in_flight
            && (due || self.buffer.len() >= self.cfg.max_batch)
        {
            let n = self.buffer.len().min(self.cfg.max_batch);
            let calls: Vec<CallRecord> = self.buffer.drain(..n).collect();
            let message = ReportRequest {
                reporter: self.reporter.clone(),
                calls,
            }
            .encode_to_vec();
            batches.push(Batch { message, records: n });
        }
        if due {
            self.since_flush_ms = 0;
        }
        batches
    }

    /// A batch was dispatched as call `token`; its records stay buffered until the answer.
    pub fn dispatched(&mut self, token: u32, records: usize) {
        *self.in_flight.entry(token).or_default() += records;
    }

    /// A batch could not be dispatched: its records are dropped.
    pub fn dispatch_failed<H: MetricHost>(&mut self, host: &mut H, records: usize) -> Result<(), H::Error> {
        host.increment(self.ids.dropped, records as u64)?;
        host.add(self.ids.buffered, -(records as i64))
    }

    /// The answer to call `token`: gRPC status 0 means the agent has the records, anything else drops them.
    /// Returns how many records the call carried (0 for a token this reporter does not know).
    pub fn completed<H: MetricHost>(&mut self, host: &mut H, token: u32, grpc_status: u32) -> Result<usize, H::Error> {
        let Some(records) = self.in_flight.remove(&token) else {
            return Ok(0);
        };
        let outcome = if grpc_status == 0 {
            self.ids.sent
        } else {
            self.ids.dropped
        };
        host.increment(outcome, records as u64)?;
        host.add(self.ids.buffered, -(records as i64))?;
        Ok(records)
    }
}

#[cfg(test)]
mod tests;
