//! Helpers shared by the privileged integration tests: the skip switch, an in-process agent on ephemeral
//! sockets, polling, and throw-away network namespaces.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs::File,
    future::Future,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use sidecar_agent::{control, Agent, Config, Listeners, NetnsFilter};

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
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let control = control::bind(&socket).unwrap();
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
