//! The command line of `grayscope-agent`. Flags take raw text: [`crate::config::parse_config`] validates
//! them together with the environment and the config file, so every bad value is reported at once.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Layers, ENV_CONFIG};

/// grayscope sidecar agent: TCP connections of the pod, with the process that owns each one.
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
    Run(RunArgs),
    /// Print connection events as they happen, one line each (like tcplife).
    Trace(TraceArgs),
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
    /// Log filter, tracing/RUST_LOG syntax [env: GRAYSCOPE_LOG] [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

// === impl Command ===

impl Command {
    /// Gathers the layers: flags of this command, `env` (the process environment), and the config file named
    /// by `--config` or `GRAYSCOPE_CONFIG`.
    pub fn layers(&self, env: impl IntoIterator<Item = (String, String)>) -> Layers {
        let mut layers = Layers::default().with_env(env);
        let (file, kernel) = match self {
            Self::Run(a) => (&a.config, &a.kernel),
            Self::Trace(a) => (&a.config, &a.kernel),
        };
        let mut flag = |field: config::Field, v: &Option<String>| {
            if let Some(v) = v {
                layers.flags.insert(field.key, v.clone());
            }
        };
        flag(config::NETNS, &kernel.netns);
        flag(config::RING_BUFFER_BYTES, &kernel.ring_buffer_bytes);
        flag(config::KERNEL_MAX_CONNS, &kernel.kernel_max_conns);
        flag(config::LOG, &kernel.log);
        if let Self::Run(a) = self {
            flag(config::SOCKET, &a.socket);
            flag(config::METRICS_ADDR, &a.metrics_addr);
            flag(config::TABLE_MAX_ENTRIES, &a.table_max_entries);
            flag(config::CLOSED_GRACE, &a.closed_grace);
        }
        let file = file.clone().or_else(|| layers.env.get(ENV_CONFIG).map(PathBuf::from));
        match file {
            Some(path) => layers.with_file(path),
            None => layers,
        }
    }
}
