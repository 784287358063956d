//! The `grayscope.v1.Collector` service: call records in, linked calls out (to watchers and the method table).
//!
//! [`Core`] holds the state and the logic, free of the transport: `Report` validates each record of a batch (an
//! invalid one is refused and counted by reason, never the batch around it), links what it can at once and queues
//! the rest ([`crate::link::Pending`]); a timer ([`Core::tick`]) retries the queue. Every
//! resolved record is counted, aggregated and published to the watchers; nothing here waits for a watcher.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use futures_util::{Stream, StreamExt as _};
use proto::v1::{
    collector_server::Collector, CallRecord, Direction, LinkedCall, ListMethodsRequest, ListMethodsResponse,
    MethodMetadata, ReportMethodMetadataRequest, ReportMethodMetadataResponse, ReportRequest, ReportResponse,
    WatchRequest, WatchResponse,
};
use tokio::time::Instant;
use tonic::{transport::server::UdsConnectInfo, Request, Response, Status};

use crate::{
    link::{self, Clocks, Outcome, Pending, Resolved, TableLookup},
    methods::{self, Declarer, MethodTable},
    metrics::Metrics,
    table::ConnTable,
    watch::{Filter, Hub},
};

/// Longest text field the agent accepts in a record or declaration, in bytes.
pub const MAX_FIELD_BYTES: usize = 4096;

/// Longest tenant label the agent accepts, in bytes: the filter's labels are allowlisted names or tiers (bounded
/// like a gray version, 64 bytes), `t_` + a short hash, or `none`/`invalid`/`other`.
pub const MAX_TENANT_BYTES: usize = 64;

/// Settings of the linking and fan-out.
#[derive(Clone, Copy, Debug)]
pub struct CoreSettings {
    /// Namespace whose connections calls are joined to; `None`: any.
    pub netns: Option<u32>,
    /// See [`crate::Config::link_wait`].
    pub link_wait: std::time::Duration,
    /// See [`crate::Config::link_pending_max`].
    pub link_pending_max: usize,
    /// See [`crate::Config::link_pending_bytes`].
    pub link_pending_bytes: usize,
    /// See [`crate::Config::watch_queue`], [`crate::Config::watch_queue_bytes`], [`crate::Config::max_watchers`].
    pub watch: crate::watch::Limits,
    /// See [`crate::Config::methods_max_rows`].
    pub methods_max_rows: usize,
    /// See [`crate::Config::methods_max_interfaces`].
    pub methods_max_interfaces: usize,
    /// See [`crate::Config::methods_exited_grace`].
    pub methods_exited_grace: std::time::Duration,
    /// See [`crate::Config::expose_command_line`].
    pub expose_command_line: bool,
}

/// The service's state.
#[derive(Debug)]
pub struct Core {
    table: Arc<Mutex<ConnTable>>,
    netns: Option<u32>,
    /// Records waiting for their connection. Locked before the table when both are.
    pending: Mutex<Pending>,
    hub: Arc<Hub>,
    methods: Mutex<MethodTable>,
    methods_exited_grace: std::time::Duration,
    expose_command_line: bool,
    metrics: Arc<Metrics>,
    /// Clock offsets read once: a process's start time must convert to the same Unix time on every call, or the
    /// method table would split one process into several rows by nanoseconds of clock-reading jitter.
    clocks: Clocks,
    /// Signalled when a batch leaves records waiting, so the retry timer sleeps while none waits.
    queued: tokio::sync::Notify,
}

// === impl Core ===

impl Core {
    /// The state, joining against `table`.
    pub fn new(table: Arc<Mutex<ConnTable>>, metrics: Arc<Metrics>, s: CoreSettings) -> Arc<Self> {
        Arc::new(Self {
            table,
            netns: s.netns,
            pending: Mutex::new(Pending::new(s.link_pending_max, s.link_wait).with_max_bytes(s.link_pending_bytes)),
            hub: Hub::new(s.watch, metrics.watchers.clone(), metrics.watch_lost.clone()),
            methods: Mutex::new(MethodTable::new(s.methods_max_rows, s.methods_max_interfaces)),
            methods_exited_grace: s.methods_exited_grace,
            expose_command_line: s.expose_command_line,
            metrics,
            clocks: Clocks::now(),
            queued: tokio::sync::Notify::new(),
        })
    }

