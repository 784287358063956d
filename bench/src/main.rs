//! `grayscope-bench`: what grayscope costs, side by side with native Envoy filters and an empty wasm filter, in one
//! interleaved run; writes `RESULTS.md` and `RESULTS.json` (see `bench/RESULTS.md` for the method).
//!
//! # Layout
//! - [`configs`]: the Envoy configurations (A, B, C, W0, W1, W2, W3, D0, D1, W1t, D1t, breakdown variants) and
//!   their bootstraps.
//! - [`proxy`]: a pinned Envoy, its CPU ticks and admin counters.
//! - [`upstream`]: the upstream all configurations route to (HTTP/1.1, and gRPC over h2c on the same port).
//! - [`load`]: `wrk` at saturation, a fixed-rate latency generator, `h2load` for gRPC.
//! - [`run`]: interleaved rounds over a set of configurations.
//! - [`agent`], [`ebpf`], [`agent_cost`], [`watch_delay`]: the real agent, the kernel side's cost, the agent's own
//!   cost, and the delay from a call's end to its record on `Watch`.
//! - [`vm_memory`]: each wasm VM's memory, from the Envoy's `smaps`.
//! - [`stats`], [`results`], [`results_grpc`]: medians of per-round figures, the two result files.

mod agent;
mod agent_cost;
mod configs;
mod ebpf;
mod load;
mod proxy;
mod results;
mod results_grpc;
mod run;
mod stats;
mod upstream;
mod vm_memory;
mod wakeup;
mod watch_delay;

