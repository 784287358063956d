//! Call records for the agent: built per call, buffered per VM, sent in batches, every record accounted for.
//!
//! The filter never waits for the agent. Each record is encoded, as it comes, into the `ReportRequest` being filled
//! (its `reporter` field first, then the records as `calls`); a batch full by count or by bytes waits in a queue.
//! The root context's timer hands out the finished batches (and the partial one when the flush interval has
//! passed) and dispatches them as unary `Report` calls: its work does not grow with the number of records.
//!
//! At every moment `produced == sent + dropped + buffered`, where buffered counts records in the buffer and in
//! calls not yet answered. The accounting is kept locally, and published as metrics by the tick, the drain and the
//! answers (the wasm build: by the tick and the drain, with its [`registry`] write), every series in the same
//! callback (one update per series that moved), so a scrape always sees the equation hold and lags the calls by
//! at most one tick: a call costs no metric hostcall. A record is dropped when the buffer is full, when a call
//! cannot be dispatched, when the agent answers with any status but OK (down, hung past the timeout, refusing), or
//! when no answer came by the call's deadline: the batch is not retried, so a dead agent costs a bounded amount of
//! memory and nothing else.
//!
//! Batches respect a byte budget (`report.max_batch_bytes`) as well as a count: records are bounded
//! ([`record`]), so a batch is split before it could pass the agent's message limit. When the plugin goes away
//! (a reload, a listener update) the root context drains: [`Reporter::drain`] hands out everything buffered, and
//! the answers, or the deadlines, settle the accounting.

mod record;
pub mod registry;

use std::collections::{HashMap, VecDeque};

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

pub use self::record::{Addr, Record, Text, MAX_FIELD_BYTES, MAX_RECORD_BYTES, TRUNCATED};
use crate::{
    interface::Interface,
    metrics::{Kind, MetricHost, Side},
    status::Status,
};

pub const PRODUCED: &str = "grayscope_report_records_total";
pub const BUFFERED: &str = "grayscope_report_records_buffered";
pub const TRUNCATED_FIELDS: &str = "grayscope_report_fields_truncated_total";

/// How long past its timeout a call may stay unanswered before its records are counted as dropped and its slot
/// is freed. Envoy answers every call by its timeout; this only guards against an answer the filter missed.
pub const DEADLINE_GRACE_MS: u64 = 1000;

/// The `report` section of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportConfig {
    pub enabled: bool,
    /// The Envoy cluster whose endpoint is the agent's Unix socket (HTTP/2).
    pub cluster: String,
    /// A partial batch is sent after this long.
    pub flush_interval_ms: u64,
    pub max_batch: usize,
    /// Encoded bytes of one `Report` message at most; below the agent's `--max-message-bytes`.
    pub max_batch_bytes: usize,
    /// Records held at most (buffer and unanswered calls together); more are dropped.
    pub max_buffer: usize,
    /// Timeout of one `Report` call.
    pub timeout_ms: u64,
    /// `Report` calls in flight at most.
    pub max_in_flight: usize,
}

/// The longest tick: the report metrics lag the calls by at most one, and calls past their deadline are given up
/// at one.
pub const MAX_TICK_MS: u64 = 200;

impl ReportConfig {
    /// The period of the timer that drives [`Reporter::tick`]: at most [`MAX_TICK_MS`], and a whole fraction of the
    /// flush interval (rounded up), so that partial batches leave every `flush_interval_ms` (250 ms: ticks of 125;
    /// with ticks of 200 they left every 400) and not at the next multiple of the tick.
    pub fn tick_ms(&self) -> u64 {
        let interval = self.flush_interval_ms.max(1);
        interval.div_ceil(interval.div_ceil(MAX_TICK_MS))
    }
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cluster: "grayscope_agent".to_owned(),
            flush_interval_ms: 1000,
            // A tick sends at most `max_in_flight` batches, so a VM reports at most 4 × 1,024 records per 200 ms
            // tick (20,480/s: more than a worker serves); and fewer, larger calls cost the agent less per record.
            max_batch: 1024,
            max_batch_bytes: 1 << 20,
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

/// Which of Envoy's four addresses a call's record carries, by the call's direction, so that a shell reads no
/// address nobody uses. The agent's join needs two (README, "Linking calls to processes"): `client` and `server`
/// for an outbound call (the caller's connection to Envoy), `upstream_peer` and `upstream_local` for an inbound one
/// (Envoy's connection to the server). Its method table names a call's peer from one more: the upstream host an
/// outbound call went to (`upstream_peer`), the downstream client of an inbound one (`client`). A call of
/// unspecified direction carries all four: the agent tries both joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub client: bool,
    pub server: bool,
    pub upstream_local: bool,
    pub upstream_peer: bool,
}

