//! Fan-out of linked calls to watchers, each with its own bounded queue.
//!
//! Publishing never waits for a watcher: it appends to each matching watcher's queue and, when the queue is
//! full, drops that watcher's *oldest* entry and counts it. The next message the watcher reads carries how many
//! it lost since its previous one. A queue is full at `watch_queue` calls or `watch_queue_bytes` of them (encoded
//! size; a record's fields may take 4 KiB each), and at most `max_watchers` watch at once: a watcher that never
//! reads costs one full queue and nothing else, and all of them together a bounded amount.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use futures_util::Stream;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use proto::v1::{LinkedCall, WatchRequest, WatchResponse};
use tokio::sync::Notify;

/// Which calls a watcher wants; empty fields (and pid 0) match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Matches `CallRecord.service`.
    pub service: String,
    /// Matches the gRPC method name (`Method`), the full `rpc.method` (`pkg.Service/Method`) or the HTTP
    /// `VERB route`.
    pub method: String,
    /// Matches the gray version.
    pub gray_version: String,
    /// Matches the linked process.
    pub pid: u32,
    /// Matches the bounded tenant label (`CallRecord.tenant`) exactly.
    pub tenant: String,
}

// === impl Filter ===

impl From<WatchRequest> for Filter {
    fn from(r: WatchRequest) -> Self {
        Self {
            service: r.service,
            method: r.method,
            gray_version: r.gray_version,
            pid: r.pid,
            tenant: r.tenant,
        }
    }
}

impl Filter {
    /// Whether `call` is wanted.
    pub fn matches(&self, call: &LinkedCall) -> bool {
        let Some(c) = &call.call else { return false };
        let method_ok = self.method.is_empty()
            || c.rpc_method == self.method
            || c.rpc_method.rsplit_once('/').is_some_and(|(_, m)| m == self.method)
            || (!c.http_request_method.is_empty()
                && self
                    .method
                    .split_once(' ')
                    .is_some_and(|(v, r)| v == c.http_request_method && r == c.http_route));
        (self.service.is_empty() || c.service == self.service)
            && method_ok
            && (self.gray_version.is_empty() || c.gray_version == self.gray_version)
            && (self.pid == 0 || call.process.as_ref().is_some_and(|p| p.pid == self.pid))
            && (self.tenant.is_empty() || c.tenant == self.tenant)
    }
}

#[derive(Debug, Default)]
struct Queue {
    /// The calls, each with its encoded size.
    items: VecDeque<(Arc<LinkedCall>, usize)>,
    /// The sum of the items' sizes.
    bytes: usize,
    lost: u64,
    closed: bool,
}

impl Queue {
    fn pop(&mut self) -> Option<Arc<LinkedCall>> {
        let (call, size) = self.items.pop_front()?;
        self.bytes -= size;
        Some(call)
    }
}

/// The limits of every watcher's queue, and of watchers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Calls per queue (`watch_queue`).
    pub calls: usize,
    /// Their encoded bytes per queue (`watch_queue_bytes`); the newest call is kept whatever its size.
    pub bytes: usize,
    /// Watchers at once (`max_watchers`).
    pub watchers: usize,
}

/// [`Hub::subscribe`] with `max_watchers` watching already.
#[derive(Debug, thiserror::Error)]
#[error("{0} watchers are open already, the most max_watchers allows")]
pub struct TooManyWatchers(pub usize);

#[derive(Debug)]
struct Slot {
    filter: Filter,
    queue: Mutex<Queue>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Watchers {
    slots: Vec<Arc<Slot>>,
    closed: bool,
}

/// The watchers.
#[derive(Debug)]
pub struct Hub {
    limits: Limits,
    watchers: Mutex<Watchers>,
    /// `grayscope_agent_watchers`.
    count: Gauge,
    /// `grayscope_agent_watch_lost_total`.
    lost: Counter,
}

// === impl Hub ===

impl Hub {
    /// A hub within `limits`; `count` and `lost` are its metrics.
    pub fn new(limits: Limits, count: Gauge, lost: Counter) -> Arc<Self> {
        Arc::new(Self {
            limits: Limits {
                calls: limits.calls.max(1),
                ..limits
            },
            watchers: Mutex::new(Watchers::default()),
            count,
            lost,
        })
    }

