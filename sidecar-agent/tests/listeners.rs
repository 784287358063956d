//! Inbound connections are named after the process that owns their listener, without the accept syscall
//! tracepoints (off by default): a `python3` server accepts a connection from the test process, and the agent's
//! table names the server's pid on the accepted side, whether the server called listen() after the agent started
//! (recorded by the kernel at CLOSE -> LISTEN) or before (found in /proc at start). Closing the listener deletes
//! its entry in the kernel's `listeners` map, or gives the address back to the listener it displaced (a
//! SO_REUSEPORT group's older member, the holder of the port when another socket's listen() fails).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    process::Child,
};

use common::{first_line, privileged, python, start, wait_for, wait_some, TestAgent};
use sidecar_agent::{ebpf::events::Role, NetnsFilter};

/// Listens on `BIND` (an address, port 0), prints the port, accepts one connection, and on a line from stdin
/// closes the connection and the listener and prints `closed`; then waits for stdin to close.
const SERVER: &str = "import socket, sys\n\
    fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n\
    l = socket.socket(fam)\n\
    l.bind((sys.argv[1], 0)); l.listen(8)\n\
    print(l.getsockname()[1], flush=True)\n\
    c, _ = l.accept()\n\
    sys.stdin.readline()\n\
    c.close(); l.close()\n\
    print('closed', flush=True)\n\
    sys.stdin.read()\n";

fn server(bind: &str) -> (Child, u16) {
    let mut child = python(&format!("import sys; sys.argv = ['server', '{bind}']\n{SERVER}"));
    let port = first_line(&mut child).parse().unwrap();
    (child, port)
}