    /// Takes a batch: refuses each invalid record on its own (counted by reason), then links or queues each
    /// valid one. Returns how many were accepted. One bad record never costs the others: a filter cannot know
    /// every limit of every agent version, and one client-chosen value must not lose other calls' records.
    /// `reporter_netns`: the reporter's network namespace, where its records are looked up when the agent watches
    /// every namespace.
    pub fn report(&self, mut calls: Vec<CallRecord>, now: Instant, reporter_netns: Option<u32>) -> u32 {
        let total = calls.len();
        let mut refused = None;
        // In place: a valid record stays where it is (records are large; moving each one showed in profiles).
        let mut i = 0;
        calls.retain(|c| {
            i += 1;
            match validate(c) {
                Ok(()) => true,
                Err(e) => {
                    self.metrics
                        .records_rejected
                        .get_or_create(&[("reason", e.reason())])
                        .inc();
                    refused.get_or_insert((i - 1, e));
                    false
                }
            }
        });
        if let Some((i, e)) = refused {
            tracing::debug!(
                refused = total - calls.len(),
                of = total,
                first = i,
                error = %e,
                "refused invalid call records"
            );
        }
        let n = u32::try_from(calls.len()).unwrap_or(u32::MAX);
        self.metrics.records_received.inc_by(calls.len() as u64);
        let received = unix_now();
        // The outcomes beside the records, which stay in place (a record that waits is taken by the queue).
        let outcomes: Vec<Option<Outcome>> = {
            let mut pending = lock(&self.pending);
            let table = lock(&self.table);
            let lookup = TableLookup::now(&table, self.netns);
            let outcomes = calls
                .iter_mut()
                .map(|c| pending.offer_in_place(&lookup, c, reporter_netns, received, now))
                .collect();
            self.metrics.link_pending.set(gauge(pending.len()));
            self.metrics.link_pending_bytes.set(gauge(pending.bytes()));
            if !pending.is_empty() {
                self.queued.notify_one();
            }
            outcomes
        };
        self.finish(calls.into_iter().zip(outcomes).filter_map(|(record, outcome)| {
            Some(Resolved {
                record,
                received_unix_nano: received,
                outcome: outcome?,
            })
        }));
        n
    }

    /// Retries the waiting records; those linked now or out of time are reported.
    pub fn tick(&self, now: Instant) {
        self.settle(|pending, lookup| pending.retry(lookup, now));
    }

