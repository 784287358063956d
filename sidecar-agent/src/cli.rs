//! The command line of `grayscope-agent`. Flags take raw text: [`crate::config::parse_config`] validates
//! them together with the environment and the config file, so every bad value is reported at once.

use std::{ffi::OsString, path::PathBuf};

use clap::{builder::NonEmptyStringValueParser, Args, Parser, Subcommand};

use crate::config::{self, Layers, ENV_CONFIG};

/// grayscope sidecar agent: TCP connections of the pod with the process that owns each one, and the Envoy
/// filter's calls linked to those processes.
#[derive(Debug, Parser)]
#[command(name = "grayscope-agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: track connections, serve the Unix socket and /metrics.
    Run(Box<RunArgs>),
    /// Print connection events as they happen, one line each (like tcplife).
    Trace(TraceArgs),
    /// Stream the calls a running agent links to processes, one line each.
    Tail(TailArgs),
    /// Print the method table of a running agent: per interface x gray version x tenant x process.
    Methods(ClientArgs),
    /// Copy the filter's native build (an Envoy dynamic module) that this image carries into a directory: the
    /// init container of pods that opt into the native build.
    InstallModule(InstallModuleArgs),
}

/// Settings of `install-module`.
#[derive(Debug, Args)]
pub struct InstallModuleArgs {
    /// Directory to copy the module into (a volume shared with istio-proxy).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The module to copy.
    #[arg(long, value_name = "PATH", default_value = crate::install_module::IMAGE_MODULE)]
    pub module: PathBuf,
}

/// How to reach a running agent.
#[derive(Debug, Default, Args)]
pub struct ClientArgs {
    /// The agent's Unix socket [env: GRAYSCOPE_SOCKET] [default: /run/grayscope/agent.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<String>,
}

/// Settings of `tail`: which calls to show (all when none is given). `WatchRequest` matches everything with an
/// empty value or pid 0, so those are refused here: given, they would silently show every call.
#[derive(Debug, Default, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only calls of this service (`pkg.Service` for gRPC, the upstream cluster for HTTP).
    #[arg(long, value_name = "S", value_parser = NonEmptyStringValueParser::new())]
    pub service: Option<String>,
    /// Only calls of this method: `Method`, `pkg.Service/Method`, or `VERB route` for HTTP.
    #[arg(long, value_name = "M", value_parser = NonEmptyStringValueParser::new())]
    pub method: Option<String>,
    /// Only calls with this gray version.
    #[arg(long, value_name = "V", value_parser = NonEmptyStringValueParser::new())]
    pub gray_version: Option<String>,
    /// Only calls linked to this process (not 0).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,
    /// Only calls of this tenant label, as the filter's tenant dimension labels them (`enterprise`, `t_<hash>`,
    /// `none`, `other`, ...): never a raw tenant id.
    #[arg(long, value_name = "LABEL", value_parser = NonEmptyStringValueParser::new())]
    pub tenant: Option<String>,
}

