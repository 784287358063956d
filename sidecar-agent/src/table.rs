//! The connection table: live connections plus closed ones for a grace period, so call records that arrive
//! late still find the connection and its process. Bounded: it never holds more than `max_entries`.
//!
//! Live connections are found by kernel socket address (unique while the socket lives), every connection by
//! `(netns, local, remote)` for joining call records by 4-tuple: the newest, or the newest open during a call (a
//! 4-tuple's earlier connections are chained behind its newest). When full, an insert evicts the oldest closed
//! connection, or when there is none the oldest live one. Time is passed in, so the logic is pure.
//!
//! A CLOSE event can be missed: the kernel's LRU map forgot the socket (more open connections than
//! `kernel_max_conns`), or the ring buffer overflowed. A live entry must then not outlive its socket, or the next
//! socket at the same kernel address would be merged into it (its calls unlinked, the old connection's late calls
//! named after the new process). So an ESTABLISHED or ACCEPTED event that cannot belong to the live entry (another
//! 4-tuple, or a second event of the same kind) ends that entry and starts a new connection, and
//! [`ConnTable::forget`] ends the live entries the kernel no longer holds (the agent checks them periodically).
//! Both count in [`Evictions`] and the ended connections stay findable for the grace period like closed ones.
//!
//! Memory per connection is what bounds the table on a busy node, so the entries are compact: each connection is
//! boxed once (the ordered map then moves 16-byte items instead of 136-byte ones in its half-full nodes), the
//! owner's command name is inline, addresses are 20-byte [`Endpoint`]s, and the 4-tuple index holds only ids,
//! hashing the entries they name. A test keeps a [`Connection`] within one allocator size class (see
//! `a_connection_fits_its_allocation_class`).

mod endpoint;

pub use endpoint::Endpoint;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use hashbrown::HashTable;

use tokio::time::Instant;

use crate::{
    ebpf::events::{ConnEvent, EventKind, Owner, Role},
    procinfo::ProcessInfo,
};

/// A tracked connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    /// Kernel address of the socket.
    pub skaddr: u64,
    /// Inode of its network namespace.
    pub netns: u32,
    /// Which end this socket is.
    pub role: Role,
    /// Local end.
    pub local: Endpoint,
    /// Remote end.
    pub remote: Endpoint,
    /// The owning process as the kernel named it; `None` for a server socket not yet accepted.
    pub owner: Option<Owner>,
    /// What `/proc` said about the owner (read once per process).
    pub process: Option<Arc<ProcessInfo>>,
    /// Set once the socket closed: how long it lived, and when the table learnt it.
    pub closed: Option<Closed>,
    /// Kernel monotonic clock (ns) of the first event of this connection: when it was established.
    pub first_ts_ns: u64,
}

// === impl Connection ===

impl Connection {
    /// Whether the connection was open at some time `during` a call: established (its first event) before the call
    /// ended, and closed (its first event plus the lifetime the kernel measured from its first state change, which
    /// comes no later) not before the call started.
    pub fn open_during(&self, during: During) -> bool {
        self.first_ts_ns <= during.end
            && self
                .closed
                .is_none_or(|c| self.first_ts_ns.saturating_add(c.lifetime_ns) >= during.start)
    }
}

/// When a call was made, on the kernel's clock of the events (`CLOCK_MONOTONIC`), ns, from its start to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct During {
    /// When the call started.
    pub start: u64,
    /// When it ended.
    pub end: u64,
}

// === impl During ===

impl During {
    /// All time: every connection was open at some time of it, so a lookup finds the 4-tuple's newest (for a call
    /// whose time is not known).
    pub const ALWAYS: Self = Self {
        start: 0,
        end: u64::MAX,
    };
}

/// Why [`ConnTable::find_during`] found no connection. Ordered: a namespace that holds the 4-tuple says more than one
/// that does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Miss {
    /// No connection has the 4-tuple.
    Absent,
    /// Connections have it, but none was open during the call.
    NotDuring,
}