    /// Resolves waiting records with `resolve`, under the locks of the queue and of the table, then reports them.
    fn settle(&self, resolve: impl FnOnce(&mut link::Pending, &TableLookup<'_>) -> Vec<Resolved>) {
        let done = {
            let mut pending = lock(&self.pending);
            let table = lock(&self.table);
            let done = resolve(&mut pending, &TableLookup::now(&table, self.netns));
            self.metrics.link_pending.set(gauge(pending.len()));
            self.metrics.link_pending_bytes.set(gauge(pending.bytes()));
            done
        };
        self.finish(done);
    }

    fn finish(&self, done: impl IntoIterator<Item = Resolved>) {
        let clocks = self.clocks;
        // The message of each call is built only when somebody watches: the method table needs the record and
        // its process, and the process is built once per process and batch. A watcher subscribing meanwhile
        // gets the calls of the next batch, as it would have had it subscribed a moment later.
        let watched = !self.hub.is_empty();
        let mut processes = link::Processes::new(clocks, self.expose_command_line);
        let mut calls: Vec<Arc<LinkedCall>> = Vec::new();
        // One counter update per outcome and batch, not per record: each update hashes the label set and takes
        // the family's lock.
        let mut outcomes: Vec<(&'static str, u64)> = Vec::with_capacity(4);
        {
            let mut methods = lock(&self.methods);
            for r in done {
                let label = r.outcome.label();
                match outcomes.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, n)) => *n += 1,
                    None => outcomes.push((label, 1)),
                }
                let process = match &r.outcome {
                    link::Outcome::Linked(conn, _) => processes.get(conn),
                    _ => None,
                };
                self.metrics
                    .record_methods(methods.observe_record(&r.record, r.received_unix_nano, process));
                if watched {
                    let process = process.cloned();
                    calls.push(Arc::new(link::linked_call_with(r, process, clocks)));
                }
            }
            if outcomes.is_empty() {
                return;
            }
            self.metrics.methods_rows.set(gauge(methods.len()));
        }
        for (label, n) in outcomes {
            self.metrics.records.get_or_create(&[("outcome", label)]).inc_by(n);
        }
        for c in &calls {
            self.hub.publish(c);
        }
    }

    /// The agent is stopping: the records still waiting for their connection are tried once more and reported
    /// (linked, or unlinked and counted), later ones no longer wait, and then the watchers' streams end after
    /// what they have queued (with UNAVAILABLE, see [`WATCH_STOPPING`]). Without this, records the agent had
    /// accepted (the filter counts them as sent) were never reported nor counted.
    pub fn shutdown(&self) {
        self.settle(|pending, lookup| pending.close(lookup));
        self.hub.close();
    }

    /// Records the interfaces process `pid` declares. Returns how many were accepted. They belong to the process
    /// that has the pid while its call is served (its start time is read now), so a later process that reuses the
    /// pid inherits none. A declaring peer normally waits for the answer; one that exited, and whose pid was
    /// reused, between connecting (when `SO_PEERCRED` was taken) and this read would be misattributed. A process
    /// the agent cannot see (pid 0: outside its pid namespace) or that is already gone is refused
    /// (`FAILED_PRECONDITION`).
    pub fn declare(&self, pid: u32, methods: Vec<MethodMetadata>) -> Result<u32, Status> {
        for (i, m) in methods.iter().enumerate() {
            if let Some((name, len)) = first_too_long([
                ("service", &m.service),
                ("method", &m.method),
                ("input_type", &m.input_type),
                ("output_type", &m.output_type),
                ("version", &m.version),
            ]) {
                return Err(Status::invalid_argument(format!(
                    "method {i}: {name} is {len} bytes (at most {MAX_FIELD_BYTES})"
                )));
            }
            if m.service.is_empty() || m.method.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "method {i}: service and method are required"
                )));
            }
        }
        // A declaration joins its process's calls by pid and start time: without them it could join none, so the
        // client hears why rather than an `accepted` count for declarations that would wait out their grace unused.
        let start = (pid != 0).then(|| self.start_time_unix_nano(pid)).flatten();
        let Some(start_time_unix_nano) = start else {
            return Err(Status::failed_precondition(format!(
                "the agent cannot see the declaring process (pid {pid} from the socket's peer credentials, no \
                 /proc/{pid}/stat): its declarations could never be joined to its calls. Run it in the agent's pid \
                 namespace (shareProcessNamespace in the pod), and keep it running while it declares"
            )));
        };
        let by = Declarer {
            pid,
            start_time_unix_nano,
        };
        let mut table = lock(&self.methods);
        let mut accepted = 0;
        for m in methods {
            self.metrics.record_methods(table.declare(by, m));
            accepted += 1;
        }
        self.metrics.methods_rows.set(gauge(table.len()));
        Ok(accepted)
    }

    /// The start time of process `pid`, as `Process.start_time_unix_nano` has it (with the same clock offset, read
    /// once), from `/proc/<pid>/stat`: floored to the clock tick. `None` when the process is gone.
    fn start_time_unix_nano(&self, pid: u32) -> Option<u64> {
        let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| crate::procinfo::start_ticks(&s))?;
        let ns = i128::from(ticks) * i128::from(crate::procinfo::clock_tick_ns());
        u64::try_from(self.clocks.boot_to_unix + ns).ok()
    }

    /// Removes the method table's rows and declarations of processes gone for `methods_exited_grace`. A process (a
    /// row's, or a declarer's) is alive while `/proc/<pid>` has its start time.
    pub fn expire_exited_methods(&self, now: Instant) {
        let tick_ns = i128::from(crate::procinfo::clock_tick_ns());
        let alive = |pid: u32, start_unix: u64| {
            // /proc floors the kernel's start time to clock ticks: within two of them, it is the same process.
            self.start_time_unix_nano(pid)
                .is_some_and(|now| (i128::from(start_unix) - i128::from(now)).abs() < 2 * tick_ns)
        };
        let mut table = lock(&self.methods);
        let n = table.expire_exited(alive, self.methods_exited_grace, now);
        if n > 0 {
            self.metrics
                .methods_evictions
                .get_or_create(&[("reason", "exited")])
                .inc_by(n);
        }
        self.metrics.methods_rows.set(gauge(table.len()));
    }

    /// The method table.
    pub fn list(&self) -> Vec<proto::v1::MethodStats> {
        lock(&self.methods).list()
    }

    /// A page of the method table (`ListMethods`).
    pub fn page(&self, page_token: &str, page_size: usize) -> Result<ListMethodsResponse, methods::BadToken> {
        lock(&self.methods).page(page_token, page_size)
    }

    /// The watchers.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Records waiting for their connection.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Waits until a batch has left records waiting (at once if one did since the last wait).
    pub async fn queued(&self) {
        self.queued.notified().await;
    }
}

