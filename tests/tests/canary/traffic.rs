//! The demo service and the traffic of the three phases (`tests/peers/canary_peer.py`).
//!
//! Every stream makes 10 calls/s, paced, from four threads. The service answers after 110 ms, so each call lands in
//! Envoy's (100, 250] ms bucket: never lower, and higher only if a noisy machine delays it by 140 ms. In the broken
//! phase, `shop.v1.Payments/Charge` of `v2` answers after 300 ms, in the (250, 500] bucket, and fails every 5th call
//! of each thread with UNAVAILABLE (20 %).
//!
//! Why the margins are wide: a phase's window holds about 80 calls of a stream, so its p99 is the second slowest
//! call. With the baseline 38 ms under its bucket's bound (62 ms in (50, 100]), two calls delayed that much by a
//! loaded CI machine moved the baseline's p99 into the canary's bucket and its ratio fell from 2.5 to 1.16. Now a
//! delay needs 140 ms (baseline) or 200 ms (canary) to move a p99 across a bound, and even then the Charge ratio
//! stays in the asserted range (497.5 / 248.5 = 2.0 or 997.5 / 248.5 = 4.0 instead of 497.5 / 248.5).
//!
//! Why not 105 ms or 255 ms: Envoy's histograms (circllhist) keep two significant digits, and a bucket's cumulative
//! count takes a whole bin by its lower bound, so 105 ms (bin [100, 110)) is counted as <= 100. A call must be at
//! least 110 ms to count above 100, and 260 ms above 250.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use integration_tests::{envoy::Envoy, paths};
use serde_json::json;

/// How long each phase lasts: the window (8 s) plus time for its series to exist before the window opens.
pub const PHASE_SECONDS: f64 = 11.0;
/// Calls per second of each stream (interface and version).
pub const RATE: f64 = 10.0;
/// How long the service takes to answer, in ms.
const BASE_MS: u32 = 110;
/// How long the broken canary (`Charge` of `v2`) takes to answer, in ms.
const SLOW_MS: u32 = 300;
/// Threads per stream: each paces a call every 400 ms, more than the slowest answer takes.
const THREADS: u32 = 4;

/// The demo service (gRPC and HTTP, `tests/peers/canary_peer.py serve`); killed on drop.
pub struct Service {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Service {
    pub fn start() -> Self {
        let child = Command::new(paths::python())
            .arg(paths::tests_file("peers/canary_peer.py"))
            .arg("serve")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn canary_peer serve");
        let mut s = Self {
            child,
            grpc_port: 0,
            http_port: 0,
        };
        let mut line = String::new();
        BufReader::new(s.child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read ports");
        let ports: Vec<u16> = line
            .trim()
            .strip_prefix("PORTS ")
            .map(|p| p.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        assert_eq!(ports.len(), 2, "canary_peer said {line:?}");
        (s.grpc_port, s.http_port) = (ports[0], ports[1]);
        s
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stream(name: &str, kind: &str, path: &str, version: &str, delay_ms: u32, fail_every: u32) -> serde_json::Value {
    json!({"name": name, "kind": kind, "path": path, "version": version, "delay_ms": delay_ms,
           "fail_every": fail_every, "rate": RATE, "threads": THREADS})
}

/// The streams of one phase: three interfaces; `v2` as given (None: no v2 traffic at all).
fn streams(v2_charge: Option<(u32, u32)>) -> Vec<serde_json::Value> {
    let mut s = vec![
        stream("get-v1", "grpc", "/shop.v1.Orders/Get", "v1", BASE_MS, 0),
        stream("charge-v1", "grpc", "/shop.v1.Payments/Charge", "v1", BASE_MS, 0),
        stream("http-v1", "http", "/api/v1/orders/42", "v1", BASE_MS, 0),
    ];
    if let Some((delay, fail_every)) = v2_charge {
        s.push(stream("get-v2", "grpc", "/shop.v1.Orders/Get", "v2", BASE_MS, 0));
        s.push(stream(
            "charge-v2",
            "grpc",
            "/shop.v1.Payments/Charge",
            "v2",
            delay,
            fail_every,
        ));
        s.push(stream("http-v2", "http", "/api/v1/orders/42", "v2", BASE_MS, 0));
    }
    s
}

/// Runs the traffic plan through Envoy; returns each phase's end (unix seconds) and the driver's report.
pub fn drive(envoy: &Envoy) -> Vec<(f64, serde_json::Value)> {
    let phase = |streams| json!({"seconds": PHASE_SECONDS, "streams": streams});
    let plan = json!({
        // For the dashboard's counters: an invalid version, and a malformed baggage member.
        "extras": [{"path": "/api/v1/orders/1", "headers": {"x-gray-version": "v 2"}},
                   {"path": "/api/v1/orders/1", "headers": {"baggage": "a=1,garbage"}}],
        "phases": [phase(streams(Some((SLOW_MS, 5)))), phase(streams(Some((BASE_MS, 0)))), phase(streams(None))],
    });
    run_plan(envoy, &plan)
        .into_iter()
        .map(|v| (v["start"].as_f64().expect("start") + PHASE_SECONDS, v))
        .collect()
}

/// Runs a traffic plan through Envoy's `ingress` listener with `canary_peer.py drive`: the driver's report of each
/// phase, in order.
pub fn run_plan(envoy: &Envoy, plan: &serde_json::Value) -> Vec<serde_json::Value> {
    let out = Command::new(paths::python())
        .arg(paths::tests_file("peers/canary_peer.py"))
        .args([
            "drive",
            "--target",
            &envoy.listener("ingress").to_string(),
            "--plan",
            &plan.to_string(),
        ])
        .output()
        .expect("run canary_peer drive");
    assert!(
        out.status.success(),
        "driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("driver json"))
        .collect()
}