/// W2's agent watches this network namespace inode, which no namespace has (the kernel numbers namespace inodes
/// from 0xF0000000), so its programs filter every event out.
const QUIET_NETNS: &str = "1";

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
// A flag given twice keeps the last value, so `just bench`'s extra arguments override the recipe's own.
#[command(
    about = "grayscope's benchmark: interleaved rounds over Envoy configurations",
    args_override_self = true
)]
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
    /// Rounds each proxy serves before a fresh one replaces it: a configuration's median then mixes
    /// rounds / ROUNDS_PER_SET processes (one process's cost can stand several µs per request off the others')
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    rounds_per_set: u16,
    /// The main run's configurations (W1-lean and D1-lean, W1 and D1 configured the lean way, only by hand: a
    /// configuration-only difference of 1-2 µs needs more rounds than `just bench` has, and each configuration costs
    /// it 5 proxy start-ups and 10 rounds)
    #[arg(long, value_delimiter = ',', default_value = "A,B,C,W0,W1,W2,W3,D0,D1,W1t,D1t,W1d")]
    configs: Vec<String>,
    /// Also run the cost breakdown (filter variants built by `just bench`).
    #[arg(long)]
    breakdown: bool,
    /// Interleaved rounds of the breakdown run (its own run: the full filter and the router alone run again in it).
    #[arg(long, default_value_t = 5)]
    breakdown_rounds: usize,
    /// Also measure the eBPF side (connect rate with and without the agent), with this many rounds.
    #[arg(long, default_value_t = 0)]
    ebpf_rounds: usize,
    /// Also measure the agent's own cost (ingestion, CPU at 10k calls/s, memory with 100k connections).
    #[arg(long)]
    agent_cost: bool,
    /// Also run gRPC load (h2load, unary calls over h2c) over `--grpc-configs`, with this many rounds.
    #[arg(long, default_value_t = 0)]
    grpc_rounds: usize,
    /// The gRPC run's configurations.
    /// C and D1 are in it because gRPC is where Envoy's `grpc_stats` (in C) counts per method, as our filter does:
    /// on plain HTTP/1.1 requests it has nothing to count.
    #[arg(long, value_delimiter = ',', default_value = "A,C,W1,W2,D1")]
    grpc_configs: Vec<String>,
    /// Also measure each wasm VM's memory after this many requests naming more interfaces than the cap (0: not).
    #[arg(long, default_value_t = 0)]
    vm_memory_requests: u64,
    /// Also measure the delay from a call's end to its linked record on Watch (through a W3 Envoy).
    #[arg(long)]
    watch_delay: bool,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Fixed rate for the latency figures, requests per second (0: no latency).
    #[arg(long, default_value_t = 1000)]
    latency_rate: u32,
    /// Seconds of fixed-rate load per configuration per round.
    #[arg(long, default_value_t = 2.0)]
    latency_duration: f64,
    /// Seconds of idle between a round's saturating load and its fixed-rate latency on the same proxy, so that the
    /// latency is that of a steady fixed rate: a reporting filter sends the records the saturating load left in its
    /// buffer at its next tick, and the agent on the load generator's CPU decodes them.
    #[arg(long, default_value_t = 0.5)]
    latency_settle: f64,
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
        latency_settle: Duration::from_secs_f64(cli.latency_settle),
        grpc: false,
        rounds_per_set: usize::from(cli.rounds_per_set),
    };
    // The harness (upstream threads, latency generator) runs on the load CPU with wrk and the agent.
    pin_self(load_cpu)?;
    let mut phases = Phases::default();
    let loadavg_before = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let wakeup_before = wakeup::cost_us();
    let upstream = upstream::start()?;
    // Two agents: W2's has its kernel programs filter every event out (`--netns` set to an inode no namespace has:
    // the programs return at the namespace check, no map update nor ring buffer work, and no record links, so
    // `--link-wait 0s` publishes each at once instead of retrying it); W3's traces the connections of its own
    // namespace (the default), as deployed. Both run for the whole run: attached programs are global, so every
    // configuration runs under the same ones and only W3's connections are traced.
    let grpc_configs = if cli.grpc_rounds > 0 {
        cli.grpc_configs
            .iter()
            .map(|l| configs::resolve(l, &wasm))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let needs_agent = configs.iter().chain(&grpc_configs).any(configs::Config::needs_agent)
        || cli.breakdown
        || cli.vm_memory_requests > 0;
    let quiet_agent = if needs_agent {
        Some(agent::Agent::start(
            &agent_bin,
            load_cpu,
            &["--netns", QUIET_NETNS, "--link-wait", "0s"],
        )?)
    } else {
        None
    };
    let tracing_agent = if configs.iter().chain(&grpc_configs).any(|c| c.label == "W3") || cli.watch_delay {
        Some(agent::Agent::start(&agent_bin, load_cpu, &[])?)
    } else {
        None
    };
    let socket_of = |a: &Option<agent::Agent>| {
        a.as_ref()
            .map_or_else(|| PathBuf::from("/nonexistent"), |a| a.socket.clone())
    };
    let (quiet_socket, tracing_socket) = (socket_of(&quiet_agent), socket_of(&tracing_agent));
    let socket_for = |c: &configs::Config| {
        if c.label == "W3" {
            tracing_socket.clone()
        } else {
            quiet_socket.clone()
        }
    };
    // The latency target is W2 against A. W1 (no reporting) and W1d (reporting with nowhere to send: records are
    // built and batched, no gRPC call leaves) tell where W2's part comes from; D1 is the native build.
    let latency_for = ["A", "W1", "W1d", "W2", "D1", "W2-before"];

    let main_run = run::interleaved(&envoy, &configs, upstream, &socket_for, &settings, &latency_for)?;
    phases.done("main run");
    let received = |a: &Option<agent::Agent>| match a {
        Some(a) => a.metric("grayscope_agent_call_records_received_total"),
        None => Ok(0.0),
    };
    let records = received(&quiet_agent)?;
    for (label, n) in [("W2", records), ("W3", received(&tracing_agent)?)] {
        if configs.iter().any(|c| c.label == label) && n == 0.0 {
            bail!("{label} ran but its agent received no call record: the reporting path is not what was measured");
        }
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
            rounds: cli.breakdown_rounds,
            latency_rate: 0,
            ..settings.clone()
        };
        let out = run::interleaved(&envoy, &cfgs, upstream, &socket_for, &s, &[])?;
        phases.done("breakdown");
        Some((cfgs, out.samples))
    } else {
        None
    };
    let grpc = if grpc_configs.is_empty() {
        None
    } else {
        let s = run::Settings {
            rounds: cli.grpc_rounds,
            grpc: true,
            ..settings.clone()
        };
        let out = run::interleaved(&envoy, &grpc_configs, upstream, &socket_for, &s, &latency_for)?;
        phases.done("gRPC");
        Some(out.samples)
    };
    let mut vm_memory = Vec::new();
    if cli.vm_memory_requests > 0 {
        // The empty filter's VMs do not grow (2,000 or 20,000 requests leave them as they started), so W0 is left
        // out to keep `just bench` short.
        for label in ["W1", "W2"] {
            let c = configs::resolve(label, &wasm)?;
            let proxy = proxy::Proxy::start(&envoy, &c.bootstrap(upstream.port(), &socket_for(&c)), proxy_cpu)?;
            let r = vm_memory::measure(label, &proxy, cli.vm_memory_requests)?;
            eprintln!("bench: {label} wasm VMs after {} requests: {:?}", r.requests, r.after);
            vm_memory.push(r);
        }
        phases.done("wasm VM memory");
    }
    let watch_delay = match &tracing_agent {
        Some(a) if cli.watch_delay => {
            let w3 = configs::resolve("W3", &wasm)?;
            let proxy = proxy::Proxy::start(&envoy, &w3.bootstrap(upstream.port(), &a.socket), proxy_cpu)?;
            let w = watch_delay::measure(&a.socket, proxy.listener, 200, 50, Duration::from_millis(1000))?;
            eprintln!(
                "bench: Watch delay p50 {:.1} ms, p99 {:.1} ms ({} of {} calls linked)",
                w.p50_ms, w.p99_ms, w.linked, w.calls
            );
            phases.done("Watch delay");
            Some(w)
        }
        _ => None,
    };
    drop(quiet_agent);
    drop(tracing_agent);

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
    if ebpf.is_some() {
        phases.done("eBPF");
    }
    let agent_cost = if cli.agent_cost {
        let a = agent_cost::measure(&agent_bin, proxy_cpu, load_cpu)?;
        phases.done("agent cost");
        Some(a)
    } else {
        None
    };
    let loadavg_after = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let wakeup_after = wakeup::cost_us();

    let mut not_measured = BTreeMap::new();
    for k in [
        "records_per_s",
        "cpu_pct_at_10k_calls_per_s",
        "rss_mib_100k",
        "watch_delay_p99_ms",
    ] {
        let why = if k == "watch_delay_p99_ms" {
            if watch_delay.is_some() {
                continue;
            }
            "not asked for in this run (--watch-delay)"
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
    if grpc.is_none() {
        not_measured.insert("grpc".into(), "not asked for in this run (--grpc-rounds 0)".into());
    }
    if vm_memory.is_empty() {
        not_measured.insert(
            "wasm_vm_memory".into(),
            "not asked for in this run (--vm-memory-requests 0)".into(),
        );
    }

    let context = json!({
        "date": sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "machine": machine(),
        "envoy": sh(&envoy.to_string_lossy(), &["--version"]).split_once("version: ").map_or_else(|| "unknown".to_owned(), |(_, v)| v.to_owned()),
        "crates": format!("grayscope {} (git {})", env!("CARGO_PKG_VERSION"), sh("git", &["-C", &root().to_string_lossy(), "rev-parse", "--short", "HEAD"])),
        "rounds": settings.rounds,
        "rounds_per_set": settings.rounds_per_set,
        "duration_s": settings.duration.as_secs_f64().max(1.0).round(),
        "warmup_s": settings.warmup.as_secs_f64().max(1.0).round(),
        "connections": settings.connections,
        "proxy_cpu": proxy_cpu,
        "load_cpu": load_cpu,
        "latency_rate": settings.latency_rate,
        "latency_duration_s": settings.latency_duration.as_secs_f64(),
        "latency_settle_s": settings.latency_settle.as_secs_f64(),
        "loadavg_before": loadavg_before.trim(),
        "loadavg_after": loadavg_after.trim(),
        "wakeup_cpu_us_before": wakeup_before,
        "wakeup_cpu_us_after": wakeup_after,
        "load_note": format!(
            "{} (load average before {}, after {}; CPU charged per wakeup of a thread sleeping 5 ms at a time, on CPU {load_cpu}: {} µs before, {} after)",
            cli.load_note, first3(&loadavg_before), first3(&loadavg_after), show_us(wakeup_before), show_us(wakeup_after)
        ),
        "agent_records_received": records,
        "phases_s": phases.json(),
    });
    let report = results::Report {
        context,
        configs: &configs,
        samples: &main_run.samples,
        rss_kib: &main_run.rss_kib,
        breakdown: breakdown.as_ref().map(|(c, s)| (c.as_slice(), s.as_slice())),
        ebpf: ebpf.as_ref(),
        agent: agent_cost.as_ref(),
        watch_delay: watch_delay.as_ref(),
        vm_memory: &vm_memory,
        grpc: grpc.as_ref().map(|g| (grpc_configs.as_slice(), g.as_slice())),
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

/// How long each phase of the run took, for RESULTS.md (`just bench` must fit in 20 minutes on a fresh machine).
struct Phases {
    last: std::time::Instant,
    took: Vec<(&'static str, f64)>,
}

impl Default for Phases {
    fn default() -> Self {
        Self {
            last: std::time::Instant::now(),
            took: Vec::new(),
        }
    }
}

impl Phases {
    fn done(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        let s = (now - self.last).as_secs_f64();
        eprintln!("bench: {phase} took {s:.0} s");
        self.took.push((phase, s));
        self.last = now;
    }

    fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.took {
            m.insert((*k).to_owned(), json!(v.round()));
        }
        serde_json::Value::Object(m)
    }
}

fn show_us(us: Option<f64>) -> String {
    us.map_or_else(|| "n/a".to_owned(), |us| format!("{us:.1}"))
}

fn first3(loadavg: &str) -> String {
    loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
