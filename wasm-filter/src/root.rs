//! The root context: one per VM and plugin configuration. It parses the configuration (refusing a bad one, so
//! Envoy refuses the plugin), defines the fixed metrics, and hands each request a context sharing its state.

use std::{cell::RefCell, rc::Rc, time::Duration};

use proxy_wasm::{
    hostcalls,
    traits::{Context, HttpContext, RootContext},
    types::ContextType,
};
use wasm_filter_core::{
    config::{self, Config},
    metrics::Metrics,
    report::Reporter,
};

use crate::{
    abi,
    http::{Call, EnvoyMetrics},
};

/// The root's timer, and so the resolution of the report flush interval.
const MAX_TICK_MS: u64 = 200;

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
}

impl Root {
    pub fn new(id: u32) -> Self {
        Self {
            id,
            shared: None,
            tick_ms: MAX_TICK_MS,
            quiet_failures: 0,
        }
    }

    fn configure(&mut self, size: usize) -> Result<(), String> {
        let bytes = abi::plugin_configuration(size).map_err(|e| e.to_string())?;
        let config = config::parse(&bytes).map_err(|e| e.to_string())?;
        let metrics = Metrics::new(&config, &mut EnvoyMetrics).map_err(|e| e.to_string())?;
        let reporter = if config.report.enabled {
            let name = format!("grayscope/{}", self.id);
            let reporter = Reporter::new(config.report.clone(), name, &mut EnvoyMetrics).map_err(|e| e.to_string())?;
            self.tick_ms = config.report.flush_interval_ms.min(MAX_TICK_MS);
            abi::set_tick_period(self.tick_ms).map_err(|e| e.to_string())?;
            Some(RefCell::new(reporter))
        } else {
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
        self.shared = Some(Rc::new(Shared {
            config,
            metrics: RefCell::new(metrics),
            reporter,
        }));
        Ok(())
    }

    /// Dispatches the batches that are due. Runs in the root context, so the answers come back to it.
    fn flush(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let Some(reporter) = &shared.reporter else { return };
        // Callbacks never nest, so the buffer is free; `try_` keeps even a misbehaving host from causing a panic.
        let Ok(mut reporter) = reporter.try_borrow_mut() else {
            log::warn!("#{} report buffer busy; flush skipped", self.id);
            return;
        };
        let cfg = reporter.config().clone();
        for batch in reporter.tick(self.tick_ms) {
            let timeout = Duration::from_millis(cfg.timeout_ms);
            let call = hostcalls::dispatch_grpc_call(
                &cfg.cluster,
                proto::COLLECTOR_SERVICE,
                proto::REPORT_METHOD,
                Vec::new(),
                Some(&batch.message),
                timeout,
            );
            match call {
                Ok(token) => reporter.dispatched(token, batch.records),
                Err(status) => {
                    self.report_failure(&format!("dispatching to cluster {:?}: {status:?}", cfg.cluster));
                    if let Err(e) = reporter.dispatch_failed(&mut EnvoyMetrics, batch.records) {
                        log::warn!("#{} {e}", self.id);
                    }
                }
            }
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

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
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
        let completed = reporter.completed(&mut EnvoyMetrics, token_id, status_code);
        drop(reporter);
        match completed {
            Ok(records) if status_code != 0 => {
                self.report_failure(&format!("gRPC status {status_code}, {records} records dropped"))
            }
            Ok(_) => self.quiet_failures = 0,
            Err(e) => log::warn!("#{} {e}", self.id),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        match self.configure(plugin_configuration_size) {
            Ok(()) => true,
            Err(e) => {
                log::error!("#{} {e}", self.id);
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never `None`: the SDK panics on it. Without a configuration (Envoy refused it) the call passes through.
        Some(Box::new(Call::new(context_id, self.shared.clone())))
    }

    fn on_tick(&mut self) {
        self.flush();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
