//! grayscope's HTTP filter as an Envoy dynamic module: the same core as the wasm build (`wasm-filter-core`),
//! behind Envoy's native C ABI instead of proxy-wasm, for a fraction of the per-request cost.
//!
//! Built for the dynamic-module ABI of Envoy **1.40.0** (see [`ABI_VERSION`]). Envoy loads it as
//! `libgrayscope_filter.so` through `envoy.filters.http.dynamic_modules`; the filter configuration is the same
//! JSON as the wasm plugin's.
//!
//! # Layout
//! - [`abi`]: the C ABI declarations this filter uses, and wrappers that report every failure.
//! - [`config`]: the filter configuration, shared by all workers: parsed config, metrics, report path.
//! - [`metrics`]: the core's metric host on labelled dynamic-module metrics, defined up front.
//! - [`filter`]: the per-request filter (request headers, stream complete).
//! - [`report`]: call records to the agent as gRPC over a configuration HTTP/2 stream, flushed on a timer.
//! - [`streams`]: which call each stream carries and its answer (pure, unit-tested).
//! - `exports`: the event hooks Envoy calls.

mod abi;
mod config;
mod exports;
mod filter;
mod logger;
mod metrics;
mod report;
mod streams;

/// The ABI version this module was built against: `ENVOY_DYNAMIC_MODULES_ABI_VERSION` of Envoy 1.40.0, NUL-terminated
/// for C. Envoy 1.40.0 logs "Dynamic module ABI version v0.2.0 matched." for it; for another version it logs a
/// warning and loads the module anyway (`tests/tests/native_module.rs` checks the log line).
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";
