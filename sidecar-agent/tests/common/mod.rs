//! Helpers shared by the privileged integration tests: the skip switch, an in-process agent on ephemeral
//! sockets, polling, and throw-away network namespaces.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs::File,
    future::Future,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use proto::v1::{
    collector_client::CollectorClient, CallRecord, Direction, ReportRequest, SocketAddress, WatchRequest, WatchResponse,
};
use sidecar_agent::{control, Agent, Config, Listeners, NetnsFilter};
use tonic::transport::Channel;

/// Set to `1` to skip the tests that need root and a BPF-capable kernel (they fail loudly otherwise).
pub const SKIP_VAR: &str = "GRAYSCOPE_SKIP_PRIVILEGED";

/// Generous bound for anything that should take milliseconds; only a broken agent reaches it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// False (after printing why) when the privileged tests are switched off.
pub fn privileged() -> bool {
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        eprintln!("skipping test - {SKIP_VAR}=1: it needs root and a kernel with BPF, BTF and tracepoints");
        return false;
    }
    true
}

/// The defaults with `netns` as the filter.
pub fn config(netns: NetnsFilter) -> Config {
    Config {
        netns,
        ..Config::defaults().unwrap()
    }
}

/// An agent started in-process on a temporary Unix socket and an ephemeral metrics port.
pub struct TestAgent {
    pub agent: Agent,
    pub metrics_addr: std::net::SocketAddr,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

pub async fn start(config: Config) -> TestAgent {
    // Under /tmp and traversable, so a client run as another user can reach the socket.
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = dir.path().join("agent.sock");
    let control = control::bind_with_mode(&socket, config.socket_mode).unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let agent = Agent::start(&config, Listeners { control, metrics })
        .await
        .unwrap_or_else(|e| {
            panic!("the agent could not start ({e}); run the tests as root, or set {SKIP_VAR}=1 to skip them")
        });
    TestAgent {
        agent,
        metrics_addr,
        socket,
        _dir: dir,
    }
}

impl TestAgent {
    /// A gRPC client on the agent's socket.
    pub async fn client(&self) -> CollectorClient<Channel> {
        sidecar_agent::client::connect(&self.socket).await.unwrap()
    }

    /// A `Watch` of every call, on a connection of its own.
    pub async fn watch_all(&self) -> tonic::Streaming<WatchResponse> {
        self.watch(WatchRequest::default()).await
    }

    /// A `Watch` of the calls `filter` matches, on a connection of its own.
    pub async fn watch(&self, filter: WatchRequest) -> tonic::Streaming<WatchResponse> {
        self.client().await.watch(filter).await.unwrap().into_inner()
    }

    /// A `Watch` of the test's gRPC service, `test.Greeter` ([`outbound`], [`inbound`]).
    pub async fn watch_greeter(&self) -> tonic::Streaming<WatchResponse> {
        self.watch(WatchRequest {
            service: "test.Greeter".into(),
            ..WatchRequest::default()
        })
        .await
    }
}

/// A `python3` child running `script` with piped stdin (closing it ends the script) and stdout.
pub fn python(script: &str) -> Child {
    Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}"))
}

/// The first line the child prints.
pub fn first_line(child: &mut Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

/// A `python3` child holding one TCP connection to a fresh local listener (the Envoy of these tests), once the
/// agent's table names the connection's owner: a process whose calls the agent can link.
pub struct Caller {
    pub child: Child,
    pub pid: u32,
    /// The child's end of the connection.
    pub local: SocketAddr,
    /// The listener's end: where the child thinks Envoy is.
    pub envoy: SocketAddr,
    /// Keep it open: the connection waits in its backlog, and is reset when it closes.
    pub listener: tokio::net::TcpListener,
}

/// Waits until the agent's table has the connection `local` -> `envoy` with the process that owns it. Reports sent
/// before the connection's event reached the table would wait for it (or, past the link wait, go unlinked): on a
/// busy machine the event can lag.
pub async fn wait_owned(agent: &TestAgent, local: SocketAddr, envoy: SocketAddr) {
    let netns = agent.agent.netns();
    wait_for("the connection and its owner in the agent's table", || {
        agent
            .agent
            .with_table(|t| t.find(netns, local, envoy).is_some_and(|c| c.owner.is_some()))
    })
    .await;
}

/// `grayscope-agent methods` (the real binary) against `agent`: its exit status and output.
pub fn methods_cli(agent: &TestAgent) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_grayscope-agent"))
        .arg("methods")
        .arg("--socket")
        .arg(&agent.socket)
        .output()
        .unwrap()
}

pub async fn connected_caller(agent: &TestAgent) -> Caller {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();
    let mut child = python(&format!(
        "import socket, sys\n\
         s = socket.create_connection(('127.0.0.1', {}))\n\
         print(s.getsockname()[1], flush=True)\n\
         sys.stdin.read()\n",
        envoy.port()
    ));
    let pid = child.id();
    let local: SocketAddr = format!("127.0.0.1:{}", first_line(&mut child)).parse().unwrap();
    wait_owned(agent, local, envoy).await;
    Caller {
        child,
        pid,
        local,
        envoy,
        listener,
    }
}

/// `grayscope-agent tail <filter> --socket <the agent's>` as a user runs it, and its output lines as they come.
pub fn tail(bin: &str, agent: &TestAgent, filter: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut tail = Command::new(bin)
        .arg("tail")
        .args(filter)
        .arg("--socket")
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(tail.stdout.take().unwrap());
    std::thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    (tail, lines)
}

