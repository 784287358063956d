//! `grpc_interfaces.rs` against the native build (see `FilterBuild` in `tests/src/envoy.rs`).
#[path = "grpc_interfaces.rs"]
mod suite;
