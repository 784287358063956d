//! `linked_calls.rs` against the native build (see `FilterBuild` in `tests/src/envoy.rs`).
#[path = "linked_calls.rs"]
mod suite;
