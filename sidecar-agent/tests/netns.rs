//! The network namespace filter runs in the kernel: a connection made in another namespace is invisible to an
//! agent with the default filter (its own namespace), visible with `all`, and with that namespace given.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;

use common::{loopback_connection, privileged, start, wait_some, Netns};
use sidecar_agent::NetnsFilter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_namespace_is_invisible_by_default_and_visible_with_all() {
    if !privileged() {
        return;
    }
    let ns = Netns::new("filter");
    let own = start(common::config(NetnsFilter::Own)).await;
    let all = start(common::config(NetnsFilter::All)).await;
    let given = start(common::config(NetnsFilter::Path(ns.path()))).await;
    assert_eq!(all.agent.netns(), 0);
    assert_eq!(given.agent.netns(), ns.inode());
    assert_ne!(own.agent.netns(), ns.inode());

    let (inner_client, inner_server) = ns.run(loopback_connection);
    let lo = |p| SocketAddr::from(([127, 0, 0, 1], p));
    let seen_in = |agent: &common::TestAgent, netns: u32, client: u16, server: u16| {
        agent
            .agent
            .with_table(|t| t.find(netns, lo(client), lo(server)).and_then(|c| c.closed).is_some())
    };
    wait_some("`all` to see the connection in the other namespace", || {
        seen_in(&all, ns.inode(), inner_client, inner_server).then_some(())
    })
    .await;
    wait_some("the agent filtering on that namespace to see it", || {
        seen_in(&given, ns.inode(), inner_client, inner_server).then_some(())
    })
    .await;

    // A connection in the test's own namespace, made after the other one: once the default agent has it, it
    // has read everything the kernel gave it before, so the absence below is not a matter of waiting longer.
    let (client, server) = loopback_connection();
    let root = own.agent.netns();
    wait_some("the default agent to see the sentinel", || {
        seen_in(&own, root, client, server).then_some(())
    })
    .await;
    let leaked = own
        .agent
        .with_table(|t| t.iter().filter(|c| c.netns == ns.inode()).count());
    assert_eq!(
        leaked, 0,
        "the default filter let connections of another namespace through"
    );
    let foreign = given
        .agent
        .with_table(|t| t.iter().filter(|c| c.netns != ns.inode()).count());
    assert_eq!(foreign, 0, "a namespace filter let other namespaces through");
    for a in [own, all, given] {
        a.agent.stop().await;
    }
}
