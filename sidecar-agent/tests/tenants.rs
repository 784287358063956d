//! The tenant label through the real agent over its real Unix socket: records carrying the filter's bounded tenant
//! labels are accepted, one whose tenant is not such a label (a raw id, free text) is refused alone and counted as
//! `bad_tenant`; linked calls keep their label; `Watch` with `tenant` (and `grayscope-agent tail --tenant`, run as a
//! user would) delivers that tenant's calls only; `ListMethods` (and `grayscope-agent methods`) keeps a row per
//! tenant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{finish, next, privileged, report, start, wait_for, PATIENCE};
use proto::v1::{CallRecord, LinkState, ListMethodsRequest, WatchRequest};
use sidecar_agent::NetnsFilter;

const BIN: &str = env!("CARGO_BIN_EXE_grayscope-agent");

fn tenant(mut c: CallRecord, t: &str, ms: u64) -> CallRecord {
    c.tenant = t.into();
    c.duration_ns = ms * 1_000_000;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_labels_are_validated_kept_filtered_and_tabled() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let mut client = agent.client().await;
    // A watch filter that cannot be a label is refused, not left to match nothing forever.
    let Err(refused) = client
        .watch(WatchRequest {
            tenant: "acme corp".into(),
            ..WatchRequest::default()
        })
        .await
    else {
        panic!("a tenant filter with a space was accepted");
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().starts_with("tenant: not a tenant label"),
        "{refused:?}"
    );
    assert!(!refused.message().contains("acme"), "{refused:?}");
    let mut free_watch = client
        .watch(WatchRequest {
            tenant: "free".into(),
            ..WatchRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut tail, lines) = common::tail(BIN, &agent, &["--tenant", "enterprise"]);
    let hub = std::sync::Arc::clone(agent.agent.core().hub());
    wait_for("both watchers to subscribe", || hub.len() == 2).await;

    let common::Caller {
        child,
        pid,
        local,
        envoy,
        listener: _listener,
    } = common::connected_caller(&agent).await;
    let call = || common::outbound(local, envoy, "Get");
    let calls = vec![
        tenant(call(), "enterprise", 2),
        tenant(call(), "free", 42),
        // A raw id is not a label: refused alone, the rest of the batch goes on.
        tenant(call(), "acme corp <ops@acme.example>", 1),
        tenant(call(), "t_9f86d081884c7d65", 3),
        tenant(call(), "free", 43),
        tenant(call(), "enterprise", 2),
        tenant(call(), "none", 1),
    ];
    assert_eq!(report(&mut client, calls).await, 6);

    // Watch with tenant: the two `free` calls, linked to the child, in order, with their label.
    for ms in [42, 43] {
        let got = next(&mut free_watch).await.call.unwrap();
        let c = got.call.as_ref().unwrap();
        assert_eq!((c.tenant.as_str(), c.duration_ns), ("free", ms * 1_000_000));
        assert_eq!(got.link, LinkState::Linked as i32);
        assert_eq!(got.process.as_ref().unwrap().pid, pid);
    }
    // tail --tenant enterprise: exactly the two enterprise calls.
    for _ in 0..2 {
        let line = lines.recv_timeout(PATIENCE).expect("tail printed too little");
        assert!(
            line.contains(&format!("pid={pid} "))
                && line.contains("  grpc test.Greeter/Get  gray=v2  tenant=enterprise  status=OK  2.000ms"),
            "{line}"
        );
    }

    // One row per tenant of the one interface, with each tenant's own latency.
    let mut rows = Vec::new();
    for _ in 0..1500 {
        rows = client
            .list_methods(ListMethodsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .methods;
        if rows.iter().map(|r| r.calls).sum::<u64>() == 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got: Vec<(&str, &str, u64, f64)> = rows
        .iter()
        .map(|r| (r.method.as_str(), r.tenant.as_str(), r.calls, r.latency.unwrap().max_ms))
        .collect();
    assert_eq!(
        got,
        [
            ("Get", "enterprise", 2, 2.0),
            ("Get", "free", 2, 43.0),
            ("Get", "none", 1, 1.0),
            ("Get", "t_9f86d081884c7d65", 1, 3.0),
        ]
    );

    let out = common::methods_cli(&agent);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let table: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(table[0][4], "TENANT", "{text}");
    let tenants: Vec<(&str, &str)> = table[1..].iter().map(|r| (r[4], r[8])).collect();
    assert_eq!(
        tenants,
        [
            ("enterprise", "2"),
            ("free", "2"),
            ("none", "1"),
            ("t_9f86d081884c7d65", "1")
        ],
        "{text}"
    );

    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    common::assert_metric(
        &metrics,
        "grayscope_agent_call_records_rejected_total{reason=\"bad_tenant\"} 1",
    );
    // The refused raw id is nowhere: not in the metrics, not in anything a client was given.
    assert!(!metrics.contains("acme"), "{metrics}");
    assert!(!text.contains("acme"), "{text}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(tail.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(tail.wait().unwrap().success());
    assert!(
        lines.try_iter().all(|l| l.contains("tenant=enterprise")),
        "tail --tenant printed another tenant's call"
    );
    finish(child);
    agent.agent.stop().await;
}
