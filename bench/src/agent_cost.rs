//! The agent's own cost: `Report` ingestion over its Unix socket, its CPU at a fixed rate of linked calls, and its
//! resident memory with 100,000 connections in its table.
//!
//! The gRPC client runs as a child process of the harness (`grayscope-bench report-loop`) pinned to the other CPU
//! than the agent, so the agent's figures are its own. Every record names a real connection the client opened (so
//! the agent links it at once, through its table), in batches like the filter's.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use proto::v1::{CallRecord, Direction, ReportRequest, SocketAddress};

use crate::{agent::Agent, ebpf, proxy, stats::Summary};

/// Seconds of each measurement: the ingestion run, the idle window and each window at 10,000 calls/s.
pub const WINDOW_S: f64 = 3.0;
/// Windows of [`WINDOW_S`] in which the agent's CPU at 10,000 calls/s is measured, each with a fresh client.
pub const CPU_WINDOWS: usize = 5;

/// Linked calls per second of the CPU figure.
const RATE: u32 = 10_000;

/// Records per `Report`, as the filter batches them by default (`report.max_batch`, 1,024): at 10,000 calls per
/// second its batches fill before the flush interval.
pub fn batch_size() -> usize {
    wasm_filter_core::report::ReportConfig::default().max_batch
}

/// What the agent-cost phase measured.
#[derive(Debug, Clone)]
pub struct AgentCost {
    pub records_per_s: f64,
    /// Median and range over [`CPU_WINDOWS`] windows: one window's figure moves by a fifth from run to run.
    pub cpu_pct_at_10k: Summary,
    pub rss_mib_100k: f64,
    pub tracked_at_rss: f64,
    /// The agent's CPU with nothing to do (its timers), % of a core: the fixed part of `cpu_pct_at_10k`.
    pub cpu_pct_idle: f64,
    /// RSS of the same agent with its table empty, and the difference per table entry.
    pub rss_mib_empty: f64,
    pub bytes_per_entry: f64,
}

/// CPU time of every thread of `pid`, ns (`/proc/<pid>/task/*/schedstat`, first field): nanosecond resolution,
/// where utime+stime counts 10 ms ticks.
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        total += proxy::schedstat_ns(&task?.path().join("schedstat")).unwrap_or(0);
    }
    Ok(total)
}

/// The agent's CPU over `f`, % of a core.
fn cpu_pct(agent: &Agent, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    Ok(cpu_window(agent, || f().map(|()| 0))?.pct())
}

/// What the agent did while `f` ran: its CPU time, the time `f` took, and the records `f` says it sent.
fn cpu_window(agent: &Agent, f: impl FnOnce() -> Result<u64>) -> Result<Window> {
    let (t0, start) = (cpu_ns(agent.pid())?, Instant::now());
    let records = f()?;
    let busy = cpu_ns(agent.pid())? - t0;
    Ok(Window {
        cpu: Duration::from_nanos(busy),
        elapsed: start.elapsed(),
        records,
    })
}

/// One measurement window of the agent's CPU.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// CPU time of all the agent's threads.
    cpu: Duration,
    /// From the reporter's start to its end (the idle window: the sleep).
    elapsed: Duration,
    /// Records the agent accepted.
    records: u64,
}

impl Window {
    /// The agent's CPU, % of a core.
    fn pct(self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.elapsed.as_secs_f64()
    }

    /// The agent's CPU at `rate` records per second, % of a core: its CPU time per record accepted, times `rate`.
    /// Not its CPU over `elapsed`, which runs from the reporter's start to its end and holds more than the sending
    /// (the reporter's start, the 0.3 s it waits before it sends, a last batch past its seconds): that would make the
    /// figure about 10 % low, and the rate not quite `rate`. The agent's idle work over that time is charged to the
    /// records (idle is about a fiftieth of the figure), so this errs high, if at all.
    fn pct_at(self, rate: u32) -> f64 {
        100.0 * self.cpu.as_secs_f64() * f64::from(rate) / self.records as f64
    }
}

