//! The filter configuration: one per `DynamicModuleFilter` in Envoy, created on the main thread and shared by
//! every worker's requests. It parses the plugin configuration (refusing a bad one, so Envoy refuses the filter),
//! defines every metric while Envoy still allows it, and owns the report path (see [`crate::report`]).
//!
//! Unlike the wasm build, where each worker has its own VM and so its own state, one configuration serves all
//! workers here: the metrics table and the report buffer sit behind mutexes, held for the few microseconds a
//! request's bookkeeping takes.

use std::sync::{Mutex, PoisonError};

use wasm_filter_core::{
    config::{self, Config},
    metrics::Metrics,
    report::Reporter,
};

use crate::{
    abi::{ConfigPtr, FilterPtr},
    metrics::{Host, Registry},
    report::Report,
};

/// Envoy's configuration pointer, shared with worker threads (Envoy's metric callbacks on it are thread-safe).
#[derive(Clone, Copy)]
pub struct EnvoyConfig(pub ConfigPtr);

// SAFETY: the pointer is only handed back to Envoy's callbacks, which Envoy allows from any thread for metrics
// and from the main thread for streams and schedulers (the report path only uses those from main-thread hooks).
#[allow(unsafe_code)]
unsafe impl Send for EnvoyConfig {}
#[allow(unsafe_code)]
unsafe impl Sync for EnvoyConfig {}

pub struct FilterConfig {
    pub envoy: EnvoyConfig,
    pub config: Config,
    pub registry: Mutex<Registry>,
    pub metrics: Mutex<Metrics>,
    /// `None` when reporting is disabled.
    pub report: Option<Report>,
}

impl FilterConfig {
    /// Parses and validates the configuration and defines every metric; `Err` says what is wrong.
    pub fn new(envoy: ConfigPtr, bytes: &[u8]) -> Result<Self, String> {
        let config = config::parse(bytes).map_err(|e| e.to_string())?;
        let registry = Mutex::new(Registry::default());
        let mut host = Host::on_config(envoy, &registry);
        lock(&registry)
            .declare_per_call(envoy, config.tenant.is_some())
            .map_err(|e| e.to_string())?;
        let metrics = Metrics::new(&config, &mut host).map_err(|e| e.to_string())?;
        let reporter = if config.report.enabled {
            let reporter = Reporter::new(config.report.clone(), "grayscope/native".to_owned(), &mut host)
                .map_err(|e| e.to_string())?;
            Some(reporter)
        } else {
            None
        };
        lock(&registry).freeze();
        let envoy = EnvoyConfig(envoy);
        let report = match reporter {
            Some(r) => Some(Report::start(envoy, r)?),
            None => None,
        };
        log::info!(
            "configured: {} route templates, max_interfaces {}, gray header {:?}, baggage key {:?}",
            config.routes.len(),
            config.max_interfaces,
            config.gray.header,
            config.gray.baggage_key
        );
        if let Some(t) = &config.tenant {
            log::info!("{}", t.summary());
        }
        Ok(Self {
            envoy,
            config,
            registry,
            metrics: Mutex::new(metrics),
            report,
        })
    }

    /// The metric host outside any request (the tick, the configuration's own counters).
    pub fn host(&self) -> Host<'_> {
        Host::on_config(self.envoy.0, &self.registry)
    }

    /// The metric host inside a hook of the request whose filter is `filter`.
    pub fn host_on(&self, filter: FilterPtr) -> Host<'_> {
        Host {
            filter: Some(filter),
            ..self.host()
        }
    }
}

/// The configurations Envoy has created and not yet destroyed, by address, newest last. Envoy creates and destroys
/// configurations on its main thread only, so one found here stays alive until that thread's current hook returns.
static LIVE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Registers a configuration Envoy now holds (`on_http_filter_config_new` returned it).
pub fn register(config: *const FilterConfig) {
    lock(&LIVE).push(config as usize);
}

/// Removes a configuration being destroyed; returns the newest other one that reports, to adopt its records.
pub fn unregister(config: *const FilterConfig) -> Option<*const FilterConfig> {
    let mut live = lock(&LIVE);
    live.retain(|&c| c != config as usize);
    live.iter().rev().map(|&c| c as *const FilterConfig).find(|&c| {
        // SAFETY: every address in LIVE is a configuration not yet destroyed (see LIVE), read on the main thread.
        #[allow(unsafe_code)]
        let other = unsafe { &*c };
        other.report.is_some()
    })
}

/// Locks, taking the data even if another thread panicked while holding it (the filter never panics, and a
/// counter table is still usable after one).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
