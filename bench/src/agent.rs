//! The real agent (`grayscope-agent run`, eBPF programs attached), pinned to the load CPU, and its `/metrics`.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::proxy;

pub struct Agent {
    child: Child,
    _dir: TempDir,
    pub socket: PathBuf,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent on a socket in a fresh directory; ready once `/metrics` answers and the socket exists.
    pub fn start(binary: &Path, cpu: usize, extra: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("grayscope-bench-agent").tempdir()?;
        let socket = dir.path().join("agent.sock");
        let log = dir.path().join("agent.log");
        let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(binary)
            .args(["run", "--socket"])
            .arg(&socket)
            .args(["--metrics-addr", &metrics.to_string(), "--log", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        let mut agent = Self {
            child,
            _dir: dir,
            socket,
            metrics,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = agent.child.try_wait()? {
                bail!("grayscope-agent exited with {status}:\n{}", agent.log());
            }
            if agent.socket.exists() && proxy::get(agent.metrics, "/metrics").is_ok() {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!("grayscope-agent not ready after 60 s:\n{}", agent.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The sum of every series of a metric family (`name` as exposed, e.g. `grayscope_agent_events_dropped_total`).
    pub fn metric(&self, name: &str) -> Result<f64> {
        Ok(sum(&self.metrics_text()?, name))
    }

    /// The whole `/metrics` exposition.
    pub fn metrics_text(&self) -> Result<String> {
        proxy::get(self.metrics, "/metrics")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sums the samples of `name` over all its label sets in a Prometheus text exposition.
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_a_family_over_its_labels_only() {
        let text = "# HELP a_total x\na_total{p=\"x\"} 2\na_total{p=\"y\"} 3.5\na_total_other 100\nb_total 1\n";
        assert_eq!(super::sum(text, "a_total"), 5.5);
    }
}
