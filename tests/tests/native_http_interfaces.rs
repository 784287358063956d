//! `http_interfaces.rs` against the native build (see `FilterBuild` in `tests/src/envoy.rs`).
#[path = "http_interfaces.rs"]
mod suite;
