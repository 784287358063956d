//! The root context: one per VM and plugin configuration. It parses the configuration (refusing a bad one, so
//! Envoy refuses the plugin), defines the fixed metrics, and shares its state with each request context.
//!
//! It also owns the report path's calls: its timer dispatches the batches, the answers come back to it, and when
//! the plugin goes away (a reload, a listener or configuration update) `on_done` drains the buffer: it dispatches
//! everything buffered, and tells Envoy it is done (`proxy_done`) only once every call is answered or past its
//! deadline, so the accounting stays exact across reloads.
//!
//! A reload that replaces the VM gives no such chance: Envoy destroys the old VM at once. So every tick also writes
//! what this root holds to a registry in shared data, and claims the shares of roots whose heartbeat stopped
//! (`wasm_filter_core::report::registry`): the records of a destroyed VM are counted as dropped, and leave the
//! buffered gauge. Only the root's callbacks touch shared data; a request never does.
//!
//! Every tick also beats the VM's heartbeat (`wasm_filter_core::heartbeat`): the VM's time alive, added to its
//! plugins' counters, so that a proxy shows how many VMs of each plugin are alive. A root whose reporting is off
//! ticks for that alone, once a second. The heartbeat is the VM's, not the root's: every root of a VM beats the same
//! clock, and each beat counts for every plugin the VM has hosted.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    time::Duration,
};

use wasm_filter_core::{
    config::{self, Config},
    heartbeat::{self, Heartbeat},
    metrics::Metrics,
    report::{
        registry::{SharedData, Synced},
        Batch, Reporter,
    },
};

use crate::{
    abi::{self, AbiError},
    http::EnvoyMetrics,
};

thread_local! {
    /// This VM's heartbeat (one VM per thread), from its first configured root on.
    static HEARTBEAT: RefCell<Option<VmHeartbeat>> = const { RefCell::new(None) };
    /// Whether a failed heartbeat was logged already (once per VM: it beats every second).
    static HEARTBEAT_WARNED: Cell<bool> = const { Cell::new(false) };
}

/// A VM's clock, and the counter id of each plugin it has hosted: every beat adds the VM's time to each of them.
struct VmHeartbeat {
    clock: Heartbeat,
    plugins: Vec<(String, u32)>,
}

/// Counts this VM's time for `plugin` from now on (starting the VM's clock, if no root of it did yet).
fn start_heartbeat(plugin: &str) -> Result<(), AbiError> {
    HEARTBEAT.with_borrow_mut(|heartbeat| {
        if heartbeat
            .as_ref()
            .is_some_and(|h| h.plugins.iter().any(|(p, _)| p == plugin))
        {
            return Ok(());
        }
        let metric = abi::define_metric(abi::COUNTER, &heartbeat::series(plugin))?;
        match heartbeat {
            Some(h) => h.plugins.push((plugin.to_owned(), metric)),
            None => {
                *heartbeat = Some(VmHeartbeat {
                    clock: Heartbeat::new(abi::now_unix_nano()?),
                    plugins: vec![(plugin.to_owned(), metric)],
                })
            }
        }
        Ok(())
    })
}

/// A root ticked: adds this VM's time alive since the last beat to each plugin's series, once a second.
fn beat() {
    let result = HEARTBEAT.with_borrow_mut(|heartbeat| {
        let Some(h) = heartbeat else { return Ok(()) };
        let Some(ms) = h.clock.beat(abi::now_unix_nano()?) else {
            return Ok(());
        };
        // Every plugin's share, even after a failed one: each series is its own plugin's signal.
        h.plugins
            .iter()
            .map(|&(_, metric)| abi::increment_metric(metric, ms))
            .fold(Ok(()), Result::and)
    });
    if let Err(e) = result {
        if !HEARTBEAT_WARNED.replace(true) {
            log::warn!("VM heartbeat: {e} (logged once per VM)");
        }
    }
}

/// The plugin's name (its Envoy `name`: Istio's is `<namespace>.<WasmPlugin name>`), which labels its heartbeat; empty
/// when Envoy has none to give.
fn plugin_name() -> Result<String, AbiError> {
    Ok(abi::property(abi::path::PLUGIN_NAME)?
        .map(|name| String::from_utf8_lossy(&name).into_owned())
        .unwrap_or_default())
}

/// Envoy's shared data (process-wide, scoped by `vm_id`).
struct EnvoyShared;