/// How many connections of one 4-tuple, the newest first, [`ConnTable::find_during`] looks at: a process that opens
/// and resets one 4-tuple in a loop makes a chain as long as the grace period allows, and a call's lookup must not
/// walk it all, at every retry.
pub const MAX_TUPLE_CHAIN: usize = 16;

/// The end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Lifetime as measured in the kernel, ns (a `Duration` would take 8 bytes more per entry).
    pub lifetime_ns: u64,
    /// When the close was applied to the table; the grace period counts from here.
    pub at: Instant,
}

impl Closed {
    /// Lifetime as measured in the kernel.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.lifetime_ns)
    }
}

/// What [`ConnTable::apply`] and [`ConnTable::expire`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Closed connections whose grace period ended.
    pub expired: u64,
    /// Closed connections evicted early to make room.
    pub closed_for_room: u64,
    /// Live connections evicted to make room (the table is too small for the traffic).
    pub live_for_room: u64,
    /// Live connections ended because a new socket showed up at their kernel address (their CLOSE was lost).
    pub reused: u64,
    /// Live connections ended because the kernel no longer tracks their socket (their CLOSE was lost).
    pub forgotten: u64,
}

/// A live connection: its id and which kinds of event it has had (bits of [`kind_bit`]).
#[derive(Clone, Copy, Debug)]
struct Live {
    id: u64,
    seen: u8,
}

fn kind_bit(kind: EventKind) -> u8 {
    match kind {
        EventKind::Established => 1,
        EventKind::Accepted => 2,
        EventKind::Closed => 4,
    }
}

/// The table. Each connection gets an id that is never reused: the kernel recycles socket addresses as soon
/// as a socket is freed, so a closed connection must not be found (or replaced) through its old address.
#[derive(Debug)]
pub struct ConnTable {
    max_entries: usize,
    grace: Duration,
    /// Every connection by id; ids grow, so the first entry is the oldest.
    entries: BTreeMap<u64, Box<Connection>>,
    /// Live connections by socket address.
    live: HashMap<u64, Live>,
    /// The last closed connection of each socket address, with the kernel time of its close, so an event that
    /// was emitted before the close but read after it still lands on the right connection.
    last_closed: HashMap<u64, (u64, u64)>,
    /// Closed connections in closing order, by id (each entry holds its closing time); ids already gone are
    /// skipped.
    closed: VecDeque<u64>,
    /// The newest connection of each `(netns, local, remote)`: ids only, hashed and compared through `entries`.
    by_tuple: HashTable<u64>,
    /// The connections a 4-tuple had before its newest, held still (closed within the grace period): for each
    /// connection that took a 4-tuple's place from one still held, that one's id (`older`), and back (`newer`).
    /// A client port reused for the same destination gives one 4-tuple two connections, and a late call of the old
    /// one must find it ([`ConnTable::find_during`]). Only such connections have entries here.
    older: HashMap<u64, u64>,
    newer: HashMap<u64, u64>,
    hasher: RandomState,
    /// The network namespaces of the connections held, with how many each has: [`ConnTable::find_any_during`] scans them,
    /// so a namespace leaves with its last connection (pods come and go on a node).
    namespaces: HashMap<u32, usize>,
    next_id: u64,
}

// === impl ConnTable ===

impl ConnTable {
    /// An empty table holding at most `max_entries` (at least 1) connections.
    pub fn new(max_entries: usize, grace: Duration) -> Self {
        Self {
            max_entries: max_entries.max(1),
            grace,
            entries: BTreeMap::new(),
            live: HashMap::new(),
            last_closed: HashMap::new(),
            closed: VecDeque::new(),
            by_tuple: HashTable::new(),
            older: HashMap::new(),
            newer: HashMap::new(),
            hasher: RandomState::new(),
            namespaces: HashMap::new(),
            next_id: 0,
        }
    }

