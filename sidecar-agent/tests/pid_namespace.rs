//! The agent in a pid namespace shared with the application, as in a pod with `shareProcessNamespace` (which the
//! injector sets): `unshare --pid --mount-proc` makes the namespace (its pid 1 a `sleep`, as a pod's is its pause
//! container), and the agent binary and the application are entered into it with `nsenter`. The agent must name the
//! application by the pid it has there (the pid its `/proc` shows and its socket peers carry), enrich it from that
//! `/proc`, find its listeners there when they predate the agent, keep its method-table row while it runs, and
//! remove the row once it has exited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{first_line, inbound, outbound, patiently, privileged, report, PATIENCE};
use proto::v1::{collector_client::CollectorClient, MethodStats};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_grayscope-agent");

/// A pid namespace with its own `/proc`, held by a `sleep` as its pid 1; everything in it dies with it on drop.
struct Pod {
    unshare: Child,
    /// The pid 1's pid in the test's (the host's) namespace, for `nsenter`.
    anchor: u32,
    _children: Vec<Child>,
}

impl Pod {
    fn new() -> Self {
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "--",
                "sleep",
                "infinity",
            ])
            .spawn()
            .unwrap_or_else(|e| panic!("unshare (util-linux): {e}"));
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let deadline = std::time::Instant::now() + PATIENCE;
        let anchor = loop {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next() {
                break pid.parse().unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "unshare started no pid 1");
            std::thread::sleep(Duration::from_millis(10));
        };
        Self {
            unshare,
            anchor,
            _children: Vec::new(),
        }
    }

    /// `program` run inside the namespace (its pid namespace and the mount namespace with its `/proc`).
    fn enter(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.anchor))
            .args(["--pid", "--mount", "--", program]);
        cmd
    }

    /// `grayscope-agent run` in the namespace, once its programs are attached; its socket is in `dir`.
    fn agent(&mut self, dir: &std::path::Path, grace: &str) -> std::path::PathBuf {
        let socket = dir.join("agent.sock");
        let mut agent = self
            .enter(BIN)
            .arg("run")
            .arg("--socket")
            .arg(&socket)
            .args(["--metrics-addr", "127.0.0.1:0", "--netns", "self", "--log", "info"])
            .args(["--methods-exited-grace", grace, "--link-wait", "20s"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nsenter (util-linux): {e}"));
        // Ready once the programs are attached (the socket is bound before).
        let (tx, rx) = mpsc::channel();
        let stderr = BufReader::new(agent.stderr.take().unwrap());
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
        self._children.push(agent);
        socket
    }

    /// A `python3` application in the namespace running `script`, which prints its pid as it sees it (the
    /// namespace's) and a port on one line, then lives until its stdin closes; returns it with that pid and port.
    fn application(&self, script: &str) -> (Child, u32, u16) {
        let mut app = self
            .enter("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = first_line(&mut app);
        let (pid, port) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("the application said {line:?}"));
        (app, pid.parse().unwrap(), port.parse().unwrap())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The pid 1 dies with unshare (--kill-child), and the namespace's other processes with it.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

async fn client(socket: &std::path::Path) -> CollectorClient<Channel> {
    sidecar_agent::client::connect(socket).await.unwrap()
}

async fn row(client: &mut CollectorClient<Channel>, method: &str) -> Option<MethodStats> {
    common::methods(client).await.into_iter().find(|r| r.method == method)
}

/// The row of `method`, once a call of it is linked to a process.
async fn linked_row(client: &mut CollectorClient<Channel>, method: &str) -> MethodStats {
    patiently("the call linked to a process", async {
        loop {
            if let Some(r) = row(client, method).await.filter(|r| r.process.is_some()) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_in_the_agents_pid_namespace_is_named_by_its_pid_there() {
    if !privileged() {
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mut pod = Pod::new();
    let socket = pod.agent(dir.path(), "500ms");
    let mut client = client(&socket).await;
    let envoy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let envoy_addr = envoy.local_addr().unwrap();
    let (mut app, pid, port) = pod.application(&format!(
        "import os, socket, sys\n\
         s = socket.create_connection(('127.0.0.1', {}))\n\
         print(os.getpid(), s.getsockname()[1], flush=True)\n\
         sys.stdin.read()\n",
        envoy_addr.port()
    ));
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(
        report(&mut client, vec![outbound(local, envoy_addr, "InNamespace")]).await,
        1
    );

    // Linked to the application under the pid it has in the namespace, and enriched from the namespace's /proc.
    let process = linked_row(&mut client, "InNamespace").await.process.unwrap();
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
    patiently("the row of the exited application to go", async {
        while row(&mut client, "InNamespace").await.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_from_before_the_agent_is_found_in_the_namespaces_proc() {
    if !privileged() {
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mut pod = Pod::new();
    // The application listens before the agent starts (a pod's containers start in any order): the kernel never
    // saw its listen(), so the agent must find it in the namespace's /proc and name it by the pid it has there.
    let (_app, pid, port) = pod.application(
        "import os, socket, sys\n\
         l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(8)\n\
         print(os.getpid(), l.getsockname()[1], flush=True)\n\
         sys.stdin.read()\n",
    );
    let socket = pod.agent(dir.path(), "5m");
    let mut client = client(&socket).await;
    // Envoy's upstream connection to the application, and the inbound call over it.
    let envoy_end = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let upstream_local = envoy_end.local_addr().unwrap();
    let app_addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(
        report(&mut client, vec![inbound(upstream_local, app_addr, "Served")]).await,
        1
    );
    let process = linked_row(&mut client, "Served").await.process.unwrap();
    assert_eq!(process.pid, pid, "{process:?}");
    assert!(process.executable_path.contains("python3"), "{process:?}");
}
