//! The report path: call records go to the agent's cluster as gRPC `grayscope.v1.Collector/Report` calls.
//!
//! The wasm build uses proxy-wasm's gRPC call; the dynamic-module ABI has no gRPC client, so a call is an HTTP/2
//! stream started from the filter configuration (`http_filter_config_start_http_stream`): the gRPC request headers,
//! one length-prefixed message, end of stream; the answer's `grpc-status` (in the trailers, or in the headers of a
//! trailers-only answer) settles the records exactly as the wasm build's status argument does.
//!
//! Time: a small thread commits an event to the configuration's main-thread scheduler every tick; the event runs
//! [`Report::flush`] on Envoy's main thread, where every stream is started and answered, so the buffer's
//! accounting lives in one place. Streams and schedulers are main-thread only; records are pushed from workers.
//!
//! Reload: Envoy resets a configuration's streams right after destroying it, so the configuration cannot wait for
//! its answers the way the wasm build's root context does. Instead the records it still buffers are handed to its
//! successor (the newest live configuration), which sends them; only the calls in flight at that moment (at most
//! `max_in_flight` batches) are counted as dropped. Metrics of both are the same Envoy stats (same names), so the
//! accounting (`produced == sent + dropped + buffered`) holds across the reload.
//!
//! A configuration is destroyed on a worker thread when a request that began before the reload ends after it
//! (its filter held the last reference). The worker may not start streams, so there the batches go into the
//! successor's handover queue, under the lock that keeps the successor alive (`config::LIVE`), and the
//! successor's next tick sends them from the main thread (or its own destroy passes them on).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use wasm_filter_core::report::{Batch, Reporter};

use crate::{
    abi::{self, SchedulerPtr},
    config::{lock, EnvoyConfig, FilterConfig},
    metrics::{Host, Registry},
    streams::Streams,
};

pub struct Report {
    envoy: EnvoyConfig,
    reporter: Mutex<Reporter>,
    streams: Mutex<Streams>,
    next_token: AtomicU32,
    tick_ms: u64,
    ticker: Option<Ticker>,
    /// Failed dispatches since the last logged one, so a dead agent does not flood Envoy's log.
    quiet_failures: AtomicU32,
    /// Batches a configuration destroyed off the main thread handed over (already adopted: counted as held
    /// here), for the next tick to send from the main thread.
    handover: Mutex<Vec<Batch>>,
}

impl Report {
    pub fn start(envoy: EnvoyConfig, reporter: Reporter) -> Result<Self, String> {
        let tick_ms = reporter.config().tick_ms();
        let scheduler = abi::scheduler_new(envoy.0).ok_or("http_filter_config_scheduler_new returned null")?;
        Ok(Self {
            envoy,
            reporter: Mutex::new(reporter),
            streams: Mutex::new(Streams::default()),
            next_token: AtomicU32::new(1),
            tick_ms,
            ticker: Some(Ticker::start(Scheduler(scheduler), tick_ms)?),
            quiet_failures: AtomicU32::new(0),
            handover: Mutex::new(Vec::new()),
        })
    }

    pub fn reporter(&self) -> &Mutex<Reporter> {
        &self.reporter
    }

    /// The tick (main thread): sends what a configuration destroyed off the main thread handed over, gives up
    /// calls past their deadline and sends the batches that are due.
    pub fn flush(&self, registry: &Mutex<Registry>) {
        let handed = std::mem::take(&mut *lock(&self.handover));
        if !handed.is_empty() {
            let records: usize = handed.iter().map(|b| b.records).sum();
            log::info!("sending {records} records handed over by a configuration destroyed off the main thread");
            for batch in handed {
                self.dispatch(registry, batch);
            }
        }
        let mut host = self.host(registry);
        let batches = {
            let mut reporter = lock(&self.reporter);
            let (batches, result) = reporter.tick(&mut host, self.tick_ms);
            if let Err(e) = result {
                log::warn!("{e}");
            }
            batches
        };
        for batch in batches {
            self.dispatch(registry, batch);
        }
    }