    /// Applies one event; `process` is the enrichment of its owner, if any.
    pub fn apply(&mut self, ev: &ConnEvent, process: Option<Arc<ProcessInfo>>, now: Instant) -> Evictions {
        let mut out = Evictions::default();
        let tuple = (ev.netns, Endpoint::from(ev.local), Endpoint::from(ev.remote));
        let same_tuple = |c: &Connection| (c.netns, c.local, c.remote) == tuple;
        let late = self
            .last_closed
            .get(&ev.skaddr)
            .filter(|&&(id, closed_ts)| ev.ts_ns <= closed_ts && self.entries.get(&id).is_some_and(|c| same_tuple(c)))
            .map(|&(id, _)| id);
        let mut existing = self.live.get(&ev.skaddr).copied();
        if let Some(live) = existing {
            // A connection has one ESTABLISHED and one ACCEPTED at most, all of its 4-tuple.
            let repeated = ev.kind != EventKind::Closed && live.seen & kind_bit(ev.kind) != 0;
            if repeated || !self.entries.get(&live.id).is_some_and(|c| same_tuple(c)) {
                let ts = self.entries.get(&live.id).map_or(ev.ts_ns, |c| c.first_ts_ns);
                self.end(ev.skaddr, live.id, ev.ts_ns.saturating_sub(1), ts, now);
                out.reused += 1;
                existing = None;
            }
        }
        let id = match existing.map(|l| l.id).or(late) {
            Some(id) => id,
            None => {
                if self.entries.len() >= self.max_entries {
                    self.make_room(&mut out);
                }
                let id = self.next_id;
                self.next_id += 1;
                let conn = Connection {
                    skaddr: ev.skaddr,
                    netns: ev.netns,
                    role: ev.role,
                    local: tuple.1,
                    remote: tuple.2,
                    owner: None,
                    process: None,
                    closed: None,
                    // A connection first seen at its CLOSE (its ESTABLISHED was lost) began its lifetime before:
                    // its calls were made then ([`Connection::open_during`]).
                    first_ts_ns: match (ev.kind, ev.duration) {
                        (EventKind::Closed, Some(d)) => {
                            ev.ts_ns.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                        }
                        _ => ev.ts_ns,
                    },
                };
                *self.namespaces.entry(ev.netns).or_default() += 1;
                self.entries.insert(id, Box::new(conn));
                self.index(id);
                self.live.insert(ev.skaddr, Live { id, seen: 0 });
                id
            }
        };
        if let Some(live) = self.live.get_mut(&ev.skaddr).filter(|l| l.id == id) {
            live.seen |= kind_bit(ev.kind);
        }
        let Some(conn) = self.entries.get_mut(&id) else {
            return out;
        };
        if ev.owner.is_some() {
            conn.owner.clone_from(&ev.owner);
            conn.process = process;
        }
        if let (EventKind::Closed, Some(duration), None) = (ev.kind, ev.duration, conn.closed) {
            let lifetime_ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
            conn.closed = Some(Closed { lifetime_ns, at: now });
            self.closed.push_back(id);
            if self.live.get(&ev.skaddr).is_some_and(|l| l.id == id) {
                self.live.remove(&ev.skaddr);
            }
            self.last_closed.insert(ev.skaddr, (id, ev.ts_ns));
        }
        out
    }

    /// Applies an ESTABLISHED event read from the kernel's map of open connections rather than from the ring
    /// buffer, which had no room for it: a connection the table holds already (the same socket and 4-tuple) is
    /// left as it is, and the event the ring buffer may still deliver for it is not taken for a second one. Returns
    /// the evictions and whether the connection was new to the table.
    pub fn recover(&mut self, ev: &ConnEvent, process: Option<Arc<ProcessInfo>>, now: Instant) -> (Evictions, bool) {
        let tuple = (ev.netns, Endpoint::from(ev.local), Endpoint::from(ev.remote));
        let held = self
            .get_live(ev.skaddr)
            .is_some_and(|c| (c.netns, c.local, c.remote) == tuple);
        if held {
            return (Evictions::default(), false);
        }
        let before = self.next_id;
        let out = self.apply(ev, process, now);
        let created = self.next_id != before;
        if let Some(live) = self.live.get_mut(&ev.skaddr).filter(|l| l.id >= before) {
            live.seen &= !kind_bit(EventKind::Established);
        }
        (out, created)
    }

