//! The agent's Prometheus endpoint is reachable from the pod's network (the injector declares its port, and the
//! shipped scrape job reads it), so a client there must not hold its connections for ever: a request whose headers
//! never end is closed after [`sidecar_agent::metrics::HEADER_READ_TIMEOUT`], and a scrape on another connection is
//! served meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{privileged, start};
use sidecar_agent::{metrics::HEADER_READ_TIMEOUT, NetnsFilter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_headers_never_end_is_closed_at_the_deadline_and_scrapes_go_on() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    // A request line, and never the end of the headers; and a connection that sends nothing at all.
    let mut stalled = tokio::net::TcpStream::connect(agent.metrics_addr).await.unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(agent.metrics_addr).await.unwrap();
    let from = Instant::now();

    // A scrape meanwhile (http_get checks its 200).
    let scrape = common::http_get(agent.metrics_addr, "/metrics").await;
    assert!(scrape.contains("grayscope_agent_"), "{scrape}");

    for (name, conn) in [("stalled", &mut stalled), ("silent", &mut silent)] {
        // Whatever the agent answers (a 408, or nothing), it then closes: the read ends.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            HEADER_READ_TIMEOUT + Duration::from_secs(10),
            conn.read_to_end(&mut rest),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: still open {:?} after it connected", from.elapsed()));
        assert!(read.is_ok(), "{name}: {read:?}");
        let after = from.elapsed();
        assert!(
            after >= HEADER_READ_TIMEOUT / 2,
            "{name}: closed after {after:?}, before the deadline"
        );
        eprintln!("{name}: closed after {after:?}: {:?}", String::from_utf8_lossy(&rest));
    }
    agent.agent.stop().await;
}
