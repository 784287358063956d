//! Load: `wrk` for HTTP/1.1 saturation, and a small open-loop generator for latency at a fixed rate; `h2load` for
//! gRPC (saturation, and a fixed rate per client with `--rps`, its per-request log giving the percentiles).
//!
//! The fixed-rate generator is hand-written because `wrk` has no rate (wrk2 is not packaged) and `h2load --rate`
//! paces connections, not requests. Each connection sends on a fixed schedule and a latency is measured from the
//! request's scheduled time, so a slow answer delays the next ones and is counted (no coordinated omission).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// What `wrk` said about one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkRun {
    /// Non-2xx answers and socket errors.
    pub errors: u64,
}

/// Runs `wrk` pinned to `cpu` against `addr` for `duration`, adding `header` (`name: value`) to every request.
pub fn wrk(addr: SocketAddr, connections: u32, duration: Duration, cpu: usize, header: Option<&str>) -> Result<WrkRun> {
    let secs = duration.as_secs_f64().max(1.0).round() as u64;
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "wrk", "-t1"])
        .args(header.map(|h| ["-H", h]).into_iter().flatten())
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg(format!("http://{addr}/x"))
        .output()
        .context("run wrk (`just setup` installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).ok_or_else(|| anyhow!("unreadable wrk output: {text}"))
}

fn parse_wrk(text: &str) -> Option<WrkRun> {
    // "  123456 requests in 5.00s, 10.00MB read": a run that does not say it is no run.
    text.lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse::<u64>().ok())?;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().ok()?;
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(WrkRun { errors })
}

/// What one `h2load` run said: requests answered 2xx, and the rest.
#[derive(Debug, Clone, Copy, Default)]
pub struct H2Run {
    pub succeeded: u64,
    pub errors: u64,
}

/// gRPC load: `h2load` pinned to `cpu`, unary calls of an empty message to the gRPC route over h2c (prior
/// knowledge), `clients` connections of one stream each, for `duration`. With `rps`, each client sends at that fixed
/// rate and `log` receives one line per request (h2load's `--log-file`: start µs, status, duration µs).
pub fn h2load(
    addr: SocketAddr,
    clients: u32,
    duration: Duration,
    cpu: usize,
    rps: Option<u32>,
    log: Option<&Path>,
) -> Result<H2Run> {
    let dir = tempfile::tempdir()?;
    let body = dir.path().join("call.bin");
    std::fs::write(&body, crate::upstream::EMPTY_GRPC_MESSAGE)?;
    let secs = duration.as_secs_f64().max(1.0).round() as u64;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), "h2load", "-t1", "-m1"])
        .arg(format!("-c{clients}"))
        .arg(format!("-D{secs}"))
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers", "-d"])
        .arg(&body);
    if let Some(r) = rps {
        cmd.arg(format!("--rps={r}"));
    }
    if let Some(l) = log {
        cmd.arg("--log-file").arg(l);
    }
    let out = cmd
        .arg(format!("http://{addr}/bench.Bench/Call"))
        .output()
        .context("run h2load (`just setup` installs nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_h2load(&text).ok_or_else(|| anyhow!("unreadable h2load output: {text}"))
}

fn parse_h2load(text: &str) -> Option<H2Run> {
    // "requests: 100 total, 100 started, 100 done, 98 succeeded, 2 failed, 0 errored, 0 timeout"
    let line = text.lines().find_map(|l| l.trim().strip_prefix("requests: "))?;
    let field = |name: &str| {
        line.split(',')
            .find_map(|p| p.trim().strip_suffix(name)?.trim().parse::<u64>().ok())
    };
    let (total, succeeded) = (field("total")?, field("succeeded")?);
    Some(H2Run {
        succeeded,
        errors: total.saturating_sub(succeeded),
    })
}

/// p50 and p99 of an h2load `--log-file` (third column: request duration in µs).
pub fn h2load_latency(log: &Path) -> Result<Latency> {
    let text = std::fs::read_to_string(log)?;
    let mut all: Vec<Duration> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<u64>().ok())
        .map(Duration::from_micros)
        .collect();
    if all.is_empty() {
        bail!("h2load logged no request");
    }
    all.sort_unstable();
    Ok(Latency {
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    })
}

/// Latency percentiles of one fixed-rate run, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Sends `rate` requests per second in all over `connections` keep-alive connections for `duration`, each with
/// `header` (`name: value`) when given.
pub fn fixed_rate(
    addr: SocketAddr,
    rate: u32,
    connections: u32,
    duration: Duration,
    header: Option<&'static str>,
) -> Result<Latency> {
    let request = match header {
        Some(h) => format!("GET /x HTTP/1.1\r\nHost: bench\r\n{h}\r\n\r\n"),
        None => "GET /x HTTP/1.1\r\nHost: bench\r\n\r\n".to_owned(),
    };
    let interval = Duration::from_secs_f64(f64::from(connections) / f64::from(rate.max(1)));
    let start = Instant::now() + Duration::from_millis(20);
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            // Connections start staggered, so the requests are spread evenly over each interval.
            let offset = interval.mul_f64(f64::from(i) / f64::from(connections));
            let request = request.clone();
            thread::spawn(move || paced(addr, &request, start + offset, interval, start + duration))
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.join().map_err(|_| anyhow!("latency worker panicked"))??);
    }
    if all.is_empty() {
        bail!("no request answered");
    }
    all.sort_unstable();
    Ok(Latency {
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    })
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn paced(addr: SocketAddr, request: &str, first: Instant, interval: Duration, end: Instant) -> Result<Vec<Duration>> {
    let conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut out = Vec::new();
    let mut due = first;
    let mut line = String::new();
    while due < end {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        writer.write_all(request.as_bytes())?;
        let mut length = 0usize;
        let mut status_ok = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("connection closed by the proxy");
            }
            if line.starts_with("HTTP/1.1 ") {
                status_ok = line.starts_with("HTTP/1.1 200");
            } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            } else if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        if !status_ok {
            bail!("the proxy answered non-200");
        }
        out.push(due.elapsed());
        due += interval;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_and_errors_from_wrk() {
        let text = "Running 1s test @ http://127.0.0.1:1/x\n  1 threads and 16 connections\n  \
                    12345 requests in 1.00s, 1.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  \
                    Non-2xx or 3xx responses: 4\nRequests/sec:  12345.00\n";
        let run = parse_wrk(text).unwrap();
        assert_eq!(run.errors, 7);
        assert!(parse_wrk("unable to connect").is_none());
    }

    #[test]
    fn reads_succeeded_and_errors_from_h2load() {
        let text = "finished in 2.00s, 500.00 req/s, 10KB/s\nrequests: 1000 total, 1000 started, 1000 done, \
                    990 succeeded, 10 failed, 0 errored, 0 timeout\nstatus codes: 990 2xx, 0 3xx, 0 4xx, 10 5xx\n";
        let run = parse_h2load(text).unwrap();
        assert_eq!((run.succeeded, run.errors), (990, 10));
        assert!(parse_h2load("connect: Connection refused").is_none());
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
    }
}
