//! What records waiting for their connection can make the agent hold, over the real gRPC service: at most
//! `link_pending_max` records and about `link_pending_bytes` of them (a record's text fields can take 4 KiB each,
//! so a count alone let 16,384 waiting records hold hundreds of MiB). A record that finds the queue full is not
//! lost: it is published at once, unlinked, and counted as `unlinked_queue_full`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{privileged, report, start};
use sidecar_agent::{Config, NetnsFilter};

/// A record of about 16 KiB.
fn big(i: usize) -> proto::v1::CallRecord {
    common::big(i, 4)
}

/// The value of the sample `name` (a whole name with its labels) in the agent's exposition; `None` when absent (a
/// labelled series appears with its first update).
async fn sample(agent: &common::TestAgent, name: &str) -> Option<usize> {
    let text = common::http_get(agent.metrics_addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_waiting_for_their_connection_hold_a_bounded_number_of_bytes_and_the_rest_go_unlinked() {
    if !privileged() {
        return;
    }
    // The settings as shipped, but for a wait long enough that no record leaves the queue during the test.
    let config = Config {
        link_wait: Duration::from_secs(120),
        ..common::config(NetnsFilter::Own)
    };
    let agent = start(config.clone()).await;
    let mut client = agent.client().await;
    const CALLS: usize = 2_000;
    let size = prost::Message::encoded_len(&big(0));
    for batch in (0..CALLS).collect::<Vec<_>>().chunks(100) {
        let accepted = report(&mut client, batch.iter().map(|&i| big(i)).collect()).await;
        assert_eq!(accepted, 100);
    }
    let received = sample(&agent, "grayscope_agent_call_records_received_total").await;
    assert_eq!(received, Some(CALLS));
    let waiting = sample(&agent, "grayscope_agent_link_pending")
        .await
        .expect("the pending gauge");
    let full = sample(
        &agent,
        "grayscope_agent_call_records_total{outcome=\"unlinked_queue_full\"}",
    )
    .await
    .unwrap_or(0);
    eprintln!("{waiting} records of {size} bytes wait, {full} went unlinked at once");
    // Nothing lost: every record waits or was published unlinked.
    assert_eq!(waiting + full, CALLS);
    // Records wait until they take the default bound's bytes, the last one admitted crossing it: as many as it
    // takes to reach it, no fewer (a queue that refused records well under its bound would pass a bound alone) and
    // no more.
    let bound: usize = 16 << 20;
    assert!(CALLS * size > bound + size, "the records must overflow the bound");
    assert_eq!(
        waiting,
        bound.div_ceil(size),
        "{waiting} records of {size} bytes wait: {} bytes, for a bound of {bound}",
        waiting * size
    );
    let bytes = sample(&agent, "grayscope_agent_link_pending_bytes").await;
    assert_eq!(bytes, Some(waiting * size), "the bytes gauge counts what waits");
    agent.agent.stop().await;
}
