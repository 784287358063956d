//! The ring buffer's wakeups. The kernel programs signal the reader for the first event after a quiet spell (and for
//! a ring a quarter full), and the reader reads again soon after every read that found events, to pick up the events
//! the kernel did not signal. With the reader's idle backstop set to an hour, every event this test sees came by one
//! of those two paths: an event both missed would wait for the hour, and the test would time out waiting for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use common::{loopback_connection, patiently, privileged, Netns, EVENTS_PER_CONNECTION};
use sidecar_agent::ebpf::{
    reader::{self, Reader, ReaderCounters},
    Probe,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_without_the_idle_timer() {
    if !privileged() {
        return;
    }
    // Its own namespace, so the events are this test's only.
    let ns = Netns::new("wakeups");
    let mut probe = Probe::load(&ns.probe_options()).unwrap();
    let counters = Arc::new(ReaderCounters::default());
    let reader = Reader::new(probe.take_ring().unwrap(), Arc::clone(&counters))
        .unwrap()
        .with_idle_poll(Duration::from_secs(3600));
    let (tx, mut rx) = mpsc::channel(4096);
    let (_pause, switch) = reader::pause_switch();
    let cancel = CancellationToken::new();
    let reading = tokio::spawn(reader.run(tx, switch, cancel.clone()));

    // Single connections after a quiet spell (the kernel signals the first event, and the follow-up read takes the
    // other three), and bursts of 50 (one signal; the 200 events stay far below a quarter of the ring).
    let rounds = [1, 50, 1, 50, 1, 1];
    let mut seen = 0;
    for (i, n) in rounds.into_iter().enumerate() {
        // Longer than the kernel's quiet spell (5 ms), and than the reader's follow-up reads (10 ms): the reader is
        // idle when the round starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let woken_before = counters.woken_reads.load(Ordering::Relaxed);
        ns.run(move || (0..n).for_each(|_| _ = loopback_connection()));
        let want = seen + n * EVENTS_PER_CONNECTION;
        while seen < want {
            patiently(&format!("event {} of round {i} ({n} connections)", seen + 1), rx.recv())
                .await
                .expect("the reader is running");
            seen += 1;
        }
        assert!(
            counters.woken_reads.load(Ordering::Relaxed) > woken_before,
            "round {i}: the first event after a quiet spell must wake the reader"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "no events but the test's");
    assert_eq!(
        counters.delivered.load(Ordering::Relaxed),
        seen as u64,
        "every event read was handed on"
    );
    cancel.cancel();
    reading.await.unwrap().unwrap();
    drop(probe);
}
