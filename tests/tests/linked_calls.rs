//! The whole report path, for real: client processes with known pids call through Envoy with the filter; the
//! filter reports each call over gRPC to the agent on its Unix socket; the agent, whose eBPF programs saw the
//! connections, names the process that made (outbound) or served (inbound) each call.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use integration_tests::{
    agent::{privileged, runtime, Agent},
    grpc, prom,
    stack::Stack,
};
use proto::v1::collector_client::CollectorClient;
use proto::v1::{Direction, LinkState, LinkedCall, MethodStats, WatchRequest, WatchResponse};
use tonic::{transport::Channel, Streaming};

const CONFIG: &str = r#"{"report":{"flush_interval_ms":50}}"#;

/// Opens a Watch stream; once this returns, the agent has registered the watcher.
fn open_watch(rt: &tokio::runtime::Runtime, socket: &Path, request: WatchRequest) -> Watcher {
    rt.block_on(async {
        let mut client = sidecar_agent::client::connect(socket)
            .await
            .expect("connect to the agent");
        let stream = client.watch(request).await.expect("watch").into_inner();
        Watcher {
            _client: client,
            stream,
        }
    })
}

/// A Watch stream with the client it came from (kept alive as long as the stream is read).
struct Watcher {
    _client: CollectorClient<Channel>,
    stream: Streaming<WatchResponse>,
}

/// Reads `want` calls from a Watch stream (panics after 60 s with what it got).
async fn read_calls(mut w: Watcher, want: usize) -> Vec<LinkedCall> {
    let mut calls = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while calls.len() < want {
        match tokio::time::timeout_at(deadline, w.stream.message()).await {
            Ok(Ok(Some(msg))) => calls.extend(msg.call),
            other => panic!(
                "watch ended after {} of {want} calls: {other:?}\n{calls:#?}",
                calls.len()
            ),
        }
    }
    calls
}

fn methods(agent: &Agent) -> Vec<MethodStats> {
    runtime().block_on(async {
        sidecar_agent::client::list_methods(&mut agent.client().await)
            .await
            .expect("list methods")
    })
}

fn pid_of(call: &LinkedCall) -> u32 {
    call.process.as_ref().map(|p| p.pid).unwrap_or(0)
}

fn now_unix_nano() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos()).expect("u64 ns")
}

/// Which addresses a record carries: client, server, upstream_local, upstream_peer.
fn addresses(call: &LinkedCall) -> [bool; 4] {
    let r = call.call.as_ref().expect("record");
    [
        r.client.is_some(),
        r.server.is_some(),
        r.upstream_local.is_some(),
        r.upstream_peer.is_some(),
    ]
}

/// The call started and ended between `before` and `after` (Envoy's clock is this machine's).
fn assert_within(call: &LinkedCall, before: u64, after: u64) {
    let r = call.call.as_ref().expect("record");
    assert!(
        before <= r.start_time_unix_nano && r.start_time_unix_nano + r.duration_ns <= after,
        "start {} + duration {} not within [{before}, {after}]",
        r.start_time_unix_nano,
        r.duration_ns
    );
}