/// Why a record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("unknown direction {0}")]
    Direction(i32),
    #[error("{field} is {len} bytes (at most {MAX_FIELD_BYTES})")]
    TooLong { field: &'static str, len: usize },
    #[error("{0} is not an address")]
    Address(&'static str),
    /// Not a label the filter's tenant dimension can make: longer than [`MAX_TENANT_BYTES`], or a byte outside
    /// `[A-Za-z0-9._-]`. The agent keeps a row per tenant and prints the label: a raw id or free text must not get
    /// there, even from a client that is not the filter.
    #[error("tenant is not a bounded label ({len} bytes; at most {MAX_TENANT_BYTES} of [A-Za-z0-9._-])")]
    Tenant { len: usize },
}

impl Invalid {
    /// The `reason` label of `grayscope_agent_call_records_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::Direction(_) => "unknown_direction",
            Invalid::TooLong { .. } => "field_too_long",
            Invalid::Address(_) => "bad_address",
            Invalid::Tenant { .. } => "bad_tenant",
        }
    }
}

/// The first of `fields` longer than [`MAX_FIELD_BYTES`]: its name and length. One bound for every text the agent
/// takes in: a record's fields, a declaration's, a watch filter's.
fn first_too_long<'a>(fields: impl IntoIterator<Item = (&'static str, &'a String)>) -> Option<(&'static str, usize)> {
    fields
        .into_iter()
        .find(|(_, v)| v.len() > MAX_FIELD_BYTES)
        .map(|(name, v)| (name, v.len()))
}

/// Whether a `Watch` method filter is within what a record can hold: `rpc.method` or its `Method`, one field of at
/// most [`MAX_FIELD_BYTES`], or an HTTP `VERB route`, two fields of at most that each (the filter matches the verb
/// up to its first space, and the route after it).
fn method_filter_can_match(method: &str) -> bool {
    method.len() <= MAX_FIELD_BYTES
        || method
            .split_once(' ')
            .is_some_and(|(verb, route)| verb.len() <= MAX_FIELD_BYTES && route.len() <= MAX_FIELD_BYTES)
}

/// Why a record is refused: an unknown direction, a text field longer than [`MAX_FIELD_BYTES`], an address
/// that cannot be one, or a tenant that is not a bounded label ([`valid_tenant`]).
pub fn validate(c: &CallRecord) -> Result<(), Invalid> {
    if Direction::try_from(c.direction).is_err() {
        return Err(Invalid::Direction(c.direction));
    }
    if let Some((field, len)) = first_too_long([
        ("rpc_system_name", &c.rpc_system_name),
        ("rpc_method", &c.rpc_method),
        ("http_request_method", &c.http_request_method),
        ("http_route", &c.http_route),
        ("service", &c.service),
        ("gray_version", &c.gray_version),
        ("status", &c.status),
        ("request_id", &c.request_id),
        ("trace_id", &c.trace_id),
    ]) {
        return Err(Invalid::TooLong { field, len });
    }
    for (name, a) in [
        ("client", &c.client),
        ("server", &c.server),
        ("upstream_local", &c.upstream_local),
        ("upstream_peer", &c.upstream_peer),
    ] {
        if let Some(a) = a {
            if a.address.len() > MAX_FIELD_BYTES || a.port > 65_535 {
                return Err(Invalid::Address(name));
            }
        }
    }
    if !valid_tenant(&c.tenant) {
        return Err(Invalid::Tenant { len: c.tenant.len() });
    }
    Ok(())
}