    /// Starts one call. No lock is held while Envoy starts the stream: a stream that fails at once may call the
    /// reset hook before `start_stream` returns.
    pub fn dispatch(&self, registry: &Mutex<Registry>, batch: Batch) {
        let cfg = lock(&self.reporter).config().clone();
        let mut body = Vec::with_capacity(5 + batch.message.len());
        body.push(0u8);
        body.extend_from_slice(&u32::try_from(batch.message.len()).unwrap_or(u32::MAX).to_be_bytes());
        body.extend_from_slice(&batch.message);
        let path = format!("/{}/{}", proto::COLLECTOR_SERVICE, proto::REPORT_METHOD);
        let timeout = cfg.timeout_ms.to_string();
        let headers = [
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", cfg.cluster.as_str()),
            ("host", cfg.cluster.as_str()),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", &format!("{timeout}m")),
        ];
        let mut host = self.host(registry);
        match abi::start_stream(self.envoy.0, &cfg.cluster, &headers, &body, cfg.timeout_ms) {
            Ok(id) => {
                let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                let early = lock(&self.streams).started(id, token);
                let mut reporter = lock(&self.reporter);
                reporter.dispatched(token, batch.records);
                if let Some(status) = early {
                    let (_, result) = reporter.completed(&mut host, token, status);
                    drop(reporter);
                    self.answered(status, result);
                }
            }
            Err(e) => {
                self.failure(&format!("starting a stream to cluster {:?}: {e}", cfg.cluster));
                if let Err(e) = lock(&self.reporter).dispatch_failed(&mut host, batch.records) {
                    log::warn!("{e}");
                }
            }
        }
    }

    /// Takes over `records` another configuration's reporter handed over (see [`Report::shutdown`]). Any thread:
    /// the metric updates are thread-safe.
    fn adopt(&self, registry: &Mutex<Registry>, records: usize) {
        let mut reporter = lock(&self.reporter);
        reporter.adopt(records);
        if let Err(e) = reporter.publish(&mut self.host(registry)) {
            log::warn!("{e}");
        }
    }

    /// Response headers or trailers of stream `id`: remembers its `grpc-status`.
    pub fn on_headers(&self, id: u64, headers: &[(&[u8], &[u8])]) {
        lock(&self.streams).headers(id, headers);
    }

    /// Stream `id` ended: `reset` true when Envoy reset it (no answer).
    pub fn on_end(&self, registry: &Mutex<Registry>, id: u64, reset: bool) {
        // `None`: still inside `start_stream`; `dispatch` settles it when it returns.
        let Some((token, status)) = lock(&self.streams).ended(id, reset) else {
            return;
        };
        let mut host = self.host(registry);
        let (_, result) = lock(&self.reporter).completed(&mut host, token, status);
        self.answered(status, result);
    }

    fn answered(&self, status: u32, result: Result<(), crate::metrics::MetricError>) {
        if let Err(e) = result {
            log::warn!("{e}");
        }
        if status == 0 {
            self.quiet_failures.store(0, Ordering::Relaxed);
        } else {
            self.failure(&format!("gRPC status {status}"));
        }
    }

