//! grayscope's filter logic, independent of the proxy it runs in.
//!
//! The wasm shell (`wasm-filter`) reads headers and properties through proxy-wasm hostcalls and hands them to this
//! crate; everything that decides something lives here and is tested natively.
//!
//! # Layout
//! - [`config`]: the plugin configuration, parsed and validated in one place; every bad field is reported.
//! - [`headers`]: a zero-copy reader of the serialized header map the host hands out.
//! - [`gray`]: what a valid gray version is, and where a request's version comes from.
//! - [`baggage`]: the W3C `baggage` header: parse, drop what is malformed or over the limits, re-serialise.
//! - [`interface`]: which interface a request calls: gRPC `Service/Method`, or HTTP verb + route template.
//! - [`route`]: configured route templates and the normaliser for paths no template matches.
//! - [`status`]: gRPC status names and the HTTP to gRPC status mapping.
//! - [`grpc_web`]: the status of a gRPC-Web call, read from the trailer frame at the end of its response body.
//! - [`request`]: the per-request decision: interface, gray version, and the header rewrites to apply.
//! - [`heartbeat`]: the VM heartbeat, which shows how many of a proxy's wasm VMs are alive.
//! - [`metrics`]: metric names, label encoding for Envoy's stat tags, and the cardinality bounds.
//! - [`report`]: call records for the agent, their bounded buffer and batches, and the accounting of each record.
//! - [`tenant`]: the optional tenant dimension: where the id comes from, and the bounded label it becomes.
//! - [`attributes`]: the OpenTelemetry attribute names the filter exposes to Envoy (filter state).

pub mod attributes;
pub mod baggage;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod gray;
pub mod grpc_web;
pub mod headers;
pub mod heartbeat;
pub mod interface;
pub mod metrics;
pub mod report;
pub mod request;
pub mod route;
pub mod status;
pub mod tenant;