/// Ends a child started by [`python`]: closes its stdin and waits.
pub fn finish(mut child: Child) {
    drop(child.stdin.take());
    let _ = child.wait();
}

fn sa(a: SocketAddr) -> Option<SocketAddress> {
    Some(SocketAddress {
        address: a.ip().to_string(),
        port: u32::from(a.port()),
    })
}

/// A gRPC call record as the filter sends it for an outbound call: the application at `client` called Envoy's
/// listener at `server`.
pub fn outbound(client: SocketAddr, server: SocketAddr, method: &str) -> CallRecord {
    CallRecord {
        direction: Direction::Outbound as i32,
        rpc_system_name: "grpc".into(),
        rpc_method: format!("test.Greeter/{method}"),
        service: "test.Greeter".into(),
        gray_version: "v2".into(),
        status: "OK".into(),
        rpc_grpc_status_code: 0,
        http_response_status_code: 200,
        duration_ns: 1_500_000,
        start_time_unix_nano: 1_800_000_000_000_000_000,
        client: sa(client),
        server: sa(server),
        upstream_local: sa("127.0.0.1:1".parse().unwrap()),
        upstream_peer: sa("127.0.0.1:2".parse().unwrap()),
        request_id: "req-1".into(),
        ..CallRecord::default()
    }
}

/// An inbound call: Envoy's upstream connection went from `upstream_local` to the application at
/// `upstream_peer`.
pub fn inbound(upstream_local: SocketAddr, upstream_peer: SocketAddr, method: &str) -> CallRecord {
    CallRecord {
        direction: Direction::Inbound as i32,
        client: sa("10.9.9.9:40000".parse().unwrap()),
        server: sa("127.0.0.1:15006".parse().unwrap()),
        upstream_local: sa(upstream_local),
        upstream_peer: sa(upstream_peer),
        ..outbound(upstream_local, upstream_peer, method)
    }
}

/// A record whose 4-tuple has no connection, of about `fields` × 4 KiB: its first `fields` text fields (of the
/// method, the request id, the trace id and the route) near their 4,096-byte limit, numbered `i` where a test
/// reads it back (the method, the request id).
pub fn big(i: usize, fields: usize) -> CallRecord {
    let long = |n: usize, fill: &str| if fields >= n { fill.repeat(4000) } else { String::new() };
    CallRecord {
        request_id: format!("{i:04}{}", long(2, "r")),
        trace_id: long(3, "t"),
        http_route: long(4, "h"),
        ..outbound(
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:10".parse().unwrap(),
            &format!("M{i:04}{}", long(1, "m")),
        )
    }
}

/// Sends one batch; returns `accepted`.
pub async fn report(client: &mut CollectorClient<Channel>, calls: Vec<CallRecord>) -> u32 {
    client
        .report(ReportRequest {
            reporter: "test".into(),
            calls,
        })
        .await
        .unwrap()
        .into_inner()
        .accepted
}

/// The agent's method table (`ListMethods`, every page).
pub async fn methods(client: &mut CollectorClient<Channel>) -> Vec<proto::v1::MethodStats> {
    sidecar_agent::client::list_methods(client).await.unwrap()
}

/// The next message of a watch stream, within [`PATIENCE`].
pub async fn next(stream: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    patiently("a watch message", stream.message())
        .await
        .unwrap()
        .expect("the watch stream ended")
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after [`PATIENCE`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {PATIENCE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_for`], for a value.
pub async fn wait_some<T>(what: &str, mut get: impl FnMut() -> Option<T>) -> T {
    let mut out = None;
    wait_for(what, || {
        out = get();
        out.is_some()
    })
    .await;
    out.unwrap()
}

/// GET `path` from `addr` with a bare HTTP/1.1 request; returns the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// A network namespace made for one test (`ip netns add`), with loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(purpose: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "gs-{purpose}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Options for the kernel programs alone (no agent) watching this namespace, as the agent loads them by default.
    pub fn probe_options(&self) -> sidecar_agent::ebpf::ProbeOptions {
        sidecar_agent::ebpf::ProbeOptions {
            netns: NetnsFilter::Path(self.path()),
            ring_buffer_bytes: 256 * 1024,
            kernel_max_conns: 65536,
            accept_tracepoints: false,
            program_stats: false,
            raw_tracepoint: false,
        }
    }

    /// Its inode number, as the kernel programs report it.
    pub fn inode(&self) -> u32 {
        u32::try_from(std::fs::metadata(self.path()).unwrap().ino()).unwrap()
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The events one [`loopback_connection`] gives the agent: established and closed, for each of its two ends.
#[allow(dead_code)] // not every test binary that includes `common` counts events
pub const EVENTS_PER_CONNECTION: usize = 4;

/// One loopback connection on the calling thread's namespace: (client local port, server port). Both ends
/// are closed before it returns.
pub fn loopback_connection() -> (u16, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = listener.local_addr().unwrap().port();
    let client = std::net::TcpStream::connect(("127.0.0.1", server_port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();
    drop(server);
    drop(client);
    (client_port, server_port)
}

/// Waits for `future` at most [`PATIENCE`].
pub async fn patiently<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Panics unless the exposition has `line` (name, labels and value) as a whole line.
#[track_caller]
pub fn assert_metric(exposition: &str, line: &str) {
    assert!(exposition.lines().any(|l| l == line), "no {line:?} in:\n{exposition}");
}
