//! `grayscope-bench`: what grayscope costs, side by side with native Envoy filters and an empty wasm filter, in one
//! interleaved run; writes `RESULTS.md` and `RESULTS.json` (see `bench/RESULTS.md` for the method).
//!
//! # Layout
//! - [`configs`]: the Envoy configurations (A, B, C, W0, W1, W2, D0, D1, W1t, D1t, breakdown variants) and their bootstraps.
//! - [`proxy`]: a pinned Envoy, its CPU ticks and admin counters.
//! - [`upstream`]: the upstream all configurations route to.
//! - [`load`]: `wrk` at saturation, a fixed-rate latency generator.
//! - [`run`]: interleaved rounds over a set of configurations.
//! - [`agent`], [`ebpf`]: the real agent, and the kernel side's cost.
//! - [`stats`], [`results`]: medians of per-round figures, the two result files.

mod agent;
mod agent_cost;
mod configs;
mod ebpf;
mod load;
mod proxy;
mod results;
mod run;
mod stats;
mod upstream;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::configs::{WasmFiles, STAGES};

#[derive(Debug, Parser)]
#[command(about = "grayscope's benchmark: interleaved rounds over Envoy configurations")]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Interleaved rounds (the published run uses at least 10).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Seconds of load per configuration per round (wrk rounds to whole seconds, at least 1).
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Seconds of discarded warm-up per configuration.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// The main run's configurations.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "A,B,C,W0,W1,W2,D0,D1,W1t,D1t,W1d,W1-lean"
    )]
    configs: Vec<String>,
    /// Also run the cost breakdown (filter variants built by `just bench`).
    #[arg(long)]
    breakdown: bool,
    /// Also measure the eBPF side (connect rate with and without the agent), with this many rounds.
    #[arg(long, default_value_t = 0)]
    ebpf_rounds: usize,
    /// Also measure the agent's own cost (ingestion, CPU at 10k calls/s, memory with 100k connections).
    #[arg(long)]
    agent_cost: bool,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Fixed rate for the latency figures, requests per second (0: no latency).
    #[arg(long, default_value_t = 1000)]
    latency_rate: u32,
    /// Seconds of fixed-rate load per configuration per round.
    #[arg(long, default_value_t = 2.0)]
    latency_duration: f64,
    /// Where RESULTS.md and RESULTS.json go.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
    /// A sentence about the machine's load during the run, for RESULTS.md.
    #[arg(long, default_value = "not stated")]
    load_note: String,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// (internal) Connect + accept + close loop for SECONDS; prints the number of cycles.
    ConnectLoop {
        #[arg(long)]
        seconds: f64,
    },
    /// (internal) Report batches to an agent for SECONDS (at RATE records/s, 0: flat out); prints the accepted.
    ReportLoop {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 0)]
        rate: u32,
        #[arg(long, default_value_t = 4)]
        streams: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Sub::ConnectLoop { seconds }) => {
            println!("{}", ebpf::connect_loop(Duration::from_secs_f64(*seconds))?);
            return Ok(());
        }
        Some(Sub::ReportLoop {
            socket,
            seconds,
            rate,
            streams,
        }) => {
            println!("{}", agent_cost::report_loop(socket, *seconds, *rate, *streams)?);
            return Ok(());
        }
        None => {}
    }
    bench(&cli)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path_from(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| root().join(default), PathBuf::from)
}

