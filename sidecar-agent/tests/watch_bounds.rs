//! What watchers can make the agent hold, over the real gRPC service: a watcher that stops reading keeps at most
//! `watch_queue_bytes` of calls (not `watch_queue` calls of whatever size: a record's fields can take 4 KiB each),
//! is told how many it lost, and loses nothing silently; and at most `max_watchers` streams watch at once, the next
//! one being refused with RESOURCE_EXHAUSTED, so the agent's memory has a bound whoever watches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{privileged, report, start};
use proto::v1::WatchRequest;
use sidecar_agent::{Config, NetnsFilter};

fn config() -> Config {
    Config {
        // The records match no connection: published unlinked right away.
        link_wait: Duration::from_millis(10),
        ..common::config(NetnsFilter::Own)
    }
}

/// A record of about 8 KiB.
fn big(i: usize) -> proto::v1::CallRecord {
    common::big(i, 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_holds_a_bounded_number_of_bytes_and_is_told_what_it_lost() {
    if !privileged() {
        return;
    }
    let agent = start(config()).await;
    let mut client = agent.client().await;
    let mut watch = small_window_client(&agent.socket)
        .await
        .watch(WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    const CALLS: usize = 400;
    let size = prost::Message::encoded_len(&big(0));
    for batch in (0..CALLS).collect::<Vec<_>>().chunks(50) {
        let accepted = report(&mut client, batch.iter().map(|&i| big(i)).collect()).await;
        assert_eq!(accepted, 50);
    }
    // Every call published (as unlinked) before the watcher reads anything.
    let line = format!("grayscope_agent_call_records_total{{outcome=\"unlinked_no_connection\"}} {CALLS}");
    scraped(&agent, &line).await;

    let (mut received, mut lost, mut last) = (0usize, 0u64, None);
    while let Ok(msg) = tokio::time::timeout(Duration::from_millis(500), watch.message()).await {
        let msg = msg.unwrap().expect("the watch stream ended");
        received += 1;
        lost += msg.lost;
        let method = msg.call.unwrap().call.unwrap().rpc_method;
        last = Some(method[..method.find('m').unwrap()].to_owned());
    }
    eprintln!("{received} calls of {size} bytes received, {lost} lost, the last {last:?}");
    // Nothing silently missing: each call either came or was counted lost, and the newest came.
    assert_eq!(received + usize::try_from(lost).unwrap(), CALLS);
    assert_eq!(
        last.as_deref(),
        Some(format!("test.Greeter/M{:04}", CALLS - 1).as_str())
    );
    // The queue's bytes, and what HTTP/2 took on before the client stopped reading: the client's 64 KiB window,
    // and the agent's send buffer (hyper's, 400 KiB).
    let bound = (config().watch_queue_bytes + (512 << 10)) / size;
    assert!(
        received <= bound,
        "{received} calls of {size} bytes kept, more than {bound}"
    );
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_watchers_streams_watch_at_once_and_the_next_is_refused_by_name() {
    if !privileged() {
        return;
    }
    let agent = start(config()).await;
    let max = config().max_watchers;
    // Two connections, each under its streams limit.
    let (mut a, mut b) = (agent.client().await, agent.client().await);
    let mut open = Vec::new();
    for i in 0..max {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        open.push(client.watch(WatchRequest::default()).await.unwrap().into_inner());
    }
    let refused = a.watch(WatchRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_watchers"), "{refused:?}");
    // One ends: its place is free again.
    drop(open.pop());
    scraped(&agent, &format!("grayscope_agent_watchers {}", max - 1)).await;
    open.push(a.watch(WatchRequest::default()).await.unwrap().into_inner());
    agent.agent.stop().await;
}

/// Scrapes the agent until `line` is in its exposition.
async fn scraped(agent: &common::TestAgent, line: &str) {
    common::patiently(line, async {
        while !common::http_get(agent.metrics_addr, "/metrics")
            .await
            .lines()
            .any(|l| l == line)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A client whose HTTP/2 windows are the protocol's default 64 KiB (hyper's client takes 2 MiB per stream, so the
/// calls the agent sent would pile up on this side, and not show what the agent keeps).
async fn small_window_client(
    socket: &std::path::Path,
) -> proto::v1::collector_client::CollectorClient<tonic::transport::Channel> {
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://grayscope-agent.local")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect_with_connector(connector)
        .await
        .unwrap();
    proto::v1::collector_client::CollectorClient::new(channel)
}
