//! The real agent (`dist/grayscope-agent run`, eBPF and all) for end-to-end tests: started on a given socket,
//! ready once it answers gRPC there, killed on drop.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use proto::v1::{collector_client::CollectorClient, ListMethodsRequest};
use tonic::transport::Channel;

use crate::paths;

pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    pub metrics_addr: String,
    log: tempfile::NamedTempFile,
}

impl Agent {
    /// Starts the agent serving `socket`; panics with its log if it is not answering within 60 s.
    pub fn start(socket: &Path, extra: &[&str]) -> Self {
        // A free port for /metrics; the agent binds it itself a moment later.
        let metrics_addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .to_string();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(paths::agent())
            .args(["run", "--socket"])
            .arg(socket)
            .args(["--metrics-addr", &metrics_addr, "--log", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("spawn grayscope-agent");
        let mut agent = Self {
            child,
            socket: socket.to_owned(),
            metrics_addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let rt = runtime();
        loop {
            if let Some(status) = agent.child.try_wait().expect("wait agent") {
                panic!("grayscope-agent exited with {status}:\n{}", agent.log());
            }
            if socket.exists()
                && rt.block_on(async {
                    agent
                        .client()
                        .await
                        .list_methods(ListMethodsRequest::default())
                        .await
                        .is_ok()
                })
            {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "grayscope-agent not answering on {}:\n{}",
                socket.display(),
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A gRPC client over the agent's Unix socket.
    pub async fn client(&self) -> CollectorClient<Channel> {
        sidecar_agent::client::connect(&self.socket)
            .await
            .expect("connect to the agent")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Stops the agent (SIGKILL, as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether tests that need the agent (root, eBPF) should run. `GRAYSCOPE_SKIP_PRIVILEGED=1` opts out, for a user
/// without root, and the test says so; otherwise they run and fail loudly if the agent cannot start.
pub fn privileged() -> bool {
    if std::env::var("GRAYSCOPE_SKIP_PRIVILEGED").is_ok_and(|v| v == "1") {
        eprintln!("skipping test - GRAYSCOPE_SKIP_PRIVILEGED=1: the agent needs root and a kernel with BPF and BTF");
        return false;
    }
    true
}

/// A runtime for the gRPC clients of a synchronous test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
