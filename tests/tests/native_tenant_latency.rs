//! `tenant_latency.rs` against the native build (see `FilterBuild` in `tests/src/envoy.rs`).
#[path = "tenant_latency.rs"]
mod suite;
