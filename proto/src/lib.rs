//! grayscope's gRPC contract, generated from `proto/grayscope/v1/collector.proto` at build time.
//!
//! One source for both ends: the wasm filter uses the prost messages (no features); the agent and its clients
//! enable `grpc` for the tonic `Collector` client and server.

/// Package `grayscope.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    include!(concat!(env!("OUT_DIR"), "/grayscope.v1.rs"));
}

/// The codec of the generated client and server: prost's, with a bound on the entries of a request.
#[cfg(feature = "grpc")]
pub mod codec;

/// The fully-qualified service name, as `dispatch_grpc_call` wants it.
pub const COLLECTOR_SERVICE: &str = "grayscope.v1.Collector";
/// The `Report` method name.
pub const REPORT_METHOD: &str = "Report";
