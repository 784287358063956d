//! `report_bounds.rs` against the native build (see `FilterBuild` in `tests/src/envoy.rs`).
#[path = "report_bounds.rs"]
mod suite;
