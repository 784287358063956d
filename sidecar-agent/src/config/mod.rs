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
    ACCEPT_TRACEPOINTS: "accept_tracepoints", "accept-tracepoints", "GRAYSCOPE_ACCEPT_TRACEPOINTS", "false";
    PROGRAM_STATS: "program_stats", "program-stats", "GRAYSCOPE_PROGRAM_STATS", "false";
    LOG: "log", "log", "GRAYSCOPE_LOG", "info";
    SOCKET_MODE: "socket_mode", "socket-mode", "GRAYSCOPE_SOCKET_MODE", "0660";
    ALLOWED_UIDS: "allowed_uids", "allowed-uids", "GRAYSCOPE_ALLOWED_UIDS", "self,0";
    MAX_MESSAGE_BYTES: "max_message_bytes", "max-message-bytes", "GRAYSCOPE_MAX_MESSAGE_BYTES", "4MiB";
    MAX_CONNECTIONS: "max_connections", "max-connections", "GRAYSCOPE_MAX_CONNECTIONS", "64";
    MAX_STREAMS: "max_streams", "max-streams", "GRAYSCOPE_MAX_STREAMS", "64";
    LINK_WAIT: "link_wait", "link-wait", "GRAYSCOPE_LINK_WAIT", "500ms";
    LINK_PENDING_MAX: "link_pending_max", "link-pending-max", "GRAYSCOPE_LINK_PENDING_MAX", "16384";
    LINK_PENDING_BYTES: "link_pending_bytes", "link-pending-bytes", "GRAYSCOPE_LINK_PENDING_BYTES", "16MiB";
    WATCH_QUEUE: "watch_queue", "watch-queue", "GRAYSCOPE_WATCH_QUEUE", "1024";
    WATCH_QUEUE_BYTES: "watch_queue_bytes", "watch-queue-bytes", "GRAYSCOPE_WATCH_QUEUE_BYTES", "1MiB";
    MAX_WATCHERS: "max_watchers", "max-watchers", "GRAYSCOPE_MAX_WATCHERS", "64";
    METHODS_MAX_ROWS: "methods_max_rows", "methods-max-rows", "GRAYSCOPE_METHODS_MAX_ROWS", "4096";
    METHODS_MAX_INTERFACES: "methods_max_interfaces", "methods-max-interfaces", "GRAYSCOPE_METHODS_MAX_INTERFACES", "256";
    METHODS_EXITED_GRACE: "methods_exited_grace", "methods-exited-grace", "GRAYSCOPE_METHODS_EXITED_GRACE", "5m";
    MAX_CONNECTIONS_PER_PEER: "max_connections_per_peer", "max-connections-per-peer", "GRAYSCOPE_MAX_CONNECTIONS_PER_PEER", "16";
    MAX_CONNECTIONS_PER_UID: "max_connections_per_uid", "max-connections-per-uid", "GRAYSCOPE_MAX_CONNECTIONS_PER_UID", "32";
    HANDSHAKE_TIMEOUT: "handshake_timeout", "handshake-timeout", "GRAYSCOPE_HANDSHAKE_TIMEOUT", "10s";
    IDLE_TIMEOUT: "idle_timeout", "idle-timeout", "GRAYSCOPE_IDLE_TIMEOUT", "5m";
    KEEPALIVE: "keepalive", "keepalive", "GRAYSCOPE_KEEPALIVE", "30s";
    EXPOSE_COMMAND_LINE: "expose_command_line", "expose-command-line", "GRAYSCOPE_EXPOSE_COMMAND_LINE", "false";
    KERNEL_OPTIONAL: "kernel_optional", "kernel-optional", "GRAYSCOPE_KERNEL_OPTIONAL", "false";
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

/// Which peer uids may use the agent's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedUids {
    /// Anyone who can open the socket file (`any`).
    Any,
    /// These uids; `own` adds the agent's own effective uid (`self`).
    Only {
        /// Whether the agent's own uid is allowed.
        own: bool,
        /// Explicit uids.
        uids: Vec<u32>,
    },
}

// === impl AllowedUids ===

