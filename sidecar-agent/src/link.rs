//! Joining call records to connections: which process made (outbound) or served (inbound) each call.
//!
//! The filter reports Envoy's view of a call; the connection table holds the kernel's view. The join is on the
//! 4-tuple of the *application's* socket, seen from the application's end:
//!
//! - **Outbound**: the application connected to Envoy. Its socket's local end is Envoy's downstream peer
//!   (`client`) and its remote end is Envoy's listener address (`server`).
//! - **Inbound**: Envoy connected to the application. The accepted socket's local end is the upstream host
//!   (`upstream_peer`) and its remote end is Envoy's own end of that connection (`upstream_local`).
//!
//! The connection must have been open during the call (by the record's start time and duration): a 4-tuple can
//! have had several connections within the table's grace period.
//!
//! A record whose connection is not in the table yet (its events may still be on their way from the kernel) waits
//! in a bounded queue for at most the link wait, then is reported unlinked with the reason. Pure: the table is
//! behind [`Lookup`], time is passed in.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use proto::v1::{self as pb, CallRecord, Direction, LinkState, LinkedCall};
use tokio::time::Instant;

use crate::{
    ebpf::events::Owner,
    procinfo::ProcessInfo,
    table::{ConnTable, Connection, During, Miss},
};

/// Finds a connection by its 4-tuple, seen from its local end.
pub trait Lookup {
    /// The newest connection whose local end is `local` and remote end is `remote`, in network namespace `netns`
    /// when given (the reporter's), and open at some time `during` the call when its time is known (Unix ns, from
    /// its start to its end).
    fn lookup(
        &self,
        netns: Option<u32>,
        local: SocketAddr,
        remote: SocketAddr,
        during: Option<Span>,
    ) -> Result<Connection, Miss>;
}

/// A call's time, Unix ns: from its start to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// `CallRecord.start_time_unix_nano`.
    pub start: u64,
    /// The start plus `CallRecord.duration_ns`.
    pub end: u64,
}

// === impl Span ===

impl Span {
    /// The record's time; `None` when it has no start time (only a client other than the filter sends none).
    pub fn of(record: &CallRecord) -> Option<Self> {
        (record.start_time_unix_nano != 0).then(|| Self {
            start: record.start_time_unix_nano,
            end: record.start_time_unix_nano.saturating_add(record.duration_ns),
        })
    }

    /// Longer by `by` at each end.
    pub fn widened(self, by: Duration) -> Self {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        Self {
            start: self.start.saturating_sub(by),
            end: self.end.saturating_add(by),
        }
    }
}

/// How far apart the filter's clock (Envoy's wall clock, at the call's end less its duration) and the kernel's
/// event times (monotonic, converted to Unix time with the offset of the lookup) may be, each way. Both are read on
/// one machine: they part only by what NTP slews the wall clock between the two readings (at most 0.5 ms per
/// second) or steps it, and by the filter's own reading. A record waits for a connection open during its call
/// exactly, and takes one open within this of it only when its wait runs out: the connection that carried it
/// may still be on its way while the 4-tuple's previous one, closed a moment before the call, is held.
pub const CLOCK_SLACK: Duration = Duration::from_millis(100);

/// The real table, in one network namespace (`Some(inode)`) or any (`None`).
#[derive(Debug)]
pub struct TableLookup<'a> {
    /// The table.
    pub table: &'a ConnTable,
    /// The namespace to look in; `None` for any.
    pub netns: Option<u32>,
    /// Unix time minus `CLOCK_MONOTONIC` now ([`Clocks::now`]): read for each lookup pass rather than once, as the
    /// wall clock parts from the monotonic one over the agent's weeks.
    pub mono_to_unix: i128,
}

impl<'a> TableLookup<'a> {
    /// A lookup in `table`, in namespace `netns` or any, with the clocks' offset as it is now.
    pub fn now(table: &'a ConnTable, netns: Option<u32>) -> Self {
        Self {
            table,
            netns,
            mono_to_unix: Clocks::now().mono_to_unix,
        }
    }
}