#[test]
fn outbound_calls_name_the_process_that_made_them() {
    if !privileged() {
        return;
    }
    let s = Stack::start(CONFIG);
    let agent = Agent::start(&s.agent_socket, &[]);
    let rt = runtime();
    let egress = s.envoy.listener("egress");
    let request = WatchRequest {
        gray_version: "v2".into(),
        ..WatchRequest::default()
    };
    let watcher = rt.spawn(read_calls(open_watch(&rt, &agent.socket, request), 5));
    let before = now_unix_nano();
    let (grpc_outcomes, grpc_pid) = grpc::call_with_pid(egress, "/shop.v1.Orders/Get", &[("x-gray-version", "v2")], 3);
    assert!(grpc_outcomes.iter().all(|o| o.code == "OK"), "{grpc_outcomes:?}");
    let (http_statuses, http_pid) =
        grpc::http_get_with_pid(egress, "/api/v1/orders/42", &[("x-gray-version", "v2")], 2);
    assert_eq!(http_statuses, [200, 200]);
    let after = now_unix_nano();

    let calls = rt.block_on(watcher).expect("watcher");
    for c in &calls {
        // What the outbound join (client -> server) and the peer (the upstream host) use, and not Envoy's own end
        // of the upstream connection.
        assert_eq!(addresses(c), [true, true, false, true], "{c:#?}");
        assert_within(c, before, after);
    }
    let by_pid = |pid: u32| calls.iter().filter(|c| pid_of(c) == pid).collect::<Vec<_>>();
    let grpc_calls = by_pid(grpc_pid);
    assert_eq!(grpc_calls.len(), 3, "{calls:#?}");
    for c in &grpc_calls {
        assert_eq!(c.link, LinkState::Linked as i32);
        let p = c.process.as_ref().expect("process");
        assert!(p.executable_path.contains("python"), "{p:?}");
        // Command lines may carry secrets: the agent sends them only when told to (--expose-command-line).
        assert_eq!(p.command_line, "", "{p:?}");
        let r = c.call.as_ref().expect("record");
        assert_eq!(
            (r.rpc_method.as_str(), r.gray_version.as_str()),
            ("shop.v1.Orders/Get", "v2")
        );
        assert_eq!(r.direction, Direction::Outbound as i32);
    }
    let http_calls = by_pid(http_pid);
    assert_eq!(http_calls.len(), 2, "{calls:#?}");
    assert!(http_calls
        .iter()
        .all(|c| c.call.as_ref().is_some_and(|r| r.http_route == "/api/v1/orders/{id}")));

    // The agent's aggregate agrees with the call counts and with Envoy's own metrics.
    let rows = methods(&agent);
    // Exactly one row per interface, version and process, however many calls it counts.
    let row = |pid: u32, method: &str| {
        let matching: Vec<&MethodStats> = rows
            .iter()
            .filter(|m| {
                m.process.as_ref().is_some_and(|p| p.pid == pid) && m.method == method && m.gray_version == "v2"
            })
            .collect();
        assert_eq!(matching.len(), 1, "rows for pid {pid} {method}: {rows:#?}");
        matching[0]
    };
    assert_eq!(row(grpc_pid, "Get").calls, 3);
    assert!(!row(grpc_pid, "Get").peers.is_empty(), "the upstream host is the peer");
    assert_eq!(row(http_pid, "GET /api/v1/orders/{id}").calls, 2);
    let text = s.envoy.prometheus();
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"outbound\",rpc_system=\"grpc\",service=\"shop.v1.Orders\",method=\"Get\",gray_version=\"v2\",status=\"OK\"} 3");
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"outbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /api/v1/orders/{id}\",gray_version=\"v2\",status=\"2xx\"} 2");
}

#[test]
fn calls_of_a_listener_without_direction_are_linked_and_say_by_which_rule() {
    if !privileged() {
        return;
    }
    // No `traffic_direction` on the egress listener and no `direction` in the plugin configuration: every record
    // arrives as unspecified.
    let s = Stack::start_edited(CONFIG, |yaml| {
        let edited = yaml.replacen("traffic_direction: OUTBOUND\n    ", "", 1);
        assert_ne!(
            edited, yaml,
            "the fixture's egress listener has no traffic_direction to remove"
        );
        edited
    });
    let agent = Agent::start(&s.agent_socket, &[]);
    let rt = runtime();
    let request = WatchRequest {
        method: "Undirected".into(),
        ..WatchRequest::default()
    };
    let watcher = rt.spawn(read_calls(open_watch(&rt, &agent.socket, request), 3));
    let before = now_unix_nano();
    let (outcomes, pid) = grpc::call_with_pid(s.envoy.listener("egress"), "/shop.v1.Orders/Undirected", &[], 3);
    let after = now_unix_nano();
    assert!(outcomes.iter().all(|o| o.code == "OK"), "{outcomes:?}");
    let calls = rt.block_on(watcher).expect("watcher");
    for c in &calls {
        assert_eq!(
            c.call.as_ref().map(|r| r.direction),
            Some(Direction::Unspecified as i32)
        );
        assert_eq!(
            (c.link, c.link_rule.as_str()),
            (LinkState::Linked as i32, "outbound"),
            "{c:#?}"
        );
        assert_eq!(pid_of(c), pid, "the calling process: {c:#?}");
        // The agent tries both joins: all four addresses.
        assert_eq!(addresses(c), [true; 4], "{c:#?}");
        assert_within(c, before, after);
    }
    let text = s.envoy.prometheus();
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"unspecified\",rpc_system=\"grpc\",service=\"shop.v1.Orders\",method=\"Undirected\",gray_version=\"none\",status=\"OK\"} 3");
}

#[test]
fn inbound_calls_name_the_process_that_served_them() {
    if !privileged() {
        return;
    }
    let s = Stack::start(CONFIG);
    // The agent starts before Envoy opens its first upstream connection, so it sees the server accept it.
    let agent = Agent::start(&s.agent_socket, &[]);
    let rt = runtime();
    let server_pid = s.grpc.pid();
    let request = WatchRequest {
        method: "Charge".into(),
        ..WatchRequest::default()
    };
    let watcher = rt.spawn(read_calls(open_watch(&rt, &agent.socket, request), 4));
    let before = now_unix_nano();
    let outcomes = grpc::call(
        s.envoy.listener("ingress"),
        "/shop.v1.Payments/Charge",
        &[("x-gray-version", "v1")],
        4,
    );
    assert!(outcomes.iter().all(|o| o.code == "OK"));
    let after = now_unix_nano();
    let calls = rt.block_on(watcher).expect("watcher");
    for c in &calls {
        // What the inbound join (upstream_peer -> upstream_local) and the peer (the downstream client) use, and
        // not Envoy's local end of the downstream connection.
        assert_eq!(addresses(c), [true, false, true, true], "{c:#?}");
        assert_within(c, before, after);
        assert_eq!(c.link, LinkState::Linked as i32, "{c:#?}");
        assert_eq!(pid_of(c), server_pid, "the serving process: {c:#?}");
        assert_eq!(c.link_rule, "inbound");
        assert_eq!(c.call.as_ref().map(|r| r.direction), Some(Direction::Inbound as i32));
    }
}

