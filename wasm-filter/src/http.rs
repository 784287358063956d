//! The per-request context. On the request headers it asks the core for a [`Decision`], applies the header
//! rewrites and publishes filter state; when the request is logged it counts the call. No path returns anything
//! but `Continue`: whatever fails is logged and the request goes on untouched.

use std::rc::Rc;

use wasm_filter_core::{
    attributes,
    headers::Headers,
    interface::Interface,
    metrics::{Dropped, Kind, MetricHost, Side},
    report::{Addresses, CallContext},
    request::{self, Decision, Rewrite, StreamedStatus},
};

use crate::{
    abi::{self, AbiError, REQUEST_HEADERS, RESPONSE_TRAILERS},
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
    /// Envoy's clock when the request headers came (see `duration_ns`); `None` if it could not be read.
    started_ns: Option<u64>,
    /// A gRPC call's status as the response streams by (`None` for HTTP calls).
    streamed: Option<StreamedStatus>,
}

impl Call {
    pub fn new(id: u32, shared: Option<Rc<Shared>>) -> Self {
        Self {
            id,
            shared,
            seen: None,
            started_ns: None,
            streamed: None,
        }
    }

    fn on_request(&mut self, shared: &Shared) -> Result<(), AbiError> {
        // `bench-skip-*` features: the benchmark's cost breakdown builds variants that skip one stage each.
        if !cfg!(feature = "bench-skip-log-properties") {
            self.started_ns = abi::now_unix_nano().map_err(|e| self.warn::<()>(e)).ok();
        }
        let buf = if cfg!(feature = "bench-skip-header-read") {
            Vec::new()
        } else {
            abi::header_pairs(REQUEST_HEADERS)?
        };
        let headers = match Headers::parse(&buf) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("#{} {e}; request not inspected", self.id);
                return Ok(());
            }
        };
        #[cfg(feature = "test-panic")]
        if headers.first("x-grayscope-test-panic").is_some() {
            #[allow(clippy::panic)]
            {
                panic!("x-grayscope-test-panic: the test-only build panics on request");
            }
        }
        let cfg = &shared.config;
        #[cfg(feature = "bench-x10")]
        crate::bench::amplify(cfg, &headers);
        let decision = if cfg!(feature = "bench-skip-decide") {
            bench_decision()
        } else {
            request::decide(cfg, &headers)
        };
        // Each step stands alone: a failed hostcall is logged and the others still run. The rewrites come first,
        // since forwarding an invalid version is worse than missing a count.
        if !cfg!(feature = "bench-skip-rewrite") {
            self.check(rewrite(&cfg.gray.header, &decision.gray_header));
            self.check(rewrite("baggage", &decision.baggage_header));
        }
        if cfg.filter_state && !cfg!(feature = "bench-skip-rewrite") {
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
        if let (false, Ok(metrics)) = (cfg!(feature = "bench-skip-metrics"), shared.metrics.try_borrow()) {
            for &(source, reason) in &decision.invalid {
                self.check(metrics.gray_invalid(&mut EnvoyMetrics, source, reason));
            }
            let (malformed, over) = (decision.baggage_dropped_malformed, decision.baggage_dropped_over_limit);
            self.check(metrics.baggage_dropped(&mut EnvoyMetrics, Dropped::Malformed, malformed));
            self.check(metrics.baggage_dropped(&mut EnvoyMetrics, Dropped::OverLimit, over));
            for &(source, reason) in decision.tenant.iter().flat_map(|t| &t.invalid) {
                self.check(metrics.tenant_invalid(&mut EnvoyMetrics, source, reason));
            }
        }
        let side = Side::resolve(cfg.direction, || {
            abi::property_u64(abi::path::LISTENER_DIRECTION).unwrap_or_else(|e| self.warn(e))
        });
        self.streamed = StreamedStatus::of(&decision);
        self.seen = Some((decision, side));
        Ok(())
    }

    fn on_done(&mut self, shared: &Shared) -> Result<(), AbiError> {
        let Some((decision, side)) = &self.seen else {
            return Ok(());
        };
        let skip_properties = cfg!(feature = "bench-skip-log-properties");
        // A read that fails (Envoy answers these, or NotFound) is logged and read as absent: the call is still
        // counted, as the native build counts it, since every call is in the sums.
        let code = if skip_properties {
            Some(200)
        } else {
            self.read(abi::property_u64(abi::path::RESPONSE_CODE))
        };
        let streamed = self.streamed.as_ref().and_then(StreamedStatus::status);
        // The flags only for a gRPC response of 200 that carried no status (see `Decision::status`).
        let status = decision.status(
            code,
            streamed,
            || Ok::<_, AbiError>(self.read(abi::property_u64(abi::path::GRPC_STATUS))),
            || {
                let flags = self.read(abi::property_u64(abi::path::RESPONSE_FLAGS));
                Ok(flags.is_some_and(|f| f & request::DOWNSTREAM_GONE != 0))
            },
        )?;
        // No start read (it failed, or `bench-skip-log-properties` never reads the clock): no end read either.
        let ended_ns = self
            .started_ns
            .and_then(|_| abi::now_unix_nano().map_err(|e| self.warn::<()>(e)).ok());
        let duration_ns = if skip_properties { 0 } else { self.duration_ns(ended_ns) };
        let service = decision.service(shared.config.service.as_deref(), || {
            if skip_properties {
                return Ok(None);
            }
            Ok::<_, AbiError>(
                self.read(abi::property(abi::path::CLUSTER_NAME))
                    .and_then(|b| String::from_utf8(b).ok()),
            )
        })?;
        let call = decision.observed(*side, &service, status, duration_ns);
        // The tenant's bounded label (after the cap), for the record; `None` when the dimension is off.
        let tenant = match shared.metrics.try_borrow_mut() {
            Ok(_) if cfg!(feature = "bench-skip-metrics") => None,
            Ok(mut metrics) => {
                #[cfg(feature = "bench-x10")]
                crate::bench::amplify_log(&mut metrics, &call);
                metrics.call(&mut EnvoyMetrics, &call)?
            }
            Err(_) => {
                log::warn!("#{} metrics busy; call not counted", self.id);
                None
            }
        };
        let Some(reporter) = &shared.reporter else {
            return Ok(());
        };
        if cfg!(feature = "bench-skip-record") {
            return Ok(());
        }
        // Only the addresses the agent uses for this direction: each read is a hostcall and an allocation.
        let wanted = Addresses::of(*side);
        // An address that cannot be read leaves the record without it (the agent then cannot link the call): the
        // record is still produced, so the report's accounting holds.
        let text = |wanted: bool, path: &[u8]| -> Option<String> {
            if skip_properties || !wanted {
                return None;
            }
            self.read(abi::property(path)).and_then(|b| String::from_utf8(b).ok())
        };
        let (client, server) = (
            text(wanted.client, abi::path::SOURCE_ADDRESS),
            text(wanted.server, abi::path::DESTINATION_ADDRESS),
        );
        let (upstream_local, upstream_peer) = (
            text(wanted.upstream_local, abi::path::UPSTREAM_LOCAL_ADDRESS),
            text(wanted.upstream_peer, abi::path::UPSTREAM_ADDRESS),
        );
        // The clock read at the request headers (Envoy's wall clock, as `request.time` is), or if there is none the
        // end less the duration.
        let start_time_unix_nano = match (self.started_ns, ended_ns) {
            _ if skip_properties => 0,
            (Some(start), Some(_)) => start,
            _ => self
                .read(abi::now_unix_nano().map(Some))
                .unwrap_or(0)
                .saturating_sub(duration_ns),
        };
        let ctx = CallContext {
            start_time_unix_nano,
            duration_ns,
            http_status: code,
            client: client.as_deref(),
            server: server.as_deref(),
            upstream_local: upstream_local.as_deref(),
            upstream_peer: upstream_peer.as_deref(),
        };
        let record = decision.record(*side, &service, status, &ctx, tenant.as_deref());
        match reporter.try_borrow_mut() {
            Ok(mut reporter) => reporter.push(record),
            Err(_) => log::warn!("#{} report buffer busy; record not produced", self.id),
        }
        Ok(())
    }

    /// The call's duration from two reads of Envoy's clock (at the request headers and now): each is a bare
    /// hostcall, where the `request.duration` property is a lookup whose answer Envoy copies into a buffer it asks
    /// the VM to allocate (about 1 µs less per request, measured in bench/RESULTS.md). That clock is the wall clock,
    /// the only one the ABI offers (WASI's monotonic clock measured no cheaper than the property): if it stepped
    /// back between the reads, or a read failed, the property gives the duration instead. A step forward would
    /// lengthen the calls in flight across it; a synchronised node's clock is slewed, not stepped.
    fn duration_ns(&self, ended_ns: Option<u64>) -> u64 {
        match request::elapsed_ns(self.started_ns, ended_ns) {
            Some(ns) => ns,
            None => self.read(abi::property_u64(abi::path::REQUEST_DURATION)).unwrap_or(0),
        }
    }

    /// A property read at the end of the call: a failure is logged and read as absent.
    fn read<T>(&self, result: Result<Option<T>, AbiError>) -> Option<T> {
        result.unwrap_or_else(|e| self.warn(e))
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

/// The decision a plain `GET /x` gets, for the `bench-skip-decide` variant.
fn bench_decision() -> Decision {
    Decision {
        interface: Interface::Http {
            verb: "GET",
            route: "/x".to_owned(),
        },
        version: None,
        invalid: Vec::new(),
        baggage_dropped_malformed: 0,
        baggage_dropped_over_limit: 0,
        gray_header: Rewrite::Keep,
        baggage_header: Rewrite::Keep,
        request_id: None,
        trace_id: None,
        tenant: None,
        grpc_web: false,
    }
}

fn rewrite(header: &str, rewrite: &Rewrite) -> Result<(), AbiError> {
    match rewrite {
        Rewrite::Keep => Ok(()),
        Rewrite::Set(v) => abi::set_header(REQUEST_HEADERS, header, v),
        Rewrite::Remove => abi::remove_header(REQUEST_HEADERS, header),
    }
}

impl Call {
    /// The request headers: decide, rewrite, publish. Every outcome lets the request continue.
    pub fn on_request_headers(&mut self) {
        if let Some(shared) = self.shared.clone() {
            let result = self.on_request(&shared);
            self.check(result);
        }
    }

    /// The response trailers of a gRPC call: its `grpc-status`, which Envoy's gRPC-Web filter, if it comes before
    /// this one, clears before the log. Envoy calls this only for responses that have trailers.
    pub fn on_response_trailers(&mut self) {
        let Some(streamed) = &mut self.streamed else { return };
        match abi::header_value(RESPONSE_TRAILERS, "grpc-status") {
            Ok(Some(value)) => streamed.trailer(&value),
            Ok(None) => {}
            Err(e) => log::warn!("#{} {e}", self.id),
        }
    }

    /// A chunk of the response body: read only for a gRPC-Web call, whose status is at the end of it. For every
    /// other call this costs only Envoy's call into the VM.
    pub fn on_response_body(&mut self, size: usize) {
        let Some(streamed) = self.streamed.as_mut().filter(|s| s.wants_body()) else {
            return;
        };
        match abi::response_body(size) {
            Ok(chunk) => streamed.body(&chunk),
            Err(e) => log::warn!("#{} {e}", self.id),
        }
    }

    /// The call is logged (it ended, one way or another): count it, and record it for the agent.
    pub fn on_log(&mut self) {
        if let Some(shared) = self.shared.clone() {
            let result = self.on_done(&shared);
            self.check(result);
        }
    }
}
