//! One interleaved run over a set of configurations: a proxy per configuration, each on its own port, loaded one
//! at a time, the order rotated each round and reversed every other round; warm-up discarded; the proxies replaced
//! by fresh ones every few rounds.
//!
//! Why reversed: with rotation alone, each configuration always runs right after the same neighbour. Reversing
//! every other round puts each configuration as often before as after each neighbour, so over an even number of
//! rounds an effect of the neighbour cancels in the medians of per-round differences.
//!
//! Why a fresh set of proxies every few rounds: a process is not neutral here. One wasm module loaded under two
//! labels of one run, each label with two processes (one started early, one late), cost 6 µs per request more
//! under one label, dearer in 17 of 20 rounds, and the whole difference came from one of its processes
//! (`bench/RESULTS.md`, notes): as large as the V8 boundary itself on this machine. Earlier runs tied such
//! differences to the order the proxies were started in. A median over one or two processes per configuration
//! carries their luck. So each configuration gets a new process every `rounds_per_set` rounds (a set: one proxy per
//! configuration, started in list order for even sets and in reverse for odd ones, warmed up, used, then stopped),
//! and its median mixes as many processes as there are sets.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{configs::Config, load, proxy::Proxy};

/// How to load and where things run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: u32,
    pub proxy_cpu: usize,
    pub load_cpu: usize,
    pub clock_ticks: u64,
    /// Fixed-rate latency: requests per second (0: not measured) and its duration per round.
    pub latency_rate: u32,
    pub latency_duration: Duration,
    /// Idle time between the saturating load and the fixed-rate latency.
    pub latency_settle: Duration,
    /// gRPC load with `h2load` (unary calls over h2c) instead of HTTP/1.1 with `wrk`.
    pub grpc: bool,
    /// Rounds served by one set of proxies before a fresh set replaces it (see the module's docs).
    pub rounds_per_set: usize,
}

/// One configuration in one round.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round: usize,
    pub label: String,
    /// Proxy CPU microseconds per request: Δ(utime+stime) / Δdownstream_rq_total.
    pub cpu_us: f64,
    /// Requests per second at saturation, from the admin counter.
    pub rps: f64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Everything the run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    /// Envoy resident memory, KiB, per label: the largest of the label's processes, each read after its set's rounds.
    pub rss_kib: Vec<(String, u64)>,
}

/// Runs `configs` interleaved. `latency_for`: the labels whose fixed-rate latency is measured too.
pub fn interleaved(
    envoy: &Path,
    configs: &[Config],
    upstream: SocketAddr,
    agent_socket: &dyn Fn(&Config) -> PathBuf,
    s: &Settings,
    latency_for: &[&str],
) -> Result<Outcome> {
    let start = |c: &Config| {
        Proxy::start(envoy, &c.bootstrap(upstream.port(), &agent_socket(c)), s.proxy_cpu)
            .with_context(|| format!("configuration {}", c.label))
    };
    let n = configs.len();
    let mut out = Outcome::default();
    let mut rss_kib = vec![0; n];
    for set in sets(s.rounds, s.rounds_per_set, n) {
        let mut proxies = Vec::with_capacity(n);
        for &k in &set.start_order {
            proxies.push((k, start(&configs[k])?));
        }
        proxies.sort_by_key(|(k, _)| *k);
        let proxies: Vec<Proxy> = proxies.into_iter().map(|(_, p)| p).collect();
        for (c, p) in configs.iter().zip(&proxies) {
            eprintln!("bench: {} warm-up ({:?}) on {}", c.label, s.warmup, p.listener);
            saturate(p.listener, s, s.warmup, c.request_header)?;
        }
        for round in set.rounds {
            for i in 0..n {
                let k = order(round, i, n);
                out.samples
                    .push(measure(&configs[k], &proxies[k], round, s, latency_for)?);
            }
        }
        // Resident memory after a set's rounds: the largest of a configuration's processes.
        for (rss, p) in rss_kib.iter_mut().zip(&proxies) {
            *rss = (*rss).max(p.rss_kib()?);
        }
    }
    out.rss_kib = configs.iter().map(|c| c.label.clone()).zip(rss_kib).collect();
    Ok(out)
}