impl Lookup for TableLookup<'_> {
    /// In the agent's namespace if it watches one; else in `netns` (the reporter's: a loopback 4-tuple such as
    /// `127.0.0.1:41234 -> 127.0.0.1:15001` repeats across the pods of a node); else the newest in any.
    fn lookup(
        &self,
        netns: Option<u32>,
        local: SocketAddr,
        remote: SocketAddr,
        during: Option<Span>,
    ) -> Result<Connection, Miss> {
        let mono = |unix: u64| u64::try_from(i128::from(unix) - self.mono_to_unix).unwrap_or(0);
        let during = match during {
            Some(span) => During {
                start: mono(span.start),
                end: mono(span.end),
            },
            // A record without its time: the 4-tuple's newest connection.
            None => During::ALWAYS,
        };
        match self.netns.or(netns) {
            Some(ns) => self.table.find_during(ns, local, remote, during),
            None => self.table.find_any_during(local, remote, during),
        }
        .cloned()
    }
}

/// How a record ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The connection and its owner were found, by this rule.
    Linked(Connection, Rule),
    /// The record lacks an address needed for the join.
    NoAddress(String),
    /// No connection (or no owner) turned up within the link wait.
    NoConnection(String),
    /// The queue of waiting records was full: reported at once.
    QueueFull(String),
}

// === impl Outcome ===

impl Outcome {
    /// The `outcome` label of `grayscope_agent_call_records_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Linked(..) => "linked",
            Self::NoAddress(_) => "unlinked_no_address",
            Self::NoConnection(_) => "unlinked_no_connection",
            Self::QueueFull(_) => "unlinked_queue_full",
        }
    }
}

/// A record with its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The call as the filter reported it.
    pub record: CallRecord,
    /// When the agent received it, ns since the Unix epoch.
    pub received_unix_nano: u64,
    /// How it was joined.
    pub outcome: Outcome,
}

/// Which of the call's connections a join looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The caller's connection to Envoy: local = the record's `client`, remote = `server`; names the caller.
    Outbound,
    /// Envoy's connection to the server: local = `upstream_peer`, remote = `upstream_local`; names the server.
    Inbound,
}

// === impl Rule ===

impl Rule {
    /// `LinkedCall.link_rule`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }

    /// The rules to try for a record, in order. Without a direction (a listener with no `traffic_direction` and
    /// no `direction` in the plugin configuration), the caller's connection first: when a local process opened
    /// the downstream connection it made the call; otherwise the call came from outside and the local process
    /// is the one that accepted Envoy's upstream connection.
    pub fn for_record(record: &CallRecord) -> &'static [Rule] {
        match Direction::try_from(record.direction) {
            Ok(Direction::Outbound) => &[Self::Outbound],
            Ok(Direction::Inbound) => &[Self::Inbound],
            _ => &[Self::Outbound, Self::Inbound],
        }
    }

    /// The socket 4-tuple (local, remote) this rule looks up, seen from the application's end.
    pub fn key(self, record: &CallRecord) -> Result<(SocketAddr, SocketAddr), String> {
        let (local, remote, names) = match self {
            Self::Outbound => (&record.client, &record.server, ("client", "server")),
            Self::Inbound => (
                &record.upstream_peer,
                &record.upstream_local,
                ("upstream_peer", "upstream_local"),
            ),
        };
        let local = address(local.as_ref()).ok_or_else(|| format!("no usable {} address", names.0))?;
        let remote = address(remote.as_ref()).ok_or_else(|| format!("no usable {} address", names.1))?;
        Ok((local, remote))
    }
}

/// The socket 4-tuple (local, remote) of the application's end of the call's connection, by the record's
/// direction (the first rule's, for a record without one).
pub fn key(record: &CallRecord) -> Result<(SocketAddr, SocketAddr), String> {
    Rule::for_record(record)[0].key(record)
}

/// An IP address and a non-zero port; a v4-mapped IPv6 address is taken as IPv4, as the table stores it.
fn address(a: Option<&pb::SocketAddress>) -> Option<SocketAddr> {
    let a = a?;
    let port = u16::try_from(a.port).ok().filter(|&p| p != 0)?;
    let ip: IpAddr = a.address.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    Some(SocketAddr::new(ip, port))
}

