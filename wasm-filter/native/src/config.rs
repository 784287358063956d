//! The filter configuration: one per `DynamicModuleFilter` in Envoy, created on the main thread, shared by every
//! worker's requests, and destroyed on whichever thread drops the last reference (see [`LIVE`]). It parses the
//! plugin configuration (refusing a bad one, so Envoy refuses the filter), defines every metric while Envoy still
//! allows it, and owns the report path (see [`crate::report`]).
//!
//! Unlike the wasm build, where each worker has its own VM and so its own state, one configuration serves all
//! workers here: the metrics table and the report buffer sit behind mutexes, held for the few microseconds a
//! request's bookkeeping takes.

use std::{
    cell::Cell,
    sync::{Mutex, MutexGuard, PoisonError},
};

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

// SAFETY: the pointer is only handed back to Envoy's callbacks, which Envoy allows from any thread for metrics and
// for committing and deleting a scheduler, and from the main thread for streams and creating a scheduler (the report
// path starts streams only from main-thread hooks, see `config::on_main_thread`).
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

/// The configurations Envoy has created and not yet destroyed, by address, newest last.
///
/// Envoy creates configurations on its main thread, but destroys one wherever the last reference to it goes: on
/// the main thread when a reload replaces it, or on a worker when a request that started before the reload ends
/// after it (the request's filter holds a reference). So a configuration found here is only known to be alive
/// while this lock is held: one being destroyed, on whatever thread, leaves the list under the lock before it is
/// freed. See [`unregister`].
static LIVE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this thread creates configurations: Envoy's main thread, the only one that may start a
    /// configuration's streams.
    static CREATES_CONFIGURATIONS: Cell<bool> = const { Cell::new(false) };
}

/// Registers a configuration Envoy now holds (`on_http_filter_config_new` returned it), on the thread that
/// creates configurations.
pub fn register(config: *const FilterConfig) {
    CREATES_CONFIGURATIONS.with(|c| c.set(true));
    lock(&LIVE).push(config as usize);
}

/// Whether this is the thread that creates configurations (Envoy's main thread), where a configuration's streams
/// may be started; `false` on a worker (or on a thread whose locals are gone).
pub fn on_main_thread() -> bool {
    CREATES_CONFIGURATIONS.try_with(Cell::get).unwrap_or(false)
}

/// Removes a configuration being destroyed and keeps [`LIVE`] locked: the configurations still listed stay alive
/// as long as the returned guard, whatever thread the caller runs on.
pub fn unregister(config: *const FilterConfig) -> Unregistered {
    let mut live = lock(&LIVE);
    live.retain(|&c| c != config as usize);
    Unregistered(live)
}

/// [`LIVE`], locked, without the configuration being destroyed. Nothing done while it is held may create or
/// destroy a configuration (Envoy does neither inside a stream start or a metric update).
pub struct Unregistered(MutexGuard<'static, Vec<usize>>);

impl Unregistered {
    /// The newest other live configuration (the successor of the one being destroyed, on a reload), alive as long
    /// as `self`.
    pub fn successor(&self) -> Option<&FilterConfig> {
        self.0.last().map(|&c| {
            // SAFETY: as in `adopter`.
            #[allow(unsafe_code)]
            let other = unsafe { &*(c as *const FilterConfig) };
            other
        })
    }

    /// The newest other live configuration that reports, to adopt the records of the one being destroyed; alive
    /// as long as `self`.
    pub fn adopter(&self) -> Option<&FilterConfig> {
        self.0.iter().rev().find_map(|&c| {
            // SAFETY: every address in LIVE is a configuration not yet freed, and none is freed while LIVE is
            // locked (its destroy removes it under the lock first); its state is shared (mutexes, atomics).
            #[allow(unsafe_code)]
            let other = unsafe { &*(c as *const FilterConfig) };
            other.report.is_some().then_some(other)
        })
    }
}

/// Locks, taking the data even if another thread panicked while holding it (the filter never panics, and a
/// counter table is still usable after one).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