impl SharedData for EnvoyShared {
    type Error = AbiError;
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, AbiError> {
        abi::shared_data(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, AbiError> {
        abi::set_shared_data(key, value, cas)
    }
}

/// What every request context of this root reads (the configuration) and updates (metrics, the report buffer).
pub struct Shared {
    pub config: Config,
    pub metrics: RefCell<Metrics>,
    /// `None` when reporting is disabled.
    pub reporter: Option<RefCell<Reporter>>,
}

pub struct Root {
    id: u32,
    shared: Option<Rc<Shared>>,
    tick_ms: u64,
    /// Failed dispatches since the last one that was logged, so a dead agent does not flood Envoy's log.
    quiet_failures: u64,
    /// `on_done` came: no new work, and `proxy_done` once the last call is settled.
    draining: bool,
}

mod host {
    //! `proxy_done`: the SDK's `hostcalls::done` panics on a status it did not expect, so this is the raw import
    //! (as `abi.rs` does for the others), its status read as a plain `u32`.
    #![allow(unsafe_code)]

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_done() -> u32;
    }

    pub fn done() -> u32 {
        // SAFETY: a hostcall without arguments.
        unsafe { proxy_done() }
    }
}

impl Root {
    pub fn new(id: u32) -> Self {
        Self {
            id,
            shared: None,
            tick_ms: wasm_filter_core::report::MAX_TICK_MS,
            quiet_failures: 0,
            draining: false,
        }
    }

    fn configure(&mut self, size: usize) -> Result<(), String> {
        let bytes = abi::plugin_configuration(size).map_err(|e| e.to_string())?;
        let config = config::parse(&bytes).map_err(|e| e.to_string())?;
        let metrics = Metrics::new(&config, &mut EnvoyMetrics).map_err(|e| e.to_string())?;
        // Not a reason to refuse the plugin: the filter works without it, and a VM that does not beat reads as failed,
        // which the alert then says.
        if let Err(e) = plugin_name().and_then(|plugin| start_heartbeat(&plugin)) {
            log::error!("#{} starting the VM heartbeat: {e}", self.id);
        }
        let reporter = if config.report.enabled {
            let name = format!("grayscope/{}", self.id);
            let mut reporter =
                Reporter::new(config.report.clone(), name, &mut EnvoyMetrics).map_err(|e| e.to_string())?;
            // Unique among the roots of every VM of this vm_id (the registry moves it if another root has it).
            let now = abi::now_unix_nano().unwrap_or_default();
            reporter.share_registry(now ^ u64::from(self.id).rotate_left(40));
            self.tick_ms = config.report.tick_ms();
            abi::set_tick_period(self.tick_ms).map_err(|e| e.to_string())?;
            Some(RefCell::new(reporter))
        } else {
            // Reporting off: the timer beats the heartbeat only. Without it the filter still works (and the VM reads
            // as failed, which the alert says), so this is no reason to refuse the plugin.
            self.tick_ms = heartbeat::TICK_MS;
            if let Err(e) = abi::set_tick_period(self.tick_ms) {
                log::error!("#{} starting the heartbeat's timer: {e}", self.id);
            }
            None
        };
        log::info!(
            "#{} configured: {} route templates, max_interfaces {}, gray header {:?}, baggage key {:?}",
            self.id,
            config.routes.len(),
            config.max_interfaces,
            config.gray.header,
            config.gray.baggage_key
        );
        if let Some(t) = &config.tenant {
            log::info!("#{} {}", self.id, t.summary());
        }
        self.shared = Some(Rc::new(Shared {
            config,
            metrics: RefCell::new(metrics),
            reporter,
        }));
        Ok(())
    }

    /// Dispatches the batches that are due (all of them when draining), after giving up calls past their
    /// deadline. Runs in the root context, so the answers come back to it.
    fn flush(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let Some(reporter) = &shared.reporter else { return };
        // Callbacks never nest, so the buffer is free; `try_` keeps even a misbehaving host from causing a panic.
        // A skipped tick loses nothing: the next one catches up, and calls in flight have their own deadline.
        let Ok(mut reporter) = reporter.try_borrow_mut() else {
            log::warn!("#{} report buffer busy; flush skipped", self.id);
            return;
        };
        let (mut batches, result) = reporter.tick(&mut EnvoyMetrics, self.tick_ms);
        if let Err(e) = result {
            log::warn!("#{} {e}", self.id);
        }
        if self.draining {
            let (drained, result) = reporter.drain(&mut EnvoyMetrics);
            if let Err(e) = result {
                log::warn!("#{} {e}", self.id);
            }
            batches.extend(drained);
        }
        // The registry and the metrics, before the dispatch: a record is dispatched only once a write counted it.
        self.commit(&mut reporter, false);
        self.dispatch(&mut reporter, batches);
        if self.draining && reporter.is_idle() {
            self.finish(&mut reporter);
        }
    }

    /// Writes this root's share to the registry and publishes the metrics (or removes its entry when `leaving`);
    /// `false` if the write must wait for the next tick.
    fn commit(&self, reporter: &mut Reporter, leaving: bool) -> bool {
        match reporter.commit(&mut EnvoyMetrics, &mut EnvoyShared, leaving) {
            Ok(synced) => {
                self.log_synced(synced);
                true
            }
            Err(e) => {
                log::warn!("#{} {e}", self.id);
                false
            }
        }
    }

    fn log_synced(&self, synced: Synced) {
        if synced.roots_claimed > 0 {
            log::warn!(
                "#{} {} records of {} report roots gone without draining (their VM replaced) counted as dropped",
                self.id,
                synced.orphans_claimed,
                synced.roots_claimed
            );
        }
        if let Some(records) = synced.own_share_claimed {
            log::warn!(
                "#{} this root was stalled past its heartbeat bound: another counted its {records} records as \
                 dropped (they are not counted again)",
                self.id
            );
        }
    }

