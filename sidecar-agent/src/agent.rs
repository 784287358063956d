//! The daemon: kernel probe → ring buffer reader → enrichment and connection table; the Collector service on the
//! Unix socket (call records linked against the table, a timer retrying those that wait); the metrics endpoint.
//! All stopped together.

use std::{
    future::Future,
    sync::{atomic::Ordering, Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    net::{TcpListener, UnixListener},
    sync::mpsc,
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    collector::{Core, CoreSettings},
    config::Config,
    control::{self, ServeSettings},
    ebpf::{
        events::ConnEvent,
        reader::{self, PauseControl, Reader, ReaderCounters},
        KernelConns, KernelCounters, KernelStats, Probe, ProbeOptions,
    },
    error::Error,
    metrics::{self, Metrics},
    procinfo::ProcessCache,
    table::ConnTable,
};

/// Sockets bound by the caller before the agent starts, so bind errors surface first and tests can bind
/// ephemeral ones.
#[derive(Debug)]
pub struct Listeners {
    /// The agent's Unix socket (see [`control::bind`]).
    pub control: UnixListener,
    /// The metrics endpoint.
    pub metrics: TcpListener,
}

/// Delivered, dropped and produced events at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventCounts {
    /// Read from the ring buffer by the agent.
    pub delivered: u64,
    /// Lost in the kernel because the ring buffer was full.
    pub dropped: u64,
    /// Emitted by the kernel programs (delivered + dropped + still in the ring).
    pub produced: u64,
}

/// A running agent.
pub struct Agent {
    /// The connection table, shared with the event task, the metrics and the socket.
    table: Arc<Mutex<ConnTable>>,
    /// Kernel counters and the loaded programs (they detach when the last reference goes); `None` when they could
    /// not be loaded and the configuration lets the agent run without them (`kernel_optional`).
    kernel: Option<Arc<KernelStats>>,
    /// The reader's counts.
    reader: Arc<ReaderCounters>,
    /// The metrics registry.
    metrics: Arc<Metrics>,
    /// Pauses the ring buffer reader.
    pause: PauseControl,
    /// Stops every task.
    cancel: CancellationToken,
    /// The tasks, awaited on [`Agent::stop`].
    tasks: JoinSet<()>,
    /// Inode of the watched netns (0: all).
    netns: u32,
    /// The Collector's state.
    core: Arc<Core>,
}

// === impl Agent ===

impl Agent {
    /// Loads the eBPF programs and starts the tasks; when the programs cannot be loaded and the configuration says
    /// `kernel_optional`, starts the rest without them. Must be called inside a tokio runtime.
    pub async fn start(config: &Config, listeners: Listeners) -> Result<Self, Error> {
        let probe = match Probe::load(&ProbeOptions {
            netns: config.netns.clone(),
            ring_buffer_bytes: config.ring_buffer_bytes,
            kernel_max_conns: config.kernel_max_conns,
            accept_tracepoints: config.accept_tracepoints,
            program_stats: config.program_stats,
            raw_tracepoint: false,
        }) {
            Ok(probe) => Some(probe),
            // A pod's sidecar that exits keeps the pod out of its Service: serve without the kernel side instead.
            Err(e) if config.kernel_optional => {
                tracing::error!(
                    error = %e,
                    "the kernel programs are not loaded: serving without them (kernel_optional), so no call record \
                     can be linked to a process"
                );
                None
            }
            Err(e) => return Err(e),
        };
        let reader_counters = Arc::new(ReaderCounters::default());
        let (mut kernel, mut kernel_side, mut netns) = (None, None, 0);
        if let Some(mut probe) = probe {
            let ring = probe.take_ring().ok_or(Error::Map {
                name: "events",
                detail: "ring buffer already taken".into(),
            })?;
            let reader = Reader::new(ring, Arc::clone(&reader_counters)).map_err(|source| Error::Io {
                what: "registering the ring buffer with tokio".into(),
                source,
            })?;
            let conns = probe.take_conns().ok_or(Error::Map {
                name: "conns",
                detail: "map already taken".into(),
            })?;
            kernel = Some(probe.stats());
            netns = probe.netns();
            kernel_side = Some((reader, conns));
        }
        let table = Arc::new(Mutex::new(ConnTable::new(
            config.table_max_entries,
            config.closed_grace,
        )));
        let metrics = Arc::new(Metrics::new(
            Arc::clone(&reader_counters),
            kernel.clone(),
            Arc::clone(&table),
        ));
        let cancel = CancellationToken::new();
        let (pause, switch) = reader::pause_switch();
        let mut tasks = JoinSet::new();

        if let (Some((reader, conns)), Some(stats)) = (kernel_side, kernel.clone()) {
            let (tx, rx) = mpsc::channel(4096);
            let (recovered_tx, recovered_rx) = mpsc::channel(4096);
            let c = cancel.clone();
            tasks.spawn(async move {
                if let Err(e) = reader.run(tx, switch, c).await {
                    tracing::error!(error = %e, "ring buffer reader failed");
                }
            });
            tasks.spawn(apply_events(
                Events {
                    ring: rx,
                    recovered: recovered_rx,
                },
                Arc::clone(&table),
                Arc::clone(&metrics),
                config.closed_grace,
                cancel.clone(),
            ));
            tasks.spawn(sweep_kernel(
                conns,
                stats,
                recovered_tx,
                Arc::clone(&table),
                Arc::clone(&metrics),
                cancel.clone(),
            ));
        }
        let (m, c) = (Arc::clone(&metrics), cancel.clone());
        let addr = listeners.metrics.local_addr().ok();
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(listeners.metrics, m, c).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
        let core = Core::new(
            Arc::clone(&table),
            Arc::clone(&metrics),
            CoreSettings {
                netns: Some(netns).filter(|&n| n != 0),
                link_wait: config.link_wait,
                link_pending_max: config.link_pending_max,
                link_pending_bytes: config.link_pending_bytes,
                watch: crate::watch::Limits {
                    calls: config.watch_queue,
                    bytes: config.watch_queue_bytes,
                    watchers: config.max_watchers,
                },
                methods_max_rows: config.methods_max_rows,
                methods_max_interfaces: config.methods_max_interfaces,
                methods_exited_grace: config.methods_exited_grace,
                expose_command_line: config.expose_command_line,
            },
        );
        tasks.spawn(link_timer(Arc::clone(&core), config.link_wait, cancel.clone()));
        tasks.spawn(methods_timer(
            Arc::clone(&core),
            config.methods_exited_grace,
            cancel.clone(),
        ));
        tasks.spawn(control::serve(
            listeners.control,
            Arc::clone(&core),
            ServeSettings {
                allowed_uids: config.allowed_uids.clone(),
                max_message_bytes: config.max_message_bytes,
                max_connections: config.max_connections,
                max_streams: config.max_streams,
                max_connections_per_peer: config.max_connections_per_peer,
                max_connections_per_uid: config.max_connections_per_uid,
                timeouts: control::conn::Timeouts {
                    handshake: config.handshake_timeout,
                    idle: config.idle_timeout,
                },
                keepalive: config.keepalive,
            },
            Arc::clone(&metrics),
            cancel.clone(),
        ));
        tracing::info!(metrics = ?addr, netns, kernel_programs = kernel.is_some(), "agent started");
        Ok(Self {
            table,
            kernel,
            reader: reader_counters,
            metrics,
            pause,
            cancel,
            tasks,
            netns,
            core,
        })
    }

