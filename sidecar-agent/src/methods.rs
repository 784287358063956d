//! The method table: calls aggregated per interface x gray version x tenant x direction x process, with what each
//! process declared through `ReportMethodMetadata`. Bounded, and never full for good:
//!
//! - at most `max_rows` rows: a new row beyond that evicts the row idle the longest (counted). Each tenant label
//!   (`CallRecord.tenant`, already bounded by the filter: `max_tenants` per VM, then `other`) is a row of its own,
//!   so tenants count against `max_rows` like versions and processes do, and never against `max_interfaces`;
//! - at most `max_interfaces` distinct interfaces (service, method) across the rows: calls of further ones count
//!   under service and method `other`, as the filter labels its metrics, so one client sending endless method
//!   names cannot flood the table; an interface whose last row went frees its slot;
//! - rows and declarations of a process that has exited go after a grace period ([`MethodTable::expire_exited`]);
//!   a process is its pid *and* its start time, so a process that reuses a pid starts with no declaration;
//! - at most `max_rows` declarations (the oldest goes first), at most [`MAX_PEERS`] peers per row.
//!
//! A row's latency is a log-linear histogram (module `histogram`): percentiles within 12.5%; count, sum, min and max
//! exact.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashSet},
    ops::Bound,
    sync::Arc,
    time::Duration,
};

// hashbrown's maps (foldhash) rather than std's (SipHash): every call looks its row up, and SipHash over the
// row's key was the largest part of that. The rows are bounded (`max_rows`, `max_interfaces`), so a client
// choosing colliding names could slow its own lookups at most, never grow the table.
use hashbrown::HashMap;
use proto::v1::{CallRecord, LinkedCall, ListMethodsResponse, MethodMetadata, MethodStats, Process};
use tokio::time::Instant;

use histogram::Histogram;
use key::{InterfaceRef, Key, KeyRef};
pub use page::{BadToken, MAX_PAGE_BYTES};
use page::{Cursor, Page, TokenKey};
use row::{Peer, Row};

mod histogram;
mod key;
mod page;
mod row;

/// Distinct peers kept per row.
pub const MAX_PEERS: usize = 16;

/// The service and method of the calls beyond `max_interfaces`.
pub const OTHER: &str = "other";

/// The `method` label: `Method` for gRPC (after the `/` of `rpc.method`), `VERB route` for HTTP.
pub fn method_label(c: &CallRecord) -> String {
    method_label_ref(c).into_owned()
}

/// [`method_label`], borrowed from the record where it can be (gRPC).
fn method_label_ref(c: &CallRecord) -> Cow<'_, str> {
    if !c.rpc_method.is_empty() {
        return Cow::Borrowed(c.rpc_method.rsplit_once('/').map_or(c.rpc_method.as_str(), |(_, m)| m));
    }
    Cow::Owned(format!("{} {}", c.http_request_method, c.http_route))
}

/// Whether the call failed: a gRPC status other than OK, an HTTP 5xx, or no response at all.
pub fn is_error(c: &CallRecord) -> bool {
    if c.status == "no_response" {
        return true;
    }
    if c.rpc_system_name == "grpc" {
        return c.status != "OK";
    }
    c.http_response_status_code >= 500 || c.status == "5xx"
}

/// A process that declares methods: its pid (from `SO_PEERCRED`) and its start time, as
/// `Process.start_time_unix_nano` has it but read from `/proc/<pid>/stat`, so floored to a clock tick.
/// The start time is what tells the declaring process from a later one with the same pid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Declarer {
    /// The process's pid.
    pub pid: u32,
    /// Its start time, ns since the Unix epoch, floored to a clock tick.
    pub start_time_unix_nano: u64,
}

/// A declaration's place: the declaring process and the interface. Ordered by pid, interface, then start time, so
/// the declaration of a row's interface by a process of a given start time is one range lookup
/// ([`MethodTable::declaration`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DeclKey {
    pid: u32,
    service: String,
    method: String,
    start: u64,
}

/// What one [`MethodTable::observe`] or [`MethodTable::declare`] did besides counting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// The call's interface was counted as `other` (`max_interfaces`).
    pub folded: bool,
    /// A row (or declaration) idle the longest was evicted to make room.
    pub evicted_idle: bool,
}