/// One attempt: `Ok` when the record is done, `Err(reason)` when it should wait (the reason is reported if the
/// wait runs out). Each rule of the record is tried in order; the first connection found with its owner wins. A
/// connection must have been open during the call, within [`CLOCK_SLACK`] of it on the `last` attempt.
fn attempt(lookup: &impl Lookup, record: &CallRecord, netns: Option<u32>, last: bool) -> Result<Outcome, String> {
    let (mut no_address, mut waiting) = (Vec::new(), Vec::new());
    let during = Span::of(record).map(|s| if last { s.widened(CLOCK_SLACK) } else { s });
    for &rule in Rule::for_record(record) {
        let (local, remote) = match rule.key(record) {
            Ok(k) => k,
            Err(reason) => {
                no_address.push(reason);
                continue;
            }
        };
        match lookup.lookup(netns, local, remote, during) {
            Ok(conn) if conn.owner.is_some() => return Ok(Outcome::Linked(conn, rule)),
            Ok(_) => waiting.push(format!(
                "connection {local} -> {remote} is in the table but no process has accepted it"
            )),
            Err(Miss::Absent) => waiting.push(format!("no connection {local} -> {remote} in the table")),
            Err(Miss::NotDuring) => waiting.push(format!(
                "no connection {local} -> {remote} in the table was open during the call (the 4-tuple's are of \
                 other times)"
            )),
        }
    }
    if waiting.is_empty() {
        return Ok(Outcome::NoAddress(no_address.join("; ")));
    }
    Err(waiting.join("; "))
}

/// A record waiting for its connection.
#[derive(Debug)]
struct Waiting {
    record: CallRecord,
    /// The record's encoded size, counted in [`Pending`]'s bytes while it waits.
    bytes: usize,
    netns: Option<u32>,
    received_unix_nano: u64,
    deadline: Instant,
    reason: String,
}

/// Records waiting for their connection, bounded in records and in bytes (a record's text fields can take 4 KiB
/// each); all wait the same time, so the queue is in deadline order.
#[derive(Debug)]
pub struct Pending {
    max: usize,
    /// Once the waiting records take this many encoded bytes, no more wait: the last one admitted may cross it.
    max_bytes: usize,
    /// The encoded bytes of the waiting records.
    bytes: usize,
    wait: Duration,
    queue: VecDeque<Waiting>,
}

// === impl Pending ===

impl Pending {
    /// At most `max` records, each waiting at most `wait`; no bound in bytes.
    pub fn new(max: usize, wait: Duration) -> Self {
        Self {
            max: max.max(1),
            max_bytes: usize::MAX,
            bytes: 0,
            wait,
            queue: VecDeque::new(),
        }
    }

