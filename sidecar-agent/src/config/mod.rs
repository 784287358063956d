//! The agent's configuration: every setting comes from a flag, a `GRAYSCOPE_*` environment variable or the
//! config file (in that order of precedence), and [`parse_config`] validates all of them in one pure pass,
//! reporting *every* bad value with the field and where it came from before failing.

mod source;
mod value;

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

pub use self::{
    source::{Layers, Origin, Source},
    value::ParseError,
};

/// One setting: its name in the config file, its flag and its environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Key in the config file.
    pub key: &'static str,
    /// Long flag, without the dashes.
    pub flag: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Default, as text.
    pub default: &'static str,
}

macro_rules! fields {
    ($($name:ident: $key:literal, $flag:literal, $env:literal, $default:literal;)*) => {
        $(#[allow(missing_docs)] pub const $name: Field = Field { key: $key, flag: $flag, env: $env, default: $default };)*
        /// Every setting.
        pub const FIELDS: &[Field] = &[$($name),*];
    };
}

fields! {
    SOCKET: "socket", "socket", "GRAYSCOPE_SOCKET", "/run/grayscope/agent.sock";
    METRICS_ADDR: "metrics_addr", "metrics-addr", "GRAYSCOPE_METRICS_ADDR", "0.0.0.0:9464";
    NETNS: "netns", "netns", "GRAYSCOPE_NETNS", "self";
    TABLE_MAX_ENTRIES: "table_max_entries", "table-max-entries", "GRAYSCOPE_TABLE_MAX_ENTRIES", "65536";
    CLOSED_GRACE: "closed_grace", "closed-grace", "GRAYSCOPE_CLOSED_GRACE", "30s";
    RING_BUFFER_BYTES: "ring_buffer_bytes", "ring-buffer-bytes", "GRAYSCOPE_RING_BUFFER_BYTES", "262144";
    KERNEL_MAX_CONNS: "kernel_max_conns", "kernel-max-conns", "GRAYSCOPE_KERNEL_MAX_CONNS", "65536";
    LOG: "log", "log", "GRAYSCOPE_LOG", "info";
}

/// Environment variable naming the config file (also `--config`).
pub const ENV_CONFIG: &str = "GRAYSCOPE_CONFIG";

/// Which network namespace's connections the kernel programs report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsFilter {
    /// The agent's own (the pod's, for a sidecar): `self`.
    Own,
    /// Every namespace: `all`.
    All,
    /// The namespace with this inode number (as in `ls -L -i /proc/<pid>/ns/net`).
    Inode(u32),
    /// The namespace behind this file, such as `/run/netns/<name>` or `/proc/<pid>/ns/net`.
    Path(PathBuf),
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Path of the agent's Unix socket.
    pub socket: PathBuf,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    /// Which connections to watch.
    pub netns: NetnsFilter,
    /// Most connections the user-space table holds (live plus recently closed).
    pub table_max_entries: usize,
    /// How long a closed connection stays in the table, so late call records still find it.
    pub closed_grace: Duration,
    /// Size of the kernel ring buffer.
    pub ring_buffer_bytes: u32,
    /// Capacity of the kernel's map of open connections.
    pub kernel_max_conns: u32,
    /// `tracing` filter directives.
    pub log: String,
}

/// One bad value.
#[derive(Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The setting's config-file key.
    pub field: &'static str,
    /// Where the value came from.
    pub origin: Origin,
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub error: ParseError,
}

/// Every bad value of a configuration, or a problem reading its sources.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Problems, one per bad value or source.
    pub problems: Vec<String>,
}

// === impl Config ===

impl Config {
    /// Defaults only (what an empty source gives).
    pub fn defaults() -> Result<Self, ConfigError> {
        parse_config(&Layers::default())
    }
}

/// Validates every setting of `source`. Pure: no file or environment access.
pub fn parse_config(source: &impl Source) -> Result<Config, ConfigError> {
    let mut problems = source.problems();
    let mut get = |field: Field, parse: &dyn Fn(&str) -> Result<Value, ParseError>| -> Option<Value> {
        let (value, origin) = source.get(field).unwrap_or((field.default.to_owned(), Origin::Default));
        match parse(&value) {
            Ok(v) => Some(v),
            Err(error) => {
                let e = FieldError {
                    field: field.key,
                    origin,
                    value,
                    error,
                };
                problems.push(e.to_string());
                None
            }
        }
    };
    let socket = get(SOCKET, &|s| value::socket_path(s).map(Value::Path));
    let metrics_addr = get(METRICS_ADDR, &|s| value::socket_addr(s).map(Value::Addr));
    let netns = get(NETNS, &|s| value::netns(s).map(Value::Netns));
    let table_max_entries = get(TABLE_MAX_ENTRIES, &|s| value::count(s, 1, 10_000_000).map(Value::Int));
    let closed_grace = get(CLOSED_GRACE, &|s| {
        value::duration(s, Duration::from_secs(86_400)).map(Value::Dur)
    });
    let ring_buffer_bytes = get(RING_BUFFER_BYTES, &|s| value::ring_size(s).map(Value::Int));
    let kernel_max_conns = get(KERNEL_MAX_CONNS, &|s| value::count(s, 1, 10_000_000).map(Value::Int));
    let log = get(LOG, &|s| value::log_filter(s).map(|()| Value::Text(s.to_owned())));

    match (
        socket,
        metrics_addr,
        netns,
        table_max_entries,
        closed_grace,
        ring_buffer_bytes,
        kernel_max_conns,
        log,
    ) {
        (
            Some(Value::Path(socket)),
            Some(Value::Addr(metrics_addr)),
            Some(Value::Netns(netns)),
            Some(Value::Int(table_max_entries)),
            Some(Value::Dur(closed_grace)),
            Some(Value::Int(ring_buffer_bytes)),
            Some(Value::Int(kernel_max_conns)),
            Some(Value::Text(log)),
        ) if problems.is_empty() => Ok(Config {
            socket,
            metrics_addr,
            netns,
            table_max_entries: usize::try_from(table_max_entries).unwrap_or(usize::MAX),
            closed_grace,
            ring_buffer_bytes: u32::try_from(ring_buffer_bytes).unwrap_or(u32::MAX),
            kernel_max_conns: u32::try_from(kernel_max_conns).unwrap_or(u32::MAX),
            log,
        }),
        _ => Err(ConfigError { problems }),
    }
}

/// A parsed value, whatever its field.
enum Value {
    Path(PathBuf),
    Addr(SocketAddr),
    Netns(NetnsFilter),
    Int(u64),
    Dur(Duration),
    Text(String),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {:?} (from {}): {}",
            self.field, self.value, self.origin, self.error
        )
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem(s)):", self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