/// The table.
#[derive(Debug)]
pub struct MethodTable {
    max_rows: usize,
    max_interfaces: usize,
    /// The rows, by their key; the key is shared with `sorted` and `idle` (one copy of its strings per row).
    rows: HashMap<Arc<Key>, Row>,
    /// The row keys in `ListMethods` order: a page is a range of it, so listing never sorts the table under the
    /// lock (sorting 1M keys took 1.8 s per page, while `Report` waited). Kept as rows come and go, which is
    /// rare: a call whose row exists touches neither.
    sorted: BTreeSet<Arc<Key>>,
    /// Rows by their last use as of when they were placed here, the idlest first. A use does not move its row
    /// (that was a B-tree removal and insertion per call, the table's largest cost); the eviction does, lazily.
    idle: BTreeMap<u64, Arc<Key>>,
    /// Rows per interface (service, method).
    interfaces: HashMap<(String, String), usize>,
    /// Declarations by declaring process (pid and start time) and interface, with their last use.
    declared: BTreeMap<DeclKey, (MethodMetadata, u64)>,
    /// Declarations by their last use, the oldest first: the eviction pops the first instead of scanning them all
    /// (a full table met by one 4 MiB `ReportMethodMetadata` of tiny entries was billions of steps under the lock).
    declared_order: BTreeMap<u64, DeclKey>,
    /// Processes found gone, since when: (pid, start time).
    gone: HashMap<(u32, u64), Instant>,
    next_use: u64,
    /// The clock tick of `/proc` start times (`CLK_TCK`), ns: a declarer's start time is floored to it, a row's
    /// process's is the kernel's own, to the ns.
    tick_ns: u64,
    /// Signs the page tokens: a token is good only for the table that issued it.
    token_key: TokenKey,
}

// === impl MethodTable ===

