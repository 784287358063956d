//! Stopping the agent while clients hold it: a scrape that never finishes its request does not keep the agent
//! from stopping (a pod's agent must end on SIGTERM before the kubelet's SIGKILL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{privileged, start, PATIENCE};
use sidecar_agent::NetnsFilter;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_metrics_request_does_not_hold_the_agent_at_shutdown() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    // A request line, and never the end of the headers.
    let mut stalled = tokio::net::TcpStream::connect(agent.metrics_addr).await.unwrap();
    stalled.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Only a hang reaches PATIENCE: the connections get a few seconds to end, then are closed.
    tokio::time::timeout(PATIENCE, agent.agent.stop())
        .await
        .expect("the agent was still stopping 30 s after it was told to: a stalled scrape held it");
    drop(stalled);
}