    /// The owner the kernel holds for the listener of this agent's namespace (or of `netns` when the agent watches
    /// every one) bound to `addr`; a wildcard bind is `0.0.0.0` or `[::]`.
    pub fn listener_owner(&self, netns: u32, addr: std::net::SocketAddr) -> Option<crate::ebpf::ListenOwner> {
        self.kernel.as_ref()?.listener_owner(netns, addr)
    }

    /// The Collector's state (what the gRPC service serves).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Runs `f` on the connection table.
    pub fn with_table<R>(&self, f: impl FnOnce(&ConnTable) -> R) -> R {
        f(&self.table.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The event counters now. Once the ring buffer is drained, `delivered + dropped == produced`.
    pub fn counts(&self) -> Result<EventCounts, Error> {
        // Delivered first: every event delivered by then was produced (and counted) before the kernel counters are
        // read, so `delivered + dropped <= produced` always holds. Read the other way round, events produced and
        // delivered between the two reads made the sum exceed `produced` under load.
        let delivered = self.reader.delivered.load(Ordering::Acquire);
        let Some(kernel) = &self.kernel else {
            return Ok(EventCounts {
                delivered,
                dropped: 0,
                produced: 0,
            });
        };
        let KernelCounters { produced, dropped, .. } = kernel.counters().map_err(|e| Error::Map {
            name: "stats",
            detail: e.to_string(),
        })?;
        Ok(EventCounts {
            delivered,
            dropped,
            produced,
        })
    }

    /// Stops reading the ring buffer (events pile up, then the kernel drops and counts them); returns once the
    /// reader has stopped.
    pub async fn pause_reader(&self) {
        self.pause.pause().await;
    }

    /// Resumes reading the ring buffer.
    pub fn resume_reader(&self) {
        self.pause.resume();
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Inode of the watched network namespace (0: all).
    pub fn netns(&self) -> u32 {
        self.netns
    }

    /// Stops every task and detaches the programs.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the agent, runs it until `shutdown` completes, then stops it.
pub async fn run(config: &Config, listeners: Listeners, shutdown: impl Future) -> Result<(), Error> {
    let agent = Agent::start(config, listeners).await?;
    shutdown.await;
    tracing::info!("shutting down");
    agent.stop().await;
    Ok(())
}

/// Retries the records waiting for their connection, a few times per link wait, and sleeps while none waits (its
/// ticks were most of an idle agent's wakeups); on shutdown reports the records still waiting and ends the watch
/// streams so the gRPC server can drain ([`Core::shutdown`]).
async fn link_timer(core: Arc<Core>, wait: Duration, cancel: CancellationToken) {
    let period = (wait / 10).clamp(Duration::from_millis(5), Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if core.pending() == 0 {
            tokio::select! {
                () = cancel.cancelled() => {
                    core.shutdown();
                    return;
                }
                () = core.queued() => tick.reset(),
            }
        }
        tokio::select! {
            () = cancel.cancelled() => {
                core.shutdown();
                return;
            }
            _ = tick.tick() => core.tick(Instant::now()),
        }
    }
}

/// How often the live connections are checked against the kernel's map.
pub const KERNEL_SWEEP: Duration = Duration::from_secs(5);

/// Reconciles the table with the kernel's map of open connections every [`KERNEL_SWEEP`], for the events the ring
/// buffer lost:
/// - ends the live connections whose socket the kernel no longer tracks (their CLOSE event was lost: the LRU map
///   evicted them, or the ring buffer overflowed);
/// - after the ring buffer dropped events (the kernel's `dropped` counter moved), reads the established
///   connections from the map and hands them to [`apply_events`], which adds those the table lacks: without that, a
///   connection whose ESTABLISHED was dropped stayed unknown, its calls unlinked, until it closed.
///
/// The map reads (one system call per live connection, two per map entry) run on a blocking thread, without the
/// table's lock.
async fn sweep_kernel(
    conns: KernelConns,
    stats: Arc<KernelStats>,
    recovered: mpsc::Sender<ConnEvent>,
    table: Arc<Mutex<ConnTable>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let conns = Arc::new(conns);
    let mut dropped_seen = 0;
    let mut tick = tokio::time::interval(KERNEL_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Read before the map: an event counted as dropped by then has its socket's 4-tuple in the map already.
        let dropped = stats.counters().map_or(dropped_seen, |c| c.dropped);
        let rescan = dropped != dropped_seen;
        dropped_seen = dropped;
        let live = table.lock().unwrap_or_else(PoisonError::into_inner).live_sockets();
        let k = Arc::clone(&conns);
        let Ok((gone, checked, established)) = tokio::task::spawn_blocking(move || {
            let gone: Vec<(u64, u64)> = live.into_iter().filter(|&(skaddr, _)| !k.holds(skaddr)).collect();
            let checked = crate::link::Clocks::monotonic_ns();
            (gone, checked, if rescan { k.established() } else { Vec::new() })
        })
        .await
        else {
            continue;
        };
        if !gone.is_empty() {
            let e = table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .forget(&gone, checked, Instant::now());
            tracing::debug!(
                connections = e.forgotten,
                "ended connections the kernel no longer tracks"
            );
            metrics.record_evictions(e);
        }
        for event in established {
            if recovered.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Removes the method table's rows of exited processes, a few times per grace period (at most every 5 s).
async fn methods_timer(core: Arc<Core>, grace: Duration, cancel: CancellationToken) {
    let period = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {
                let core = Arc::clone(&core);
                // /proc reads, one per process in the table.
                let _ = tokio::task::spawn_blocking(move || core.expire_exited_methods(Instant::now())).await;
            }
        }
    }
}

/// The events [`apply_events`] applies: from the ring buffer, and read from the kernel's map by [`sweep_kernel`].
struct Events {
    ring: mpsc::Receiver<ConnEvent>,
    recovered: mpsc::Receiver<ConnEvent>,
}

/// Enriches each event's owner and applies it to the table; expires closed connections on a timer.
async fn apply_events(
    mut events: Events,
    table: Arc<Mutex<ConnTable>>,
    metrics: Arc<Metrics>,
    grace: Duration,
    cancel: CancellationToken,
) {
    let mut processes = ProcessCache::new("/proc", 4096);
    let mut enrich = |event: &ConnEvent| {
        event
            .owner
            .as_ref()
            .and_then(|o| match processes.lookup(o.pid, o.start_ns) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!(error = %e, "enrichment failed");
                    metrics
                        .enrichment_failures
                        .get_or_create(&[("reason", e.reason())])
                        .inc();
                    None
                }
            })
    };
    let period = (grace / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let e = table.lock().unwrap_or_else(PoisonError::into_inner).expire(Instant::now());
                metrics.record_evictions(e);
            }
            event = events.ring.recv() => {
                let Some(event) = event else { return };
                let process = enrich(&event);
                let e = table.lock().unwrap_or_else(PoisonError::into_inner).apply(&event, process, Instant::now());
                metrics.record_evictions(e);
            }
            Some(event) = events.recovered.recv() => {
                let process = enrich(&event);
                let (e, new) = table.lock().unwrap_or_else(PoisonError::into_inner).recover(&event, process, Instant::now());
                metrics.record_evictions(e);
                if new {
                    metrics.connections_recovered.inc();
                }
            }
        }
    }
}