/// One set of proxies: the rounds it serves, and the order its proxies are started in (configuration indexes).
#[derive(Debug, PartialEq)]
struct Set {
    rounds: std::ops::Range<usize>,
    start_order: Vec<usize>,
}

/// A fresh set every `per_set` rounds, started in list order, then in reverse, and so on (see the module's docs).
fn sets(rounds: usize, per_set: usize, n: usize) -> Vec<Set> {
    let per_set = per_set.max(1);
    (0..rounds)
        .step_by(per_set)
        .enumerate()
        .map(|(i, first)| Set {
            rounds: first..(first + per_set).min(rounds),
            start_order: if i % 2 == 0 {
                (0..n).collect()
            } else {
                (0..n).rev().collect()
            },
        })
        .collect()
}

/// One configuration's round on its proxy: saturating load for `s.duration` (and the fixed-rate latency when asked).
fn measure(c: &Config, p: &Proxy, round: usize, s: &Settings, latency_for: &[&str]) -> Result<Sample> {
    let (t0, q0, start) = (p.cpu_ticks()?, p.requests()?, std::time::Instant::now());
    let errors = saturate(p.listener, s, s.duration, c.request_header)?;
    let (t1, q1, elapsed) = (p.cpu_ticks()?, p.requests()?, start.elapsed());
    let requests = q1 - q0;
    answered(&c.label, requests, errors).map_err(|e| anyhow!("{e}; Envoy's log:\n{}", p.log()))?;
    let cpu_us = (t1 - t0) as f64 * 1e6 / s.clock_ticks as f64 / requests as f64;
    let (mut p50_ms, mut p99_ms) = (None, None);
    if s.latency_rate > 0 && latency_for.contains(&c.label.as_str()) {
        // Idle first: what the saturating load left in a reporting filter's buffer goes out now, not during the
        // measurement (`--latency-settle`).
        std::thread::sleep(s.latency_settle);
        let l = fixed_rate(p.listener, s, c.request_header)?;
        (p50_ms, p99_ms) = (Some(l.p50_ms), Some(l.p99_ms));
    }
    eprintln!(
        "bench: round {}/{} {:<16} {:>7.1} µs/req {:>8.0} req/s{}",
        round + 1,
        s.rounds,
        c.label,
        cpu_us,
        requests as f64 / elapsed.as_secs_f64(),
        p99_ms.map(|v| format!("  p99 {v:.3} ms")).unwrap_or_default()
    );
    Ok(Sample {
        round,
        label: c.label.clone(),
        cpu_us,
        rps: requests as f64 / s.duration.as_secs_f64().max(1.0).round(),
        requests,
        errors,
        p50_ms,
        p99_ms,
    })
}

/// Whether a round's saturating load was answered: `requests` counted by Envoy, `errors` seen by the load generator
/// (non-2xx answers and socket errors; failed gRPC calls). Any error fails the run: the round's CPU per request and
/// throughput would be those of another path (a 503 from a filter whose VM failed costs little), and every
/// published run so far had none.
fn answered(label: &str, requests: u64, errors: u64) -> Result<()> {
    if requests == 0 {
        bail!("{label}: no request went through");
    }
    if errors > 0 {
        bail!("{label}: {errors} of {requests} requests failed (non-2xx answers or socket errors)");
    }
    Ok(())
}

/// The configuration loaded `i`-th in `round`: the order rotated by one each round, and reversed in odd rounds.
fn order(round: usize, i: usize, n: usize) -> usize {
    let i = if round.is_multiple_of(2) { i } else { n - 1 - i };
    (i + round) % n
}

