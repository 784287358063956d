//! `report_without_agent.rs` against the native build (see `FilterBuild` in `tests/src/envoy.rs`).
#[path = "report_without_agent.rs"]
mod suite;
