//! `grayscope-injector`: parses the command line, loads the serving certificate, and serves the webhook until
//! SIGTERM or Ctrl-C.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use sidecar_agent_injector::{inject::Settings, server, tls::ReloadingCert};

/// The mutating admission webhook that adds the grayscope agent to opted-in pods.
#[derive(Parser, Debug)]
#[command(name = "grayscope-injector", version)]
struct Cli {
    /// Address to serve HTTPS on.
    #[arg(
        long,
        value_name = "ADDR",
        env = "GRAYSCOPE_INJECTOR_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    listen: SocketAddr,
    /// PEM certificate chain; reloaded when the file changes.
    #[arg(long, value_name = "FILE", env = "GRAYSCOPE_INJECTOR_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key; reloaded when the file changes.
    #[arg(long, value_name = "FILE", env = "GRAYSCOPE_INJECTOR_TLS_KEY")]
    tls_key: PathBuf,
    /// The agent image injected into pods.
    #[arg(
        long,
        value_name = "IMAGE",
        env = "GRAYSCOPE_AGENT_IMAGE",
        default_value = "grayscope/agent:0.1.0"
    )]
    agent_image: String,
    /// The injector's own namespace, never injected.
    #[arg(long, value_name = "NS", env = "POD_NAMESPACE", default_value = "grayscope-system")]
    namespace: String,
    /// Log filter, tracing/RUST_LOG syntax (`info`, `debug`, `info,sidecar_agent_injector=debug`).
    #[arg(long, value_name = "FILTER", env = "GRAYSCOPE_LOG", default_value = "info", value_parser = log_filter)]
    log: String,
}

/// A log filter is checked when the command line is read, so that a bad one is refused naming the setting, as
/// every other bad setting is, instead of being replaced by a default without a word.
fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not a log filter (GRAYSCOPE_LOG, --log: tracing's RUST_LOG syntax): {e}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = ReloadingCert::new(&cli.tls_cert, &cli.tls_key, provider.clone()).context("serving certificate")?;
    let tls = server::acceptor(Arc::new(certs), provider)?;
    let settings = Arc::new(Settings {
        agent_image: cli.agent_image,
        own_namespace: cli.namespace,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("bind {}", cli.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /mutate");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            () = server::serve(listener, tls, settings) => {}
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        }
        Ok(())
    })
}
