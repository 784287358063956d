//! Stopping the agent while clients hold it: a scrape that never finishes its request does not keep the agent
//! from stopping (a pod's agent must end on SIGTERM before the kubelet's SIGKILL); a record still waiting for its
//! connection when the agent stops is reported (unlinked, counted) to the open watchers before their streams end,
//! and the streams end with UNAVAILABLE, which a client retries, not OK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{next, privileged, report, start, PATIENCE};
use proto::v1::LinkState;
use sidecar_agent::{Config, NetnsFilter};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_waiting_for_its_connection_at_shutdown_reaches_the_watchers_and_is_counted() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        // The record below would wait a minute for a connection that never comes: the agent stops first.
        link_wait: Duration::from_secs(60),
        ..common::config(NetnsFilter::Own)
    })
    .await;
    let mut watch = agent.watch_all().await;
    let nowhere = common::outbound(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        "SayHello",
    );
    // Accepted: the filter counts it as sent and will never send it again.
    assert_eq!(report(&mut agent.client().await, vec![nowhere]).await, 1);
    common::wait_for("the record to wait for its connection", || {
        agent.agent.core().pending() == 1
    })
    .await;
    let metrics = agent.agent.metrics();
    let (outcomes, waiting) = (metrics.records.clone(), metrics.link_pending.clone());
    let core = std::sync::Arc::clone(agent.agent.core());
    let stopping = tokio::spawn(agent.agent.stop());
    let m = next(&mut watch).await;
    let call = m.call.expect("a linked call");
    assert_eq!(call.link, LinkState::NoConnection as i32);
    assert_eq!(call.call.unwrap().rpc_method, "test.Greeter/SayHello");
    assert!(
        call.unlinked_reason
            .contains("no connection 127.0.0.1:1 -> 127.0.0.1:2"),
        "{}",
        call.unlinked_reason
    );
    // Then the stream ends, and not with OK: a client must tell the agent going away (retry, reconnect to its
    // successor) from a stream that is over. UNAVAILABLE is the status gRPC clients retry.
    let end = common::patiently("the end of the watch stream", watch.message()).await;
    let status = end.expect_err("the stream ended with OK: a client cannot tell the agent stopped");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("the agent is stopping"), "{status:?}");
    common::patiently("the agent to stop", stopping).await.unwrap();
    // Every accepted record ended with an outcome: none is left waiting, none is lost uncounted.
    assert_eq!(
        outcomes.get_or_create(&[("outcome", "unlinked_no_connection")]).get(),
        1
    );
    assert_eq!((core.pending(), waiting.get()), (0, 0));
    // A batch that arrives while the server drains does not wait for a timer that no longer runs.
    let late = common::outbound(
        "127.0.0.1:3".parse().unwrap(),
        "127.0.0.1:4".parse().unwrap(),
        "SayHello",
    );
    assert_eq!(core.report(vec![late], tokio::time::Instant::now(), None), 1);
    assert_eq!(core.pending(), 0);
    assert_eq!(
        outcomes.get_or_create(&[("outcome", "unlinked_no_connection")]).get(),
        2
    );
}
