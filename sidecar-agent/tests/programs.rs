//! The two builds of the state-change program: the BTF tracepoint the agent attaches (`tp_btf`, direct loads of the
//! socket's and the task's fields) and the raw tracepoint it falls back to where the kernel refuses BTF tracing
//! programs (every field a `bpf_probe_read_kernel` call). Each must load, attach and report the same events for
//! one loopback connection: both ends established and closed, with their ports, roles and owner.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::{loopback_connection, patiently, privileged, Netns, EVENTS_PER_CONNECTION};
use sidecar_agent::ebpf::{
    events::{EventKind, Role},
    reader::{self, Reader, ReaderCounters},
    Probe, ProbeOptions,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// (kind, role, local port, remote port, owner pid) of each event of one loopback connection, sorted; and the name
/// of the program that ran for them.
type Seen = (Vec<(EventKind, Role, u16, u16, Option<u32>)>, Vec<&'static str>);

async fn one_connection(raw_tracepoint: bool) -> (Seen, (u16, u16)) {
    // Its own namespace, so the events are this connection's only.
    let ns = Netns::new(if raw_tracepoint { "raw-tp" } else { "btf-tp" });
    let mut probe = Probe::load(&ProbeOptions {
        program_stats: true,
        raw_tracepoint,
        ..ns.probe_options()
    })
    .unwrap();
    let reader = Reader::new(probe.take_ring().unwrap(), Arc::new(ReaderCounters::default())).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (_pause, switch) = reader::pause_switch();
    let cancel = CancellationToken::new();
    let reading = tokio::spawn(reader.run(tx, switch, cancel.clone()));

    let ports = ns.run(loopback_connection);
    let mut events = Vec::new();
    for i in 0..EVENTS_PER_CONNECTION {
        let e = patiently(&format!("event {i}"), rx.recv()).await.unwrap();
        events.push((e.kind, e.role, e.local.port(), e.remote.port(), e.owner.map(|o| o.pid)));
    }
    events.sort_by_key(|e| (e.1 as u8, e.0 as u8));
    let ran: Vec<&'static str> = probe
        .stats()
        .program_runs()
        .expect("program_stats is on")
        .into_iter()
        .filter(|r| r.runs > 0)
        .map(|r| r.program)
        .collect();
    cancel.cancel();
    reading.await.unwrap().unwrap();
    ((events, ran), ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_builds_report_the_same_events() {
    if !privileged() {
        return;
    }
    let me = Some(std::process::id());
    for (raw, program) in [(false, "handle_set_state"), (true, "handle_set_state_raw")] {
        let ((events, ran), (client, server)) = one_connection(raw).await;
        assert_eq!(ran, vec![program], "raw_tracepoint: {raw}");
        // The client named at connect(), the server after its listener's owner: this process both times.
        assert_eq!(
            events,
            vec![
                (EventKind::Established, Role::Client, client, server, me),
                (EventKind::Closed, Role::Client, client, server, me),
                (EventKind::Established, Role::Server, server, client, me),
                (EventKind::Closed, Role::Server, server, client, me),
            ],
            "{program}"
        );
    }
}
