//! The real agent (`dist/grayscope-agent`) and the peers it meets on its Unix socket: gRPC clients of every kind,
//! and peers that misbehave.

use std::process::Command;

use integration_tests::{
    agent::{privileged, Agent},
    paths,
};

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// grpc-core clients (Python `grpcio` here; C++, Ruby and PHP share its core) send the percent-encoded socket path
/// as `:authority`. With default channel options, every RPC is served.
#[test]
fn a_grpcio_client_with_default_options_is_served_on_every_rpc() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&dir.path().join("agent.sock"), &[]);
    let out = Command::new(paths::python())
        .arg(paths::tests_file("peers/collector_client.py"))
        .arg(&agent.socket)
        .arg("py.Peers")
        .output()
        .expect("run the grpcio client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let rpcs: Vec<(&str, &str)> = results
        .iter()
        .map(|r| (r["rpc"].as_str().unwrap_or(""), r["code"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        rpcs,
        [
            ("ReportMethodMetadata", "OK"),
            ("Report", "OK"),
            ("Watch", "OK"),
            ("ListMethods", "OK")
        ],
        "{stdout}\n{}",
        agent.log()
    );
    let detail = |i: usize| results[i]["detail"].as_str().unwrap_or("").to_owned();
    // `accepted: 1` for the declaration and for the record.
    assert_eq!(detail(0), "0801");
    assert_eq!(detail(1), "0801");
    // The watcher got the reported call, and the method table shows it and the declaration.
    assert!(detail(2).contains(&hex("py.Peers/Do")), "{}", detail(2));
    assert!(detail(3).contains(&hex("py.Peers")), "{}", detail(3));
}
