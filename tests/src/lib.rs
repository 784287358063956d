//! The end-to-end harness: the real Envoy with the built filter, upstreams and clients run by the test.
//!
//! # Layout
//! - [`agent`]: the real agent (`grayscope-agent run`, eBPF included) on a test's socket, with a gRPC client.
//! - [`paths`]: where the Envoy binary, the built filter and the Python peers are (and what to run if they are not).
//! - [`envoy`]: start Envoy from a bootstrap template, wait until it is ready, learn its ports, kill it on drop.
//! - [`upstream`]: an HTTP/1.1 upstream that records the exact request headers it received.
//! - [`client`]: an HTTP/1.1 client that sends exactly the bytes a test asks for, hostile ones included.
//! - [`grpc`]: real gRPC (Python grpcio) servers and clients.
//! - [`stack`]: upstreams plus an Envoy with the filter, as most tests use them.
//! - [`prom`]: the `/stats/prometheus` exposition: whole lines, sums, and a real parser's verdict.
//! - [`prometheus`]: a real Prometheus server scraping the test's Envoy, queried over its HTTP API; and `promtool`.
//! - [`wasm_memory`]: each wasm VM's linear memory in a running Envoy (`/proc/<pid>/smaps`).
//!
//! Tests panic with a message saying what to run when a prerequisite is missing: nothing is skipped silently.

pub mod agent;
pub mod client;
pub mod envoy;
pub mod grpc;
pub mod paths;
pub mod prom;
pub mod prometheus;
pub mod stack;
pub mod upstream;
pub mod wasm_memory;
