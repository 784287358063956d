//! Real gRPC peers: Python grpcio (`tests/peers/grpc_peer.py`), a gRPC implementation independent of ours.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use crate::paths;

/// A gRPC server answering every method; killed on drop.
pub struct GrpcServer {
    child: Child,
    pub addr: SocketAddr,
}

impl GrpcServer {
    /// The server's pid: the process the agent must name for inbound calls.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> Self {
        let child = Command::new(paths::python())
            .arg(paths::tests_file("peers/grpc_peer.py"))
            .arg("serve")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn grpc server");
        // Owned by the guard before anything can fail, so a failed start still kills the server.
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut line = String::new();
        BufReader::new(server.child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read port");
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .expect("PORT line");
        server.addr.set_port(port);
        server
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of one call.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// gRPC status name, e.g. `OK`, `NOT_FOUND`.
    pub code: String,
    /// The metadata the server received (only on `OK`).
    pub metadata: Vec<(String, String)>,
}

/// Makes `count` unary calls of `method` (`/pkg.Service/Method`) through `target` with `metadata`.
pub fn call(target: SocketAddr, method: &str, metadata: &[(&str, &str)], count: usize) -> Vec<Outcome> {
    call_with_pid(target, method, metadata, count).0
}

/// As [`call`], from a client process whose pid is returned too (the process the agent must name).
pub fn call_with_pid(target: SocketAddr, method: &str, metadata: &[(&str, &str)], count: usize) -> (Vec<Outcome>, u32) {
    let target = target.to_string();
    let count_arg = count.to_string();
    let args = ["call", "--target", &target, "--method", method, "--count", &count_arg];
    let (lines, pid) = run_peer("peers/grpc_peer.py", &args, "--metadata", metadata);
    let outcomes: Vec<Outcome> = lines
        .iter()
        .map(|v| {
            let metadata = v["body"]["metadata"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|kv| (kv[0].as_str().unwrap_or("").into(), kv[1].as_str().unwrap_or("").into()))
                        .collect()
                })
                .unwrap_or_default();
            Outcome {
                code: v["code"].as_str().unwrap_or("").to_owned(),
                metadata,
            }
        })
        .collect();
    assert_eq!(outcomes.len(), count, "grpc client printed {} outcomes", outcomes.len());
    (outcomes, pid)
}

/// When the client of [`stream`] cancels its call.
#[derive(Debug, Clone, Copy)]
pub enum Cancel {
    Never,
    /// After its nth message.
    AfterMessages(u32),
    /// After this many milliseconds, whatever came.
    AfterMs(u32),
}

/// One server-streaming call of `method` through `target` (the server streams `x-want-messages` messages), which
/// the client cancels as `cancel` says. Returns the status the client saw and how many messages it got.
pub fn stream(target: SocketAddr, method: &str, metadata: &[(&str, &str)], cancel: Cancel) -> (String, u64) {
    let target = target.to_string();
    let (flag, n) = match cancel {
        Cancel::Never => ("--cancel-after", 0),
        Cancel::AfterMessages(n) => ("--cancel-after", n),
        Cancel::AfterMs(ms) => ("--cancel-after-ms", ms),
    };
    let n = n.to_string();
    let args = ["call", "--stream", "--target", &target, "--method", method, flag, &n];
    let (lines, _) = run_peer("peers/grpc_peer.py", &args, "--metadata", metadata);
    assert_eq!(lines.len(), 1, "{lines:?}");
    (
        lines[0]["code"].as_str().unwrap_or("").to_owned(),
        lines[0]["messages"].as_u64().unwrap_or(0),
    )
}

/// `count` keep-alive HTTP/1.1 GETs from a Python client process; returns the statuses and the client's pid.
pub fn http_get_with_pid(target: SocketAddr, path: &str, headers: &[(&str, &str)], count: usize) -> (Vec<u16>, u32) {
    let target = target.to_string();
    let count_arg = count.to_string();
    let args = ["--target", &target, "--path", path, "--count", &count_arg];
    let (lines, pid) = run_peer("peers/http_client.py", &args, "--header", headers);
    (
        lines.iter().map(|v| v["status"].as_u64().unwrap_or(0) as u16).collect(),
        pid,
    )
}

/// Runs a Python peer to completion with `args` plus `flag k=v` per pair; returns its JSON lines and its pid.
fn run_peer(script: &str, args: &[&str], flag: &str, pairs: &[(&str, &str)]) -> (Vec<serde_json::Value>, u32) {
    let mut cmd = Command::new(paths::python());
    // The caller asserts which process the agent names: the peer stays alive 1 s after its calls, so the agent can
    // still read its /proc entry however late the connection's event reaches it on a loaded machine.
    cmd.arg(paths::tests_file(script))
        .args(args)
        .env("GRAYSCOPE_PEER_LINGER_S", "1");
    for (k, v) in pairs {
        cmd.arg(flag).arg(format!("{k}={v}"));
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run peer");
    let pid = child.id();
    let out = child.wait_with_output().expect("peer output");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    (lines, pid)
}
