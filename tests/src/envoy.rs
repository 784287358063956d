//! A real Envoy process for one test: rendered bootstrap, dynamic ports, readiness, kill on drop.

use std::{
    collections::HashMap,
    fs,
    io::{BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::paths;

/// How long Envoy may take to become ready (or to exit, when it should refuse its configuration).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Envoy. Killed when dropped; its log stays readable until then.
pub struct Envoy {
    child: Child,
    dir: TempDir,
    pub admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
}

/// Envoy exited instead of becoming ready.
#[derive(Debug)]
pub struct Refused {
    pub status: ExitStatus,
    pub log: String,
}

/// Which build of the filter Envoy runs: one harness, two builds.
///
/// Every end-to-end suite runs against both: a suite file runs against the wasm build, and its `native_<suite>.rs`
/// twin (which includes the same file) against the native one. The build is chosen per test binary: the
/// `GRAYSCOPE_FILTER_BUILD` variable (`wasm` or `native`) if set, else `native` for a test binary whose name starts
/// with `native_`, else `wasm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterBuild {
    /// `dist/grayscope_filter.wasm` in `envoy.filters.http.wasm` (V8).
    Wasm,
    /// `dist/libgrayscope_filter.so` in `envoy.filters.http.dynamic_modules`.
    Native,
}

impl FilterBuild {
    /// The build this test binary runs (see the type's doc).
    pub fn current() -> Self {
        match std::env::var("GRAYSCOPE_FILTER_BUILD").as_deref() {
            Ok("native") => return Self::Native,
            Ok("wasm") => return Self::Wasm,
            Ok(other) => panic!("GRAYSCOPE_FILTER_BUILD must be wasm or native, got {other:?}"),
            Err(_) => {}
        }
        let exe = std::env::current_exe().expect("current_exe");
        let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("native_") {
            Self::Native
        } else {
            Self::Wasm
        }
    }

    /// The grayscope HTTP filter with `plugin_config` (JSON), as one YAML flow mapping (an `http_filters` item).
    pub fn http_filter(self, plugin_config: &str) -> String {
        let name = match self {
            Self::Wasm => "envoy.filters.http.wasm",
            Self::Native => "envoy.filters.http.dynamic_modules",
        };
        format!("{{name: {name}, typed_config: {}}}", self.typed_config(plugin_config))
    }

    /// The filter's `typed_config` with `plugin_config` (JSON), as one YAML flow mapping (also an ECDS resource's).
    pub fn typed_config(self, plugin_config: &str) -> String {
        // The value sits in a single-quoted YAML scalar.
        let config = plugin_config.replace('\'', "''");
        let value = format!("{{\"@type\": type.googleapis.com/google.protobuf.StringValue, value: '{config}'}}");
        match self {
            Self::Wasm => format!(
                "{{\"@type\": {}, config: {{name: grayscope, root_id: grayscope, vm_config: {{vm_id: grayscope, \
                 runtime: envoy.wasm.runtime.v8, code: {{local: {{filename: \"{}\"}}}}}}, configuration: {value}}}}}",
                self.type_url(),
                crate::paths::wasm().display()
            ),
            Self::Native => format!(
                "{{\"@type\": {}, dynamic_module_config: {{module: {{local: {{filename: \"{}\"}}}}}}, \
                 filter_name: grayscope, filter_config: {value}}}",
                self.type_url(),
                crate::paths::native().display()
            ),
        }
    }

    /// The type URL of [`Self::typed_config`] (an ECDS subscription's `type_urls`).
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Wasm => "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            Self::Native => "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        }
    }
}

