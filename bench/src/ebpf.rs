//! The kernel side's cost: loopback connect + accept + close cycles per second with the agent's eBPF programs
//! attached and without, in interleaved rounds; events lost at that rate; the programs' run time per event as the
//! kernel counts it, from one more round (not in the ratio) with the agent's `--program-stats true`: it turns on
//! `BPF_ENABLE_STATS`, which adds two clock reads to every program run, so the agent leaves it off by default and
//! the ratio rounds run the agent as deployed.
//!
//! The generator runs as a child process of the harness (`grayscope-bench connect-loop`) pinned to the proxy CPU,
//! while the agent is pinned to the other one.

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{agent::Agent, stats::Summary};

/// Connect + accept + close cycles during `duration`; what `connect-loop` prints.
///
/// The server closes first and the client closes once it reads the end of the stream, so TIME_WAIT stays on the
/// server's side: a client closing first leaves its ephemeral ports in TIME_WAIT, and after a few seconds every
/// `connect` searches a nearly exhausted port range (a 10× slowdown measured here that has nothing to do with eBPF).
pub fn connect_loop(duration: Duration) -> Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let end = Instant::now() + duration;
    let mut n = 0;
    while Instant::now() < end {
        let mut conn = TcpStream::connect(addr)?;
        let _ = conn.read(&mut [0; 1])?;
        drop(conn);
        n += 1;
    }
    Ok(n)
}

fn run_generator(cpu: usize, duration: Duration) -> Result<f64> {
    let me = std::env::current_exe()?;
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(me)
        .args(["connect-loop", "--seconds", &duration.as_secs_f64().to_string()])
        .output()
        .context("run the connect generator")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let n: f64 = text.trim().parse().map_err(|_| anyhow!("connect-loop said {text:?}"))?;
    Ok(n / duration.as_secs_f64())
}

/// What the eBPF phase measured.
#[derive(Debug, Clone)]
pub struct EbpfResult {
    pub with_per_s: Summary,
    pub without_per_s: Summary,
    pub connect_ratio: Summary,
    pub produced: u64,
    pub lost: u64,
    /// Program run time per emitted event; `None` when the kernel kept no run statistics.
    pub ns_per_event: Option<f64>,
    /// Per program: (name, runs, ns per run).
    pub programs: Vec<(String, u64, f64)>,
}

/// Interleaved rounds with and without the agent running (starting and stopping it each round).
pub fn measure(
    agent_bin: &Path,
    rounds: usize,
    duration: Duration,
    gen_cpu: usize,
    agent_cpu: usize,
) -> Result<EbpfResult> {
    let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut produced, mut lost) = (0.0, 0.0);
    let mut programs: Vec<(String, u64, f64)> = Vec::new();
    for round in 0..rounds {
        let mut pair = [0.0; 2];
        // Alternate which goes first, so a drift in the machine's load does not favour one side.
        for &attached in if round % 2 == 0 { &[false, true] } else { &[true, false] } {
            if attached {
                let agent = Agent::start(agent_bin, agent_cpu, &[])?;
                let before = kernel_figures(&agent)?;
                pair[1] = run_generator(gen_cpu, duration)?;
                let after = kernel_figures(&agent)?;
                let (p, l) = events(&before, &after)?;
                produced += p;
                lost += l;
            } else {
                pair[0] = run_generator(gen_cpu, duration)?;
            }
        }
        without.push(pair[0]);
        with.push(pair[1]);
        ratios.push(pair[1] / pair[0]);
    }
    let (mut stats_produced, mut total_ns) = (0.0, 0.0);
    if rounds > 0 {
        let agent = Agent::start(agent_bin, agent_cpu, &["--program-stats", "true"])?;
        let before = kernel_figures(&agent)?;
        run_generator(gen_cpu, duration)?;
        let after = kernel_figures(&agent)?;
        stats_produced = after.produced - before.produced;
        total_ns = (after.run_seconds - before.run_seconds) * 1e9;
        programs = per_program(&agent)?;
    }
    Ok(EbpfResult {
        with_per_s: Summary::of(&with),
        without_per_s: Summary::of(&without),
        connect_ratio: Summary::of(&ratios),
        produced: produced as u64,
        lost: lost as u64,
        ns_per_event: (total_ns > 0.0 && stats_produced > 0.0).then(|| total_ns / stats_produced),
        programs,
    })
}

struct Figures {
    produced: f64,
    dropped: f64,
    run_seconds: f64,
}

/// The events one round with the agent running produced, and those it lost. None produced is an error: the round
/// made thousands of connects in the agent's namespace, so its programs traced nothing (or the agent exposed no
/// kernel counters, which read as 0), and its rate is that of a machine without them.
fn events(before: &Figures, after: &Figures) -> Result<(f64, f64)> {
    let produced = after.produced - before.produced;
    if produced <= 0.0 {
        bail!(
            "the agent's programs produced no event in a round of connects (grayscope_agent_events_produced_total \
             {} before, {} after): the round would measure nothing attached",
            before.produced,
            after.produced
        );
    }
    Ok((produced, after.dropped - before.dropped))
}

fn kernel_figures(agent: &Agent) -> Result<Figures> {
    Ok(Figures {
        produced: agent.metric("grayscope_agent_events_produced_total")?,
        dropped: agent.metric("grayscope_agent_events_dropped_total")?,
        run_seconds: agent.metric("grayscope_agent_bpf_program_run_seconds_total")?,
    })
}

/// Runs and ns per run of each program since the agent started.
fn per_program(agent: &Agent) -> Result<Vec<(String, u64, f64)>> {
    let text = agent.metrics_text()?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grayscope_agent_bpf_program_runs_total{program=\"") else {
            continue;
        };
        let Some((name, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let runs: u64 = value.trim().parse().unwrap_or(0);
        let seconds = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "grayscope_agent_bpf_program_run_seconds_total{{program=\"{name}\"}} "
                ))
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let ns = if runs > 0 { seconds * 1e9 / runs as f64 } else { 0.0 };
        out.push((name.to_owned(), runs, ns));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(produced: f64, dropped: f64) -> Figures {
        Figures {
            produced,
            dropped,
            run_seconds: 0.0,
        }
    }

    #[test]
    fn a_round_in_which_the_programs_saw_no_connection_is_an_error_not_a_free_ratio_with_nothing_lost() {
        assert_eq!(
            events(&figures(10.0, 1.0), &figures(70_010.0, 3.0)).unwrap(),
            (70_000.0, 2.0)
        );
        // Tens of thousands of connects and no event: the programs traced nothing (or the agent exposed no kernel
        // counters, which read as 0), so the round's rate is that of a machine without them.
        let e = events(&figures(10.0, 0.0), &figures(10.0, 0.0))
            .expect_err("a round without events")
            .to_string();
        assert!(e.contains("no event"), "{e}");
    }
}
