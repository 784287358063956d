//! A child process with a known pid connects to a listener of the test process, over IPv4, IPv6 and a
//! v4-mapped dual-stack socket: the agent's table names the child on the client side (pid, comm, ports,
//! executable) and the test process on the server side: by default from the owner of the listener (recorded at
//! listen()), and with `accept_tracepoints` from the accept syscall tracepoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
};

use common::{privileged, start, wait_some};
use sidecar_agent::{ebpf::events::Role, table::Connection, Config, NetnsFilter};

/// Runs `bash`, which connects to `server` with its /dev/tcp redirection and waits for the server to close.
fn bash_client(server: SocketAddr) -> std::process::Child {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{}; read -t 60 -u 3 || true",
        server.ip(),
        server.port()
    );
    Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

async fn check_child_and_server(listen: &str, connect_to: IpAddr) {
    let config = Config {
        program_stats: true,
        ..common::config(NetnsFilter::Own)
    };
    let agent = check_with(config, listen, connect_to).await;
    let text = common::http_get(agent.metrics_addr, "/metrics").await;
    assert!(
        text.contains("grayscope_agent_bpf_program_runs_total{program=\"handle_set_state\"}")
            && !text.contains("handle_accept4_exit"),
        "the accept tracepoints are not attached by default:\n{text}"
    );
    agent.agent.stop().await;
}

