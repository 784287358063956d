//! The per-request filter: on the request headers it asks the core for a [`Decision`], applies the header rewrites
//! and publishes filter state; when the stream completes it counts the call and produces its record. Every path
//! continues the request: whatever fails is logged and the request goes on untouched (as in `wasm-filter/src/http.rs`,
//! which this mirrors hook for hook).

use std::{
    convert::Infallible,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use wasm_filter_core::{
    headers::Headers,
    interface::Interface,
    metrics::{Dropped, Side},
    report::{Addresses, CallContext},
    request::{self, Decision, Rewrite, StreamedStatus},
};

use crate::{
    abi::{self, attribute, FilterPtr, REQUEST_HEADERS, RESPONSE_TRAILERS},
    config::{lock, FilterConfig},
};

/// Filter state keys carry the wasm build's `wasm.` prefix, so access logs and other filters read the same
/// `%FILTER_STATE(wasm.gray.version:PLAIN)%` whichever build runs. Written out (the test below checks them against
/// the core's names) so that a request formats no key.
const STATE_RPC_METHOD: &str = "wasm.rpc.method";
const STATE_HTTP_ROUTE: &str = "wasm.http.route";
const STATE_GRAY_VERSION: &str = "wasm.gray.version";

pub struct Filter<'c> {
    config: &'c FilterConfig,
    /// Set once the request headers were seen; a request Envoy rejected before that is not counted.
    seen: Option<Seen>,
}

struct Seen {
    decision: Decision,
    /// A gRPC call's status as the response streams by (`None` for HTTP calls).
    streamed: Option<StreamedStatus>,
    side: Side,
    start_unix_nano: u64,
    start: Instant,
}

impl<'c> Filter<'c> {
    pub fn new(config: &'c FilterConfig) -> Self {
        Self { config, seen: None }
    }