    /// The configuration is going away (a reload, or Envoy stopping): stop the timer, and hand what is buffered
    /// (and what was handed over to it and not sent yet) to `adopter` (the newest other live configuration that
    /// reports, kept alive by the caller's lock on `config::LIVE`), which sends it on its own streams and counts
    /// it as sent or dropped. On the main thread (`on_main`) its streams start here; on a worker (a request
    /// outlived the configuration) the batches wait in the adopter's handover queue for its next tick. Without an
    /// adopter, or for calls in flight (Envoy resets this configuration's streams once it is destroyed), the
    /// records are counted as dropped: never lost from the accounting.
    pub fn shutdown(&mut self, registry: &Mutex<Registry>, adopter: Option<&FilterConfig>, on_main: bool) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
        let mut host = self.host(registry);
        let mut batches = {
            let mut reporter = lock(&self.reporter);
            // Every call in flight is past any deadline from here on: its answer will never come.
            let (batches, result) = reporter.tick(&mut host, u64::MAX / 4);
            if let Err(e) = result {
                log::warn!("{e}");
            }
            batches
        };
        let (drained, result) = lock(&self.reporter).drain(&mut host);
        if let Err(e) = result {
            log::warn!("{e}");
        }
        batches.extend(drained);
        // Adopted already (held by this reporter): they go on with the rest. Nothing is queued here any more: this
        // configuration left `config::LIVE` before.
        batches.append(&mut lock(&self.handover));
        let records: usize = batches.iter().map(|b| b.records).sum();
        match adopter.and_then(|a| Some((a.report.as_ref()?, &a.registry))) {
            Some((next, next_registry)) => {
                if on_main {
                    log::info!("filter configuration replaced: {records} buffered records handed to its successor");
                } else {
                    log::info!(
                        "filter configuration destroyed off the main thread (a request outlived it): {records} \
                         buffered records queued for its successor"
                    );
                }
                // Both reporters' buffered shares move in this callback, so the (shared) gauge never misses them.
                let mut reporter = lock(&self.reporter);
                reporter.handed_over(records);
                if let Err(e) = reporter.publish(&mut host) {
                    log::warn!("{e}");
                }
                drop(reporter);
                // Adopted before the batches are visible to the adopter's tick, so their answers settle records it
                // holds.
                next.adopt(next_registry, records);
                if on_main {
                    for batch in batches {
                        next.dispatch(next_registry, batch);
                    }
                } else {
                    lock(&next.handover).extend(batches);
                }
            }
            None => {
                if let Err(e) = lock(&self.reporter).dispatch_failed(&mut host, records) {
                    log::warn!("{e}");
                }
                if records > 0 {
                    log::info!("filter configuration destroyed: {records} buffered records counted as dropped");
                }
            }
        }
    }

    fn host<'a>(&self, registry: &'a Mutex<Registry>) -> Host<'a> {
        Host::on_config(self.envoy.0, registry)
    }

    /// Logs the first failure, then one in a hundred.
    fn failure(&self, what: &str) {
        let n = self.quiet_failures.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(100) {
            log::warn!("report to the agent failed ({n} similar before): {what}");
        }
    }
}

/// The scheduler pointer, moved to the ticker thread.
struct Scheduler(SchedulerPtr);

// SAFETY: Envoy's configuration scheduler exists to be committed from any thread; it is deleted only after the
// thread that commits is joined.
#[allow(unsafe_code)]
unsafe impl Send for Scheduler {}

/// The thread that wakes the main thread every tick.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Scheduler>,
}

impl Ticker {
    /// `Err` when the system refuses a thread (a pids limit): `thread::spawn` would panic, and a panic in the
    /// configuration hook aborts Envoy; the configuration is refused instead.
    fn start(scheduler: Scheduler, tick_ms: u64) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let raw = scheduler.0;
        let spawned = thread::Builder::new().name("grayscope-tick".to_owned()).spawn(move || {
            while !flag.load(Ordering::Acquire) {
                thread::park_timeout(Duration::from_millis(tick_ms));
                if !flag.load(Ordering::Acquire) {
                    abi::scheduler_commit(scheduler.0, 0);
                }
            }
            scheduler
        });
        match spawned {
            Ok(thread) => Ok(Self { stop, thread }),
            Err(e) => {
                abi::scheduler_delete(raw);
                Err(format!("cannot start the report ticker thread: {e}"))
            }
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        match self.thread.join() {
            Ok(scheduler) => abi::scheduler_delete(scheduler.0),
            // The thread cannot panic (no panicking code in it); if it did, leaking the scheduler is the safe side.
            Err(_) => log::warn!("report ticker thread failed; its scheduler is leaked"),
        }
    }
}