impl Addresses {
    pub fn of(side: Side) -> Self {
        let (outbound, inbound) = match side {
            Side::Outbound => (true, false),
            Side::Inbound => (false, true),
            Side::Unspecified => (true, true),
        };
        Self {
            client: true,
            server: outbound,
            upstream_local: inbound,
            upstream_peer: true,
        }
    }
}

/// Builds the record of one call, every field bounded (see [`Record`]).
#[allow(clippy::too_many_arguments)]
pub fn record<'a>(
    side: Side,
    interface: &'a Interface,
    service: &'a str,
    version: Option<&'a str>,
    status: Status,
    request_id: Option<&'a str>,
    trace_id: Option<&'a str>,
    ctx: &CallContext<'a>,
) -> Record<'a> {
    Record::new(side, interface, service, version, status, request_id, trace_id, ctx)
}

/// The trace id of a request's W3C `traceparent` headers (`00-<32 hex>-<16 hex>-<2 hex>`), by the rules a tracer
/// applies before it joins the trace (<https://www.w3.org/TR/trace-context/>): `None` unless there is exactly one
/// header, its ids are lowercase hex and not all zeros, and version 00 has nothing after the flags (a later version
/// may add fields; version `ff` is invalid). A header a tracer ignores starts a new trace, so its id names no trace
/// of this call.
pub fn trace_id<'a>(traceparents: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    let mut values = traceparents.into_iter();
    let (Some(traceparent), None) = (values.next(), values.next()) else {
        return None;
    };
    let text = std::str::from_utf8(traceparent).ok()?.trim();
    let mut parts = text.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let non_zero = |s: &str| s.bytes().any(|b| b != b'0');
    let ok = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && non_zero(trace)
        && hex(span, 16)
        && non_zero(span)
        && hex(flags, 2);
    ok.then(|| trace.to_owned())
}

/// A batch ready to dispatch: the encoded `ReportRequest` and how many records it holds.
#[derive(Debug, Default)]
pub struct Batch {
    pub message: Vec<u8>,
    pub records: usize,
}

/// A dispatched call: its records, and how long it has been waiting for its answer.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    records: usize,
    age_ms: u64,
}

/// The per-VM buffer and its accounting.
///
/// Metric hostcalls can fail: the reporter's own state (buffer, calls in flight, their slots) changes first and
/// whatever the host says, so a failed hostcall costs at most a metric update, never a slot or a record; what a
/// failed update did not publish stays pending and goes with the next one. The first error is returned once the
/// whole operation is done.
pub struct Reporter {
    cfg: ReportConfig,
    /// The encoded `reporter` field that starts every batch.
    header: Vec<u8>,
    /// The batch being filled: `header`, then the records encoded so far.
    filling: Batch,
    /// Batches full by count or by bytes, oldest first.
    full: VecDeque<Batch>,
    in_flight: HashMap<u32, InFlight>,
    since_flush_ms: u64,
    /// Records produced and not yet sent nor dropped: buffered, in batches handed out, in calls not answered.
    held: usize,
    /// Records still in the buffer or in calls that are already counted as dropped (another root claimed this one's
    /// share while it was stalled, see [`registry`]): they settle without being counted again.
    absolved: usize,
    /// This root's entry in the shared registry (wasm build); `None`: the metrics are published as before.
    registry: Option<registry::Membership>,
    /// Records settled (sent, dropped) since the last registry write.
    since_sync: (u64, u64),
    /// What the metrics do not show yet.
    pending: Pending,
    ids: Ids,
}

/// Counts not published yet, and the buffered gauge's value as last published (gauges move by deltas: every VM
/// adds its own share to the one series).
#[derive(Default)]
struct Pending {
    produced: u64,
    sent: u64,
    dropped: u64,
    truncated: u64,
    held_published: usize,
    /// Claimed records of other roots, still to be taken out of the gauge.
    orphaned: u64,
}

enum Outcome {
    Sent,
    Dropped,
}

struct Ids {
    produced: u32,
    sent: u32,
    dropped: u32,
    buffered: u32,
    truncated: u32,
}

/// Keeps the first error of a sequence of hostcalls that must all be tried.
fn first<E>(acc: &mut Result<(), E>, r: Result<(), E>) {
    if acc.is_ok() {
        *acc = r;
    }
}

