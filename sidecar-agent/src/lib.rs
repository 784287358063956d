//! grayscope sidecar agent: watches the TCP connections of its pod with eBPF and keeps a table of them with
//! the process (pid, executable, command line, container) that owns each end; joins the Envoy filter's call
//! records to those processes and serves the result over gRPC on a Unix socket.
//!
//! # Layout
//!
//! - [`config`]: settings from flags, `GRAYSCOPE_*` variables and a TOML file, validated by one pure function.
//! - [`ebpf`]: loads `ebpf/conn_track.bpf.c` (tracepoints `sock:inet_sock_set_state` and
//!   `syscalls:sys_exit_accept{,4}`), reads its ring buffer asynchronously, decodes the events.
//! - [`procinfo`]: executable, command line and container id of a pid, once per process, checked against the
//!   process start time.
//! - [`table`]: the bounded connection table (live, plus closed ones for a grace period).
//! - [`link`]: joins a call record to the connection (and process) by 4-tuple; records wait, bounded, for late
//!   connections. Pure.
//! - [`watch`]: fan-out of linked calls to watchers, each with a bounded drop-oldest queue. [`methods`]: the
//!   aggregated method table.
//! - [`collector`]: the `grayscope.v1.Collector` service over those; [`control`]: the Unix socket and the tonic
//!   server (peer uid check, size and concurrency bounds).
//! - [`metrics`]: the Prometheus endpoint.
//! - [`agent`]: wires it together — [`run`] is the daemon; [`trace`] prints events like `tcplife`.
//! - [`client`]: a gRPC client over the Unix socket ([`client::connect`]) and the `tail`/`methods` output.
//! - [`cli`]: the `grayscope-agent` command line (the binary only parses, binds and calls [`run`]).
//! - [`install_module`]: `install-module`, the copy of the filter's native build out of the agent's image.

// `unsafe` is denied workspace-wide; the one exception is registering the ring buffer fd with tokio.
#![deny(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod client;
pub mod collector;
pub mod config;
pub mod control;
pub mod ebpf;
pub mod error;
pub mod install_module;
pub mod link;
pub mod methods;
pub mod metrics;
pub mod procinfo;
pub mod table;
pub mod trace;
pub mod watch;

pub use self::{
    agent::{run, Agent, EventCounts, Listeners},
    config::{parse_config, AllowedUids, Config, NetnsFilter},
    error::Error,
};
