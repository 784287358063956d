//! Benchmark-only amplification (`bench-x10-*` features; compiled out of every other build): one operation of the
//! per-request path repeated ten extra times, so that `just bench-ops` can measure its marginal cost as a tenth
//! of the difference to the filter. Removing a stage (`bench-skip-*`) moves the CPU per request by a few µs, the
//! size of the noise between rounds; ten repetitions move it by ten times the operation's cost.

use std::hint::black_box;

use wasm_filter_core::{
    attributes,
    config::Config,
    headers::Headers,
    metrics::{Call, Kind, MetricHost, Metrics},
    request,
};

use crate::{
    abi::{self, REQUEST_HEADERS},
    http::EnvoyMetrics,
};

/// Read as `EXTRA_REPEATS` by the harness (`bench/src/results.rs`) and named in the features, `bench-x10-*`.
const EXTRA: usize = 10;

/// Runs the enabled operations `EXTRA` times each; every result is discarded (failures too: the filter's own call
/// of the same operation reports them).
pub fn amplify(cfg: &Config, headers: &Headers<'_>) {
    for _ in 0..EXTRA {
        if cfg!(feature = "bench-x10-decide") {
            black_box(request::decide(cfg, black_box(headers)));
        }
        if cfg!(feature = "bench-x10-header-read") {
            let _ = black_box(abi::header_pairs(REQUEST_HEADERS));
        }
        if cfg!(feature = "bench-x10-property") {
            let _ = black_box(abi::property_u64(abi::path::LISTENER_DIRECTION));
        }
        if cfg!(feature = "bench-x10-clock") {
            let _ = black_box(abi::now_unix_nano());
        }
        if cfg!(feature = "bench-x10-filter-state") {
            let _ = black_box(abi::set_filter_state(attributes::HTTP_ROUTE, b"/bench"));
        }
    }
}

/// The end of a call's share: the core's metric update, with Envoy's counter and histogram (`metrics`) or with a
/// host that does nothing (`metrics-lookup`: the series lookups alone, no hostcall).
pub fn amplify_log(metrics: &mut Metrics, call: &Call<'_>) {
    for _ in 0..EXTRA {
        if cfg!(feature = "bench-x10-metrics") {
            let _ = black_box(metrics.call(&mut EnvoyMetrics, black_box(call)));
        }
        if cfg!(feature = "bench-x10-metrics-lookup") {
            let _ = black_box(metrics.call(&mut NoHost, black_box(call)));
        }
    }
}

/// A metric host that keeps nothing: every series it is asked to define gets id 0.
struct NoHost;

impl MetricHost for NoHost {
    type Error = abi::AbiError;
    fn define(&mut self, _: Kind, _: &str) -> Result<u32, abi::AbiError> {
        Ok(0)
    }
    fn increment(&mut self, _: u32, _: u64) -> Result<(), abi::AbiError> {
        Ok(())
    }
    fn record(&mut self, _: u32, _: u64) -> Result<(), abi::AbiError> {
        Ok(())
    }
    fn add(&mut self, _: u32, _: i64) -> Result<(), abi::AbiError> {
        Ok(())
    }
}