/// Connects to the server, checks that the accepted side is named after the server's pid, then closes the
/// listener and checks that its map entry goes. `listen_addr` is the listener's key (its bound address).
async fn check(agent: &TestAgent, mut child: Child, listen_addr: SocketAddr, seeded: bool) {
    let netns = agent.agent.netns();
    let server_pid = child.id();
    let owner = agent
        .agent
        .listener_owner(netns, listen_addr)
        .expect("the listener's entry");
    assert_eq!(owner.pid, server_pid, "{owner:?}");
    assert_eq!(owner.comm(), "python3");
    // The kernel records the listening socket's address; an entry found in /proc at start has none.
    assert_eq!(owner.skaddr == 0, seeded, "{owner:?}");

    let client = TcpStream::connect(("127.0.0.1", listen_addr.port())).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let accepted = wait_some("the accepted side with its owner", || {
        agent.agent.with_table(|t| {
            t.iter()
                .find(|c| c.role == Role::Server && c.remote.port() == client_port && c.closed.is_none())
                .filter(|c| c.owner.is_some())
                .cloned()
        })
    })
    .await;
    assert_eq!(accepted.local.port(), listen_addr.port());
    let named = accepted.owner.as_ref().unwrap();
    assert_eq!(named.pid, server_pid, "the server, not the connecting test process");
    assert_eq!(named.comm, "python3");
    assert_eq!(
        accepted.process.as_ref().map(|p| p.pid),
        Some(server_pid),
        "enriched from /proc like any owner"
    );

    child.stdin.as_mut().unwrap().write_all(b"close\n").unwrap();
    assert_eq!(first_line(&mut child), "closed");
    wait_for("the listener's entry to be deleted at its close", || {
        agent.agent.listener_owner(netns, listen_addr).is_none()
    })
    .await;
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_opened_after_the_agent_names_its_connections() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    // A wildcard listener: the connection to 127.0.0.1 finds it through the wildcard key.
    let (child, port) = server("0.0.0.0");
    check(&agent, child, SocketAddr::from(([0, 0, 0, 0], port)), false).await;
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_opened_before_the_agent_names_its_connections() {
    if !privileged() {
        return;
    }
    // A dual-stack [::] listener from before the agent: found in /proc/net/tcp6 and matched through the server's
    // fds; the IPv4 connection is accepted as a v4-mapped AF_INET6 socket that finds it through the wildcard key.
    let (child, port) = server("::");
    let agent = start(common::config(NetnsFilter::Own)).await;
    check(&agent, child, SocketAddr::from(([0u16; 8], port)), true).await;
    agent.agent.stop().await;
}

/// A `python3` child running `script` with `port` as `sys.argv[1]`; `steps` lines from stdin move it on.
fn step_child(script: &str, port: u16) -> Child {
    python(&format!("import sys; sys.argv = ['child', '{port}']\n{script}"))
}

fn step(child: &mut Child, expect: &str) {
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(first_line(child), expect);
}

/// The pid the kernel's `listeners` map names for 127.0.0.1:`port`.
fn owner_of(agent: &TestAgent, port: u16) -> Option<u32> {
    let key = SocketAddr::from(([127, 0, 0, 1], port));
    agent.agent.listener_owner(agent.agent.netns(), key).map(|o| o.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_that_fails_leaves_the_listener_that_holds_the_port_named() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    // Two sockets with SO_REUSEADDR may bind one port while neither listens; the second listen() then fails
    // (EADDRINUSE), after the kernel has recorded its CLOSE -> LISTEN -> CLOSE.
    let mut holder = python(
        "import socket, sys\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('127.0.0.1', 0)); print(l.getsockname()[1], flush=True)\n\
         sys.stdin.readline(); l.listen(8); print('listening', flush=True)\n\
         sys.stdin.read()\n",
    );
    let port: u16 = first_line(&mut holder).parse().unwrap();
    let mut loser = step_child(
        "import errno, socket, sys\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', int(sys.argv[1]))); print('bound', flush=True)\n\
         sys.stdin.readline()\n\
         try:\n    s.listen(8); print('listening', flush=True)\n\
         except OSError as e:\n    print('refused' if e.errno == errno.EADDRINUSE else e, flush=True)\n\
         sys.stdin.read()\n",
        port,
    );
    assert_eq!(first_line(&mut loser), "bound");
    step(&mut holder, "listening");
    step(&mut loser, "refused");
    assert_eq!(
        owner_of(&agent, port),
        Some(holder.id()),
        "the failed listen() took the entry of the listener that holds the port"
    );
    common::finish(loser);
    common::finish(holder);
    wait_for("the entry to go with its listener", || owner_of(&agent, port).is_none()).await;
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_newest_listener_of_a_reuseport_group_leaves_the_older_one_named() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    const REUSEPORT: &str = "import socket, sys\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         l.bind(('127.0.0.1', int(sys.argv[1]))); l.listen(8); print(l.getsockname()[1], flush=True)\n\
         sys.stdin.readline(); l.close(); print('closed', flush=True)\n\
         sys.stdin.read()\n";
    let mut older = step_child(REUSEPORT, 0);
    let port: u16 = first_line(&mut older).parse().unwrap();
    let mut newer = step_child(REUSEPORT, port);
    assert_eq!(first_line(&mut newer), port.to_string());
    // One entry per address: the newest listener names the group.
    assert_eq!(owner_of(&agent, port), Some(newer.id()));
    step(&mut newer, "closed");
    assert_eq!(
        owner_of(&agent, port),
        Some(older.id()),
        "the older listener, still accepting, lost its name with the newer one's close"
    );
    step(&mut older, "closed");
    assert_eq!(
        owner_of(&agent, port),
        None,
        "the last listener's close deletes the entry"
    );
    common::finish(newer);
    common::finish(older);
    agent.agent.stop().await;
}

/// Listens without bind() (the kernel picks the port in listen(), after the CLOSE -> LISTEN state change), prints
/// the port, accepts `sys.argv[1]` connections, and on a line from stdin closes them and the listener and prints
/// `closed`; then waits for stdin to close.
const UNBOUND_SERVER: &str = "import socket, sys\n\
    l = socket.socket(); l.listen(8)\n\
    print(l.getsockname()[1], flush=True)\n\
    conns = [l.accept()[0] for _ in range(int(sys.argv[1]))]\n\
    sys.stdin.readline()\n\
    for c in conns: c.close()\n\
    l.close()\n\
    print('closed', flush=True)\n\
    sys.stdin.read()\n";

/// Connects to 127.0.0.1:`port` and waits for the accepted side in the agent's table; returns the pid it names.
async fn accepted_pid(agent: &TestAgent, port: u16) -> (TcpStream, Option<u32>) {
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let accepted = wait_some("the accepted side in the table", || {
        agent.agent.with_table(|t| {
            t.iter()
                .find(|c| c.role == Role::Server && c.remote.port() == client_port)
                .cloned()
        })
    })
    .await;
    (client, accepted.owner.map(|o| o.pid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_that_never_bound_name_their_connections_and_leave_no_entry() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let netns = agent.agent.netns();
    let wildcard = |port| SocketAddr::from(([0, 0, 0, 0], port));
    // Two at once, each with a connection, the older one's first.
    let mut older = step_child(UNBOUND_SERVER, 1);
    let older_port: u16 = first_line(&mut older).parse().unwrap();
    let mut newer = step_child(UNBOUND_SERVER, 1);
    let newer_port: u16 = first_line(&mut newer).parse().unwrap();
    let (c1, named) = accepted_pid(&agent, older_port).await;
    assert_eq!(
        named,
        Some(older.id()),
        "the accepted side of a listener that never called bind() names no process"
    );
    let (c2, named) = accepted_pid(&agent, newer_port).await;
    assert_eq!(named, Some(newer.id()));
    // One that no connection reaches: its close still deletes its entry.
    let mut idle = step_child(UNBOUND_SERVER, 0);
    let idle_port: u16 = first_line(&mut idle).parse().unwrap();
    step(&mut idle, "closed");
    step(&mut older, "closed");
    step(&mut newer, "closed");
    for port in [0, older_port, newer_port, idle_port] {
        wait_for("the listeners' entries to be deleted at their close", || {
            agent.agent.listener_owner(netns, wildcard(port)).is_none()
        })
        .await;
    }
    drop((c1, c2));
    for child in [older, newer, idle] {
        common::finish(child);
    }
    agent.agent.stop().await;
}