    /// Ends live connection `id` at `skaddr` without its CLOSE event: events of the kernel's clock up to
    /// `closed_ts_ns` still land on it; its lifetime is counted from `first_ts_ns` to then.
    fn end(&mut self, skaddr: u64, id: u64, closed_ts_ns: u64, first_ts_ns: u64, now: Instant) {
        if self.live.get(&skaddr).is_some_and(|l| l.id == id) {
            self.live.remove(&skaddr);
        }
        if let Some(conn) = self.entries.get_mut(&id) {
            if conn.closed.is_none() {
                conn.closed = Some(Closed {
                    lifetime_ns: closed_ts_ns.saturating_sub(first_ts_ns),
                    at: now,
                });
                self.closed.push_back(id);
            }
        }
        self.last_closed.insert(skaddr, (id, closed_ts_ns));
    }

    /// The live connections as (socket address, id), for checking against the kernel's map.
    pub fn live_sockets(&self) -> Vec<(u64, u64)> {
        self.live.iter().map(|(&skaddr, l)| (skaddr, l.id)).collect()
    }

    /// Ends the live connections of `gone` — (socket address, id) pairs from [`ConnTable::live_sockets`] that the
    /// kernel no longer holds — unless a new connection took the address meanwhile. `checked_ts_ns` is the kernel
    /// clock when the check ran: events stamped before it belong to the old connections.
    pub fn forget(&mut self, gone: &[(u64, u64)], checked_ts_ns: u64, now: Instant) -> Evictions {
        let mut out = Evictions::default();
        for &(skaddr, id) in gone {
            if self.live.get(&skaddr).is_some_and(|l| l.id == id) {
                let first = self.entries.get(&id).map_or(checked_ts_ns, |c| c.first_ts_ns);
                self.end(skaddr, id, checked_ts_ns, first, now);
                out.forgotten += 1;
            }
        }
        out
    }

    /// Drops the closed connections whose grace period has ended by `now`.
    pub fn expire(&mut self, now: Instant) -> Evictions {
        let mut out = Evictions::default();
        while let Some(&id) = self.closed.front() {
            if let Some(at) = self.entries.get(&id).and_then(|c| c.closed).map(|c| c.at) {
                if now.saturating_duration_since(at) < self.grace {
                    break;
                }
                self.remove(id);
                out.expired += 1;
            }
            self.closed.pop_front();
        }
        out
    }