/// Whether `t` can be a tenant label: empty (the filter's tenant dimension is off), or at most
/// [`MAX_TENANT_BYTES`] of `[A-Za-z0-9._-]`, the gray version's alphabet, which holds every label the filter makes.
pub fn valid_tenant(t: &str) -> bool {
    t.len() <= MAX_TENANT_BYTES
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Counts the messages refused for their size: over `max_message_bytes`, or of more than
/// [`proto::codec::MAX_ENTRIES`] entries (the codec counts them before decoding). tonic refuses them (OUT_OF_RANGE)
/// while decoding, before any handler runs, so the count is taken from the response: a trailers-only answer with
/// `grpc-status: 11`. No handler of the service answers OUT_OF_RANGE itself.
pub fn count_oversized<B>(
    counter: prometheus_client::metrics::counter::Counter,
) -> tower::util::MapResponseLayer<
    impl Fn(tonic::codegen::http::Response<B>) -> tonic::codegen::http::Response<B> + Clone,
> {
    tower::util::MapResponseLayer::new(move |response: tonic::codegen::http::Response<B>| {
        let code = response.headers().get("grpc-status").map(|v| v.as_bytes());
        if code == Some(b"11".as_slice()) {
            counter.inc();
        }
        response
    })
}

/// The status message ending every `Watch` stream when the agent stops (with UNAVAILABLE).
pub const WATCH_STOPPING: &str = "the agent is stopping";

/// The tonic service over a [`Core`].
#[derive(Clone, Debug)]
pub struct Service {
    core: Arc<Core>,
}

impl Service {
    /// Serves `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Collector for Service {
    async fn report(&self, request: Request<ReportRequest>) -> Result<Response<ReportResponse>, Status> {
        // The reporter's namespace only matters when the agent watches every namespace (it reads /proc per call).
        let netns = if self.core.netns.is_some() {
            None
        } else {
            peer_netns(&request)
        };
        let r = request.into_inner();
        let n = r.calls.len();
        let accepted = self.core.report(r.calls, Instant::now(), netns);
        if (accepted as usize) < n {
            tracing::debug!(reporter = %r.reporter, records = n, accepted, "refused invalid records of a Report batch");
        }
        Ok(Response::new(ReportResponse { accepted }))
    }

    async fn report_method_metadata(
        &self,
        request: Request<ReportMethodMetadataRequest>,
    ) -> Result<Response<ReportMethodMetadataResponse>, Status> {
        let pid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        let accepted = self.core.declare(pid, request.into_inner().methods)?;
        Ok(Response::new(ReportMethodMetadataResponse { accepted }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        // A filter no record can match is a mistake worth saying, and the agent would keep it for the stream's life:
        // longer than a record's field can be, or a raw tenant id typed where its label belongs.
        if let Some((name, len)) =
            first_too_long([("service", &request.service), ("gray_version", &request.gray_version)])
        {
            return Err(Status::invalid_argument(format!(
                "{name}: {len} bytes, longer than any record's (at most {MAX_FIELD_BYTES})"
            )));
        }
        if !method_filter_can_match(&request.method) {
            return Err(Status::invalid_argument(format!(
                "method: {} bytes, longer than any record's (at most {MAX_FIELD_BYTES}, or for HTTP a verb and a \
                 route of at most {MAX_FIELD_BYTES} each)",
                request.method.len()
            )));
        }
        if !valid_tenant(&request.tenant) {
            return Err(Status::invalid_argument(format!(
                "tenant: not a tenant label (at most {MAX_TENANT_BYTES} bytes of [A-Za-z0-9._-]; the filter's label, \
                 such as enterprise or t_<hash>, not the tenant's id)"
            )));
        }
        let watcher = self
            .core
            .hub()
            .subscribe(Filter::from(request))
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        // A watcher's calls end only when the hub closes, that is when the agent stops ([`Core::shutdown`]). Ending
        // with OK would read as "nothing more will come": UNAVAILABLE, the status a client's retry or reconnect logic
        // acts on (gRPC itself retries no stream that has answered), tells it to watch again (the agent that replaces
        // this one), after the calls queued before it.
        let stopping = futures_util::stream::once(async { Err(Status::unavailable(WATCH_STOPPING)) });
        Ok(Response::new(Box::pin(watcher.into_stream().map(Ok).chain(stopping))))
    }

    async fn list_methods(
        &self,
        request: Request<ListMethodsRequest>,
    ) -> Result<Response<ListMethodsResponse>, Status> {
        let r = request.into_inner();
        let page_size = usize::try_from(r.page_size).unwrap_or(usize::MAX);
        self.core
            .page(&r.page_token, page_size)
            .map(Response::new)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// The network namespace (inode) of the calling process, from its pid in `SO_PEERCRED`.
fn peer_netns<T>(request: &Request<T>) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let pid = request.extensions().get::<UdsConnectInfo>()?.peer_cred?.pid()?;
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    u32::try_from(meta.ino()).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
