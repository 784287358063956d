//! The usual test stack: the HTTP and gRPC upstreams and one Envoy with the filter in front of them
//! (`tests/fixtures/envoy/grayscope.yaml`: listeners `ingress`, `egress` and the filterless `plain`).

use std::{fs, path::PathBuf};

use crate::{
    envoy::{render, Envoy, FilterBuild, Refused},
    grpc::GrpcServer,
    paths,
    upstream::Upstream,
};

pub struct Stack {
    pub envoy: Envoy,
    pub http: Upstream,
    pub grpc: GrpcServer,
    access_log: PathBuf,
    /// Where the filter expects the agent's Unix socket (nothing listens there unless a test starts an agent).
    pub agent_socket: PathBuf,
    /// Holds the access log and the socket; removed with the stack.
    _dir: tempfile::TempDir,
}

/// The test bootstrap with the given plugin configuration (JSON), upstream ports, and files, running the filter
/// build under test ([`FilterBuild::current`]).
pub fn bootstrap(plugin_config: &str, http_port: u16, grpc_port: u16, access_log: &str, agent_socket: &str) -> String {
    let template = fs::read_to_string(paths::tests_file("fixtures/envoy/grayscope.yaml")).expect("fixture");
    render(
        &template,
        &[
            ("HTTP_FILTER", FilterBuild::current().http_filter(plugin_config)),
            ("HTTP_PORT", http_port.to_string()),
            ("GRPC_PORT", grpc_port.to_string()),
            ("ACCESS_LOG", access_log.to_owned()),
            ("AGENT_SOCKET", agent_socket.to_owned()),
        ],
    )
}

impl Stack {
    pub fn start(plugin_config: &str) -> Self {
        match Self::try_start(plugin_config) {
            Ok(s) => s,
            Err(r) => panic!("Envoy exited with {}:\n{}", r.status, r.log),
        }
    }

    pub fn try_start(plugin_config: &str) -> Result<Self, Refused> {
        Self::try_start_edited(plugin_config, |yaml| yaml)
    }

    /// Starts the stack with a plugin configuration Envoy must refuse: asserts that Envoy exits with a failure and
    /// that its log names the problem with `expected`, and returns that log line and the whole log (for the
    /// build-specific markers each caller checks).
    pub fn refused(plugin_config: &str, expected: &str) -> (String, String) {
        let refused = match Self::try_start(plugin_config) {
            Ok(_) => panic!("Envoy accepted {plugin_config}"),
            Err(r) => r,
        };
        assert!(!refused.status.success(), "{plugin_config}: exit {}", refused.status);
        let line = refused
            .log
            .lines()
            .find(|l| l.contains("invalid grayscope plugin configuration"))
            .unwrap_or_else(|| panic!("{plugin_config}: no configuration error in the log:\n{}", refused.log))
            .to_owned();
        assert!(line.contains(expected), "{plugin_config}: {line}");
        (line, refused.log)
    }

    /// Like [`Stack::start`], with the rendered bootstrap passed through `edit` first.
    pub fn start_edited(plugin_config: &str, edit: impl FnOnce(String) -> String) -> Self {
        match Self::try_start_edited(plugin_config, edit) {
            Ok(s) => s,
            Err(r) => panic!("Envoy exited with {}:\n{}", r.status, r.log),
        }
    }

    /// Like [`Stack::start`], with extra Envoy arguments (e.g. `--component-log-level wasm:debug`).
    pub fn start_with_envoy_args(plugin_config: &str, envoy_args: &[&str]) -> Self {
        match Self::try_start_with(plugin_config, |yaml| yaml, envoy_args) {
            Ok(s) => s,
            Err(r) => panic!("Envoy exited with {}:\n{}", r.status, r.log),
        }
    }

    /// Like [`Stack::start_edited`], with extra Envoy arguments (e.g. `--concurrency 2`).
    pub fn start_edited_with_envoy_args(
        plugin_config: &str,
        edit: impl FnOnce(String) -> String,
        envoy_args: &[&str],
    ) -> Self {
        match Self::try_start_with(plugin_config, edit, envoy_args) {
            Ok(s) => s,
            Err(r) => panic!("Envoy exited with {}:\n{}", r.status, r.log),
        }
    }

    fn try_start_edited(plugin_config: &str, edit: impl FnOnce(String) -> String) -> Result<Self, Refused> {
        Self::try_start_with(plugin_config, edit, &[])
    }

    fn try_start_with(
        plugin_config: &str,
        edit: impl FnOnce(String) -> String,
        envoy_args: &[&str],
    ) -> Result<Self, Refused> {
        let http = Upstream::start();
        let grpc = GrpcServer::start();
        let dir = tempfile::Builder::new()
            .prefix("grayscope-stack")
            .tempdir()
            .expect("tempdir");
        let access_log = dir.path().join("access.log");
        let agent_socket = dir.path().join("agent.sock");
        let yaml = bootstrap(
            plugin_config,
            http.addr.port(),
            grpc.addr.port(),
            &access_log.display().to_string(),
            &agent_socket.display().to_string(),
        );
        let envoy = Envoy::try_start_with(&edit(yaml), envoy_args)?;
        Ok(Self {
            envoy,
            http,
            grpc,
            access_log,
            agent_socket,
            _dir: dir,
        })
    }

    /// Access log lines so far. Envoy flushes its access log buffer on a timer, so this waits for `want` lines, and
    /// panics if they never come: a caller that checks what the lines do not hold would otherwise pass on a log
    /// Envoy never wrote.
    pub fn access_log(&self, want: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            // Lossy: a line holds request header values as received, which need not be UTF-8 (a hostile
            // `x-gray-version: \xff\xfe`), and one such byte made `read_to_string` fail, and the whole log read as
            // empty.
            let text = String::from_utf8_lossy(&fs::read(&self.access_log).unwrap_or_default()).into_owned();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= want {
                return lines;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} access log lines after 20 s, want {want}:\n{lines:#?}",
                lines.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