/// Checks both sides of a connection from a child; returns the agent, still running.
async fn check_with(config: Config, listen: &str, connect_to: IpAddr) -> common::TestAgent {
    let agent = start(config).await;
    let netns = agent.agent.netns();
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let server = SocketAddr::new(connect_to, listener.local_addr().unwrap().port());
    let mut child = bash_client(server);
    let child_pid = child.id();
    let (stream, peer) = common::patiently("the child's connection", listener.accept())
        .await
        .unwrap();
    let local = stream.local_addr().unwrap();
    let plain = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(v4.into(), v6.port())),
        v4 => v4,
    };
    let (local, peer) = (plain(local), plain(peer));

    let find = |l: SocketAddr, r: SocketAddr| agent.agent.with_table(|t| t.find(netns, l, r).cloned());
    let client: Connection = wait_some("the client side with its process", || {
        find(peer, local).filter(|c| c.owner.is_some() && c.process.is_some())
    })
    .await;
    let owner = client.owner.as_ref().unwrap();
    assert_eq!(owner.pid, child_pid, "client pid");
    assert_eq!(owner.comm, "bash", "client comm");
    assert_eq!(client.role, Role::Client);
    assert_eq!(
        (client.local.port(), client.remote.port()),
        (peer.port(), server.port())
    );
    let process = client.process.as_ref().unwrap();
    assert_eq!(process.pid, child_pid);
    assert!(process.exe.as_ref().unwrap().ends_with("bash"), "{process:?}");
    assert_eq!(process.cmdline.first().map(String::as_str), Some("bash"));

    let accepted: Connection = wait_some("the server side named by accept", || {
        find(local, peer).filter(|c| c.owner.is_some())
    })
    .await;
    assert_eq!(accepted.role, Role::Server);
    assert_eq!(
        accepted.owner.as_ref().unwrap().pid,
        std::process::id(),
        "server side names the test process"
    );
    assert_eq!(accepted.local.port(), server.port());

    drop(stream); // bash reads EOF and exits
    assert!(child.wait().unwrap().success());
    let closed = wait_some("both sides closed", || {
        let c = find(peer, local)?.closed?;
        let s = find(local, peer)?.closed?;
        Some((c, s))
    })
    .await;
    assert!(
        closed.0.duration() >= closed.1.duration(),
        "the client side opened first: {closed:?}"
    );
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_child_and_server_are_named() {
    if !privileged() {
        return;
    }
    check_child_and_server("127.0.0.1:0", "127.0.0.1".parse().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_child_and_server_are_named() {
    if !privileged() {
        return;
    }
    check_child_and_server("[::1]:0", "::1".parse().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_mapped_dual_stack_server_is_named() {
    if !privileged() {
        return;
    }
    // An IPv6 listener on [::] accepts an IPv4 client: the accepted socket is AF_INET6 with ::ffff:127.0.0.1.
    check_child_and_server("[::]:0", "127.0.0.1".parse().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_accept_tracepoints_the_server_is_named_by_accept() {
    if !privileged() {
        return;
    }
    let config = Config {
        accept_tracepoints: true,
        program_stats: true,
        ..common::config(NetnsFilter::Own)
    };
    let agent = check_with(config, "127.0.0.1:0", "127.0.0.1".parse().unwrap()).await;
    let text = common::http_get(agent.metrics_addr, "/metrics").await;
    let runs = text
        .lines()
        .find_map(|l| l.strip_prefix("grayscope_agent_bpf_program_runs_total{program=\"handle_accept4_exit\"} "))
        .unwrap_or_else(|| panic!("no accept4 program runs in:\n{text}"));
    assert!(runs.parse::<f64>().unwrap() >= 1.0, "the accept tracepoint ran: {runs}");
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_events_table_and_program_runs() {
    if !privileged() {
        return;
    }
    let config = Config {
        program_stats: true,
        ..common::config(NetnsFilter::Own)
    };
    let agent = start(config).await;
    let (client_port, server_port) = common::loopback_connection();
    let netns = agent.agent.netns();
    let lo = |p| SocketAddr::from(([127, 0, 0, 1], p));
    wait_some("the connection to close in the table", || {
        agent
            .agent
            .with_table(|t| t.find(netns, lo(client_port), lo(server_port)).and_then(|c| c.closed))
    })
    .await;
    let text = common::http_get(agent.metrics_addr, "/metrics").await;
    let value = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
    };
    assert!(value("grayscope_agent_events_delivered_total ") >= 3, "{text}");
    assert!(value("grayscope_agent_events_produced_total ") >= value("grayscope_agent_events_delivered_total "));
    assert_eq!(value("grayscope_agent_connections_table_capacity "), 65536);
    assert!(
        value("grayscope_agent_connections_tracked{state=\"closed\"} ") >= 1,
        "{text}"
    );
    assert!(
        value("grayscope_agent_bpf_program_runs_total{program=\"handle_set_state\"} ") >= 1,
        "{text}"
    );
    assert!(text.contains("grayscope_agent_events_dropped_total "), "{text}");
    assert_eq!(common::http_get(agent.metrics_addr, "/healthz").await, "ok\n");
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simultaneous_open_names_the_connecting_process() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let netns = agent.agent.netns();
    // A socket connected to its own address: its SYN reaches itself in SYN_SENT, a simultaneous open, so it goes
    // SYN_SENT -> SYN_RECV -> ESTABLISHED (as two peers that connect to each other at once do), never accepted.
    let mut child = common::python(
        "import socket, sys\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]\n\
         s.connect(('127.0.0.1', port))\n\
         print(port, flush=True)\n\
         sys.stdin.read()\n",
    );
    let child_pid = child.id();
    let port: u16 = common::first_line(&mut child).parse().unwrap();
    let end = SocketAddr::from(([127, 0, 0, 1], port));
    let conn: Connection = wait_some("the connection in the table", || {
        agent.agent.with_table(|t| t.find(netns, end, end).cloned())
    })
    .await;
    assert_eq!(
        (conn.role, conn.owner.as_ref().map(|o| o.pid)),
        (Role::Client, Some(child_pid)),
        "the connect() caller is known from SYN_SENT: {conn:?}"
    );
    common::finish(child);
    let closed: Connection = wait_some("the connection to close", || {
        agent
            .agent
            .with_table(|t| t.find(netns, end, end).filter(|c| c.closed.is_some()).cloned())
    })
    .await;
    assert_eq!(closed.owner.map(|o| o.pid), Some(child_pid));
    agent.agent.stop().await;
}
