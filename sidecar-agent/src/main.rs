//! `grayscope-agent`: parses the command line and configuration, binds the sockets, and hands over to the
//! library. Exit codes: 0 on a clean stop, 64 (EX_USAGE) for an invalid configuration, 1 for anything else.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use proto::v1::WatchRequest;
use sidecar_agent::{
    cli::{Cli, Command},
    client, control,
    ebpf::ProbeOptions,
    parse_config, Config, Listeners,
};

/// sysexits.h EX_USAGE, as linkerd2-proxy uses for a bad configuration.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let layers = cli.command.layers(std::env::vars_os());
    let unknown = unknown_variables(&layers.unknown_env);
    let config = match parse_config(&layers) {
        Ok(c) => c,
        Err(e) => {
            if let Some(unknown) = unknown {
                eprintln!("grayscope-agent: warning: {unknown}");
            }
            eprintln!("grayscope-agent: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(unknown) = unknown {
        tracing::warn!("{unknown}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("grayscope-agent: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(&cli.command, &config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grayscope-agent: error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// What to say of the `GRAYSCOPE_*` variables that are no setting (see `Layers::unknown_env`), if any.
fn unknown_variables(names: &[String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let mut names = names.to_vec();
    names.sort();
    let settings: Vec<_> = sidecar_agent::config::FIELDS.iter().map(|f| f.env).collect();
    Some(format!(
        "ignoring environment variables that are none of the agent's settings: {} (the settings' variables: {}, {})",
        names.join(", "),
        settings.join(", "),
        sidecar_agent::config::ENV_CONFIG
    ))
}

async fn dispatch(command: &Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Run(_) => {
            // Say what privilege is missing before touching the sockets (whose directory may need it too); with
            // `kernel_optional` the agent starts anyway, and says it when loading the programs fails.
            if !config.kernel_optional {
                sidecar_agent::ebpf::preflight::check(config.accept_tracepoints)?;
            }
            let control = control::bind_with_mode(&config.socket, config.socket_mode)?;
            // Removed on the way out, whichever way that is, so no file is left that looks like a live agent.
            let _socket_file = control::SocketFile::of(&config.socket);
            let metrics = tokio::net::TcpListener::bind(config.metrics_addr)
                .await
                .with_context(|| format!("binding the metrics address {}", config.metrics_addr))?;
            tracing::info!(socket = %config.socket.display(), metrics = %config.metrics_addr, "listening");
            // The first signal stops the agent, which waits a few seconds for the connections still open; a second
            // one during that wait (Ctrl-C again) stops it at once.
            let (first, stopping) = tokio::sync::oneshot::channel();
            let signals = async move {
                let mut signals = Signals::new();
                signals.next().await;
                let _ = first.send(());
                signals.next().await;
            };
            let run = sidecar_agent::run(config, Listeners { control, metrics }, async move {
                let _ = stopping.await;
            });
            tokio::select! {
                r = run => r?,
                () = signals => anyhow::bail!("stopped at a second signal, without waiting for the connections still open"),
            }
            Ok(())
        }
        Command::Trace(_) => {
            let opts = ProbeOptions {
                netns: config.netns.clone(),
                ring_buffer_bytes: config.ring_buffer_bytes,
                kernel_max_conns: config.kernel_max_conns,
                accept_tracepoints: config.accept_tracepoints,
                program_stats: config.program_stats,
                raw_tracepoint: false,
            };
            sidecar_agent::trace::trace(&opts, std::io::stdout().lock(), shutdown_signal()).await?;
            Ok(())
        }
        Command::Tail(a) => {
            let filter = WatchRequest {
                service: a.service.clone().unwrap_or_default(),
                method: a.method.clone().unwrap_or_default(),
                gray_version: a.gray_version.clone().unwrap_or_default(),
                pid: a.pid.unwrap_or(0),
                tenant: a.tenant.clone().unwrap_or_default(),
            };
            client::tail(&config.socket, filter, std::io::stdout().lock(), shutdown_signal())
                .await
                .with_context(|| format!("watching the calls of the agent at {}", config.socket.display()))?;
            Ok(())
        }
        Command::Methods(_) => {
            client::methods(&config.socket, std::io::stdout().lock())
                .await
                .with_context(|| format!("listing the methods of the agent at {}", config.socket.display()))?;
            Ok(())
        }
        Command::InstallModule(a) => {
            let path = sidecar_agent::install_module::install(&a.module, &a.to)?;
            tracing::info!(path = %path.display(), "module installed");
            Ok(())
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text its parent already shows.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
    }
    out
}

/// Ctrl-C or SIGTERM (what Kubernetes sends).
async fn shutdown_signal() {
    Signals::new().next().await;
}

/// SIGINT (Ctrl-C) and SIGTERM, one after the other: each is watched from its creation on.
struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind, name| {
            signal(kind)
                .inspect_err(|e| tracing::warn!(error = %e, "cannot watch {name}"))
                .ok()
        };
        Self {
            int: watch(SignalKind::interrupt(), "SIGINT"),
            term: watch(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// The next SIGINT or SIGTERM (never, for one that cannot be watched).
    async fn next(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => drop(s.recv().await),
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.int) => {}
            () = recv(&mut self.term) => {}
        }
    }
}
