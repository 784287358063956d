//! The connection table under churn: more connections than the kernel's map holds, so CLOSE events are lost and
//! the kernel hands freed socket addresses to new sockets. A new process's calls must link to it, late calls of
//! the old connections must never name it, and live entries the kernel no longer tracks must end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{finish, first_line, next, privileged, python, report, start};
use proto::v1::LinkState;
use sidecar_agent::{Config, NetnsFilter};

/// Connections process A opens; every other one is closed again.
const A_CONNECTIONS: usize = 1500;
/// Connections process B opens afterwards, and keeps.
const B_CONNECTIONS: usize = 300;
const KERNEL_MAX_CONNS: u32 = 256;

/// A python child that listens, opens `n` connections to itself, closes every other one (both ends) when `close`,
/// and prints its listener's port then the client ports of the closed ones (or all, if none is closed).
fn connector(n: usize, close: bool) -> std::process::Child {
    python(&format!(
        "import socket, sys\n\
         l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(4096)\n\
         conns = []\n\
         for i in range({n}):\n\
         \x20   c = socket.create_connection(l.getsockname()); s, _ = l.accept(); conns.append((c, s))\n\
         shown = conns[::2] if {close} else conns\n\
         ports = [c.getsockname()[1] for c, s in shown]\n\
         if {close}:\n\
         \x20   for c, s in shown: c.close(); s.close()\n\
         print(l.getsockname()[1], *ports, flush=True)\n\
         sys.stdin.read()\n",
        close = if close { "True" } else { "False" },
    ))
}

fn ports(line: &str) -> (u16, Vec<u16>) {
    let mut it = line.split(' ').map(|p| p.parse::<u16>().unwrap());
    (it.next().unwrap(), it.collect())
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_close_never_merges_a_new_connection_into_an_old_one() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        kernel_max_conns: KERNEL_MAX_CONNS,
        ring_buffer_bytes: 4 << 20,
        link_wait: Duration::from_secs(3),
        watch_queue: 4 * A_CONNECTIONS,
        ..common::config(NetnsFilter::Own)
    })
    .await;
    let mut client = agent.client().await;
    let mut watch = agent.watch_greeter().await;

    let mut a = connector(A_CONNECTIONS, true);
    let a_pid = a.id();
    let (a_listener, a_closed) = ports(&first_line(&mut a));
    let mut b = connector(B_CONNECTIONS, false);
    let b_pid = b.id();
    let (b_listener, b_ports) = ports(&first_line(&mut b));
    assert_eq!(b_ports.len(), B_CONNECTIONS);

    // B's calls, then late calls of A's closed connections.
    let calls = b_ports
        .iter()
        .map(|&p| common::outbound(lo(p), lo(b_listener), "FromB"))
        .chain(
            a_closed
                .iter()
                .map(|&p| common::outbound(lo(p), lo(a_listener), "FromA")),
        )
        .collect::<Vec<_>>();
    let total = calls.len();
    assert_eq!(report(&mut client, calls).await, u32::try_from(total).unwrap());
    let (mut b_linked, mut b_other, mut a_named_b) = (0, Vec::new(), 0);
    for _ in 0..total {
        let msg = next(&mut watch).await;
        assert_eq!(msg.lost, 0);
        let call = msg.call.unwrap();
        let pid = call.process.as_ref().map_or(0, |p| p.pid);
        let method = call.call.as_ref().unwrap().rpc_method.clone();
        if method.ends_with("FromB") {
            if call.link == LinkState::Linked as i32 && pid == b_pid {
                b_linked += 1;
            } else {
                b_other.push((call.link, pid, call.unlinked_reason));
            }
        } else if pid == b_pid {
            a_named_b += 1;
        }
    }
    assert_eq!(
        a_named_b, 0,
        "late calls of A's connections named B (pid {b_pid}; A is {a_pid})"
    );
    assert_eq!(
        b_linked,
        B_CONNECTIONS,
        "B's calls not linked to B: {:?}",
        &b_other[..b_other.len().min(5)]
    );

    // The kernel holds at most KERNEL_MAX_CONNS sockets: after a sweep, so does the table (give or take the
    // connections other programs open meanwhile).
    common::wait_for("live entries the kernel forgot to end", || {
        agent.agent.with_table(|t| t.live()) <= KERNEL_MAX_CONNS as usize + 100
    })
    .await;
    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("grayscope_agent_connections_close_missed_total{reason=\"kernel_forgot\"}"),
        "{metrics}"
    );
    finish(a);
    finish(b);
    agent.agent.stop().await;
}
