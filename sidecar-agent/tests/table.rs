//! The connection table against the real kernel: closed connections stay for the grace period and then leave,
//! and however many connections come, the table never holds more than its bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use common::{privileged, start, wait_for, Netns};
use sidecar_agent::{Config, NetnsFilter};

const BOUND: usize = 8;

/// `n` open connections in the calling thread's namespace: (listener, [(client, server)]).
fn open(n: usize) -> (TcpListener, Vec<(TcpStream, TcpStream)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let pairs = (0..n)
        .map(|_| (TcpStream::connect(addr).unwrap(), listener.accept().unwrap().0))
        .collect();
    (listener, pairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_leave_after_grace_and_the_bound_holds() {
    if !privileged() {
        return;
    }
    let ns = Netns::new("table");
    let netns = NetnsFilter::Path(ns.path());
    let base = Config {
        table_max_entries: BOUND,
        ..common::config(netns)
    };
    // Same kernel events, two grace periods: one that outlives the test, one short.
    let keeping = start(Config {
        closed_grace: Duration::from_secs(3600),
        ..base.clone()
    })
    .await;
    let expiring = start(Config {
        closed_grace: Duration::from_millis(200),
        ..base
    })
    .await;
    let len = |a: &common::TestAgent| a.agent.with_table(|t| t.len());
    let live = |a: &common::TestAgent| a.agent.with_table(|t| t.live());

    // 2 connections = 4 table entries (both ends are local).
    let (listener, pairs) = ns.run(|| open(2));
    for a in [&keeping, &expiring] {
        wait_for("4 live entries", || live(a) == 4).await;
    }
    let ports: Vec<u16> = pairs.iter().map(|(c, _)| c.local_addr().unwrap().port()).collect();
    drop(pairs);
    wait_for("the long-grace table to hold the 4 closed entries", || {
        keeping.agent.with_table(|t| t.len() == 4 && t.live() == 0)
    })
    .await;
    wait_for("closed entries to leave after the short grace period", || {
        len(&expiring) == 0
    })
    .await;
    let server = listener.local_addr().unwrap();
    let still_there = keeping.agent.with_table(|t| {
        ports.iter().all(|&p| {
            t.find(ns.inode(), SocketAddr::from(([127, 0, 0, 1], p)), server)
                .is_some()
        })
    });
    assert!(
        still_there,
        "closed connections must stay findable by 4-tuple during the grace period"
    );

    // Far more connections than the bound, kept open: the table evicts instead of growing.
    let (listener, pairs) = ns.run(|| open(3 * BOUND));
    let server = listener.local_addr().unwrap();
    let last = pairs.last().map(|(c, _)| c.local_addr().unwrap()).unwrap();
    let mut max_seen = 0;
    // Both ends of the newest connection: the server's ESTABLISHED comes after the client's, and is the last event.
    wait_for("the newest connection to be tracked", || {
        for a in [&keeping, &expiring] {
            max_seen = max_seen.max(len(a));
        }
        [&keeping, &expiring].iter().all(|a| {
            a.agent.with_table(|t| {
                t.find(ns.inode(), last, server).is_some() && t.find(ns.inode(), server, last).is_some()
            })
        })
    })
    .await;
    for a in [&keeping, &expiring] {
        let n = len(a);
        max_seen = max_seen.max(n);
        assert_eq!(n, BOUND, "a full table stays exactly at its bound");
    }
    assert!(max_seen <= BOUND, "the table exceeded its bound: {max_seen} > {BOUND}");
    // 6 x BOUND new entries: each that found the table full evicted one, the oldest closed entry while there was
    // one, else the oldest live one. The long-grace table still held the first 4 closed entries: they went first,
    // and as many more new entries found it full. The short-grace table's 4 had expired before.
    let live_for_room = 6 * BOUND as u64 - BOUND as u64;
    assert_evictions(&keeping, [0, 4, live_for_room]).await;
    assert_evictions(&expiring, [4, 0, live_for_room]).await;
    drop(pairs);
    keeping.agent.stop().await;
    expiring.agent.stop().await;
}

/// Waits until the agent's eviction counters are `[expired, closed_for_room, live_for_room]`, as whole exposition
/// lines (a reason never counted has no series: 0 stands for its absence); panics with the exposition after
/// [`common::PATIENCE`]. The counters follow the table's update by a moment.
async fn assert_evictions(agent: &common::TestAgent, want: [u64; 3]) {
    let reasons = ["expired", "closed_for_room", "live_for_room"];
    let holds = |text: &str| {
        reasons.iter().zip(want).all(|(reason, n)| {
            let series = format!("grayscope_agent_table_evictions_total{{reason=\"{reason}\"}}");
            let line = format!("{series} {n}");
            text.lines().any(|l| l == line) || (n == 0 && !text.lines().any(|l| l.starts_with(&format!("{series} "))))
        })
    };
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let text = agent.agent.metrics().encode().unwrap();
        if holds(&text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "want evictions {reasons:?} = {want:?}, the agent says:\n{}",
            text.lines()
                .filter(|l| l.starts_with("grayscope_agent_table_evictions_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