    fn dispatch(&mut self, reporter: &mut Reporter, batches: Vec<Batch>) {
        let cfg = reporter.config().clone();
        for batch in batches {
            let timeout = Duration::from_millis(cfg.timeout_ms);
            let call = abi::dispatch_grpc_call(
                &cfg.cluster,
                proto::COLLECTOR_SERVICE,
                proto::REPORT_METHOD,
                &batch.message,
                timeout,
            );
            match call {
                Ok(token) => reporter.dispatched(token, batch.records),
                Err(e) => {
                    self.report_failure(&format!("dispatching to cluster {:?}: {e}", cfg.cluster));
                    if let Err(e) = reporter.dispatch_failed(&mut EnvoyMetrics, batch.records) {
                        log::warn!("#{} {e}", self.id);
                    }
                }
            }
        }
    }

    /// Tells Envoy this root context is done (once), after removing its registry entry (or at a later tick, if
    /// the removal has to wait).
    fn finish(&mut self, reporter: &mut Reporter) {
        if !self.draining || !self.commit(reporter, true) {
            return;
        }
        self.draining = false;
        log::info!("#{} drained: every record sent or counted as dropped", self.id);
        self.stop_ticks();
        let status = host::done();
        if status != 0 {
            log::warn!("#{} proxy_done failed with status {status}", self.id);
        }
    }

    /// Stops this root's timer. Envoy re-arms a root's timer for as long as its period is set, even once the root
    /// is gone: a replaced configuration would otherwise leave a timer firing into the VM until the VM goes.
    fn stop_ticks(&self) {
        if let Err(e) = abi::set_tick_period(0) {
            log::warn!("#{} stopping the tick: {e}", self.id);
        }
    }

    /// Logs the first failure, then one in a hundred.
    fn report_failure(&mut self, what: &str) {
        if self.quiet_failures.is_multiple_of(100) {
            log::warn!(
                "#{} report to the agent failed ({} similar before): {what}",
                self.id,
                self.quiet_failures
            );
        }
        self.quiet_failures += 1;
    }
}

/// The callbacks `exports` routes to a root.
impl Root {
    /// What a request context of this root shares (`None` until a configuration was accepted).
    pub fn shared(&self) -> Option<Rc<Shared>> {
        self.shared.clone()
    }

    /// Parses and applies the plugin configuration; `false` (with the reason logged) makes Envoy refuse it.
    pub fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        match self.configure(plugin_configuration_size) {
            Ok(()) => true,
            Err(e) => {
                log::error!("#{} {e}", self.id);
                false
            }
        }
    }

    pub fn on_tick(&mut self) {
        beat();
        self.flush();
    }

    /// The answer to a report call: `status_code` 0 with the response, or the call's failure.
    pub fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
        let Some(shared) = self.shared.clone() else { return };
        let Some(reporter) = &shared.reporter else { return };
        // The status argument, not get_grpc_status(): the latter keeps an earlier failure's code.
        let Ok(mut reporter) = reporter.try_borrow_mut() else {
            log::warn!(
                "#{} report buffer busy; answer to call {token_id} not accounted",
                self.id
            );
            return;
        };
        let (records, result) = reporter.completed(&mut EnvoyMetrics, token_id, status_code);
        if self.draining && reporter.is_idle() {
            self.finish(&mut reporter);
        }
        drop(reporter);
        if let Err(e) = result {
            log::warn!("#{} {e}", self.id);
        }
        if status_code != 0 {
            self.report_failure(&format!("gRPC status {status_code}, {records} records dropped"));
        } else {
            self.quiet_failures = 0;
        }
    }

    /// The plugin is going away: send what is buffered, and keep the context until every call is settled.
    pub fn on_done(&mut self) -> bool {
        let Some(shared) = self.shared.clone() else { return true };
        let Some(reporter) = &shared.reporter else {
            // Its timer only beat the heartbeat, which the VM's other roots (if any) go on beating.
            self.stop_ticks();
            return true;
        };
        let Ok(mut reporter) = reporter.try_borrow_mut() else {
            // Cannot happen (callbacks never nest); the timer drains instead.
            self.draining = true;
            return false;
        };
        let (batches, result) = reporter.drain(&mut EnvoyMetrics);
        if let Err(e) = result {
            log::warn!("#{} {e}", self.id);
        }
        log::info!(
            "#{} plugin done: draining {} buffered records, {} calls in flight",
            self.id,
            batches.iter().map(|b| b.records).sum::<usize>(),
            reporter.in_flight()
        );
        self.commit(&mut reporter, false);
        self.dispatch(&mut reporter, batches);
        // Done at once if nothing is in flight and the registry entry is gone; else the answers and the timer
        // finish.
        if reporter.is_idle() && self.commit(&mut reporter, true) {
            self.stop_ticks();
            return true;
        }
        self.draining = true;
        false
    }
}