/// Load at saturation for `duration`; the errors (non-2xx answers, socket errors).
/// `header` (`name: value`) goes on every HTTP request; gRPC rounds run configurations without one.
fn saturate(addr: SocketAddr, s: &Settings, duration: Duration, header: Option<&str>) -> Result<u64> {
    if s.grpc {
        let run = load::h2load(addr, s.connections, duration, s.load_cpu, None, None)?;
        if run.succeeded == 0 {
            bail!("no gRPC call through {addr} succeeded");
        }
        Ok(run.errors)
    } else {
        Ok(load::wrk(addr, s.connections, duration, s.load_cpu, header)?.errors)
    }
}

/// Connections of the fixed-rate latency, the rate shared among them (RESULTS.md states it from here).
pub const LATENCY_CLIENTS: u32 = 4;

/// Latency at `s.latency_rate` requests per second in all, over [`LATENCY_CLIENTS`] connections.
fn fixed_rate(addr: SocketAddr, s: &Settings, header: Option<&'static str>) -> Result<load::Latency> {
    if s.grpc {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("h2load.log");
        let per_client = (s.latency_rate / LATENCY_CLIENTS).max(1);
        load::h2load(
            addr,
            LATENCY_CLIENTS,
            s.latency_duration,
            s.load_cpu,
            Some(per_client),
            Some(&log),
        )?;
        load::h2load_latency(&log)
    } else {
        load::fixed_rate(addr, s.latency_rate, LATENCY_CLIENTS, s.latency_duration, header)
    }
}

#[cfg(test)]
mod tests {
    use super::{answered, order, sets, Set};

    #[test]
    fn a_round_with_failed_requests_is_an_error_not_a_cost() {
        assert!(answered("W1", 20_000, 0).is_ok());
        let e = answered("W1", 0, 0).unwrap_err().to_string();
        assert!(e.contains("W1: no request went through"), "{e}");
        // A filter that fails (a VM that panicked, under Envoy's default FAIL_CLOSED) has Envoy answer 503 to every
        // request: downstream_rq_total still counts them, and their CPU is that of a 503, not of the filter.
        let e = answered("W1", 20_000, 20_000).unwrap_err().to_string();
        assert!(e.contains("W1: 20000 of 20000 requests failed"), "{e}");
        assert!(answered("W1", 20_000, 1).is_err());
    }

    #[test]
    fn a_fresh_set_every_few_rounds_each_started_in_the_reverse_order_of_the_one_before() {
        assert_eq!(
            sets(5, 2, 3),
            [
                Set {
                    rounds: 0..2,
                    start_order: vec![0, 1, 2]
                },
                Set {
                    rounds: 2..4,
                    start_order: vec![2, 1, 0]
                },
                Set {
                    rounds: 4..5,
                    start_order: vec![0, 1, 2]
                },
            ]
        );
        // Every round is served by exactly one set; 0 is taken as 1 (a set per round).
        assert_eq!(sets(10, 2, 13).len(), 5);
        assert_eq!(
            sets(3, 0, 2).iter().map(|s| s.rounds.clone()).collect::<Vec<_>>(),
            [0..1, 1..2, 2..3]
        );
        assert!(sets(0, 2, 4).is_empty());
    }

    #[test]
    fn every_round_loads_each_configuration_once_and_each_runs_as_often_after_its_neighbour_as_before() {
        let n = 5;
        for round in 0..8 {
            let mut seen: Vec<usize> = (0..n).map(|i| order(round, i, n)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "round {round}");
        }
        // Over 2n rounds, each configuration runs right after its neighbour as often as right before it.
        let position = |round, k| (0..n).position(|i| order(round, i, n) == k).unwrap();
        for k in 1..n {
            let after = (0..2 * n).filter(|&r| position(r, k) == position(r, k - 1) + 1).count();
            let before = (0..2 * n).filter(|&r| position(r, k) + 1 == position(r, k - 1)).count();
            assert!(after > 0 && after == before, "{k}: {after} after, {before} before");
        }
    }
}
