//! One Envoy per configuration, pinned to the proxy CPU with `taskset` and `--concurrency 1`, and what the harness
//! reads from it: the CPU time the kernel charged to the process and the admin counter of downstream requests.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

/// A running Envoy; killed when dropped.
pub struct Proxy {
    child: Child,
    dir: TempDir,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
}

impl Proxy {
    /// Starts `envoy` with `bootstrap` on CPU `cpu` and waits until its admin API says LIVE.
    pub fn start(envoy: &Path, bootstrap: &str, cpu: usize) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("grayscope-bench").tempdir()?;
        let config = dir.path().join("envoy.yaml");
        fs::write(&config, bootstrap)?;
        let admin_path = dir.path().join("admin.address");
        let log = dir.path().join("envoy.log");
        let child = Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(envoy)
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
                "--log-path",
            ])
            .arg(&log)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn taskset envoy (is util-linux installed?)")?;
        // `taskset` execs Envoy, so the child's pid is Envoy's.
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut proxy = Self {
            child,
            dir,
            admin: unbound,
            listener: unbound,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        proxy.admin = loop {
            if let Some(status) = proxy.child.try_wait()? {
                bail!(
                    "Envoy exited with {status}:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy not ready after 60 s:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Some(addr) = fs::read_to_string(&admin_path).ok().and_then(|s| s.trim().parse().ok()) {
                if get(addr, "/ready").is_ok_and(|b| b.trim() == "LIVE") {
                    break addr;
                }
            }
            thread::sleep(Duration::from_millis(50));
        };
        let listeners = get(proxy.admin, "/listeners")?;
        // `bench::127.0.0.1:PORT`
        proxy.listener = listeners
            .lines()
            .find_map(|l| l.strip_prefix("bench::")?.trim().parse().ok())
            .ok_or_else(|| anyhow!("no bench listener in {listeners:?}"))?;
        Ok(proxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime of the whole process (all threads), in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        cpu_ticks(self.pid())
    }

    /// The listener's `downstream_rq_total` (admin requests are counted elsewhere, under `http.admin`).
    pub fn requests(&self) -> Result<u64> {
        self.counter("http.bench.downstream_rq_total")
    }

    /// A counter or gauge by its exact name.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let body = get(self.admin, &format!("/stats?filter={name}"))?;
        let prefix = format!("{name}: ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .ok_or_else(|| anyhow!("no {name} in {body:?}"))
    }

    /// Resident memory of the process in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid())
    }

    /// Envoy's log so far (warnings and errors).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS"))
}

/// The time a thread has run on a CPU, ns: the first field of a `schedstat` file (`/proc/<pid>/task/<tid>/schedstat`,
/// `/proc/thread-self/schedstat`); `None` if it cannot be read (the thread is gone, or no scheduler statistics).
pub fn schedstat_ns(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
}

/// utime + stime of a process from `/proc/<pid>/stat`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_ticks(&stat).ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat: {stat:?}"))
}

/// Fields 14 and 15 (utime, stime); the command name in field 2 may hold spaces and parentheses, so the fields
/// are counted from the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know).
pub fn clock_ticks_per_s() -> Result<u64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// A GET on a fresh connection (`Connection: close`, so the body ends with it); the body of a 200 answer.
pub fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP head"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {head}");
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return dechunk(body).ok_or_else(|| anyhow!("GET {path}: bad chunked body"));
    }
    Ok(body.to_owned())
}

/// The payload of a chunked body (Envoy's admin answers HTTP/1.1 that way).
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_counted_from_the_last_parenthesis() {
        let stat = "42 (en voy) (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 9 0 1000 100000 500";
        assert_eq!(parse_stat_ticks(stat), Some(267));
        assert_eq!(parse_stat_ticks("42 (envoy) S 1"), None);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nLIVE\n\r\n3\r\nabc\r\n0\r\n\r\n").as_deref(),
            Some("LIVE\nabc")
        );
        assert_eq!(dechunk("9\r\nshort\r\n"), None);
    }
}
