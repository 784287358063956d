//! The per-request context. On the request headers it asks the core for a [`Decision`], applies the header
//! rewrites and publishes filter state; when the request is logged it counts the call. No path returns anything
//! but `Continue`: whatever fails is logged and the request goes on untouched.

use std::rc::Rc;

use proxy_wasm::{
    traits::{Context, HttpContext},
    types::Action,
};
use wasm_filter_core::{
    attributes,
    headers::Headers,
    interface::Interface,
    metrics::{Call as CallMetrics, Dropped, Kind, MetricHost, Side},
    report::{self, CallContext},
    request::{self, Decision, Rewrite},
    status::Status,
};

use crate::{
    abi::{self, AbiError, REQUEST_HEADERS},
    root::Shared,
};

/// Envoy's custom metrics, as the core's [`MetricHost`].
pub struct EnvoyMetrics;

impl MetricHost for EnvoyMetrics {
    type Error = AbiError;
    fn define(&mut self, kind: Kind, name: &str) -> Result<u32, AbiError> {
        let kind = match kind {
            Kind::Counter => abi::COUNTER,
            Kind::Gauge => abi::GAUGE,
            Kind::Histogram => abi::HISTOGRAM,
        };
        abi::define_metric(kind, name)
    }
    fn increment(&mut self, id: u32, by: u64) -> Result<(), AbiError> {
        abi::increment_metric(id, by)
    }
    fn record(&mut self, id: u32, value: u64) -> Result<(), AbiError> {
        abi::record_metric(id, value)
    }
    fn add(&mut self, id: u32, delta: i64) -> Result<(), AbiError> {
        abi::add_to_metric(id, delta)
    }
}

pub struct Call {
    id: u32,
    shared: Option<Rc<Shared>>,
    /// Set once the request headers were seen; a request Envoy rejected before that is not counted.
    seen: Option<(Decision, Side)>,
}

impl Call {
    pub fn new(id: u32, shared: Option<Rc<Shared>>) -> Self {
        Self { id, shared, seen: None }
    }