    pub fn on_request_headers(&mut self, envoy: FilterPtr) {
        let start = Instant::now();
        // The wall clock only serves the call record: not read when reporting is off.
        let start_unix_nano = match self.config.report {
            Some(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            None => 0,
        };
        let raw = match abi::headers(envoy, REQUEST_HEADERS) {
            Ok(h) => h,
            Err(e) => {
                log::warn!("{e}; request not inspected");
                return;
            }
        };
        // SAFETY (of `bytes`): the views stay valid until a header is set, and `headers` is dropped before that.
        #[allow(unsafe_code)]
        let pairs = raw
            .iter()
            .map(|h| unsafe { (h.key.bytes(), h.value.bytes()) })
            .collect();
        let headers = Headers::from_pairs(pairs);
        let cfg = &self.config.config;
        let decision = request::decide(cfg, &headers);
        drop(headers);
        warn(rewrite(envoy, &cfg.gray.header, &decision.gray_header));
        warn(rewrite(envoy, "baggage", &decision.baggage_header));
        if cfg.filter_state {
            warn(match &decision.interface {
                Interface::Grpc { service, method } => {
                    abi::set_filter_state(envoy, STATE_RPC_METHOD, format!("{service}/{method}").as_bytes())
                }
                Interface::Http { route, .. } => abi::set_filter_state(envoy, STATE_HTTP_ROUTE, route.as_bytes()),
            });
            if let Some(v) = &decision.version {
                warn(abi::set_filter_state(envoy, STATE_GRAY_VERSION, v.as_bytes()));
            }
        }
        let (malformed, over) = (decision.baggage_dropped_malformed, decision.baggage_dropped_over_limit);
        // Most requests have nothing to count here: then the shared metrics are not even locked.
        let tenant_invalid = decision.tenant.as_ref().is_some_and(|t| !t.invalid.is_empty());
        let counts = !decision.invalid.is_empty() || malformed > 0 || over > 0 || tenant_invalid;
        if counts && !cfg!(feature = "bench-skip-metrics") {
            let metrics = lock(&self.config.metrics);
            let mut host = self.config.host_on(envoy);
            for &(source, reason) in &decision.invalid {
                warn(metrics.gray_invalid(&mut host, source, reason));
            }
            warn(metrics.baggage_dropped(&mut host, Dropped::Malformed, malformed));
            warn(metrics.baggage_dropped(&mut host, Dropped::OverLimit, over));
            for &(source, reason) in decision.tenant.iter().flat_map(|t| &t.invalid) {
                warn(metrics.tenant_invalid(&mut host, source, reason));
            }
        }
        let side = Side::resolve(cfg.direction, || {
            abi::attribute_int(envoy, attribute::XDS_LISTENER_DIRECTION)
        });
        self.seen = Some(Seen {
            streamed: StreamedStatus::of(&decision),
            decision,
            side,
            start_unix_nano,
            start,
        });
    }

    /// The response trailers of a gRPC call: its `grpc-status`, which Envoy's gRPC-Web filter, if it comes before
    /// this one, clears before the stream completes.
    pub fn on_response_trailers(&mut self, envoy: FilterPtr) {
        let Some(streamed) = self.seen.as_mut().and_then(|s| s.streamed.as_mut()) else {
            return;
        };
        match abi::headers(envoy, RESPONSE_TRAILERS) {
            // SAFETY (of `bytes`): the views are valid until this hook returns, and nothing sets a header meanwhile.
            #[allow(unsafe_code)]
            Ok(trailers) => {
                if let Some(h) = trailers.iter().find(|h| unsafe { h.key.bytes() } == b"grpc-status") {
                    streamed.trailer(unsafe { h.value.bytes() });
                }
            }
            Err(e) => log::warn!("{e}"),
        }
    }

    /// A chunk of the response body: read only for a gRPC-Web call, whose status is at the end of it.
    pub fn on_response_body(&mut self, envoy: FilterPtr) {
        let Some(streamed) = self
            .seen
            .as_mut()
            .and_then(|s| s.streamed.as_mut())
            .filter(|s| s.wants_body())
        else {
            return;
        };
        match abi::response_body(envoy) {
            // SAFETY (of `bytes`): the slices are valid until this hook returns.
            #[allow(unsafe_code)]
            Ok(slices) => slices.iter().for_each(|b| streamed.body(unsafe { b.bytes() })),
            Err(e) => log::warn!("{e}"),
        }
    }

    pub fn on_stream_complete(&mut self, envoy: FilterPtr) {
        let Some(seen) = &self.seen else { return };
        let decision = &seen.decision;
        let code = abi::attribute_int(envoy, attribute::RESPONSE_CODE).filter(|&c| c != 0);
        let streamed = seen.streamed.as_ref().and_then(StreamedStatus::status);
        let grpc_status = || Ok::<_, Infallible>(abi::attribute_int(envoy, attribute::RESPONSE_GRPC_STATUS));
        // The flags only for a gRPC response of 200 that carried no status (see `Decision::status`).
        let downstream_gone = || {
            let flags = abi::attribute_int(envoy, attribute::RESPONSE_FLAGS);
            Ok(flags.is_some_and(|f| f & request::DOWNSTREAM_GONE != 0))
        };
        let Ok(status) = decision.status(code, streamed, grpc_status, downstream_gone);
        let duration_ns = u64::try_from(seen.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let cfg = &self.config.config;
        let cluster = || Ok::<_, Infallible>(abi::attribute_string(envoy, attribute::XDS_CLUSTER_NAME));
        let Ok(service) = decision.service(cfg.service.as_deref(), cluster);
        let call = decision.observed(seen.side, &service, status, duration_ns);
        // The tenant's bounded label (after the cap), for the record; `None` when the dimension is off.
        let tenant = if cfg!(feature = "bench-skip-metrics") {
            None
        } else {
            lock(&self.config.metrics)
                .call(&mut self.config.host_on(envoy), &call)
                .unwrap_or_else(|e| {
                    log::warn!("{e}");
                    None
                })
        };
        let Some(report) = &self.config.report else { return };
        // Only the addresses the agent uses for this direction: each read copies a string out of Envoy.
        let wanted = Addresses::of(seen.side);
        let text = |wanted: bool, id| wanted.then(|| abi::attribute_string(envoy, id)).flatten();
        let (client, server) = (
            text(wanted.client, attribute::SOURCE_ADDRESS),
            text(wanted.server, attribute::DESTINATION_ADDRESS),
        );
        let (upstream_local, upstream_peer) = (
            text(wanted.upstream_local, attribute::UPSTREAM_LOCAL_ADDRESS),
            text(wanted.upstream_peer, attribute::UPSTREAM_ADDRESS),
        );
        let ctx = CallContext {
            start_time_unix_nano: seen.start_unix_nano,
            duration_ns,
            http_status: code,
            client: client.as_deref(),
            server: server.as_deref(),
            upstream_local: upstream_local.as_deref(),
            upstream_peer: upstream_peer.as_deref(),
        };
        let record = decision.record(seen.side, &service, status, &ctx, tenant.as_deref());
        lock(report.reporter()).push(record);
    }
}

fn rewrite(envoy: FilterPtr, header: &str, rewrite: &Rewrite) -> Result<(), abi::AbiError> {
    match rewrite {
        Rewrite::Keep => Ok(()),
        Rewrite::Set(v) => abi::set_header(envoy, REQUEST_HEADERS, header, Some(v)),
        Rewrite::Remove => abi::set_header(envoy, REQUEST_HEADERS, header, None),
    }
}

fn warn<E: std::fmt::Display>(result: Result<(), E>) {
    if let Err(e) = result {
        log::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_filter_core::attributes;

    #[test]
    fn filter_state_keys_are_the_wasm_builds_names() {
        for (key, name) in [
            (STATE_RPC_METHOD, attributes::RPC_METHOD),
            (STATE_HTTP_ROUTE, attributes::HTTP_ROUTE),
            (STATE_GRAY_VERSION, attributes::GRAY_VERSION),
        ] {
            assert_eq!(key, format!("wasm.{name}"));
        }
    }
}
