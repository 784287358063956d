//! `report_reload.rs` against the native build (see `FilterBuild` in `tests/src/envoy.rs`).
#[path = "report_reload.rs"]
mod suite;
