//! grayscope's proxy-wasm HTTP filter for Envoy: the thin shell around `wasm-filter-core`.
//!
//! Everything that decides something lives in the core crate; this crate only moves bytes between Envoy and it.
//!
//! # Layout
//! - [`exports`]: the functions Envoy calls (the ABI's callbacks), routed to the contexts; only the ones the filter
//!   needs, since Envoy calls into the VM for every callback a module exports.
//! - [`abi`]: the hostcalls, called so that no status can panic.
//! - [`logger`]: `log` records and panics into Envoy's log.
//! - [`root`]: the root context: parses the plugin configuration, owns the metrics and the report path, and shares
//!   its state with each request context.
//! - [`http`]: the per-request context: decides on the request headers, counts the call when it is logged.
//! - `bench` (only with the `bench-x10` feature): benchmark-only amplification of one operation.

pub mod abi;
#[cfg(feature = "bench-x10")]
mod bench;
pub mod exports;
mod http;
mod logger;
mod root;
