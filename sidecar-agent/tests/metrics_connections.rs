//! The metrics endpoint is reachable from the pod's network, and every connection it holds is a file descriptor
//! of the agent, the same ones its socket needs to accept the filter's reports. A client there that opens
//! connections and sends nothing must not take them all: the endpoint holds at most
//! [`sidecar_agent::metrics::MAX_CONNECTIONS`] at once, closes the others at once (counted), and the agent's
//! socket goes on answering meanwhile. Runs the real binary under a descriptor limit a container could have.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use sidecar_agent::metrics::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

const BIN: &str = env!("CARGO_BIN_EXE_grayscope-agent");

/// The agent's descriptor limit: room for its own (about 25 with its programs) and a few dozen connections.
const NOFILE: usize = 128;
/// Connections the client opens and leaves silent: more than the agent's limit.
const SILENT: usize = 2 * NOFILE;

#[test]
fn silent_clients_of_the_metrics_endpoint_never_take_the_descriptors_the_socket_needs() {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let sock = dir.path().join("agent.sock");
    let metrics = {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap()
    };
    let log = dir.path().join("agent.log");
    let agent = Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg("--")
        .arg(BIN)
        .arg("run")
        .arg("--socket")
        .arg(&sock)
        .args(["--allowed-uids", "self,0", "--kernel-optional", "true"])
        .args(["--metrics-addr", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Stop(agent);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Started: serving, and done loading its programs (the accept loops wait meanwhile).
    let started = || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("agent started"));
    while scrape(metrics).is_none() || !sock.exists() || !started() {
        if let Some(status) = agent.0.try_wait().unwrap() {
            panic!(
                "the agent exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "the agent never served its metrics");
        thread::sleep(Duration::from_millis(50));
    }
    let baseline = sockets(agent.0.id());

    // Silent connections, all opened well within the header deadline, so none is closed by it during the test.
    let from = Instant::now();
    // (Where the agent stops accepting, its listen backlog fills and a connect times out: the client stops there.)
    let mut silent = Vec::with_capacity(SILENT);
    let mut refused = None;
    while silent.len() < SILENT && refused.is_none() {
        match TcpStream::connect_timeout(&metrics, Duration::from_secs(2)) {
            Ok(s) => silent.push(s),
            Err(e) => refused = Some(e),
        }
    }
    // The socket answers meanwhile: the method table, through the agent's own client.
    let mut table = Command::new(BIN)
        .arg("methods")
        .arg("--socket")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let answered = loop {
        if let Some(status) = table.try_wait().unwrap() {
            break status;
        }
        // Past the header deadline the silent connections are closed anyway, which would hide the defect.
        if from.elapsed() > HEADER_READ_TIMEOUT / 2 {
            table.kill().unwrap();
            panic!(
                "no answer on the agent's socket {:?} after {SILENT} silent metrics connections; the agent holds {} \
                 sockets",
                from.elapsed(),
                sockets(agent.0.id())
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    table.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(answered.success(), "{answered}: {err}");
    // One more for the method table's connection, which the agent may not have closed yet.
    let held = sockets(agent.0.id());
    assert!(
        held <= baseline + MAX_CONNECTIONS + 1,
        "the agent holds {held} sockets, {baseline} before the silent connections"
    );
    assert!(
        from.elapsed() < HEADER_READ_TIMEOUT / 2,
        "too slow to tell: {:?}",
        from.elapsed()
    );

    assert_eq!(
        silent.len(),
        SILENT,
        "the metrics endpoint stopped accepting connections: {refused:?}"
    );
    // The ones beyond the limit were closed at once, and counted.
    let closed = silent.iter().filter(|s| closed_by_peer(s)).count();
    assert!(
        closed >= SILENT - MAX_CONNECTIONS,
        "{closed} silent connections closed by the agent"
    );
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if sockets(agent.0.id()) <= baseline {
            if let Some(text) = scrape(metrics) {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "the metrics endpoint never served again");
        thread::sleep(Duration::from_millis(50));
    };
    let line = format!("grayscope_agent_metrics_connections_refused_total {closed}");
    assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    assert!(!std::fs::read_to_string(&log).unwrap().contains("panicked"));
}

/// Stops the agent when the test ends, however it ends.
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sockets `pid` holds open (the metrics listener and connections, its own socket, its programs' none).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Whether the agent closed `s`: a read without waiting finds the end of the stream or a reset, not "nothing yet".
fn closed_by_peer(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match (&*s).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// `GET /metrics`, or `None` while nothing answers.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.contains(" 200 ").then_some(text)
}