    fn on_request(&mut self, shared: &Shared) -> Result<(), AbiError> {
        let buf = abi::header_pairs(REQUEST_HEADERS)?;
        let headers = match Headers::parse(&buf) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("#{} {e}; request not inspected", self.id);
                return Ok(());
            }
        };
        let cfg = &shared.config;
        let decision = request::decide(cfg, &headers);
        // Each step stands alone: a failed hostcall is logged and the others still run. The rewrites come first,
        // since forwarding an invalid version is worse than missing a count.
        self.check(rewrite(&cfg.gray.header, &decision.gray_header));
        self.check(rewrite("baggage", &decision.baggage_header));
        if cfg.filter_state {
            self.check(match &decision.interface {
                Interface::Grpc { service, method } => {
                    abi::set_filter_state(attributes::RPC_METHOD, format!("{service}/{method}").as_bytes())
                }
                Interface::Http { route, .. } => abi::set_filter_state(attributes::HTTP_ROUTE, route.as_bytes()),
            });
            if let Some(v) = &decision.version {
                self.check(abi::set_filter_state(attributes::GRAY_VERSION, v.as_bytes()));
            }
        }
        // `try_borrow`: callbacks never nest, but a filter must not panic even if a host one day made them.
        if let Ok(metrics) = shared.metrics.try_borrow() {
            for &(source, reason) in &decision.invalid {
                self.check(metrics.gray_invalid(&mut EnvoyMetrics, source, reason));
            }
            let (malformed, over) = (decision.baggage_dropped_malformed, decision.baggage_dropped_over_limit);
            self.check(metrics.baggage_dropped(&mut EnvoyMetrics, Dropped::Malformed, malformed));
            self.check(metrics.baggage_dropped(&mut EnvoyMetrics, Dropped::OverLimit, over));
        }
        let side = Side::resolve(cfg.direction, || {
            abi::property_u64(&["xds", "listener_direction"]).unwrap_or_else(|e| self.warn(e))
        });
        self.seen = Some((decision, side));
        Ok(())
    }

    fn on_done(&mut self, shared: &Shared) -> Result<(), AbiError> {
        let Some((decision, side)) = &self.seen else {
            return Ok(());
        };
        let code = abi::property_u64(&["response", "code"])?;
        let status = match &decision.interface {
            // Envoy reports grpc_status 2 when there is none; with no response at all the call was never answered.
            Interface::Grpc { .. } => match code {
                None | Some(0) => Status::NoResponse,
                Some(_) => Status::grpc(abi::property_u64(&["response", "grpc_status"])?, code),
            },
            Interface::Http { .. } => Status::http(code),
        };
        let duration_ns = abi::property_u64(&["request", "duration"])?.unwrap_or(0);
        let cluster;
        let http_service = match (&decision.interface, &shared.config.service) {
            (Interface::Grpc { .. }, _) => "",
            (Interface::Http { .. }, Some(s)) => s.as_str(),
            (Interface::Http { .. }, None) => {
                cluster = abi::property(&["xds", "cluster_name"])?.and_then(|b| String::from_utf8(b).ok());
                cluster.as_deref().unwrap_or(wasm_filter_core::interface::UNKNOWN)
            }
        };
        let call = CallMetrics {
            side: *side,
            interface: &decision.interface,
            http_service,
            version: decision.version.as_deref(),
            status,
            duration_ms: duration_ns / 1_000_000,
        };
        match shared.metrics.try_borrow_mut() {
            Ok(mut metrics) => metrics.call(&mut EnvoyMetrics, &call)?,
            Err(_) => log::warn!("#{} metrics busy; call not counted", self.id),
        }
        let Some(reporter) = &shared.reporter else {
            return Ok(());
        };
        let service = match &decision.interface {
            Interface::Grpc { service, .. } => service.as_str(),
            Interface::Http { .. } => http_service,
        };
        let text = |path: &[&str]| -> Result<Option<String>, AbiError> {
            Ok(abi::property(path)?.and_then(|b| String::from_utf8(b).ok()))
        };
        let (client, server) = (text(&["source", "address"])?, text(&["destination", "address"])?);
        let (upstream_local, upstream_peer) = (text(&["upstream", "local_address"])?, text(&["upstream", "address"])?);
        let ctx = CallContext {
            start_time_unix_nano: abi::property_u64(&["request", "time"])?.unwrap_or(0),
            duration_ns,
            http_status: code,
            client: client.as_deref(),
            server: server.as_deref(),
            upstream_local: upstream_local.as_deref(),
            upstream_peer: upstream_peer.as_deref(),
        };
        let record = report::record(
            *side,
            &decision.interface,
            service,
            decision.version.as_deref(),
            status,
            decision.request_id.as_deref(),
            decision.trace_id.as_deref(),
            &ctx,
        );
        match reporter.try_borrow_mut() {
            Ok(mut reporter) => reporter.push(&mut EnvoyMetrics, record),
            Err(_) => {
                log::warn!("#{} report buffer busy; record not produced", self.id);
                Ok(())
            }
        }
    }

    fn check(&self, result: Result<(), AbiError>) {
        if let Err(e) = result {
            self.warn::<()>(e);
        }
    }

    fn warn<T: Default>(&self, e: AbiError) -> T {
        log::warn!("#{} {e}", self.id);
        T::default()
    }
}

fn rewrite(header: &str, rewrite: &Rewrite) -> Result<(), AbiError> {
    match rewrite {
        Rewrite::Keep => Ok(()),
        Rewrite::Set(v) => abi::set_header(REQUEST_HEADERS, header, v),
        Rewrite::Remove => abi::remove_header(REQUEST_HEADERS, header),
    }
}

impl Context for Call {}

impl HttpContext for Call {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(shared) = self.shared.clone() {
            let result = self.on_request(&shared);
            self.check(result);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(shared) = self.shared.clone() {
            let result = self.on_done(&shared);
            self.check(result);
        }
    }
}