    fn make_room(&mut self, out: &mut Evictions) {
        while let Some(id) = self.closed.pop_front() {
            if self.entries.contains_key(&id) {
                self.remove(id);
                out.closed_for_room += 1;
                return;
            }
        }
        if let Some(&id) = self.entries.keys().next() {
            self.remove(id);
            out.live_for_room += 1;
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(conn) = self.entries.remove(&id) else { return };
        if self.live.get(&conn.skaddr).is_some_and(|l| l.id == id) {
            self.live.remove(&conn.skaddr);
        }
        if self.last_closed.get(&conn.skaddr).is_some_and(|&(i, _)| i == id) {
            self.last_closed.remove(&conn.skaddr);
        }
        // Out of its 4-tuple's chain: its neighbours are joined, and an older connection takes its place in the
        // index if it was the newest.
        let (older, newer) = (self.older.remove(&id), self.newer.remove(&id));
        match (older, newer) {
            (Some(o), Some(n)) => {
                self.older.insert(n, o);
                self.newer.insert(o, n);
            }
            (None, Some(n)) => {
                self.older.remove(&n);
            }
            (Some(o), None) => {
                self.newer.remove(&o);
            }
            (None, None) => {}
        }
        let hash = self.hasher.hash_one((conn.netns, conn.local, conn.remote));
        if let Ok(mut slot) = self.by_tuple.find_entry(hash, |&i| i == id) {
            match older {
                Some(o) => *slot.get_mut() = o,
                None => {
                    slot.remove();
                }
            }
        }
        if let Some(n) = self.namespaces.get_mut(&conn.netns) {
            *n -= 1;
            if *n == 0 {
                self.namespaces.remove(&conn.netns);
            }
        }
    }

    /// The live connection of socket `skaddr`.
    pub fn get_live(&self, skaddr: u64) -> Option<&Connection> {
        self.live
            .get(&skaddr)
            .and_then(|l| self.entries.get(&l.id))
            .map(|c| &**c)
    }

    /// Makes connection `id` (already in `entries`) the one [`ConnTable::find`] returns for its 4-tuple.
    fn index(&mut self, id: u64) {
        let Some(conn) = self.entries.get(&id) else { return };
        let key = (conn.netns, conn.local, conn.remote);
        let hash = self.hasher.hash_one(key);
        let entries = &self.entries;
        let same = |i: &u64| entries.get(i).is_some_and(|c| (c.netns, c.local, c.remote) == key);
        if let Some(slot) = self.by_tuple.find_mut(hash, same) {
            let older = std::mem::replace(slot, id);
            if older != id {
                self.older.insert(id, older);
                self.newer.insert(older, id);
            }
            return;
        }
        let hasher = &self.hasher;
        // Every id in the index names an entry (`remove` unindexes first), so the rehash finds each one's key.
        self.by_tuple.insert_unique(hash, id, |i| {
            entries
                .get(i)
                .map_or(0, |c| hasher.hash_one((c.netns, c.local, c.remote)))
        });
    }

    /// The id indexed for this 4-tuple.
    fn lookup(&self, netns: u32, local: Endpoint, remote: Endpoint) -> Option<u64> {
        let key = (netns, local, remote);
        self.by_tuple
            .find(self.hasher.hash_one(key), |i| {
                self.entries.get(i).is_some_and(|c| (c.netns, c.local, c.remote) == key)
            })
            .copied()
    }

    /// The newest connection with this 4-tuple in namespace `netns`, seen from its local end (live, or closed
    /// within the grace period).
    pub fn find(&self, netns: u32, local: SocketAddr, remote: SocketAddr) -> Option<&Connection> {
        self.lookup(netns, local.into(), remote.into())
            .and_then(|id| self.entries.get(&id))
            .map(|c| &**c)
    }

    /// The newest connection with this 4-tuple in namespace `netns` that was open at some time `during` a call:
    /// established before the call ended, and not closed before it started. The newest connection of a 4-tuple
    /// need not be the call's: a client port reused for the same destination gives the 4-tuple a new connection
    /// while a late call of the old one is on its way, and a call can arrive before its connection's event while
    /// the 4-tuple's previous connection is still held. The [`MAX_TUPLE_CHAIN`] newest connections of the 4-tuple
    /// are looked at.
    pub fn find_during(
        &self,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
        during: During,
    ) -> Result<&Connection, Miss> {
        self.during(netns, local.into(), remote.into(), during).map(|(_, c)| c)
    }

    /// Like [`ConnTable::find_during`], in whichever namespace has the newest such connection.
    pub fn find_any_during(&self, local: SocketAddr, remote: SocketAddr, during: During) -> Result<&Connection, Miss> {
        let (local, remote) = (local.into(), remote.into());
        let mut miss = Miss::Absent;
        let mut found: Option<(u64, &Connection)> = None;
        for &ns in self.namespaces.keys() {
            match self.during(ns, local, remote, during) {
                Ok((id, c)) if found.is_none_or(|(newest, _)| id > newest) => found = Some((id, c)),
                Ok(_) => {}
                Err(m) => miss = miss.max(m),
            }
        }
        found.map(|(_, c)| c).ok_or(miss)
    }

    fn during(
        &self,
        netns: u32,
        local: Endpoint,
        remote: Endpoint,
        during: During,
    ) -> Result<(u64, &Connection), Miss> {
        let newest = self.lookup(netns, local, remote).ok_or(Miss::Absent)?;
        std::iter::successors(Some(newest), |id| self.older.get(id).copied())
            .take(MAX_TUPLE_CHAIN)
            .filter_map(|id| Some((id, &**self.entries.get(&id)?)))
            .find(|(_, c)| c.open_during(during))
            .ok_or(Miss::NotDuring)
    }

    /// Every connection, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.entries.values().map(|c| &**c)
    }

    /// Number of connections held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of connections not closed yet.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Network namespaces with a connection in the table.
    pub fn namespaces(&self) -> usize {
        self.namespaces.len()
    }

    /// The bound.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

#[cfg(test)]
mod tests;
