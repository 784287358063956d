//! The method table under churn and floods, through the real agent: short-lived client processes never fill it
//! for good (rows of exited processes go after the grace period, the idlest row makes room), and one client
//! sending endless method names is folded into `other`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{finish, first_line, methods, privileged, python, report, start};
use proto::v1::MethodStats;
use sidecar_agent::{Config, NetnsFilter};

fn config() -> Config {
    Config {
        methods_max_rows: 4,
        methods_max_interfaces: 4,
        methods_exited_grace: Duration::from_millis(500),
        // Generous: only a broken agent waits it out. The ring buffer too: the other tests of a busy machine
        // share the namespace.
        link_wait: Duration::from_secs(20),
        ring_buffer_bytes: 4 << 20,
        ..common::config(NetnsFilter::Own)
    }
}

/// A python child connected to `server`; prints its local port and lives until its stdin closes.
fn client_child(server: SocketAddr) -> std::process::Child {
    python(&format!(
        "import socket, sys\n\
         s = socket.create_connection(('127.0.0.1', {}))\n\
         print(s.getsockname()[1], flush=True)\n\
         sys.stdin.read()\n",
        server.port()
    ))
}

fn pid_of(row: &MethodStats) -> u32 {
    row.process.as_ref().map_or(0, |p| p.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_clients_never_fill_the_method_table() {
    if !privileged() {
        return;
    }
    let agent = start(config()).await;
    let mut client = agent.client().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();
    // Twice as many short-lived processes as the table has rows, each calling once, then exiting.
    let mut last = None;
    for i in 0..8 {
        let mut child = client_child(envoy);
        let pid = child.id();
        let local: SocketAddr = format!("127.0.0.1:{}", first_line(&mut child)).parse().unwrap();
        assert_eq!(
            report(&mut client, vec![common::outbound(local, envoy, "SayHello")]).await,
            1
        );
        // Counted: the row of this process is there.
        let want = pid;
        let mut found = false;
        for _ in 0..1500 {
            if methods(&mut client).await.iter().any(|r| pid_of(r) == want) {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            found,
            "call {i} of process {pid} was not counted: {:#?}",
            methods(&mut client).await
        );
        if i < 7 {
            finish(child);
        } else {
            last = Some(child);
        }
    }
    let last = last.unwrap();
    let last_pid = last.id();
    // The exited processes' rows go after the grace period; the live one stays.
    let mut remaining = Vec::new();
    for _ in 0..1500 {
        remaining = methods(&mut client).await.iter().map(pid_of).collect();
        if remaining == [last_pid] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, [last_pid]);
    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    common::assert_metric(&metrics, "grayscope_agent_methods_rows 1");
    // 8 rows in a 4-row table: 4 made room for newer ones (the grace period is shorter than a call here, so some
    // may have gone as exited first); every row of an exited process went one way or the other.
    let evicted = |reason: &str| {
        let prefix = format!("grayscope_agent_methods_evictions_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    assert_eq!(evicted("idle") + evicted("exited"), 7, "{metrics}");
    finish(last);
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_sending_endless_method_names_is_folded_into_other() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        methods_max_rows: 8,
        ..config()
    })
    .await;
    let mut client = agent.client().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();
    let mut child = client_child(envoy);
    let local: SocketAddr = format!("127.0.0.1:{}", first_line(&mut child)).parse().unwrap();
    let calls = (0..100)
        .map(|i| common::outbound(local, envoy, &format!("Flood{i}")))
        .collect();
    assert_eq!(report(&mut client, calls).await, 100);
    let mut got = Vec::new();
    for _ in 0..1500 {
        got = methods(&mut client).await;
        if got.iter().map(|r| r.calls).sum::<u64>() == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names: Vec<_> = got
        .iter()
        .map(|r| (r.service.as_str(), r.method.as_str(), r.calls))
        .collect();
    assert_eq!(
        names,
        [
            ("other", "other", 96),
            ("test.Greeter", "Flood0", 1),
            ("test.Greeter", "Flood1", 1),
            ("test.Greeter", "Flood2", 1),
            ("test.Greeter", "Flood3", 1),
        ],
    );
    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    common::assert_metric(&metrics, "grayscope_agent_methods_overflow_total 96");
    finish(child);
    agent.agent.stop().await;
}