/// A record's trace id is that of a `traceparent` the W3C Trace Context rules accept, the ones a tracer applies
/// before it joins a trace: a header it would ignore (and start a new trace for) names no trace of this call.
#[test]
fn a_record_carries_the_trace_id_of_a_valid_traceparent_only() {
    if !privileged() {
        return;
    }
    let s = Stack::start(CONFIG);
    let agent = Agent::start(&s.agent_socket, &[]);
    let rt = runtime();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let valid = format!("00-{trace}-00f067aa0ba902b7-01");
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("valid", vec![valid.clone()], trace),
        // A version this filter does not know may add fields after the flags.
        (
            "future",
            vec![format!("cc-{trace}-00f067aa0ba902b7-01-what-the-future-will-be-like")],
            trace,
        ),
        // Version 00 has exactly four fields (55 characters): anything after the flags makes it invalid.
        (
            "v00-trailing",
            vec![format!(
                "00-{trace}-00f067aa0ba902b7-01-what-the-future-will-not-be-like"
            )],
            "",
        ),
        // A parent id of all zeros is invalid, as a trace id of all zeros is.
        ("zero-parent", vec![format!("00-{trace}-0000000000000000-01")], ""),
        (
            "zero-trace",
            vec!["00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned()],
            "",
        ),
        // Two traceparent headers are no trace context at all, whichever comes first.
        ("duplicated", vec![valid, format!("00-{trace}-b7ad6b7169203331-01")], ""),
    ];
    let request = WatchRequest {
        gray_version: "traced".into(),
        ..WatchRequest::default()
    };
    let watcher = rt.spawn(read_calls(open_watch(&rt, &agent.socket, request), cases.len()));
    let mut c = integration_tests::client::Client::new(s.envoy.listener("ingress"));
    for (case, traceparents, _) in &cases {
        let mut headers: Vec<(&str, &[u8])> = vec![("x-gray-version", b"traced")];
        headers.extend(traceparents.iter().map(|t| ("traceparent", t.as_bytes())));
        assert_eq!(c.get(&format!("/traced/{case}"), &headers).status, 200, "{case}");
    }
    let calls = rt.block_on(watcher).expect("watcher");
    let trace_id = |case: &str| {
        let route = format!("/traced/{case}");
        let r = calls
            .iter()
            .filter_map(|c| c.call.as_ref())
            .find(|r| r.http_route == route)
            .unwrap_or_else(|| panic!("no record of {route}: {calls:#?}"));
        r.trace_id.clone()
    };
    let got: Vec<(&str, String)> = cases.iter().map(|(case, ..)| (*case, trace_id(case))).collect();
    let want: Vec<(&str, String)> = cases.iter().map(|(case, _, id)| (*case, (*id).to_owned())).collect();
    assert_eq!(got, want);
}

#[test]
fn reporting_resumes_by_itself_when_the_agent_starts_mid_run() {
    if !privileged() {
        return;
    }
    let s = Stack::start(CONFIG);
    let mut c = integration_tests::client::Client::new(s.envoy.listener("ingress"));
    for n in 0..2000 {
        assert_eq!(c.get(&format!("/early/{n}"), &[]).status, 200);
    }
    let agent = Agent::start(&s.agent_socket, &[]);
    for n in 0..2000 {
        assert_eq!(c.get(&format!("/late/{n}"), &[]).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = s.envoy.prometheus();
        let v = |o: &str| {
            let series = format!("grayscope_report_records_total{{outcome=\"{o}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        let buffered = text
            .lines()
            .find_map(|l| l.strip_prefix("grayscope_report_records_buffered{} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0);
        let (produced, sent, dropped) = (v("produced"), v("sent"), v("dropped"));
        // Published by the filter's tick: up to a tick behind the calls, never ahead.
        assert!(produced <= 4000.0, "{produced} produced");
        assert_eq!(
            produced,
            sent + dropped + buffered,
            "produced == sent + dropped + buffered"
        );
        if produced == 4000.0 && buffered == 0.0 && sent >= 2000.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reporting did not resume: sent {sent}, dropped {dropped}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