    /// No more records wait once those waiting take `max_bytes` encoded bytes.
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        Self { max_bytes, ..self }
    }

    /// Why no more records can wait, naming the setting; `None` while they can.
    fn full(&self) -> Option<String> {
        if self.queue.len() >= self.max {
            Some(format!(
                "{} records already wait for theirs (link_pending_max)",
                self.queue.len()
            ))
        } else if self.bytes >= self.max_bytes {
            Some(format!(
                "{} records of {} bytes already wait for theirs (link_pending_bytes)",
                self.queue.len(),
                self.bytes
            ))
        } else {
            None
        }
    }

    /// Links `record` now, or queues it; returns it when it is done (linked, no address, no wait, queue full).
    pub fn offer(
        &mut self,
        lookup: &impl Lookup,
        record: CallRecord,
        received_unix_nano: u64,
        now: Instant,
    ) -> Option<Resolved> {
        self.offer_in(lookup, record, None, received_unix_nano, now)
    }

    /// [`Pending::offer`], looking the record up in network namespace `netns` (its reporter's) when given.
    pub fn offer_in(
        &mut self,
        lookup: &impl Lookup,
        mut record: CallRecord,
        netns: Option<u32>,
        received_unix_nano: u64,
        now: Instant,
    ) -> Option<Resolved> {
        let outcome = self.offer_in_place(lookup, &mut record, netns, received_unix_nano, now)?;
        Some(Resolved {
            record,
            received_unix_nano,
            outcome,
        })
    }

    /// [`Pending::offer_in`] for a record of a batch: it stays where it is unless it waits (then the queue takes it
    /// and leaves an empty record). Returns its outcome when it is done. A record is about 400 bytes: moving every
    /// record of a batch into a new vector of results was a tenth of the agent's time at 10,000 calls per second.
    pub fn offer_in_place(
        &mut self,
        lookup: &impl Lookup,
        record: &mut CallRecord,
        netns: Option<u32>,
        received_unix_nano: u64,
        now: Instant,
    ) -> Option<Outcome> {
        let full = self.full();
        // The record's only attempt when it cannot wait.
        let last = self.wait.is_zero() || full.is_some();
        match (attempt(lookup, record, netns, last), full) {
            (Ok(outcome), _) => Some(outcome),
            (Err(reason), _) if self.wait.is_zero() => Some(Outcome::NoConnection(reason)),
            (Err(reason), Some(full)) => Some(Outcome::QueueFull(format!("{reason}, and {full}"))),
            (Err(reason), None) => {
                // Only a record that waits is measured: one linked at once, the usual case, costs nothing here.
                let bytes = prost::Message::encoded_len(&*record);
                self.bytes = self.bytes.saturating_add(bytes);
                self.queue.push_back(Waiting {
                    record: std::mem::take(record),
                    bytes,
                    netns,
                    received_unix_nano,
                    deadline: now + self.wait,
                    reason,
                });
                None
            }
        }
    }

    /// Tries every waiting record again; returns those linked now and those whose wait ran out by `now`.
    pub fn retry(&mut self, lookup: &impl Lookup, now: Instant) -> Vec<Resolved> {
        let mut out = Vec::new();
        let wait = self.wait;
        let mut freed = 0;
        self.queue.retain_mut(|w| {
            let outcome = match attempt(lookup, &w.record, w.netns, now >= w.deadline) {
                Ok(outcome) => outcome,
                Err(reason) if now >= w.deadline => Outcome::NoConnection(format!("{reason} after waiting {wait:?}")),
                Err(reason) => {
                    w.reason = reason;
                    return true;
                }
            };
            freed += w.bytes;
            out.push(Resolved {
                record: std::mem::take(&mut w.record),
                received_unix_nano: w.received_unix_nano,
                outcome,
            });
            false
        });
        self.bytes = self.bytes.saturating_sub(freed);
        out
    }

    /// The agent is stopping and no timer will retry any more: tries every waiting record once more and returns
    /// them all, linked or not. From now on a record that does not link at once is reported unlinked at once (as
    /// with a link wait of 0), so none is left waiting uncounted.
    pub fn close(&mut self, lookup: &impl Lookup) -> Vec<Resolved> {
        self.wait = Duration::ZERO;
        self.bytes = 0;
        self.queue
            .drain(..)
            .map(|w| Resolved {
                outcome: attempt(lookup, &w.record, w.netns, true)
                    .unwrap_or_else(|reason| Outcome::NoConnection(format!("{reason} when the agent stopped"))),
                record: w.record,
                received_unix_nano: w.received_unix_nano,
            })
            .collect()
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The encoded bytes of the records waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Offsets between the kernel's clocks and the Unix epoch, read together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clocks {
    /// Unix time minus `CLOCK_BOOTTIME` (process start times), ns.
    pub boot_to_unix: i128,
    /// Unix time minus `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`, event times), ns.
    pub mono_to_unix: i128,
}

// === impl Clocks ===

impl Clocks {
    /// The offsets now.
    pub fn now() -> Self {
        use nix::time::{clock_gettime, ClockId};
        let ns = |id| {
            clock_gettime(id)
                .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
                .unwrap_or(0)
        };
        let real = ns(ClockId::CLOCK_REALTIME);
        Self {
            boot_to_unix: real - ns(ClockId::CLOCK_BOOTTIME),
            mono_to_unix: real - ns(ClockId::CLOCK_MONOTONIC),
        }
    }

    /// `CLOCK_MONOTONIC` now, ns: the clock of the kernel's event times (`bpf_ktime_get_ns`).
    pub fn monotonic_ns() -> u64 {
        use nix::time::{clock_gettime, ClockId};
        clock_gettime(ClockId::CLOCK_MONOTONIC)
            .ok()
            .and_then(|t| u64::try_from(i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())).ok())
            .unwrap_or(0)
    }

    fn unix(offset: i128, ns: u64) -> u64 {
        u64::try_from(offset + i128::from(ns)).unwrap_or(0)
    }
}

/// The message for a resolved record. The process's command line is included only with `command_line` (it may
/// carry secrets: tokens, passwords in arguments); the executable's path and name always are.
pub fn linked_call(r: Resolved, clocks: Clocks, command_line: bool) -> LinkedCall {
    let process = match &r.outcome {
        Outcome::Linked(conn, _) => process(conn, clocks, command_line),
        _ => None,
    };
    linked_call_with(r, process, clocks)
}

