//! A 4-tuple used by two connections in turn (the client's port reused after a close that left no TIME_WAIT on
//! its side): each call must be linked to the connection that was open when it was made, whichever of the two the
//! table learnt of last, and whatever the order in which the call's record and the kernel's events arrive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{io::Write as _, net::SocketAddr, process::Child, time::Duration};

use common::{finish, first_line, next, privileged, python, report, start, wait_for, TestAgent};
use proto::v1::{CallRecord, LinkState};
use sidecar_agent::{Config, NetnsFilter};

fn config() -> Config {
    Config {
        link_wait: Duration::from_secs(5),
        ..common::config(NetnsFilter::Own)
    }
}

/// A python child that connects from `local_port` (0: any) to `envoy`, prints its port and the Unix time (ns) once
/// connected, and on a line on its stdin resets the connection (`SO_LINGER` 0: no TIME_WAIT, so the port is free
/// for the same 4-tuple at once) and prints `closed` and the Unix time just before.
fn client(envoy: SocketAddr, local_port: u16) -> (Child, u16, u64) {
    let mut child = python(&format!(
        "import socket, struct, sys, time\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {local_port}))\n\
         s.connect(('127.0.0.1', {}))\n\
         print(s.getsockname()[1], time.time_ns(), flush=True)\n\
         sys.stdin.readline()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
         at = time.time_ns()\n\
         s.close()\n\
         print('closed', at, flush=True)\n\
         sys.stdin.read()\n",
        envoy.port()
    ));
    let line = first_line(&mut child);
    let (port, at) = line.split_once(' ').unwrap();
    (child, port.parse().unwrap(), at.parse().unwrap())
}

/// Resets `child`'s connection and waits until the agent's table has it closed; returns the Unix time (ns) just
/// before the reset.
async fn reset(agent: &TestAgent, child: &mut Child, local: SocketAddr, envoy: SocketAddr) -> u64 {
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    let line = first_line(child);
    let at = line.strip_prefix("closed ").unwrap().parse().unwrap();
    let netns = agent.agent.netns();
    wait_for("the connection closed in the agent's table", || {
        agent
            .agent
            .with_table(|t| t.find(netns, local, envoy).is_some_and(|c| c.closed.is_some()))
    })
    .await;
    at
}

/// Waits until the table's newest connection `local` -> `envoy` is owned by `pid`.
async fn wait_owner(agent: &TestAgent, local: SocketAddr, envoy: SocketAddr, pid: u32) {
    let netns = agent.agent.netns();
    wait_for("the connection owned by the new process in the agent's table", || {
        agent.agent.with_table(|t| {
            t.find(netns, local, envoy)
                .and_then(|c| c.owner.as_ref())
                .is_some_and(|o| o.pid == pid)
        })
    })
    .await;
}

/// A call made on the connection from Unix time `start` to `end` (ns).
fn call(local: SocketAddr, envoy: SocketAddr, method: &str, start: u64, end: u64) -> CallRecord {
    CallRecord {
        start_time_unix_nano: start,
        duration_ns: end - start,
        ..common::outbound(local, envoy, method)
    }
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_call_names_the_connection_it_was_made_on_not_the_newer_one_on_its_4_tuple() {
    if !privileged() {
        return;
    }
    let agent = start(config()).await;
    let mut client_ = agent.client().await;
    let mut watch = agent.watch_greeter().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();

    let (mut a, port, a_connected) = client(envoy, 0);
    let a_pid = a.id();
    let local = lo(port);
    wait_owner(&agent, local, envoy, a_pid).await;
    let a_reset = reset(&agent, &mut a, local, envoy).await;
    let (b, b_port, b_connected) = client(envoy, port);
    let b_pid = b.id();
    assert_eq!(b_port, port);
    wait_owner(&agent, local, envoy, b_pid).await;

    // A's call reaches the agent only now (the filter batches its records), after B took the 4-tuple.
    let calls = vec![
        // From A's connect to its reset (the test may reset it within a millisecond).
        call(local, envoy, "OnA", a_connected, a_reset),
        call(local, envoy, "OnB", b_connected, b_connected + 1_000_000),
    ];
    assert_eq!(report(&mut client_, calls).await, 2);
    for _ in 0..2 {
        let c = next(&mut watch).await.call.unwrap();
        let method = c.call.as_ref().unwrap().rpc_method.clone();
        let pid = c.process.as_ref().map_or(0, |p| p.pid);
        let want = if method.ends_with("OnA") { a_pid } else { b_pid };
        assert_eq!(
            (c.link, pid),
            (LinkState::Linked as i32, want),
            "{method} named pid {pid} (A is {a_pid}, B {b_pid}): {c:?}"
        );
    }
    finish(a);
    finish(b);
    drop(watch);
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_comes_before_its_connection_waits_for_it_rather_than_naming_the_closed_one_on_its_4_tuple() {
    if !privileged() {
        return;
    }
    let agent = start(config()).await;
    let mut client_ = agent.client().await;
    let mut watch = agent.watch_greeter().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();

    let (mut a, port, _) = client(envoy, 0);
    let a_pid = a.id();
    let local = lo(port);
    wait_owner(&agent, local, envoy, a_pid).await;
    reset(&agent, &mut a, local, envoy).await;

    // B's ESTABLISHED waits in the ring buffer while B's call arrives: the call must wait for it too.
    agent.agent.pause_reader().await;
    let (b, b_port, b_connected) = client(envoy, port);
    let b_pid = b.id();
    assert_eq!(b_port, port);
    assert_eq!(
        report(
            &mut client_,
            vec![call(local, envoy, "OnB", b_connected, b_connected + 1_000_000)]
        )
        .await,
        1
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.agent.resume_reader();
    let c = next(&mut watch).await.call.unwrap();
    let pid = c.process.as_ref().map_or(0, |p| p.pid);
    assert_eq!(
        (c.link, pid),
        (LinkState::Linked as i32, b_pid),
        "B's call named pid {pid} (A is {a_pid}, B {b_pid}): {c:?}"
    );
    finish(a);
    finish(b);
    drop(watch);
    agent.agent.stop().await;
}