impl MethodTable {
    /// An empty table of at most `max_rows` rows over at most `max_interfaces` interfaces.
    pub fn new(max_rows: usize, max_interfaces: usize) -> Self {
        Self {
            max_rows: max_rows.max(1),
            max_interfaces: max_interfaces.max(1),
            rows: HashMap::new(),
            sorted: BTreeSet::new(),
            idle: BTreeMap::new(),
            interfaces: HashMap::new(),
            declared: BTreeMap::new(),
            declared_order: BTreeMap::new(),
            gone: HashMap::new(),
            next_use: 0,
            // At least 1 ns: the declaration lookup takes a tick less 1 ns.
            tick_ns: crate::procinfo::clock_tick_ns().max(1),
            token_key: TokenKey::random(),
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_use += 1;
        self.next_use
    }

    /// Counts one call.
    pub fn observe(&mut self, call: &LinkedCall) -> Effects {
        let Some(c) = &call.call else { return Effects::default() };
        self.observe_record(c, call.received_unix_nano, call.process.as_ref())
    }

    /// Counts one call: `c` as reported, received at `received_unix_nano`, made or served by `process`. A call
    /// whose row exists costs no allocation: the row is found by a key borrowed from the record.
    pub fn observe_record(&mut self, c: &CallRecord, received_unix_nano: u64, process: Option<&Process>) -> Effects {
        let mut fx = Effects::default();
        let method = method_label_ref(c);
        let mut key = KeyRef {
            service: &c.service,
            method: &method,
            gray_version: &c.gray_version,
            tenant: &c.tenant,
            direction: c.direction,
            rpc_system_name: &c.rpc_system_name,
            pid: process.map_or(0, |p| p.pid),
            start: process.map_or(0, |p| p.start_time_unix_nano),
        };
        let used = self.tick();
        let seen = seen(c, received_unix_nano);
        let touch = |row: &mut Row| {
            row.used = used;
            row.count(c, seen);
        };
        if let Some(row) = self.rows.get_mut(&key) {
            touch(row);
            return fx;
        }
        let interface = InterfaceRef(key.service, key.method);
        if !self.interfaces.contains_key(&interface) && self.interfaces.len() >= self.max_interfaces {
            (key.service, key.method) = (OTHER, OTHER);
            fx.folded = true;
            if let Some(row) = self.rows.get_mut(&key) {
                touch(row);
                return fx;
            }
        }
        if self.rows.len() >= self.max_rows {
            if let Some(idlest) = self.idlest() {
                self.remove(&idlest);
                fx.evicted_idle = true;
            }
        }
        match self.interfaces.get_mut(&InterfaceRef(key.service, key.method)) {
            Some(n) => *n += 1,
            None => {
                self.interfaces
                    .insert((key.service.to_owned(), key.method.to_owned()), 1);
            }
        }
        let key = Arc::new(key.to_owned());
        let mut row = Row {
            process: process.cloned(),
            calls: 0,
            errors: 0,
            latency: Histogram::default(),
            first_seen: seen,
            last_seen: seen,
            peers: Vec::new(),
            used,
            placed: used,
        };
        row.count(c, seen);
        self.idle.insert(used, Arc::clone(&key));
        self.sorted.insert(Arc::clone(&key));
        self.rows.insert(key, row);
        fx
    }

    /// The row idle the longest. The first entry of `idle` is, unless its row was used since it was placed: then
    /// the row is placed again at its last use and the next entry tried. Each use moves its row at most once
    /// here, and only when the table is full, so a use costs no B-tree operation.
    fn idlest(&mut self) -> Option<Arc<Key>> {
        while let Some((placed, key)) = self.idle.pop_first() {
            match self.rows.get_mut(&key) {
                Some(row) if row.used > placed => {
                    row.placed = row.used;
                    self.idle.insert(row.used, key);
                }
                Some(_) => return Some(key),
                // Cannot happen (a row and its entry go together); the entry is dropped.
                None => {}
            }
        }
        None
    }

    fn remove(&mut self, key: &Key) {
        let Some(row) = self.rows.remove(key) else { return };
        self.idle.remove(&row.placed);
        self.sorted.remove(key);
        let interface = InterfaceRef(&key.service, &key.method);
        if let Some(n) = self.interfaces.get_mut(&interface) {
            *n -= 1;
            if *n == 0 {
                self.interfaces.remove(&interface);
            }
        }
    }

    /// Records what process `by` declared; at most `max_rows` declarations, the one unused the longest makes
    /// room.
    pub fn declare(&mut self, by: Declarer, m: MethodMetadata) -> Effects {
        let mut fx = Effects::default();
        let key = DeclKey {
            pid: by.pid,
            service: m.service.clone(),
            method: m.method.clone(),
            start: by.start_time_unix_nano,
        };
        match self.declared.get(&key) {
            Some((_, used)) => {
                self.declared_order.remove(used);
            }
            None if self.declared.len() >= self.max_rows => {
                if let Some((_, oldest)) = self.declared_order.pop_first() {
                    self.declared.remove(&oldest);
                    fx.evicted_idle = true;
                }
            }
            None => {}
        }
        let used = self.tick();
        self.declared_order.insert(used, key.clone());
        self.declared.insert(key, (m, used));
        fx
    }

    /// Removes the rows and declarations of processes that have been gone for `grace` by `now`. `alive` tells
    /// whether a process (pid and start time: a row's, or a declarer's) still runs. Returns how many rows and
    /// declarations went.
    pub fn expire_exited(&mut self, alive: impl Fn(u32, u64) -> bool, grace: Duration, now: Instant) -> u64 {
        let processes: HashSet<(u32, u64)> = self
            .rows
            .keys()
            .filter(|k| k.pid != 0)
            .map(|k| (k.pid, k.start))
            .chain(self.declared.keys().map(|k| (k.pid, k.start)))
            .collect();
        let mut expired = HashSet::new();
        for p in &processes {
            if alive(p.0, p.1) {
                self.gone.remove(p);
                continue;
            }
            let since = *self.gone.entry(*p).or_insert(now);
            if now.saturating_duration_since(since) >= grace {
                expired.insert(*p);
            }
        }
        self.gone.retain(|p, _| processes.contains(p) && !expired.contains(p));
        if expired.is_empty() {
            return 0;
        }
        let rows: Vec<Arc<Key>> = self
            .rows
            .keys()
            .filter(|k| expired.contains(&(k.pid, k.start)))
            .cloned()
            .collect();
        let mut n = rows.len() as u64;
        for k in &rows {
            self.remove(k);
        }
        let before = self.declared.len();
        self.declared.retain(|k, _| !expired.contains(&(k.pid, k.start)));
        self.declared_order.retain(|_, k| !expired.contains(&(k.pid, k.start)));
        n += (before - self.declared.len()) as u64;
        n
    }

    /// What the process `pid` started at `start` (a row's process) declared of `service`/`method`: the declaration
    /// by that pid whose start time is the row's floored to its tick, not one by an earlier process that had the
    /// pid. (A row's process has the kernel's start time, to the ns; a declarer's is read from `/proc`, floored to
    /// the tick: the same clock, so the row's start falls within the declarer's tick.)
    fn declaration(&self, pid: u32, start: u64, service: &str, method: &str) -> Option<&MethodMetadata> {
        let latest = DeclKey {
            pid,
            service: service.to_owned(),
            method: method.to_owned(),
            start,
        };
        let earliest = DeclKey {
            start: start.saturating_sub(self.tick_ns - 1),
            ..latest.clone()
        };
        self.declared.range(earliest..=latest).next_back().map(|(_, (m, _))| m)
    }

    /// Rows now.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Distinct interfaces now (`other` included once it is used).
    pub fn interfaces(&self) -> usize {
        self.interfaces.len()
    }

    /// Every row, sorted by service, method, gray version, tenant, direction, rpc system, pid and start time; then
    /// declarations of processes that have no call of their interface yet, by pid, interface and start time.
    pub fn list(&self) -> Vec<MethodStats> {
        self.entries(None, usize::MAX, usize::MAX).0
    }

    /// A page of [`MethodTable::list`]: the entries after the one `page_token` names (from the first when it is
    /// empty), at most `page_size` of them (0: no limit) and at most [`MAX_PAGE_BYTES`] encoded, and the token
    /// of the next page (empty after the last entry). A token this table did not issue is refused: made up,
    /// altered, or issued by another table (an agent since restarted).
    pub fn page(&self, page_token: &str, page_size: usize) -> Result<ListMethodsResponse, BadToken> {
        let after = if page_token.is_empty() {
            None
        } else {
            Some(Cursor::parse(page_token, &self.token_key)?)
        };
        let max_rows = if page_size == 0 { usize::MAX } else { page_size };
        let (methods, next) = self.entries(after.as_ref(), max_rows, MAX_PAGE_BYTES);
        Ok(ListMethodsResponse {
            methods,
            next_page_token: next.map(|c| c.token(&self.token_key)).unwrap_or_default(),
        })
    }

    /// The entries after `after`, until `max_rows` of them or `max_bytes` of their encoding (always one at
    /// least), and the cursor of the last one when more follow.
    fn entries(&self, after: Option<&Cursor>, max_rows: usize, max_bytes: usize) -> (Vec<MethodStats>, Option<Cursor>) {
        let mut page = Page::new(max_rows, max_bytes);
        let keys = match after {
            None => Some(self.sorted.range::<Key, _>(..)),
            Some(Cursor::Row(k)) => Some(self.sorted.range::<Key, _>((Bound::Excluded(k), Bound::Unbounded))),
            Some(Cursor::Declared(..)) => None,
        };
        // The last entry this page holds: the next page starts after it.
        let mut last = None;
        for key in keys.into_iter().flatten() {
            if !page.push(self.row_stats(key, &self.rows[key])) {
                return (page.out, last);
            }
            last = Some(Cursor::Row(Key::clone(key)));
        }
        // Then declarations of processes that have no call of that interface yet.
        let declared = match after {
            Some(Cursor::Declared(d)) => self.declared.range((Bound::Excluded(d), Bound::Unbounded)),
            _ => self.declared.range(..),
        };
        for (d, (m, _)) in declared {
            if self.called(d) {
                continue;
            }
            let stats = MethodStats {
                service: d.service.clone(),
                method: d.method.clone(),
                gray_version: m.version.clone(),
                process: Some(Process {
                    pid: d.pid,
                    start_time_unix_nano: d.start,
                    ..Process::default()
                }),
                declared: Some(m.clone()),
                ..MethodStats::default()
            };
            if !page.push(stats) {
                return (page.out, last);
            }
            last = Some(Cursor::Declared(d.clone()));
        }
        (page.out, None)
    }

    /// Whether the declarer of `d` has a row of its interface: one whose process has its pid and started within its
    /// tick (as in [`Self::declaration`]). The rows of one interface are adjacent in `sorted`: a range from the
    /// interface's least key, as long as the rows are of it.
    fn called(&self, d: &DeclKey) -> bool {
        let least = Key {
            service: d.service.clone(),
            method: d.method.clone(),
            gray_version: String::new(),
            tenant: String::new(),
            direction: i32::MIN,
            rpc_system_name: String::new(),
            pid: 0,
            start: 0,
        };
        self.sorted
            .range::<Key, _>(&least..)
            .take_while(|k| k.service == d.service && k.method == d.method)
            .any(|k| k.pid == d.pid && k.start.checked_sub(d.start).is_some_and(|after| after < self.tick_ns))
    }

    fn row_stats(&self, key: &Key, row: &Row) -> MethodStats {
        let declared = self.declaration(key.pid, key.start, &key.service, &key.method).cloned();
        MethodStats {
            rpc_system_name: key.rpc_system_name.clone(),
            service: key.service.clone(),
            method: key.method.clone(),
            gray_version: key.gray_version.clone(),
            direction: key.direction,
            process: row.process.clone(),
            calls: row.calls,
            errors: row.errors,
            latency: Some(row.latency.summary()),
            first_seen_unix_nano: row.first_seen,
            last_seen_unix_nano: row.last_seen,
            peers: row.peers.iter().map(Peer::text).collect(),
            declared,
            tenant: key.tenant.clone(),
        }
    }
}

/// When a call was seen: its start, else when the agent received it.
fn seen(c: &CallRecord, received_unix_nano: u64) -> u64 {
    if c.start_time_unix_nano != 0 {
        c.start_time_unix_nano
    } else {
        received_unix_nano
    }
}

#[cfg(test)]
mod tests;