/// `report-loop`: sends batches for `seconds` (at `rate` records/s, 0 for flat out over `streams` concurrent
/// calls) and prints how many records the agent accepted.
pub fn report_loop(socket: &Path, seconds: f64, rate: u32, streams: usize) -> Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server = listener.local_addr()?;
    let conn = TcpStream::connect(server)?;
    let (_accepted, _) = listener.accept()?;
    let client = conn.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        // The connection must be in the agent's table before the records that name it arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let batch = batch(client, server);
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        let streams = if rate > 0 { 1 } else { streams };
        for _ in 0..streams {
            let mut c = sidecar_agent::client::connect(socket).await?;
            let batch = batch.clone();
            tasks.push(tokio::spawn(async move {
                let mut accepted = 0u64;
                let interval = (rate > 0).then(|| Duration::from_secs_f64(batch.len() as f64 / f64::from(rate)));
                let mut due = tokio::time::Instant::now();
                while Instant::now() < end {
                    if let Some(i) = interval {
                        tokio::time::sleep_until(due).await;
                        due += i;
                    }
                    let req = ReportRequest {
                        reporter: "bench".into(),
                        calls: batch.clone(),
                    };
                    accepted += u64::from(c.report(req).await?.into_inner().accepted);
                }
                Ok::<_, anyhow::Error>(accepted)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        drop(conn);
        Ok(total)
    })
}

fn batch(client: SocketAddr, server: SocketAddr) -> Vec<CallRecord> {
    let sa = |a: SocketAddr| {
        Some(SocketAddress {
            address: a.ip().to_string(),
            port: u32::from(a.port()),
        })
    };
    (0..batch_size())
        .map(|i| CallRecord {
            direction: Direction::Outbound as i32,
            rpc_system_name: "grpc".into(),
            rpc_method: format!("bench.Service/Method{}", i % 10),
            service: "bench.Service".into(),
            gray_version: "v2".into(),
            status: "OK".into(),
            http_response_status_code: 200,
            duration_ns: 1_500_000,
            start_time_unix_nano: 1_800_000_000_000_000_000,
            client: sa(client),
            server: sa(server),
            request_id: format!("req-{i}"),
            ..CallRecord::default()
        })
        .collect()
}

fn run_reporter(socket: &Path, cpu: usize, seconds: f64, rate: u32) -> Result<u64> {
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(std::env::current_exe()?)
        .args(["report-loop", "--socket"])
        .arg(socket)
        .args(["--seconds", &seconds.to_string(), "--rate", &rate.to_string()])
        .output()
        .context("run the report generator")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .map_err(|_| anyhow!("report-loop said {text:?} {}", String::from_utf8_lossy(&out.stderr)))
}

/// Runs the three measurements, each on a fresh agent pinned to `agent_cpu`.
pub fn measure(agent_bin: &Path, client_cpu: usize, agent_cpu: usize) -> Result<AgentCost> {
    let seconds = WINDOW_S;
    let agent = Agent::start(agent_bin, agent_cpu, &[])?;
    let accepted = run_reporter(&agent.socket, client_cpu, seconds, 0)?;
    let records_per_s = accepted as f64 / seconds;
    drop(agent);

    let agent = Agent::start(agent_bin, agent_cpu, &[])?;
    let cpu_pct_idle = cpu_pct(&agent, || {
        std::thread::sleep(Duration::from_secs_f64(seconds));
        Ok(())
    })?;
    let windows = (0..CPU_WINDOWS)
        .map(|_| {
            let w = cpu_window(&agent, || run_reporter(&agent.socket, client_cpu, seconds, RATE))?;
            if w.records == 0 {
                bail!("the agent accepted no record at {RATE} records/s:\n{}", agent.log());
            }
            Ok(w.pct_at(RATE))
        })
        .collect::<Result<Vec<_>>>()?;
    let cpu_pct_at_10k = Summary::of(&windows);
    drop(agent);

    // 100,000 connections opened and closed: closed ones stay in the table for the grace period (30 s).
    let agent = Agent::start(
        agent_bin,
        agent_cpu,
        &["--table-max-entries", "200000", "--kernel-max-conns", "200000"],
    )?;
    let rss_mib_empty = proxy::rss_kib(agent.pid())? as f64 / 1024.0;
    let mut cycles = 0;
    while cycles < 100_000 {
        cycles += ebpf::connect_loop(Duration::from_millis(500))?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let tracked_at_rss = agent.metric("grayscope_agent_connections_tracked")?;
    let rss_mib_100k = proxy::rss_kib(agent.pid())? as f64 / 1024.0;
    Ok(AgentCost {
        records_per_s,
        cpu_pct_at_10k,
        rss_mib_100k,
        tracked_at_rss,
        cpu_pct_idle,
        rss_mib_empty,
        bytes_per_entry: (rss_mib_100k - rss_mib_empty) * 1024.0 * 1024.0 / tracked_at_rss.max(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_at_10k_is_the_agents_cpu_for_the_records_sent_not_for_the_reporters_start_up() {
        // A reporter that sent 31 batches of 1,024 records in its 3 s (the last one due at 3.07 s), after the
        // 0.3 s it waits for the agent to see its connection and its own start: the agent ran 60 ms meanwhile.
        let sent = |elapsed_ms| Window {
            cpu: Duration::from_millis(60),
            elapsed: Duration::from_millis(elapsed_ms),
            records: 31 * 1024,
        };
        // 60 ms for 31,744 records is 18.9 ms per 10,000 of them: 1.89 % of a core at 10,000 a second, however
        // long the reporter took to start (60 ms over the 3.38 s the reporter's process lived would say 1.78 %).
        let expected = 100.0 * 0.060 * f64::from(RATE) / 31_744.0;
        for elapsed_ms in [3_070, 3_380, 4_000] {
            let pct = sent(elapsed_ms).pct_at(RATE);
            assert!(
                (pct - expected).abs() < 1e-9,
                "{elapsed_ms} ms: {pct} %, not {expected} %"
            );
        }
    }
}