/// Publishes a pending count: zeroed once the host took it, kept for the next try otherwise.
fn publish_count<H: MetricHost>(host: &mut H, id: u32, pending: &mut u64, acc: &mut Result<(), H::Error>) {
    if *pending == 0 {
        return;
    }
    match host.increment(id, *pending) {
        Ok(()) => *pending = 0,
        Err(e) => first(acc, Err(e)),
    }
}

impl Reporter {
    pub fn new<H: MetricHost>(cfg: ReportConfig, reporter: String, host: &mut H) -> Result<Self, H::Error> {
        let outcome = |o: &str| crate::metrics::stat_name(PRODUCED, &[("outcome", o)]);
        let ids = Ids {
            produced: host.define(Kind::Counter, &outcome("produced"))?,
            sent: host.define(Kind::Counter, &outcome("sent"))?,
            dropped: host.define(Kind::Counter, &outcome("dropped"))?,
            buffered: host.define(Kind::Gauge, BUFFERED)?,
            truncated: host.define(Kind::Counter, TRUNCATED_FIELDS)?,
        };
        let mut header = Vec::new();
        if !reporter.is_empty() {
            encode_key(1, WireType::LengthDelimited, &mut header);
            encode_varint(reporter.len() as u64, &mut header);
            header.extend_from_slice(reporter.as_bytes());
        }
        Ok(Self {
            cfg,
            header,
            filling: Batch::default(),
            full: VecDeque::new(),
            in_flight: HashMap::new(),
            since_flush_ms: 0,
            held: 0,
            absolved: 0,
            registry: None,
            since_sync: (0, 0),
            pending: Pending::default(),
            ids,
        })
    }

    pub fn config(&self) -> &ReportConfig {
        &self.cfg
    }

    /// Records held: in the buffer, in batches handed out and in unanswered calls.
    pub fn buffered(&self) -> usize {
        self.held
    }

    /// Calls dispatched and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Nothing buffered, nothing in flight: a draining reporter is done.
    pub fn is_idle(&self) -> bool {
        self.filling.records == 0 && self.full.is_empty() && self.in_flight.is_empty()
    }

    /// Takes one record: encodes it into the batch being filled, or drops it (counted) when the buffer is full. No
    /// hostcall: the counts are published by the next [`Reporter::publish`].
    pub fn push(&mut self, record: Record<'_>) {
        self.pending.produced += 1;
        self.pending.truncated += u64::from(record.truncated);
        if self.held + self.absolved >= self.cfg.max_buffer {
            self.pending.dropped += 1;
            return;
        }
        let len = record.encoded_len();
        let framed = key_len(2) + encoded_len_varint(len as u64) + len;
        // At least one record per batch, which always fits: the configuration keeps the budget above
        // [`MAX_RECORD_BYTES`].
        if self.filling.records > 0 && self.filling.message.len() + framed > self.cfg.max_batch_bytes {
            self.close();
        }
        if self.filling.records == 0 {
            // Room for up to 64 records at once (the first record's size as the estimate, within the budget), then
            // the vector doubles: a few allocations per batch, none per call, and a quiet VM that flushes a handful
            // of records per interval does not reserve a full batch's bytes each time.
            let room = framed
                .saturating_mul(self.cfg.max_batch.min(64))
                .min(self.cfg.max_batch_bytes);
            self.filling.message.reserve(self.header.len() + room);
            self.filling.message.extend_from_slice(&self.header);
        }
        let message = &mut self.filling.message;
        encode_key(2, WireType::LengthDelimited, message);
        encode_varint(len as u64, message);
        record.encode(message);
        self.filling.records += 1;
        self.held += 1;
        if self.filling.records >= self.cfg.max_batch || self.filling.message.len() >= self.cfg.max_batch_bytes {
            self.close();
        }
    }

    /// The batch being filled is full: it waits in the queue, and the next record starts a new one.
    fn close(&mut self) {
        let mut batch = std::mem::take(&mut self.filling);
        // The estimate can overshoot (a large first record, small ones after): give back what a waiting batch
        // does not use, so the queue holds about its bytes and no more.
        if batch.message.capacity() > 2 * batch.message.len() {
            batch.message.shrink_to_fit();
        }
        self.full.push_back(batch);
    }

