//! Ring buffer overflow: with a one-page ring and the reader paused, a burst of connections overflows it; the
//! kernel counts every event it produced and every one it dropped, so after the reader resumes,
//! `delivered + dropped == produced` exactly, and the agent still tracks new connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;

use common::{loopback_connection, privileged, start, wait_for, wait_some, Netns, EVENTS_PER_CONNECTION};
use sidecar_agent::{Config, EventCounts, NetnsFilter};

/// One ring buffer record: the 104-byte event plus the kernel's 8-byte header.
const RECORD: u64 = 104 + 8;
const RING: u32 = 4096;
const CONNECTIONS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_is_counted_exactly_and_the_agent_recovers() {
    if !privileged() {
        return;
    }
    // Its own namespace, so the counts hold this test's events only.
    let ns = Netns::new("overflow");
    let config = Config {
        ring_buffer_bytes: RING,
        ..common::config(NetnsFilter::Path(ns.path()))
    };
    let agent = start(config).await;
    let counts = || agent.agent.counts().unwrap();
    agent.agent.pause_reader().await;

    // Each connection gives 4 events (2 established, 2 closed; the server side is named after its listener, so
    // there is no accepted event without the accept tracepoints).
    ns.run(|| (0..CONNECTIONS).for_each(|_| _ = loopback_connection()));
    let capacity = u64::from(RING) / RECORD;
    let want = (EVENTS_PER_CONNECTION * CONNECTIONS) as u64;
    wait_for("the kernel to produce the burst's events", || counts().produced >= want).await;
    let paused = counts();
    assert!(
        paused.produced >= 8 * capacity,
        "the burst must be 8x the ring: {paused:?}, capacity {capacity}"
    );
    assert_eq!(paused.delivered, 0, "the reader was paused: {paused:?}");
    assert!(paused.dropped > 0, "a full ring must drop: {paused:?}");

    agent.agent.resume_reader();
    let drained: EventCounts = wait_some("delivered + dropped == produced", || {
        let c = counts();
        (c.delivered + c.dropped == c.produced).then_some(c)
    })
    .await;
    assert!(
        drained.delivered > 0 && drained.delivered <= capacity + 1,
        "{drained:?}"
    );
    assert_eq!(
        drained.produced, paused.produced,
        "nothing else happens in the test namespace"
    );

    // Still running: a new connection is delivered and tracked, and the books still balance.
    let (client, server) = ns.run(loopback_connection);
    let lo = |p| SocketAddr::from(([127, 0, 0, 1], p));
    let netns = ns.inode();
    wait_for("the agent to track a connection made after the overflow", || {
        agent.agent.with_table(|t| {
            t.find(netns, lo(client), lo(server))
                .is_some_and(|c| c.closed.is_some())
        })
    })
    .await;
    let after = wait_some("the books to balance again", || {
        let c = counts();
        (c.delivered + c.dropped == c.produced && c.produced == drained.produced + EVENTS_PER_CONNECTION as u64)
            .then_some(c)
    })
    .await;
    assert_eq!(
        after.dropped, drained.dropped,
        "a drained ring drops nothing: {after:?}"
    );
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_whose_events_were_dropped_are_recovered_from_the_kernel() {
    if !privileged() {
        return;
    }
    const OPEN: usize = 50;
    let ns = Netns::new("recover");
    let config = Config {
        ring_buffer_bytes: RING,
        ..common::config(NetnsFilter::Path(ns.path()))
    };
    let agent = start(config).await;
    agent.agent.pause_reader().await;
    // Connections that stay open, twice as many events (both ends established) as the ring holds.
    let open: Vec<(std::net::TcpStream, std::net::TcpStream)> = ns.run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        (0..OPEN)
            .map(|_| {
                let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                (client, listener.accept().unwrap().0)
            })
            .collect()
    });
    wait_for("the kernel to drop events", || {
        agent.agent.counts().unwrap().dropped > 0
    })
    .await;
    agent.agent.resume_reader();

    // The kernel still holds every one of them with its owner: the table must learn them all, not only those whose
    // ESTABLISHED found room in the ring (the others would stay unknown, their calls unlinked, until they close).
    let netns = ns.inode();
    let me = std::process::id();
    let ends: Vec<(SocketAddr, SocketAddr)> = open
        .iter()
        .flat_map(|(c, s)| {
            [
                (c.local_addr().unwrap(), c.peer_addr().unwrap()),
                (s.local_addr().unwrap(), s.peer_addr().unwrap()),
            ]
        })
        .collect();
    let missing = || {
        agent.agent.with_table(|t| {
            ends.iter()
                .filter(|&&(l, r)| {
                    !t.find(netns, l, r)
                        .is_some_and(|c| c.closed.is_none() && c.owner.as_ref().is_some_and(|o| o.pid == me))
                })
                .count()
        })
    };
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while missing() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        missing(),
        0,
        "of {} open connection ends, these are not in the table with their owner after the ring dropped events",
        ends.len()
    );
    let dropped = agent.agent.counts().unwrap().dropped;
    let recovered = common::http_get(agent.metrics_addr, "/metrics")
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix("grayscope_agent_connections_recovered_total ")
                .map(str::to_owned)
        })
        .expect("the recovered connections' counter");
    assert!(
        recovered.parse::<f64>().unwrap() >= dropped as f64,
        "{recovered} recovered, {dropped} dropped"
    );
    drop(open);
    agent.agent.stop().await;
}