fn bench(cli: &Cli) -> Result<()> {
    let (proxy_cpu, load_cpu) = (0, 1);
    let envoy = path_from("ENVOY_BIN", ".tools/bin/envoy");
    let agent_bin = path_from("GRAYSCOPE_AGENT", "dist/grayscope-agent");
    let wasm = WasmFiles {
        filter: path_from("GRAYSCOPE_WASM", "dist/grayscope_filter.wasm"),
        empty: root().join("dist/bench/empty_filter.wasm"),
        variants: root().join("dist/bench"),
        native: path_from("GRAYSCOPE_NATIVE", "dist/libgrayscope_filter.so"),
        native_empty: root().join("dist/libgrayscope_empty.so"),
    };
    let configs = cli
        .configs
        .iter()
        .map(|l| configs::resolve(l, &wasm))
        .collect::<Result<Vec<_>>>()?;
    let settings = run::Settings {
        rounds: cli.rounds,
        duration: Duration::from_secs_f64(cli.duration),
        warmup: Duration::from_secs_f64(cli.warmup),
        connections: cli.connections,
        proxy_cpu,
        load_cpu,
        clock_ticks: proxy::clock_ticks_per_s()?,
        latency_rate: cli.latency_rate,
        latency_duration: Duration::from_secs_f64(cli.latency_duration),
    };
    // The harness (upstream threads, latency generator) runs on the load CPU with wrk and the agent.
    pin_self(load_cpu)?;
    let loadavg_before = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let upstream = upstream::start()?;
    let needs_agent = configs.iter().any(configs::Config::needs_agent) || cli.breakdown;
    let agent = if needs_agent {
        Some(agent::Agent::start(&agent_bin, load_cpu, &[])?)
    } else {
        None
    };
    let socket = agent
        .as_ref()
        .map_or_else(|| PathBuf::from("/nonexistent"), |a| a.socket.clone());
    let latency_for = ["A", "W0", "W1", "W2", "D0", "D1"];

    let main_run = run::interleaved(&envoy, &configs, upstream, &socket, &settings, &latency_for)?;
    let records = match &agent {
        Some(a) => a.metric("grayscope_agent_call_records_received_total")?,
        None => 0.0,
    };
    if configs.iter().any(|c| c.label == "W2") && records == 0.0 {
        bail!("W2 ran but the agent received no call record: the reporting path is not what was measured");
    }

    let breakdown = if cli.breakdown {
        let mut labels = vec!["A".to_owned(), "W0".into(), "W1".into(), "W2".into()];
        labels.extend(
            STAGES
                .iter()
                .filter(|(s, _)| *s != "record")
                .map(|(s, _)| format!("W1-{s}")),
        );
        labels.push("W2-record".into());
        let cfgs = labels
            .iter()
            .map(|l| configs::resolve(l, &wasm))
            .collect::<Result<Vec<_>>>()?;
        let s = run::Settings {
            latency_rate: 0,
            ..settings.clone()
        };
        let out = run::interleaved(&envoy, &cfgs, upstream, &socket, &s, &[])?;
        Some((cfgs, out.samples))
    } else {
        None
    };
    drop(agent);

    let ebpf = if cli.ebpf_rounds > 0 {
        Some(ebpf::measure(
            &agent_bin,
            cli.ebpf_rounds,
            Duration::from_secs(3),
            proxy_cpu,
            load_cpu,
        )?)
    } else {
        None
    };
    let agent_cost = if cli.agent_cost {
        Some(agent_cost::measure(
            &agent_bin,
            proxy_cpu,
            load_cpu,
            settings.clock_ticks,
        )?)
    } else {
        None
    };
    let loadavg_after = fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut not_measured = BTreeMap::new();
    for k in [
        "records_per_s",
        "cpu_pct_at_10k_calls_per_s",
        "rss_mib_100k",
        "watch_delay_p99_ms",
    ] {
        let why = if k == "watch_delay_p99_ms" {
            "the delay from a call's end to its linked record on Watch has no harness yet"
        } else if agent_cost.is_none() {
            "not asked for in this run (--agent-cost)"
        } else {
            continue;
        };
        not_measured.insert(format!("agent.{k}"), why.to_owned());
    }
    if ebpf.is_none() {
        not_measured.insert("ebpf".into(), "not asked for in this run (--ebpf-rounds 0)".into());
    }
    not_measured.insert(
        "W3".into(),
        "the agent cannot run without its eBPF programs, so W2 already reports to an agent whose programs are attached; under keep-alive load they see only the few connections wrk and Envoy open".into(),
    );
    not_measured.insert(
        "grpc".into(),
        "gRPC throughput with h2load is not in the harness yet; HTTP/1.1 only".into(),
    );
    not_measured.insert(
        "wasm_vm_memory".into(),
        "per-VM memory is not exposed by Envoy's admin; the table gives each Envoy's RSS after the run instead".into(),
    );

    let context = json!({
        "date": sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "machine": machine(),
        "envoy": sh(&envoy.to_string_lossy(), &["--version"]).split_once("version: ").map_or_else(|| "unknown".to_owned(), |(_, v)| v.to_owned()),
        "crates": format!("grayscope {} (git {})", env!("CARGO_PKG_VERSION"), sh("git", &["-C", &root().to_string_lossy(), "rev-parse", "--short", "HEAD"])),
        "rounds": settings.rounds,
        "duration_s": settings.duration.as_secs_f64().max(1.0).round(),
        "warmup_s": settings.warmup.as_secs_f64().max(1.0).round(),
        "connections": settings.connections,
        "proxy_cpu": proxy_cpu,
        "load_cpu": load_cpu,
        "latency_rate": settings.latency_rate,
        "loadavg_before": loadavg_before.trim(),
        "loadavg_after": loadavg_after.trim(),
        "load_note": format!("{} (load average before {}, after {})", cli.load_note, first3(&loadavg_before), first3(&loadavg_after)),
        "agent_records_received": records,
    });
    let report = results::Report {
        context,
        configs: &configs,
        samples: &main_run.samples,
        rss_kib: &main_run.rss_kib,
        breakdown: breakdown.as_ref().map(|(c, s)| (c.as_slice(), s.as_slice())),
        ebpf: ebpf.as_ref(),
        agent: agent_cost.as_ref(),
        not_measured,
    };
    write(&cli.out, &report)
}

fn write(out: &Path, report: &results::Report<'_>) -> Result<()> {
    fs::create_dir_all(out)?;
    let md_path = out.join("RESULTS.md");
    let notes = results::existing_notes(&fs::read_to_string(&md_path).unwrap_or_default());
    fs::write(
        out.join("RESULTS.json"),
        serde_json::to_string_pretty(&report.json())? + "\n",
    )?;
    fs::write(&md_path, report.markdown(&notes))?;
    eprintln!("bench: wrote {} and RESULTS.json", md_path.display());
    Ok(())
}

fn pin_self(cpu: usize) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset")?;
    if !status.success() {
        bail!("taskset could not pin the harness to CPU {cpu}");
    }
    Ok(())
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{} × {cpu}, Linux {}", sh("nproc", &["--all"]), sh("uname", &["-r"]))
}

fn first3(loadavg: &str) -> String {
    loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