/// Settings of `run`. Each also comes from a GRAYSCOPE_* environment variable or the config file.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// TOML config file with the settings below as keys (env: GRAYSCOPE_CONFIG).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Path of the agent's Unix socket [env: GRAYSCOPE_SOCKET] [default: /run/grayscope/agent.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<String>,
    /// Address of the Prometheus endpoint [env: GRAYSCOPE_METRICS_ADDR] [default: 0.0.0.0:9464].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// Most connections kept in the table, live plus closed [env: GRAYSCOPE_TABLE_MAX_ENTRIES] [default: 65536].
    #[arg(long, value_name = "N")]
    pub table_max_entries: Option<String>,
    /// How long closed connections stay in the table [env: GRAYSCOPE_CLOSED_GRACE] [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub closed_grace: Option<String>,
    /// Octal mode of the socket file [env: GRAYSCOPE_SOCKET_MODE] [default: 0660].
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// Peer uids allowed to call: `any`, or a list of uids and `self` [env: GRAYSCOPE_ALLOWED_UIDS]
    /// [default: self,0].
    #[arg(long, value_name = "UIDS")]
    pub allowed_uids: Option<String>,
    /// Largest gRPC message accepted [env: GRAYSCOPE_MAX_MESSAGE_BYTES] [default: 4MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<String>,
    /// Connections served at once [env: GRAYSCOPE_MAX_CONNECTIONS] [default: 64].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// Concurrent calls per connection [env: GRAYSCOPE_MAX_STREAMS] [default: 64].
    #[arg(long, value_name = "N")]
    pub max_streams: Option<String>,
    /// How long a call record waits for its connection [env: GRAYSCOPE_LINK_WAIT] [default: 500ms].
    #[arg(long, value_name = "DURATION")]
    pub link_wait: Option<String>,
    /// Most call records waiting for their connection [env: GRAYSCOPE_LINK_PENDING_MAX] [default: 16384].
    #[arg(long, value_name = "N")]
    pub link_pending_max: Option<String>,
    /// Bytes of call records waiting for their connection [env: GRAYSCOPE_LINK_PENDING_BYTES] [default: 16MiB].
    #[arg(long, value_name = "BYTES")]
    pub link_pending_bytes: Option<String>,
    /// Calls queued per watcher before it loses the oldest [env: GRAYSCOPE_WATCH_QUEUE] [default: 1024].
    #[arg(long, value_name = "N")]
    pub watch_queue: Option<String>,
    /// Bytes of calls queued per watcher before it loses the oldest [env: GRAYSCOPE_WATCH_QUEUE_BYTES]
    /// [default: 1MiB].
    #[arg(long, value_name = "BYTES")]
    pub watch_queue_bytes: Option<String>,
    /// Most `Watch` streams at once [env: GRAYSCOPE_MAX_WATCHERS] [default: 64].
    #[arg(long, value_name = "N")]
    pub max_watchers: Option<String>,
    /// Most rows of the method table [env: GRAYSCOPE_METHODS_MAX_ROWS] [default: 4096].
    #[arg(long, value_name = "N")]
    pub methods_max_rows: Option<String>,
    /// Most distinct interfaces in the method table, more count as `other`
    /// [env: GRAYSCOPE_METHODS_MAX_INTERFACES] [default: 256].
    #[arg(long, value_name = "N")]
    pub methods_max_interfaces: Option<String>,
    /// How long an exited process's rows stay in the method table [env: GRAYSCOPE_METHODS_EXITED_GRACE]
    /// [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub methods_exited_grace: Option<String>,
    /// Most connections one process may hold on the socket [env: GRAYSCOPE_MAX_CONNECTIONS_PER_PEER] [default: 16].
    #[arg(long, value_name = "N")]
    pub max_connections_per_peer: Option<String>,
    /// Most connections the processes of one uid may hold on the socket [env: GRAYSCOPE_MAX_CONNECTIONS_PER_UID]
    /// [default: 32].
    #[arg(long, value_name = "N")]
    pub max_connections_per_uid: Option<String>,
    /// Time a new connection has to start HTTP/2 [env: GRAYSCOPE_HANDSHAKE_TIMEOUT] [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// A connection with no call open for this long is closed [env: GRAYSCOPE_IDLE_TIMEOUT] [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// HTTP/2 PING interval; an unanswered peer is closed [env: GRAYSCOPE_KEEPALIVE] [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub keepalive: Option<String>,
    /// Send processes' command lines to watchers and in the method table (they may hold secrets)
    /// [env: GRAYSCOPE_EXPOSE_COMMAND_LINE] [default: false].
    #[arg(long, value_name = "BOOL")]
    pub expose_command_line: Option<String>,
    /// When the kernel programs cannot be loaded (a privilege or the kernel's BTF missing), say why and serve the
    /// socket and /metrics without them (records then count as unlinked) instead of exiting; what a pod's sidecar
    /// needs, since one that exits keeps the pod out of its Service [env: GRAYSCOPE_KERNEL_OPTIONAL]
    /// [default: false].
    #[arg(long, value_name = "BOOL")]
    pub kernel_optional: Option<String>,
}

