//! The agent in a pid namespace of its own, shared with the application, as in a pod with
//! `shareProcessNamespace` (which the injector sets): the binary runs under `unshare --pid --mount-proc`, the
//! application is entered into the same namespace with `nsenter`. The agent must name the application by the pid
//! it has there (the pid its `/proc` shows and its socket peers carry), enrich it from that `/proc`, keep its
//! method-table row while it runs, and remove the row once it has exited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{first_line, outbound, privileged, report, PATIENCE};
use proto::v1::{collector_client::CollectorClient, MethodStats};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_grayscope-agent");

/// `grayscope-agent run` as pid 1 of a new pid namespace (with its own `/proc`); killed with its namespace on drop.
struct NamespacedAgent {
    unshare: Child,
    /// The agent's pid in the test's (the host's) namespace, for `nsenter`.
    host_pid: u32,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NamespacedAgent {
    fn start(grace: &str) -> Self {
        let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
        let socket = dir.path().join("agent.sock");
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .arg(BIN)
            .arg("run")
            .arg("--socket")
            .arg(&socket)
            .args(["--metrics-addr", "127.0.0.1:0", "--netns", "self", "--log", "info"])
            .args(["--methods-exited-grace", grace, "--link-wait", "20s"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("unshare (util-linux): {e}"));
        // Ready once the programs are attached (the socket is bound before).
        let (tx, rx) = mpsc::channel();
        let stderr = BufReader::new(unshare.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                let _ = tx.send(line);
            }
        });
        loop {
            match rx.recv_timeout(PATIENCE) {
                Ok(line) if line.contains("eBPF programs attached") => break,
                Ok(_) => {}
                Err(e) => panic!("the namespaced agent did not attach its programs ({e}); see its log above"),
            }
        }
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
        let host_pid = children.split_whitespace().next().unwrap().parse().unwrap();
        Self {
            unshare,
            host_pid,
            socket,
            _dir: dir,
        }
    }

    async fn client(&self) -> CollectorClient<Channel> {
        sidecar_agent::client::connect(&self.socket).await.unwrap()
    }

    /// A `python3` child in the agent's pid namespace, connected to `server`; prints its pid as it sees it (the
    /// namespace's) and its local port on one line, and lives until its stdin closes.
    fn application(&self, server: SocketAddr) -> Child {
        Command::new("nsenter")
            .arg(format!("--target={}", self.host_pid))
            .args(["--pid", "--mount", "--", "python3", "-c"])
            .arg(format!(
                "import os, socket, sys\n\
                 s = socket.create_connection(('127.0.0.1', {}))\n\
                 print(os.getpid(), s.getsockname()[1], flush=True)\n\
                 sys.stdin.read()\n",
                server.port()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nsenter (util-linux): {e}"))
    }
}

impl Drop for NamespacedAgent {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

async fn row(client: &mut CollectorClient<Channel>, method: &str) -> Option<MethodStats> {
    common::methods(client).await.into_iter().find(|r| r.method == method)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_in_the_agents_pid_namespace_is_named_by_its_pid_there() {
    if !privileged() {
        return;
    }
    let agent = NamespacedAgent::start("500ms");
    let mut client = agent.client().await;
    let envoy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let envoy_addr = envoy.local_addr().unwrap();
    let mut app = agent.application(envoy_addr);
    let line = first_line(&mut app);
    let (pid, port) = line.split_once(' ').unwrap();
    let pid: u32 = pid.parse().unwrap();
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        report(&mut client, vec![outbound(local, envoy_addr, "InNamespace")]).await,
        1
    );

    // Linked to the application under the pid it has in the namespace, and enriched from the namespace's /proc.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let found = loop {
        if let Some(r) = row(&mut client, "InNamespace").await.filter(|r| r.process.is_some()) {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call was never linked to a process"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let process = found.process.unwrap();
    assert_eq!(
        process.pid, pid,
        "the row names pid {} where the application is pid {pid} in the agent's namespace",
        process.pid
    );
    assert!(
        process.executable_path.contains("python3"),
        "not enriched from /proc: {process:?}"
    );

    // Alive: the row outlives the grace period (500 ms) several times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        row(&mut client, "InNamespace").await.is_some(),
        "the row of a running application was removed as exited"
    );

    // Exited: the row goes after the grace period.
    drop(app.stdin.take());
    app.wait().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while row(&mut client, "InNamespace").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the row of an exited application stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