    /// Brings the metrics up to date: one update per series that moved, all in this callback, so that
    /// `produced == sent + dropped + buffered` holds in every scrape. The tick, the drain and the answers call it
    /// (with a registry, only [`Reporter::commit`] does).
    pub fn publish<H: MetricHost>(&mut self, host: &mut H) -> Result<(), H::Error> {
        let mut result = Ok(());
        let p = &mut self.pending;
        publish_count(host, self.ids.produced, &mut p.produced, &mut result);
        publish_count(host, self.ids.truncated, &mut p.truncated, &mut result);
        publish_count(host, self.ids.sent, &mut p.sent, &mut result);
        publish_count(host, self.ids.dropped, &mut p.dropped, &mut result);
        let delta = self.held as i64 - p.held_published as i64 - i64::try_from(p.orphaned).unwrap_or(i64::MAX);
        if delta != 0 {
            match host.add(self.ids.buffered, delta) {
                Ok(()) => {
                    p.held_published = self.held;
                    p.orphaned = 0;
                }
                Err(e) => first(&mut result, Err(e)),
            }
        }
        result
    }

    /// [`Reporter::publish`], unless the metrics move only with the registry (then [`Reporter::commit`] does it).
    fn publish_ungated<H: MetricHost>(&mut self, host: &mut H) -> Result<(), H::Error> {
        match &self.registry {
            Some(m) if !m.unsupported => Ok(()),
            _ => self.publish(host),
        }
    }

    /// Keeps this reporter's share of the buffered gauge in the shared registry under `owner` (unique to this
    /// root), so that the records are not counted as buffered for ever if its VM is destroyed (see [`registry`]).
    /// From now on the metrics are published only by [`Reporter::commit`], after a successful registry write: the
    /// entry always holds what this reporter added to the gauge.
    pub fn share_registry(&mut self, owner: u64) {
        // An owner alive beats every tick (at most `MAX_TICK_MS`); its calls end by their deadline. Past that, and
        // ten ticks more, it is gone (or stalled, which a claim survives: see `registry`).
        let deadline = self.cfg.timeout_ms.saturating_add(DEADLINE_GRACE_MS);
        let bound = deadline.saturating_add(10 * self.cfg.tick_ms());
        self.registry = Some(registry::Membership::new(owner, bound));
    }

    /// Writes this reporter's share to the registry (claiming stale roots' shares, and reconciling its own if it
    /// was claimed), then publishes the metrics; or removes its entry when `leaving` (the root is done: nothing
    /// held any more). Without a registry it only publishes. When the write fails, nothing is published: the
    /// metrics wait for the next commit, so the gauge never holds a share the registry does not.
    pub fn commit<H: MetricHost, S: registry::SharedData>(
        &mut self,
        host: &mut H,
        shared: &mut S,
        leaving: bool,
    ) -> Result<registry::Synced, String> {
        let Some(membership) = self.registry.as_mut().filter(|m| !m.unsupported) else {
            return self
                .publish(host)
                .map(|()| registry::Synced::default())
                .map_err(|e| e.to_string());
        };
        let held = self.held as u64;
        let since = self.since_sync.0 + self.since_sync.1;
        let written = membership.write(shared, |own| {
            // What stays held once a claimed share is reconciled: the records of the share settled since the last
            // write leave the unpublished counts, the others leave `held`.
            let claimed = own.unwrap_or(0);
            (!leaving).then(|| held.saturating_sub(claimed - claimed.min(since)))
        });
        let synced = match written {
            Ok(synced) => synced,
            Err(registry::SyncError::Host(e)) if membership.written.is_none() => {
                // No shared data on this host: report as before.
                membership.unsupported = true;
                let e = format!("no orphan accounting: {}", registry::SyncError::Host(e));
                let _ = self.publish(host);
                return Err(e);
            }
            Err(e) => return Err(e.to_string()),
        };
        if leaving {
            self.registry = None;
        }
        if let Some(claimed) = synced.own_share_claimed {
            let settled = claimed.min(since);
            // The records settled since the last write were all in the claimed share (a record is dispatched only
            // after a write that counted it), so none of them is counted: the claimer counted them as dropped.
            let from_sent = settled.min(self.since_sync.0);
            self.pending.sent = self.pending.sent.saturating_sub(from_sent);
            self.pending.dropped = self.pending.dropped.saturating_sub(settled - from_sent);
            let still_held = usize::try_from(claimed - settled).unwrap_or(usize::MAX);
            self.held = self.held.saturating_sub(still_held);
            self.absolved += still_held;
            let claimed = usize::try_from(claimed).unwrap_or(usize::MAX);
            self.pending.held_published = self.pending.held_published.saturating_sub(claimed);
        }
        self.pending.dropped += synced.orphans_claimed;
        self.pending.orphaned += synced.orphans_claimed;
        self.since_sync = (0, 0);
        self.publish(host).map(|()| synced).map_err(|e| e.to_string())
    }

