//! The agent's own metrics in Prometheus text format, served at `/metrics`.
//!
//! Counters updated as things happen live in [`Metrics`]; values that live elsewhere (the reader's counts,
//! the kernel's per-CPU counters and program statistics, the table's size) are read at scrape time by a
//! [`Collector`], so a scrape always sees current numbers.

use std::{
    fmt,
    sync::{atomic::Ordering, Arc, Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use crate::{
    ebpf::{reader::ReaderCounters, KernelStats},
    table::{ConnTable, Evictions},
};

type Reason = [(&'static str, &'static str); 1];

/// The registry and the counters the agent updates.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `/proc` lookups that failed, by reason.
    pub enrichment_failures: Family<Reason, Counter>,
    /// Table evictions, by reason.
    pub evictions: Family<Reason, Counter>,
    /// Live connections ended without their CLOSE event, by how the loss was noticed.
    pub close_missed: Family<Reason, Counter>,
    /// Connections read from the kernel's map because the ring buffer dropped their ESTABLISHED event.
    pub connections_recovered: Counter,
    /// Call records received in `Report` batches that passed validation.
    pub records_received: Counter,
    /// Call records by outcome: `linked`, `unlinked_no_connection`, `unlinked_no_address`, `unlinked_queue_full`.
    pub records: Family<[(&'static str, &'static str); 1], Counter>,
    /// Call records refused as invalid, by reason (`unknown_direction`, `field_too_long`, `bad_address`,
    /// `bad_tenant`).
    pub records_rejected: Family<Reason, Counter>,
    /// gRPC messages refused because they were larger than `max_message_bytes`, or held more than
    /// [`proto::codec::MAX_ENTRIES`] entries.
    pub messages_oversized: Counter,
    /// Records waiting for their connection.
    pub link_pending: Gauge,
    /// Their encoded bytes.
    pub link_pending_bytes: Gauge,
    /// Watchers connected.
    pub watchers: Gauge,
    /// Calls dropped from slow watchers' queues.
    pub watch_lost: Counter,
    /// Calls counted under interface `other` because the method table had `methods_max_interfaces` already.
    pub methods_overflow: Counter,
    /// Rows and declarations removed from the method table, by reason: `idle` (for room), `exited`.
    pub methods_evictions: Family<Reason, Counter>,
    /// Rows of the method table.
    pub methods_rows: Gauge,
    /// Calls refused because the peer's uid is not allowed.
    pub permission_denied: Counter,
    /// Open connections on the Unix socket, by pool (`allowed`, `refused`).
    pub connections: Family<[(&'static str, &'static str); 1], Gauge>,
    /// Connections the agent closed, by reason: `per_peer`, `per_uid`, `refused_pool`, `handshake_timeout`,
    /// `idle_timeout`.
    pub connections_closed: Family<Reason, Counter>,
    /// Connections to the metrics endpoint closed at once because it held [`MAX_CONNECTIONS`] already.
    pub metrics_connections_refused: Counter,
}

// === impl Metrics ===

impl Metrics {
    /// Registers every metric under the `grayscope_agent` prefix.
    pub fn new(reader: Arc<ReaderCounters>, kernel: Option<Arc<KernelStats>>, table: Arc<Mutex<ConnTable>>) -> Self {
        let mut registry = Registry::with_prefix("grayscope_agent");
        let enrichment_failures = Family::<Reason, Counter>::default();
        registry.register(
            "enrichment_failures",
            "Processes the agent could not describe from /proc, by reason",
            enrichment_failures.clone(),
        );
        let evictions = Family::<Reason, Counter>::default();
        registry.register(
            "table_evictions",
            "Connections removed from the table: expired after the grace period, or evicted for room",
            evictions.clone(),
        );
        let close_missed = Family::<Reason, Counter>::default();
        registry.register(
            "connections_close_missed",
            "Live connections ended without their CLOSE event: a new socket took their kernel address \
             (socket_reused), or the kernel no longer tracks them (kernel_forgot)",
            close_missed.clone(),
        );
        let connections_recovered = Counter::default();
        registry.register(
            "connections_recovered",
            "Connections read from the kernel's map of open connections because the ring buffer had no room for \
             their ESTABLISHED event",
            connections_recovered.clone(),
        );
        let records_received = Counter::default();
        registry.register(
            "call_records_received",
            "Call records received from the filter and accepted (invalid ones are refused one by one)",
            records_received.clone(),
        );
        let records = Family::default();
        registry.register(
            "call_records",
            "Call records by how they were joined to a process",
            records.clone(),
        );
        let records_rejected = Family::<Reason, Counter>::default();
        registry.register(
            "call_records_rejected",
            "Call records refused as invalid, one by one (the rest of their batch is accepted), by reason",
            records_rejected.clone(),
        );
        let messages_oversized = Counter::default();
        registry.register(
            "grpc_messages_oversized",
            format!(
                "gRPC messages refused (OUT_OF_RANGE) because they were larger than max_message_bytes, or held more \
                 than {} records or declarations",
                proto::codec::MAX_ENTRIES
            ),
            messages_oversized.clone(),
        );
        let link_pending = Gauge::default();
        registry.register(
            "link_pending",
            "Call records waiting for their connection to appear",
            link_pending.clone(),
        );
        let link_pending_bytes = Gauge::default();
        registry.register(
            "link_pending_bytes",
            "Encoded bytes of the call records waiting for their connection",
            link_pending_bytes.clone(),
        );
        let watchers = Gauge::default();
        registry.register("watchers", "Watch streams open", watchers.clone());
        let watch_lost = Counter::default();
        registry.register(
            "watch_lost",
            "Calls dropped from the queue of a watcher that read too slowly",
            watch_lost.clone(),
        );
        let methods_overflow = Counter::default();
        registry.register(
            "methods_overflow",
            "Calls counted under interface `other` because the method table had methods_max_interfaces interfaces",
            methods_overflow.clone(),
        );
        let methods_evictions = Family::<Reason, Counter>::default();
        registry.register(
            "methods_evictions",
            "Rows and declarations removed from the method table: idle (the idlest, for room), exited (their \
             process exited methods_exited_grace ago)",
            methods_evictions.clone(),
        );
        let methods_rows = Gauge::default();
        registry.register("methods_rows", "Rows of the method table", methods_rows.clone());
        let permission_denied = Counter::default();
        registry.register(
            "grpc_permission_denied",
            "gRPC calls refused because the peer's uid is not allowed",
            permission_denied.clone(),
        );
        let connections = Family::default();
        registry.register(
            "grpc_connections",
            "Open connections on the agent's socket, by pool: allowed peers, or refused ones (told PERMISSION_DENIED)",
            connections.clone(),
        );
        let connections_closed = Family::<Reason, Counter>::default();
        registry.register(
            "grpc_connections_closed",
            "Connections on the agent's socket closed by the agent: per_peer (the process held \
             max_connections_per_peer already), per_uid (its uid held max_connections_per_uid), refused_pool (a \
             refused uid's, with the refused pool full), handshake_timeout, idle_timeout",
            connections_closed.clone(),
        );
        let metrics_connections_refused = Counter::default();
        registry.register(
            "metrics_connections_refused",
            format!("Connections to this metrics endpoint closed at once because it held its maximum ({MAX_CONNECTIONS}) already"),
            metrics_connections_refused.clone(),
        );
        registry.register_collector(Box::new(Live { reader, kernel, table }));
        Self {
            metrics_connections_refused,
            connections,
            connections_closed,
            registry,
            enrichment_failures,
            evictions,
            close_missed,
            connections_recovered,
            records_received,
            records,
            records_rejected,
            messages_oversized,
            link_pending,
            link_pending_bytes,
            watchers,
            watch_lost,
            methods_overflow,
            methods_evictions,
            methods_rows,
            permission_denied,
        }
    }

    /// Counts the evictions of one table operation.
    pub fn record_evictions(&self, e: Evictions) {
        for (reason, n) in [
            ("expired", e.expired),
            ("closed_for_room", e.closed_for_room),
            ("live_for_room", e.live_for_room),
        ] {
            if n > 0 {
                self.evictions.get_or_create(&[("reason", reason)]).inc_by(n);
            }
        }
        for (reason, n) in [("socket_reused", e.reused), ("kernel_forgot", e.forgotten)] {
            if n > 0 {
                self.close_missed.get_or_create(&[("reason", reason)]).inc_by(n);
            }
        }
    }

    /// Counts what one method-table update did.
    pub fn record_methods(&self, fx: crate::methods::Effects) {
        if fx.folded {
            self.methods_overflow.inc();
        }
        if fx.evicted_idle {
            self.methods_evictions.get_or_create(&[("reason", "idle")]).inc();
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the values that live outside the registry.
#[derive(Debug)]
struct Live {
    reader: Arc<ReaderCounters>,
    /// `None`: the programs are not loaded (`kernel_optional`); the kernel's series are then left out.
    kernel: Option<Arc<KernelStats>>,
    table: Arc<Mutex<ConnTable>>,
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        counter(
            &mut enc,
            "events_delivered",
            "Events read from the kernel ring buffer",
            self.reader.delivered.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "events_undecodable",
            "Events read that did not decode (agent and eBPF object out of step)",
            self.reader.decode_errors.load(Ordering::Relaxed),
        )?;
        labelled_counters(
            &mut enc,
            "ring_reads",
            "Reads of the kernel ring buffer, by what started them (a kernel wakeup, or a timed read)",
            "trigger",
            [
                ("wakeup", self.reader.woken_reads.load(Ordering::Relaxed)),
                ("timer", self.reader.timed_reads.load(Ordering::Relaxed)),
            ],
        )?;
        let attached = ConstGauge::new(i64::from(self.kernel.is_some()));
        attached.encode(enc.encode_descriptor(
            "kernel_programs_attached",
            "1 when the kernel programs are loaded and attached; 0 when the agent runs without them \
             (kernel_optional), linking no call record to a process",
            None,
            attached.metric_type(),
        )?)?;
        let (len, live, max) = {
            let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            (t.len(), t.live(), t.max_entries())
        };
        let tracked = ConstGauge::new(0i64);
        let mut m = enc.encode_descriptor(
            "connections_tracked",
            "Connections in the table, by state",
            None,
            tracked.metric_type(),
        )?;
        for (state, n) in [("live", live), ("closed", len - live)] {
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(m.encode_family(&[("state", state)])?)?;
        }
        let cap = ConstGauge::new(i64::try_from(max).unwrap_or(i64::MAX));
        cap.encode(enc.encode_descriptor(
            "connections_table_capacity",
            "Most connections the table holds",
            None,
            cap.metric_type(),
        )?)?;
        let Some(kernel) = &self.kernel else {
            return Ok(());
        };
        match kernel.counters() {
            Ok(k) => {
                counter(
                    &mut enc,
                    "events_produced",
                    "Events the kernel programs tried to emit",
                    k.produced,
                )?;
                counter(
                    &mut enc,
                    "events_dropped",
                    "Events lost because the ring buffer was full",
                    k.dropped,
                )?;
                counter(
                    &mut enc,
                    "inbound_unowned",
                    "Accepted connections whose listener had no known owner (reported without a process)",
                    k.unowned,
                )?;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the kernel stats map"),
        }
        let listeners = ConstGauge::new(i64::try_from(kernel.listeners()).unwrap_or(i64::MAX));
        listeners.encode(enc.encode_descriptor(
            "listeners_tracked",
            "Listening sockets the kernel holds an owner for",
            None,
            listeners.metric_type(),
        )?)?;
        if let Some(runs) = kernel.program_runs() {
            labelled_counters(
                &mut enc,
                "bpf_program_runs",
                "Runs of each eBPF program (BPF_ENABLE_STATS)",
                "program",
                runs.iter().map(|r| (r.program, r.runs)),
            )?;
            labelled_counters(
                &mut enc,
                "bpf_program_run_seconds",
                "Time spent in each eBPF program",
                "program",
                runs.iter().map(|r| (r.program, r.run_time.as_secs_f64())),
            )?;
        }
        Ok(())
    }
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result<(), fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A counter family with one label: a series per (label value, count).
fn labelled_counters<'a, N: EncodeCounterValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, N)>,
) -> Result<(), fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value, n) in values {
        ConstCounter::new(n).encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// The format [`Metrics::encode`] writes: `prometheus_client`'s text encoder writes OpenMetrics (`# TYPE x counter`
/// with samples `x_total`, `# EOF`). Declared as the classic `text/plain; version=0.0.4`, a scraper parses it with
/// the classic rules, under which a counter's `_total` samples are not of its family: every counter arrived
/// untyped.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long open scrapes may go on after `cancel` before their connections are closed (the gRPC server's too).
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a client of the metrics endpoint has to send a request's headers, from its connection or its previous
/// request on: then its connection is closed. Prometheus sends them at once.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The connections the metrics endpoint holds at once: room for a few scrapers and probes. Each is a descriptor of
/// the agent, which its socket needs too, so a client of the pod's network that opens more (and sends nothing, for
/// up to [`HEADER_READ_TIMEOUT`] each) has the next ones closed at once instead of taking them all.
pub const MAX_CONNECTIONS: usize = 32;

/// Serves `/metrics` (and `/healthz`) on `listener` until `cancel` fires; the scrapes in progress then get
/// [`DRAIN`] to end, and the connections still open are closed. A client must send each request's headers within
/// [`HEADER_READ_TIMEOUT`] (hyper's header read timeout, which runs only with a timer: `axum::serve` gives it none),
/// so no client of the pod's network holds a connection for ever, and none keeps the agent from stopping. At most
/// [`MAX_CONNECTIONS`] are open at once; one more is closed as soon as it is accepted, and counted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::{http::StatusCode, response::IntoResponse, routing::get, Router};
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        server::graceful::GracefulShutdown,
        service::TowerToHyperService,
    };
    let refused = metrics.metrics_connections_refused.clone();
    let scrape = move || {
        let metrics = Arc::clone(&metrics);
        async move {
            match metrics.encode() {
                Ok(text) => ([("content-type", CONTENT_TYPE)], text).into_response(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }
    };
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: try again shortly rather than spin or stop serving.
                    tracing::debug!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = cancel.cancelled() => break,
        };
        // Accepted and closed rather than left in the backlog: the client learns at once, and the descriptor is
        // back before the next accept.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused.inc();
            tracing::debug!("metrics endpoint: closing a connection, {MAX_CONNECTIONS} open already");
            continue;
        };
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())));
        connections.spawn(async move {
            let served = connection.await;
            drop(slot);
            served
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!("metrics connections still open {DRAIN:?} after shutdown; closing them");
        }
    }
    connections.abort_all();
    Ok(())
}
