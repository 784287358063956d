//! A real Prometheus server (Debian's `prometheus`, installed by `just setup`) for one test: its own config, rules
//! and storage in a temp dir, a free port, readiness, instant queries over the HTTP API, killed on drop. Also
//! `promtool`, which comes with it.

use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::client::Client;

/// The pod name [`pod_scrape_config`] labels the series with.
pub const POD: &str = "orders-7c9d8b6f5-x2kq9";

/// A configuration scraping one pod every second, as Istio's scrape configuration would: the Envoy's
/// `/stats/prometheus` at `envoy_admin`, and the agent's metrics at `agent` if there is one, both labelled
/// `namespace: shop, pod: POD, app: orders` (the labels Istio puts on a pod's series: its namespace, its name, and
/// its own labels); `rule_file` evaluated every second.
pub fn pod_scrape_config(rule_file: &str, envoy_admin: SocketAddr, agent: Option<&str>) -> String {
    let labels = format!("{{namespace: shop, pod: {POD}, app: orders}}");
    let mut config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [{rule_file}]\n\
         scrape_configs:\n\
         - job_name: envoy\n  metrics_path: /stats/prometheus\n\
         \x20 static_configs: [{{targets: ['{envoy_admin}'], labels: {labels}}}]\n"
    );
    if let Some(agent) = agent {
        config.push_str(&format!(
            "- job_name: grayscope-agent\n\
             \x20 static_configs: [{{targets: ['{agent}'], labels: {labels}}}]\n"
        ));
    }
    config
}

/// `PROMETHEUS_BIN`, else Debian's `/usr/bin/prometheus`; panics saying what to run if it is missing.
pub fn binary() -> PathBuf {
    tool("PROMETHEUS_BIN", "/usr/bin/prometheus")
}

/// `PROMTOOL_BIN`, else Debian's `/usr/bin/promtool`.
pub fn promtool_binary() -> PathBuf {
    tool("PROMTOOL_BIN", "/usr/bin/promtool")
}

fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} not found: run `just setup` (it installs the Debian package prometheus)",
        path.display()
    );
    path
}

/// Runs `promtool` with `args` in `dir`; returns its output, whatever its exit status.
pub fn promtool(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(promtool_binary())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool")
}

/// One sample of an instant query.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// A label's value, "" when absent (as PromQL treats it).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    child: Child,
    dir: TempDir,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus with `config` (prometheus.yml) and the given files (rules) beside it; waits until ready.
    pub fn start(config: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("grayscope-prometheus")
            .tempdir()
            .expect("tempdir");
        fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        for (name, text) in files {
            fs::write(dir.path().join(name), text).expect("write file");
        }
        // A free port: bound, read and released; Prometheus binds it a moment later.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let log = fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary())
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg("--storage.tsdb.path=data")
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        // Owned by the guard before anything can fail, so a failed start still kills it.
        let mut prom = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = prom.child.try_wait().expect("wait prometheus") {
                panic!("prometheus exited with {status}:\n{}", prom.log());
            }
            if std::net::TcpStream::connect(addr).is_ok() && Client::new(addr).get("/-/ready", &[]).status == 200 {
                return prom;
            }
            assert!(Instant::now() < deadline, "prometheus not ready:\n{}", prom.log());
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prometheus's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET on the HTTP API; the `data` member, or the API's error message.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let resp = Client::new(self.addr).get(&format!("{path}?{}", query.join("&")), &[]);
        let body: serde_json::Value = serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}: {}", String::from_utf8_lossy(&resp.body)));
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"], body["error"]))
        }
    }

    /// An instant query at `time` (unix seconds; now if `None`): its samples (a scalar is one unlabelled sample),
    /// or the error Prometheus gave (a query that does not parse, say).
    pub fn query(&self, expr: &str, time: Option<f64>) -> Result<Vec<Sample>, String> {
        let time = time.map(|t| format!("{t:.3}"));
        let mut params = vec![("query", expr)];
        if let Some(t) = &time {
            params.push(("time", t));
        }
        let data = self.api("/api/v1/query", &params)?;
        let value = |v: &serde_json::Value| -> f64 {
            let text = v[1].as_str().unwrap_or("NaN");
            // Prometheus writes +Inf, -Inf and NaN as Go does; Rust parses "inf" and "NaN" but not "+Inf".
            text.to_ascii_lowercase().parse().unwrap_or(f64::NAN)
        };
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|s| Sample {
                            labels: s["metric"]
                                .as_object()
                                .map(|m| {
                                    m.iter()
                                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                                        .collect()
                                })
                                .unwrap_or_default(),
                            value: value(&s["value"]),
                        })
                        .collect()
                })
                .unwrap_or_default()),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(&data["result"]),
            }]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }

    /// An instant query at `time` that must succeed and must not return NaN: a rule that divides by nothing gives
    /// NaN, which Flagger and Argo would read as a pass.
    pub fn query_at(&self, expr: &str, time: f64) -> Vec<Sample> {
        let samples = self
            .query(expr, Some(time))
            .unwrap_or_else(|e| panic!("{e}\nquery: {expr}"));
        assert!(
            samples.iter().all(|s| !s.value.is_nan()),
            "NaN from\n{expr}\n{samples:?}"
        );
        samples
    }

    /// Label sets of the series matching `selector` that Prometheus holds (over the last `lookback_s` seconds).
    pub fn series(&self, selector: &str, lookback_s: u64) -> Vec<BTreeMap<String, String>> {
        let start = format!("{:.3}", unix_now() - lookback_s as f64);
        let data = self
            .api("/api/v1/series", &[("match[]", selector), ("start", &start)])
            .unwrap_or_else(|e| panic!("series {selector}: {e}"));
        serde_json::from_value(data).expect("series label sets")
    }

    /// Polls `expr` (instant, now) until `done` holds for its samples; panics with the last result after `timeout`.
    pub fn wait_for(&self, expr: &str, timeout: Duration, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.query(expr, None).unwrap_or_default();
            if done(&samples) {
                return samples;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: {expr} still gives {samples:?} after {timeout:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since the Unix epoch, as Prometheus counts time.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