/// Replaces every `{{NAME}}` of `template` with its value; panics if one is left, so a typo cannot pass silently.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    assert!(!out.contains("{{"), "unrendered placeholder in bootstrap:\n{out}");
    out
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (already rendered) and waits until its admin API says LIVE.
    pub fn start(bootstrap: &str) -> Self {
        match Self::try_start(bootstrap) {
            Ok(envoy) => envoy,
            Err(r) => panic!(
                "Envoy exited with {} instead of starting; its log:\n{}",
                r.status, r.log
            ),
        }
    }

    /// Starts Envoy; `Err` with its exit status and log if it exits before it is ready.
    pub fn try_start(bootstrap: &str) -> Result<Self, Refused> {
        Self::try_start_with(bootstrap, &[])
    }

    /// Like [`Envoy::try_start`], with extra command-line arguments (e.g. `--component-log-level`). Envoy runs one
    /// worker unless they say `--concurrency N`.
    pub fn try_start_with(bootstrap: &str, extra_args: &[&str]) -> Result<Self, Refused> {
        // One worker by default: one VM, so per-VM bounds are exact in the tests.
        let workers: &[&str] = if extra_args.contains(&"--concurrency") {
            &[]
        } else {
            &["--concurrency", "1"]
        };
        let dir = tempfile::Builder::new()
            .prefix("grayscope-envoy")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("envoy.yaml");
        fs::write(&config, bootstrap).expect("write bootstrap");
        let admin_path = dir.path().join("admin.address");
        let log = dir.path().join("envoy.log");
        let child = Command::new(paths::envoy())
            .arg("-c")
            .arg(&config)
            .args(workers)
            .args(["--disable-hot-restart", "-l", "info"])
            // Access log lines reach their file within 0.2 s (the default is 10 s).
            .args(["--file-flush-interval-msec", "200", "--log-path"])
            .arg(&log)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        // Owned by the guard from the start: whatever fails below, dropping it kills Envoy.
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut envoy = Self {
            child,
            dir,
            admin: unbound,
            listeners: HashMap::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        envoy.admin = loop {
            if let Some(status) = envoy.child.try_wait().expect("wait envoy") {
                return Err(Refused {
                    status,
                    log: fs::read_to_string(&log).unwrap_or_default(),
                });
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready after {START_TIMEOUT:?}:\n{}",
                read(&log)
            );
            if let Some(addr) = fs::read_to_string(&admin_path).ok().and_then(|s| s.trim().parse().ok()) {
                if http_get(addr, "/ready").is_some_and(|(code, body)| code == 200 && body.trim() == "LIVE") {
                    break addr;
                }
            }
            thread::sleep(Duration::from_millis(50));
        };
        envoy.listeners = listeners(envoy.admin);
        Ok(envoy)
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address of a listener by name.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name} in {:?}", self.listeners))
    }

    /// GET on the admin API; panics unless it answers 200.
    pub fn admin_get(&self, path: &str) -> String {
        match http_get(self.admin, path) {
            Some((200, body)) => body,
            other => panic!("admin GET {path}: {other:?}"),
        }
    }

    /// `/stats/prometheus` once the histograms have caught up with the counters.
    ///
    /// Envoy merges histograms on a stats flush (each admin request starts one, `stats_flush_on_admin`), and the
    /// merge finishes after that response is written. Every counted call records one duration, so the exposition
    /// is current when the duration counts add up to the call counts.
    pub fn prometheus(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.admin_get("/stats/prometheus");
            let calls = crate::prom::sum(&text, "grayscope_interface_calls_total");
            let timed = crate::prom::sum(&text, "grayscope_interface_call_duration_milliseconds_count");
            if calls == timed || Instant::now() > deadline {
                return text;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        read(&self.dir.path().join("envoy.log"))
    }

    /// Envoy's log once it holds `needle`, or as it is after 10 s: Envoy writes its log file on a timer
    /// (`--file-flush-interval-msec`), so a line logged before readiness may not be in the file yet.
    pub fn log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A path in this Envoy's scratch directory (for access logs).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn listeners(admin: SocketAddr) -> HashMap<String, SocketAddr> {
    let (_, body) = http_get(admin, "/listeners?format=json").expect("admin /listeners");
    let json: serde_json::Value = serde_json::from_str(&body).expect("listeners json");
    let mut out = HashMap::new();
    for l in json["listener_statuses"].as_array().expect("listener_statuses") {
        let sa = &l["local_address"]["socket_address"];
        let addr = format!("{}:{}", sa["address"].as_str().unwrap_or_default(), sa["port_value"]);
        out.insert(
            l["name"].as_str().unwrap_or_default().to_owned(),
            addr.parse().expect("listener address"),
        );
    }
    out
}

/// A one-shot HTTP/1.1 GET (Envoy refuses HTTP/1.0 by default), enough for Envoy's admin API.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").ok()?;
    let resp = crate::client::read_response(&mut BufReader::new(s))?;
    Some((resp.status, String::from_utf8_lossy(&resp.body).into_owned()))
}