/// [`linked_call`] with the linked connection's [`process`] already built (it is the same for every call of a
/// process, so a batch builds it once per process).
pub fn linked_call_with(r: Resolved, process: Option<pb::Process>, clocks: Clocks) -> LinkedCall {
    let mut call = LinkedCall {
        call: Some(r.record),
        received_unix_nano: r.received_unix_nano,
        ..LinkedCall::default()
    };
    match r.outcome {
        Outcome::Linked(conn, rule) => {
            call.link = LinkState::Linked as i32;
            call.link_rule = rule.name().to_owned();
            call.process = process;
            let sa = |a: SocketAddr| pb::SocketAddress {
                address: a.ip().to_string(),
                port: u32::from(a.port()),
            };
            call.connection = Some(pb::Connection {
                local: Some(sa(conn.local.into())),
                remote: Some(sa(conn.remote.into())),
                netns: u64::from(conn.netns),
                established_unix_nano: Clocks::unix(clocks.mono_to_unix, conn.first_ts_ns),
            });
        }
        Outcome::NoAddress(reason) => {
            call.link = LinkState::NoAddress as i32;
            call.unlinked_reason = reason;
        }
        Outcome::NoConnection(reason) | Outcome::QueueFull(reason) => {
            call.link = LinkState::NoConnection as i32;
            call.unlinked_reason = reason;
        }
    }
    call
}

/// The process that owns `conn`, as `LinkedCall.process` and the method table show it; `None` while no process
/// owns it.
pub fn process(conn: &Connection, clocks: Clocks, command_line: bool) -> Option<pb::Process> {
    let owner = conn.owner.as_ref()?;
    let info = conn.process.as_deref();
    Some(pb::Process {
        pid: owner.pid,
        executable_path: info
            .and_then(|p| p.exe.as_ref())
            .map(|e| e.display().to_string())
            .unwrap_or_default(),
        command_line: info
            .filter(|_| command_line)
            .map(|p| p.cmdline.join(" "))
            .unwrap_or_default(),
        // OTel `process.executable.name`: the base name of /proc/<pid>/exe. The kernel's comm is the name of the
        // *thread* that connected (grpcio's `event_engine`), so it is only the fallback.
        command: info
            .and_then(|p| p.exe.as_ref())
            .and_then(|e| e.file_name())
            .map_or_else(|| owner.comm.to_string(), |n| n.to_string_lossy().into_owned()),
        container_id: info.and_then(|p| p.container_id.clone()).unwrap_or_default(),
        start_time_unix_nano: Clocks::unix(clocks.boot_to_unix, owner.start_ns),
    })
}

/// The [`process`] of each connection a batch linked to, built once per process: what it shows depends only on
/// the owner and on what `/proc` said about it, and a batch's calls come from a handful of processes.
#[derive(Debug)]
pub struct Processes {
    clocks: Clocks,
    command_line: bool,
    /// (owner, its `/proc` description) and the message; a few, searched in order.
    built: Vec<(Owner, Option<Arc<ProcessInfo>>, Option<pb::Process>)>,
}

// === impl Processes ===

impl Processes {
    /// Most distinct processes remembered per batch; calls of further ones build their own.
    const MAX: usize = 8;

    /// None built yet.
    pub fn new(clocks: Clocks, command_line: bool) -> Self {
        Self {
            clocks,
            command_line,
            built: Vec::new(),
        }
    }

    /// [`process`] of `conn`.
    pub fn get(&mut self, conn: &Connection) -> Option<&pb::Process> {
        let owner = conn.owner.as_ref()?;
        let same = |o: &Owner, p: &Option<Arc<ProcessInfo>>| {
            o == owner
                && match (p, &conn.process) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        };
        let at = match self.built.iter().position(|(o, p, _)| same(o, p)) {
            Some(i) => i,
            None => {
                if self.built.len() >= Self::MAX {
                    self.built.pop();
                }
                self.built.push((
                    owner.clone(),
                    conn.process.clone(),
                    process(conn, self.clocks, self.command_line),
                ));
                self.built.len() - 1
            }
        };
        self.built[at].2.as_ref()
    }
}

#[cfg(test)]
mod tests;