    /// Called by the root's timer every `elapsed_ms`: calls past their deadline are given up (their records
    /// dropped, their slots freed), then the batches to dispatch now are returned.
    pub fn tick<H: MetricHost>(&mut self, host: &mut H, elapsed_ms: u64) -> (Vec<Batch>, Result<(), H::Error>) {
        self.expire(elapsed_ms);
        if let Some(m) = self.registry.as_mut() {
            m.elapsed_ms = m.elapsed_ms.saturating_add(elapsed_ms);
        }
        let result = self.publish_ungated(host);
        self.since_flush_ms = self.since_flush_ms.saturating_add(elapsed_ms);
        let due = self.since_flush_ms >= self.cfg.flush_interval_ms;
        let mut batches = Vec::new();
        while self.in_flight.len() + batches.len() < self.cfg.max_in_flight {
            if let Some(batch) = self.full.pop_front() {
                batches.push(batch);
            } else if due && self.filling.records > 0 {
                batches.push(std::mem::take(&mut self.filling));
            } else {
                break;
            }
        }
        if due {
            self.since_flush_ms = 0;
        }
        (batches, result)
    }

    /// The plugin is going away: every buffered record, in batches, whatever the interval and the calls in flight;
    /// and the metrics brought up to date.
    pub fn drain<H: MetricHost>(&mut self, host: &mut H) -> (Vec<Batch>, Result<(), H::Error>) {
        let mut batches: Vec<Batch> = self.full.drain(..).collect();
        if self.filling.records > 0 {
            batches.push(std::mem::take(&mut self.filling));
        }
        (batches, self.publish_ungated(host))
    }

    /// Ages the calls in flight; those past the timeout and [`DEADLINE_GRACE_MS`] are dropped.
    fn expire(&mut self, elapsed_ms: u64) {
        let deadline = self.cfg.timeout_ms.saturating_add(DEADLINE_GRACE_MS);
        let mut expired = 0;
        self.in_flight.retain(|_, call| {
            call.age_ms = call.age_ms.saturating_add(elapsed_ms);
            let keep = call.age_ms <= deadline;
            if !keep {
                expired += call.records;
            }
            keep
        });
        self.settle(Outcome::Dropped, expired);
    }

    /// A batch was dispatched as call `token`; its records stay buffered until the answer or the deadline.
    pub fn dispatched(&mut self, token: u32, records: usize) {
        let call = self
            .in_flight
            .entry(token)
            .or_insert(InFlight { records: 0, age_ms: 0 });
        call.records += records;
    }

    /// A batch could not be dispatched: its records are dropped.
    pub fn dispatch_failed<H: MetricHost>(&mut self, host: &mut H, records: usize) -> Result<(), H::Error> {
        if records == 0 {
            return Ok(());
        }
        self.settle(Outcome::Dropped, records);
        self.publish_ungated(host)
    }

    /// The answer to call `token`: gRPC status 0 means the agent has the records, anything else drops them.
    /// Returns how many records the call carried (0 for a token this reporter does not know, or no longer: an
    /// answer after the deadline was already counted as dropped).
    pub fn completed<H: MetricHost>(
        &mut self,
        host: &mut H,
        token: u32,
        grpc_status: u32,
    ) -> (usize, Result<(), H::Error>) {
        let Some(call) = self.in_flight.remove(&token) else {
            return (0, Ok(()));
        };
        let outcome = if grpc_status == 0 {
            Outcome::Sent
        } else {
            Outcome::Dropped
        };
        self.settle(outcome, call.records);
        (call.records, self.publish_ungated(host))
    }

    /// Records of a batch another reporter handed over (the native build's reload): held here from now on, so
    /// that this reporter's answers settle them. The giver calls [`Reporter::handed_over`] in the same callback.
    pub fn adopt(&mut self, records: usize) {
        self.held += records;
    }

    /// Records this reporter handed to another one: no longer held here, and neither sent nor dropped.
    pub fn handed_over(&mut self, records: usize) {
        self.held = self.held.saturating_sub(records);
    }

    /// Counts `records` that left the buffer under `outcome` (published by the next [`Reporter::publish`]).
    fn settle(&mut self, outcome: Outcome, records: usize) {
        // Records another root already counted as dropped settle silently.
        let absolved = self.absolved.min(records);
        self.absolved -= absolved;
        let records = records - absolved;
        let n = records as u64;
        match outcome {
            Outcome::Sent => {
                self.pending.sent += n;
                self.since_sync.0 += n;
            }
            Outcome::Dropped => {
                self.pending.dropped += n;
                self.since_sync.1 += n;
            }
        }
        self.held = self.held.saturating_sub(records);
    }
}

#[cfg(test)]
mod tests;
