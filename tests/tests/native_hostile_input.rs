//! `hostile_input.rs` against the native build (see `FilterBuild` in `tests/src/envoy.rs`).
#[path = "hostile_input.rs"]
mod suite;
