//! The root context: one per VM and plugin configuration. It parses the configuration (refusing a bad one, so
//! Envoy refuses the plugin), defines the fixed metrics, and hands each request a context sharing its state.

use std::{cell::RefCell, rc::Rc};

use proxy_wasm::{
    traits::{Context, HttpContext, RootContext},
    types::ContextType,
};
use wasm_filter_core::{
    config::{self, Config},
    metrics::Metrics,
};

use crate::{abi, http::Call};

/// What every request context of this root reads (the configuration) and updates (the metrics).
pub struct Shared {
    pub config: Config,
    pub metrics: RefCell<Metrics>,
}

pub struct Root {
    id: u32,
    shared: Option<Rc<Shared>>,
}

impl Root {
    pub fn new(id: u32) -> Self {
        Self { id, shared: None }
    }

    fn configure(&mut self, size: usize) -> Result<(), String> {
        let bytes = abi::plugin_configuration(size).map_err(|e| e.to_string())?;
        let config = config::parse(&bytes).map_err(|e| e.to_string())?;
        let metrics = Metrics::new(&config, &mut crate::http::EnvoyMetrics).map_err(|e| e.to_string())?;
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
        }));
        Ok(())
    }
}

impl Context for Root {}

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

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
