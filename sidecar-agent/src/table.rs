//! The connection table: live connections plus closed ones for a grace period, so call records that arrive
//! late still find the connection and its process. Bounded: it never holds more than `max_entries`.
//!
//! Keyed by the kernel socket address (unique while the socket lives), with an index by
//! `(netns, local, remote)` for joining call records by 4-tuple. When full, an insert evicts the oldest closed
//! connection, or when there is none the oldest live one. Time is passed in, so the logic is pure.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

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
    pub local: SocketAddr,
    /// Remote end.
    pub remote: SocketAddr,
    /// The owning process as the kernel named it; `None` for a server socket not yet accepted.
    pub owner: Option<Owner>,
    /// What `/proc` said about the owner (read once per process).
    pub process: Option<Arc<ProcessInfo>>,
    /// Set once the socket closed: how long it lived, and when the table learnt it.
    pub closed: Option<Closed>,
}

/// The end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Lifetime as measured in the kernel.
    pub duration: Duration,
    /// When the close was applied to the table; the grace period counts from here.
    pub at: Instant,
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
}

#[derive(Debug)]
struct Entry {
    conn: Connection,
    seq: u64,
}

/// The table.
#[derive(Debug)]
pub struct ConnTable {
    max_entries: usize,
    grace: Duration,
    entries: HashMap<u64, Entry>,
    /// All entries by insertion sequence (oldest first).
    order: BTreeMap<u64, u64>,
    /// Closed entries in closing order: (closed at, seq, skaddr); stale items are skipped.
    closed: VecDeque<(Instant, u64, u64)>,
    by_tuple: HashMap<(u32, SocketAddr, SocketAddr), u64>,
    next_seq: u64,
}

// === impl ConnTable ===

impl ConnTable {
    /// An empty table holding at most `max_entries` (at least 1) connections.
    pub fn new(max_entries: usize, grace: Duration) -> Self {
        Self {
            max_entries: max_entries.max(1),
            grace,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            closed: VecDeque::new(),
            by_tuple: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Applies one event; `process` is the enrichment of its owner, if any.
    pub fn apply(&mut self, ev: &ConnEvent, process: Option<Arc<ProcessInfo>>, now: Instant) -> Evictions {
        let mut ev_out = Evictions::default();
        if let Some(entry) = self.entries.get_mut(&ev.skaddr) {
            let reused = entry.conn.closed.is_some() && ev.kind != EventKind::Closed;
            if !reused {
                let conn = &mut entry.conn;
                if ev.owner.is_some() {
                    conn.owner.clone_from(&ev.owner);
                    conn.process = process;
                }
                if let (EventKind::Closed, Some(duration)) = (ev.kind, ev.duration) {
                    if conn.closed.is_none() {
                        conn.closed = Some(Closed { duration, at: now });
                        self.closed.push_back((now, entry.seq, ev.skaddr));
                    }
                }
                return ev_out;
            }
            // The kernel reused the address of a closed socket for a new one: the new connection replaces it.
            self.remove(ev.skaddr);
        }
        if self.entries.len() >= self.max_entries {
            self.make_room(&mut ev_out);
        }
        let closed = match (ev.kind, ev.duration) {
            (EventKind::Closed, Some(duration)) => Some(Closed { duration, at: now }),
            _ => None,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        if closed.is_some() {
            self.closed.push_back((now, seq, ev.skaddr));
        }
        let conn = Connection {
            skaddr: ev.skaddr,
            netns: ev.netns,
            role: ev.role,
            local: ev.local,
            remote: ev.remote,
            owner: ev.owner.clone(),
            process: ev.owner.as_ref().and(process),
            closed,
        };
        self.by_tuple.insert((ev.netns, ev.local, ev.remote), ev.skaddr);
        self.order.insert(seq, ev.skaddr);
        self.entries.insert(ev.skaddr, Entry { conn, seq });
        ev_out
    }

    /// Drops the closed connections whose grace period has ended by `now`.
    pub fn expire(&mut self, now: Instant) -> Evictions {
        let mut out = Evictions::default();
        while let Some(&(at, seq, skaddr)) = self.closed.front() {
            if self.is_current_closed(seq, skaddr) {
                if now.saturating_duration_since(at) < self.grace {
                    break;
                }
                self.remove(skaddr);
                out.expired += 1;
            }
            self.closed.pop_front();
        }
        out
    }

    fn make_room(&mut self, out: &mut Evictions) {
        while let Some((_, seq, skaddr)) = self.closed.pop_front() {
            if self.is_current_closed(seq, skaddr) {
                self.remove(skaddr);
                out.closed_for_room += 1;
                return;
            }
        }
        if let Some((_, skaddr)) = self.order.pop_first() {
            self.remove(skaddr);
            out.live_for_room += 1;
        }
    }

    fn is_current_closed(&self, seq: u64, skaddr: u64) -> bool {
        self.entries.get(&skaddr).is_some_and(|e| e.seq == seq && e.conn.closed.is_some())
    }

    fn remove(&mut self, skaddr: u64) {
        if let Some(Entry { conn, seq }) = self.entries.remove(&skaddr) {
            self.order.remove(&seq);
            let key = (conn.netns, conn.local, conn.remote);
            if self.by_tuple.get(&key) == Some(&skaddr) {
                self.by_tuple.remove(&key);
            }
        }
    }

    /// The connection of socket `skaddr`.
    pub fn get(&self, skaddr: u64) -> Option<&Connection> {
        self.entries.get(&skaddr).map(|e| &e.conn)
    }

    /// The connection with this 4-tuple in namespace `netns`, seen from its local end.
    pub fn find(&self, netns: u32, local: SocketAddr, remote: SocketAddr) -> Option<&Connection> {
        self.by_tuple.get(&(netns, local, remote)).and_then(|s| self.get(*s))
    }

    /// Every connection, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.order.values().filter_map(|s| self.get(*s))
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
        self.entries.values().filter(|e| e.conn.closed.is_none()).count()
    }

    /// The bound.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

#[cfg(test)]
mod tests;