impl AllowedUids {
    /// Whether a peer with `uid` may call, the agent running as `own_uid`.
    pub fn allows(&self, uid: u32, own_uid: u32) -> bool {
        match self {
            Self::Any => true,
            Self::Only { own, uids } => (*own && uid == own_uid) || uids.contains(&uid),
        }
    }
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
    /// Name the exact accepting process through the accept syscall tracepoints (every syscall of the node then
    /// takes the slow tracing path); by default the listener's owner is named.
    pub accept_tracepoints: bool,
    /// Turn on the kernel's run statistics of BPF programs (`BPF_ENABLE_STATS`) while the agent runs: two clock
    /// reads on every run of every BPF program of the node.
    pub program_stats: bool,
    /// `tracing` filter directives.
    pub log: String,
    /// Mode of the socket file.
    pub socket_mode: u32,
    /// Peers allowed to call (checked against the socket's peer credentials).
    pub allowed_uids: AllowedUids,
    /// Largest gRPC message the agent decodes.
    pub max_message_bytes: usize,
    /// Most connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams (calls) per connection.
    pub max_streams: u32,
    /// How long a call record waits for its connection to appear in the table.
    pub link_wait: Duration,
    /// Most records waiting for their connection; more are reported unlinked at once.
    pub link_pending_max: usize,
    /// Encoded bytes of the records waiting for their connection; once they reach it, more are reported unlinked at
    /// once.
    pub link_pending_bytes: usize,
    /// Calls queued per watcher; a slower watcher loses its oldest.
    pub watch_queue: usize,
    /// Encoded bytes of the calls queued per watcher; a slower watcher loses its oldest (the newest always stays).
    pub watch_queue_bytes: usize,
    /// Most `Watch` streams at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_watchers: usize,
    /// Most rows of the method table (interface x gray version x process).
    pub methods_max_rows: usize,
    /// Most distinct interfaces (service, method) in the method table; more count as `other`.
    pub methods_max_interfaces: usize,
    /// How long rows and declarations of an exited process stay in the method table.
    pub methods_exited_grace: Duration,
    /// Most connections one process may hold on the socket at once; more are closed at once.
    pub max_connections_per_peer: usize,
    /// Most connections the processes of one uid may hold on the socket at once; more are closed at once.
    pub max_connections_per_uid: usize,
    /// Time a new connection has to send its HTTP/2 preface and first frame.
    pub handshake_timeout: Duration,
    /// A connection with no call open for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval; a peer that does not answer within it is closed.
    pub keepalive: Duration,
    /// Whether `Watch` and `ListMethods` carry processes' command lines (they may hold secrets).
    pub expose_command_line: bool,
    /// Keep serving when the kernel programs cannot be loaded (said in the log and by the
    /// `kernel_programs_attached` metric), instead of exiting: a pod's sidecar that exits keeps the pod out of its
    /// Service's endpoints.
    pub kernel_optional: bool,
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
    let mut p = Parser {
        source,
        problems: &mut problems,
    };
    let max_day = Duration::from_secs(86_400);
    let socket = p.get(SOCKET, value::socket_path);
    let metrics_addr = p.get(METRICS_ADDR, value::socket_addr);
    let netns = p.get(NETNS, value::netns);
    let table_max_entries = p.get(TABLE_MAX_ENTRIES, |s| value::count(s, 1, 10_000_000));
    let closed_grace = p.get(CLOSED_GRACE, |s| value::duration(s, max_day));
    let ring_buffer_bytes = p.get(RING_BUFFER_BYTES, value::ring_size);
    let kernel_max_conns = p.get(KERNEL_MAX_CONNS, |s| value::count(s, 1, 10_000_000));
    let accept_tracepoints = p.get(ACCEPT_TRACEPOINTS, value::boolean);
    let program_stats = p.get(PROGRAM_STATS, value::boolean);
    let log = p.get(LOG, |s| value::log_filter(s).map(|()| s.to_owned()));
    let socket_mode = p.get(SOCKET_MODE, value::mode);
    let allowed_uids = p.get(ALLOWED_UIDS, value::uids);
    let max_message_bytes = p.get(MAX_MESSAGE_BYTES, |s| value::bytes(s, 1024, 256 << 20));
    let max_connections = p.get(MAX_CONNECTIONS, |s| value::count(s, 1, 65_536));
    let max_streams = p.get(MAX_STREAMS, |s| value::count(s, 1, 65_536));
    let link_wait = p.get(LINK_WAIT, |s| value::duration(s, Duration::from_secs(60)));
    let link_pending_max = p.get(LINK_PENDING_MAX, |s| value::count(s, 1, 10_000_000));
    let link_pending_bytes = p.get(LINK_PENDING_BYTES, |s| value::bytes(s, 1024, 1 << 30));
    let watch_queue = p.get(WATCH_QUEUE, |s| value::count(s, 1, 10_000_000));
    let watch_queue_bytes = p.get(WATCH_QUEUE_BYTES, |s| value::bytes(s, 1024, 1 << 30));
    let max_watchers = p.get(MAX_WATCHERS, |s| value::count(s, 1, 65_536));
    let methods_max_rows = p.get(METHODS_MAX_ROWS, |s| value::count(s, 1, 10_000_000));
    let methods_max_interfaces = p.get(METHODS_MAX_INTERFACES, |s| value::count(s, 1, 1_000_000));
    let methods_exited_grace = p.get(METHODS_EXITED_GRACE, |s| value::duration(s, max_day));
    let max_connections_per_peer = p.get(MAX_CONNECTIONS_PER_PEER, |s| value::count(s, 1, 65_536));
    let max_connections_per_uid = p.get(MAX_CONNECTIONS_PER_UID, |s| value::count(s, 1, 65_536));
    let handshake_timeout = p.get(HANDSHAKE_TIMEOUT, |s| {
        value::positive_duration(s, Duration::from_secs(3600))
    });
    let idle_timeout = p.get(IDLE_TIMEOUT, |s| value::positive_duration(s, max_day));
    let keepalive = p.get(KEEPALIVE, |s| value::positive_duration(s, Duration::from_secs(3600)));
    let expose_command_line = p.get(EXPOSE_COMMAND_LINE, value::boolean);
    let kernel_optional = p.get(KERNEL_OPTIONAL, value::boolean);

    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let (
        Some(socket),
        Some(metrics_addr),
        Some(netns),
        Some(table_max_entries),
        Some(closed_grace),
        Some(ring_buffer_bytes),
        Some(kernel_max_conns),
        Some(accept_tracepoints),
        Some(program_stats),
        Some(log),
        Some(socket_mode),
        Some(allowed_uids),
        Some(max_message_bytes),
        Some(max_connections),
        Some(max_streams),
        Some(link_wait),
        Some(link_pending_max),
        Some(link_pending_bytes),
        Some(watch_queue),
        Some(watch_queue_bytes),
        Some(max_watchers),
        Some(methods_max_rows),
        Some(methods_max_interfaces),
        Some(methods_exited_grace),
        Some(max_connections_per_peer),
        Some(max_connections_per_uid),
        Some(handshake_timeout),
        Some(idle_timeout),
        Some(keepalive),
        Some(expose_command_line),
        Some(kernel_optional),
    ) = (
        socket,
        metrics_addr,
        netns,
        table_max_entries,
        closed_grace,
        ring_buffer_bytes,
        kernel_max_conns,
        accept_tracepoints,
        program_stats,
        log,
        socket_mode,
        allowed_uids,
        max_message_bytes,
        max_connections,
        max_streams,
        link_wait,
        link_pending_max,
        link_pending_bytes,
        watch_queue,
        watch_queue_bytes,
        max_watchers,
        methods_max_rows,
        methods_max_interfaces,
        methods_exited_grace,
        max_connections_per_peer,
        max_connections_per_uid,
        handshake_timeout,
        idle_timeout,
        keepalive,
        expose_command_line,
        kernel_optional,
    )
    else {
        return Err(ConfigError { problems });
    };
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    Ok(Config {
        socket,
        metrics_addr,
        netns,
        table_max_entries: size(table_max_entries),
        closed_grace,
        ring_buffer_bytes: u32::try_from(ring_buffer_bytes).unwrap_or(u32::MAX),
        kernel_max_conns: u32::try_from(kernel_max_conns).unwrap_or(u32::MAX),
        accept_tracepoints,
        program_stats,
        log,
        socket_mode,
        allowed_uids,
        max_message_bytes: size(max_message_bytes),
        max_connections: size(max_connections),
        max_streams: u32::try_from(max_streams).unwrap_or(u32::MAX),
        link_wait,
        link_pending_max: size(link_pending_max),
        link_pending_bytes: size(link_pending_bytes),
        watch_queue: size(watch_queue),
        watch_queue_bytes: size(watch_queue_bytes),
        max_watchers: size(max_watchers),
        methods_max_rows: size(methods_max_rows),
        methods_max_interfaces: size(methods_max_interfaces),
        methods_exited_grace,
        max_connections_per_peer: size(max_connections_per_peer),
        max_connections_per_uid: size(max_connections_per_uid),
        handshake_timeout,
        idle_timeout,
        keepalive,
        expose_command_line,
        kernel_optional,
    })
}

/// Reads one field at a time, collecting every problem.
struct Parser<'a, S> {
    source: &'a S,
    problems: &'a mut Vec<String>,
}

impl<S: Source> Parser<'_, S> {
    fn get<T>(&mut self, field: Field, parse: impl Fn(&str) -> Result<T, ParseError>) -> Option<T> {
        let (value, origin) = self
            .source
            .get(field)
            .unwrap_or((field.default.to_owned(), Origin::Default));
        match parse(&value) {
            Ok(v) => Some(v),
            Err(error) => {
                let e = FieldError {
                    field: field.key,
                    origin,
                    value,
                    error,
                };
                self.problems.push(e.to_string());
                None
            }
        }
    }
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
