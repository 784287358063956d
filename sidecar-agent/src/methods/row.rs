//! A row of the method table: what its calls add up to, and who they went to or came from.

use proto::v1::{CallRecord, Direction, Process};

use super::{histogram::Histogram, is_error, MAX_PEERS};

/// The peer of a call: where an outbound call went (the upstream host and its port), or who made an inbound call
/// (the downstream client's address, without its ephemeral port). Kept as reported and formatted only when the
/// table is listed, so that counting a call from a known peer formats nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Peer {
    address: String,
    port: Option<u32>,
}

impl Peer {
    /// Whether `p` is this peer.
    pub(super) fn is(&self, p: PeerRef<'_>) -> bool {
        self.port == p.port && self.address == p.address
    }

    /// `ip:port` (`[ip]:port` for IPv6), or the address alone.
    pub(super) fn text(&self) -> String {
        match self.port {
            None => self.address.clone(),
            Some(port) if self.address.contains(':') => format!("[{}]:{port}", self.address),
            Some(port) => format!("{}:{port}", self.address),
        }
    }
}

/// [`Peer`], borrowed from the record.
#[derive(Clone, Copy)]
pub(super) struct PeerRef<'a> {
    address: &'a str,
    port: Option<u32>,
}

pub(super) fn peer(c: &CallRecord) -> Option<PeerRef<'_>> {
    if c.direction == Direction::Inbound as i32 {
        let a = c.client.as_ref()?;
        return Some(PeerRef {
            address: &a.address,
            port: None,
        });
    }
    let a = c.upstream_peer.as_ref().or(c.server.as_ref())?;
    Some(PeerRef {
        address: &a.address,
        port: Some(a.port),
    })
}

#[derive(Debug)]
pub(super) struct Row {
    pub(super) process: Option<Process>,
    pub(super) calls: u64,
    pub(super) errors: u64,
    pub(super) latency: Histogram,
    pub(super) first_seen: u64,
    pub(super) last_seen: u64,
    pub(super) peers: Vec<Peer>,
    /// When the row was last used.
    pub(super) used: u64,
    /// Its position in [`super::MethodTable::idle`]: the `used` it had when placed there (see
    /// [`super::MethodTable::idlest`]).
    pub(super) placed: u64,
}

// === impl Row ===

impl Row {
    /// Counts call `c`, seen at `seen`.
    pub(super) fn count(&mut self, c: &CallRecord, seen: u64) {
        self.calls += 1;
        self.errors += u64::from(is_error(c));
        self.latency.record(c.duration_ns);
        self.first_seen = self.first_seen.min(seen);
        self.last_seen = self.last_seen.max(seen);
        if self.peers.len() < MAX_PEERS {
            if let Some(p) = peer(c).filter(|&p| !self.peers.iter().any(|known| known.is(p))) {
                self.peers.push(Peer {
                    address: p.address.to_owned(),
                    port: p.port,
                });
            }
        }
    }
}