/// Settings of `trace`.
#[derive(Debug, Default, Args)]
pub struct TraceArgs {
    /// TOML config file (env: GRAYSCOPE_CONFIG); only the kernel and log settings apply.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

/// Settings shared by both commands.
#[derive(Debug, Default, Args)]
pub struct KernelArgs {
    /// Network namespace to watch: self, all, an inode number or a path such as /run/netns/NAME
    /// [env: GRAYSCOPE_NETNS] [default: self].
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<String>,
    /// Kernel ring buffer size in bytes, a power of two >= 4096 [env: GRAYSCOPE_RING_BUFFER_BYTES]
    /// [default: 262144].
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<String>,
    /// Capacity of the kernel map of open connections [env: GRAYSCOPE_KERNEL_MAX_CONNS] [default: 65536].
    #[arg(long, value_name = "N")]
    pub kernel_max_conns: Option<String>,
    /// Also attach the accept syscall tracepoints, to name the exact accepting process (a pre-fork server's
    /// worker) instead of the listener's owner; every syscall of the node then takes the slow tracing path
    /// [env: GRAYSCOPE_ACCEPT_TRACEPOINTS] [default: false].
    #[arg(long, value_name = "BOOL")]
    pub accept_tracepoints: Option<String>,
    /// Turn on the kernel's BPF run statistics (`BPF_ENABLE_STATS`, needs CAP_SYS_ADMIN) for the
    /// `bpf_program_run*` metrics; they then cost two clock reads on every run of every BPF program of the node
    /// [env: GRAYSCOPE_PROGRAM_STATS] [default: false].
    #[arg(long, value_name = "BOOL")]
    pub program_stats: Option<String>,
    /// Log filter, tracing/RUST_LOG syntax [env: GRAYSCOPE_LOG] [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

// === impl Command ===

impl Command {
    /// Gathers the layers: flags of this command, `env` (the process environment, [`std::env::vars_os`]: not all of
    /// it need be UTF-8), and the config file named by `--config` or `GRAYSCOPE_CONFIG`.
    pub fn layers<K: Into<OsString>, V: Into<OsString>>(&self, env: impl IntoIterator<Item = (K, V)>) -> Layers {
        let mut layers = Layers::default().with_env(env);
        let none = KernelArgs::default();
        let (file, kernel) = match self {
            Self::Run(a) => (&a.config, &a.kernel),
            Self::Trace(a) => (&a.config, &a.kernel),
            Self::Tail(_) | Self::Methods(_) | Self::InstallModule(_) => (&None, &none),
        };
        let mut flag = |field: config::Field, v: &Option<String>| {
            if let Some(v) = v {
                layers.flags.insert(field.key, v.clone());
            }
        };
        flag(config::NETNS, &kernel.netns);
        flag(config::RING_BUFFER_BYTES, &kernel.ring_buffer_bytes);
        flag(config::KERNEL_MAX_CONNS, &kernel.kernel_max_conns);
        flag(config::ACCEPT_TRACEPOINTS, &kernel.accept_tracepoints);
        flag(config::PROGRAM_STATS, &kernel.program_stats);
        flag(config::LOG, &kernel.log);
        if let Self::Run(a) = self {
            flag(config::SOCKET, &a.socket);
            flag(config::METRICS_ADDR, &a.metrics_addr);
            flag(config::TABLE_MAX_ENTRIES, &a.table_max_entries);
            flag(config::CLOSED_GRACE, &a.closed_grace);
            flag(config::SOCKET_MODE, &a.socket_mode);
            flag(config::ALLOWED_UIDS, &a.allowed_uids);
            flag(config::MAX_MESSAGE_BYTES, &a.max_message_bytes);
            flag(config::MAX_CONNECTIONS, &a.max_connections);
            flag(config::MAX_STREAMS, &a.max_streams);
            flag(config::LINK_WAIT, &a.link_wait);
            flag(config::LINK_PENDING_MAX, &a.link_pending_max);
            flag(config::LINK_PENDING_BYTES, &a.link_pending_bytes);
            flag(config::WATCH_QUEUE, &a.watch_queue);
            flag(config::WATCH_QUEUE_BYTES, &a.watch_queue_bytes);
            flag(config::MAX_WATCHERS, &a.max_watchers);
            flag(config::METHODS_MAX_ROWS, &a.methods_max_rows);
            flag(config::METHODS_MAX_INTERFACES, &a.methods_max_interfaces);
            flag(config::METHODS_EXITED_GRACE, &a.methods_exited_grace);
            flag(config::MAX_CONNECTIONS_PER_PEER, &a.max_connections_per_peer);
            flag(config::MAX_CONNECTIONS_PER_UID, &a.max_connections_per_uid);
            flag(config::HANDSHAKE_TIMEOUT, &a.handshake_timeout);
            flag(config::IDLE_TIMEOUT, &a.idle_timeout);
            flag(config::KEEPALIVE, &a.keepalive);
            flag(config::EXPOSE_COMMAND_LINE, &a.expose_command_line);
            flag(config::KERNEL_OPTIONAL, &a.kernel_optional);
        }
        if let Self::Tail(TailArgs { client, .. }) | Self::Methods(client) = self {
            flag(config::SOCKET, &client.socket);
        }
        let file = file.clone().or_else(|| layers.env.get(ENV_CONFIG).map(PathBuf::from));
        match file {
            Some(path) => layers.with_file(path),
            None => layers,
        }
    }
}