    /// A new watcher (already closed if the hub is), unless `max_watchers` watch already.
    pub fn subscribe(self: &Arc<Self>, filter: Filter) -> Result<Watcher, TooManyWatchers> {
        let slot = Arc::new(Slot {
            filter,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
        });
        let mut w = lock(&self.watchers);
        if w.closed {
            lock(&slot.queue).closed = true;
        } else if w.slots.len() >= self.limits.watchers {
            return Err(TooManyWatchers(w.slots.len()));
        } else {
            w.slots.push(Arc::clone(&slot));
            self.count.set(i64::try_from(w.slots.len()).unwrap_or(i64::MAX));
        }
        Ok(Watcher {
            hub: Arc::downgrade(self),
            slot,
        })
    }

    /// Hands `call` to every watcher that wants it, without waiting for any.
    pub fn publish(&self, call: &Arc<LinkedCall>) {
        let w = lock(&self.watchers);
        let mut size = None;
        for slot in w.slots.iter().filter(|s| s.filter.matches(call)) {
            let size = *size.get_or_insert_with(|| prost::Message::encoded_len(&**call));
            let mut q = lock(&slot.queue);
            q.items.push_back((Arc::clone(call), size));
            q.bytes += size;
            while q.items.len() > self.limits.calls || (q.bytes > self.limits.bytes && q.items.len() > 1) {
                q.pop();
                q.lost += 1;
                self.lost.inc();
            }
            drop(q);
            slot.notify.notify_one();
        }
    }

    /// Ends every watcher's stream (after what it has queued) and refuses new ones: the agent is stopping, and the
    /// service ends the gRPC streams with UNAVAILABLE.
    pub fn close(&self) {
        let mut w = lock(&self.watchers);
        w.closed = true;
        for slot in w.slots.drain(..) {
            lock(&slot.queue).closed = true;
            slot.notify.notify_one();
        }
        self.count.set(0);
    }

    /// Watchers now.
    pub fn len(&self) -> usize {
        lock(&self.watchers).slots.len()
    }

    /// Whether nobody watches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, slot: &Arc<Slot>) {
        let mut w = lock(&self.watchers);
        w.slots.retain(|s| !Arc::ptr_eq(s, slot));
        self.count.set(i64::try_from(w.slots.len()).unwrap_or(i64::MAX));
    }
}

/// One watcher; leaves the hub when dropped.
#[derive(Debug)]
pub struct Watcher {
    hub: Weak<Hub>,
    slot: Arc<Slot>,
}

// === impl Watcher ===

impl Watcher {
    /// The oldest queued call, with the calls lost since the previous one, if any is queued.
    pub fn try_next(&self) -> Option<WatchResponse> {
        let mut q = lock(&self.slot.queue);
        let call = q.pop()?;
        Some(WatchResponse {
            call: Some(LinkedCall::clone(&call)),
            lost: std::mem::take(&mut q.lost),
        })
    }

    /// Waits for the next call; `None` once the hub is closed and the queue empty.
    pub async fn next(&self) -> Option<WatchResponse> {
        loop {
            if let Some(r) = self.try_next() {
                return Some(r);
            }
            if lock(&self.slot.queue).closed {
                return None;
            }
            // notify_one keeps a permit when nobody waits, so a publish between the check and here is not missed.
            self.slot.notify.notified().await;
        }
    }

    /// The watcher as a stream of messages, for the gRPC response.
    pub fn into_stream(self) -> impl Stream<Item = WatchResponse> + Send + 'static {
        futures_util::stream::unfold(self, |w| async move {
            let r = w.next().await?;
            Some((r, w))
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.remove(&self.slot);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
