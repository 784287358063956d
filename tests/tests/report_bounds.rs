//! The bounds at the edges of the report path and of baggage, through the real Envoy with the built filter (and
//! the real agent where it takes part): no call's record is lost because of another call, and nothing the filter
//! sends is larger than the README promises.

use std::time::{Duration, Instant};

use integration_tests::{
    agent::{privileged, runtime, Agent},
    client::Client,
    envoy::Envoy,
    prom,
    stack::Stack,
};
use proto::v1::WatchRequest;

fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"));
    line[series.len()..].trim().parse().expect("value")
}

/// `/stats/prometheus` once the `produced` records are all accounted for (the report metrics are published by the
/// filter's tick, so they lag the calls by up to a tick) and nothing is buffered nor in flight any more (or after
/// 60 s, for the assertions to say).
fn settled(envoy: &Envoy, produced: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = envoy.prometheus();
        let all = value(&text, "grayscope_report_records_total{outcome=\"produced\"}") == produced as f64;
        if (all && value(&text, "grayscope_report_records_buffered{}") == 0.0) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's own `/metrics`.
fn agent_metrics(agent: &Agent) -> String {
    let mut c = Client::new(agent.metrics_addr.parse().expect("metrics address"));
    String::from_utf8(c.get("/metrics", &[]).body).expect("utf-8 metrics")
}

#[test]
fn a_5000_byte_request_id_is_truncated_and_loses_no_other_record() {
    if !privileged() {
        return;
    }
    let s = Stack::start(r#"{"report":{"flush_interval_ms":50}}"#);
    let agent = Agent::start(&s.agent_socket, &[]);
    // The long call alone carries the version `long`, so a watcher can pick it out.
    let rt = runtime();
    let mut watch = rt.block_on(async {
        let request = WatchRequest {
            gray_version: "long".into(),
            ..WatchRequest::default()
        };
        agent.client().await.watch(request).await.expect("watch").into_inner()
    });
    let mut c = Client::new(s.envoy.listener("ingress"));
    let long = "r".repeat(5000);
    for n in 0..1001 {
        let headers: &[(&str, &[u8])] = if n == 500 {
            &[("x-request-id", long.as_bytes()), ("x-gray-version", b"long")]
        } else {
            &[]
        };
        assert_eq!(c.get(&format!("/orders/{n}"), headers).status, 200, "request {n}");
    }
    let text = settled(&s.envoy, 1001);
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"produced\"} 1001");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"sent\"} 1001");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"dropped\"} 0");
    prom::assert_line(&text, "grayscope_report_fields_truncated_total{} 1");
    let m = agent_metrics(&agent);
    prom::assert_line(&m, "grayscope_agent_call_records_received_total 1001");
    // The agent has the long call, its request id cut to 1024 bytes with the visible marker.
    let got = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), watch.message())
            .await
            .expect("the long call reaches the watcher")
            .expect("watch stream")
            .and_then(|m| m.call)
            .and_then(|c| c.call)
            .expect("a call")
    });
    assert_eq!(got.request_id.len(), 1024);
    assert_eq!(got.request_id, format!("{}…", "r".repeat(1021)));
}

#[test]
fn batches_larger_than_the_agents_message_limit_are_split() {
    if !privileged() {
        return;
    }
    // ≈ 1,000 bytes a record: 4,500 of them are over the agent's 4 MiB default. Counted in records, they make one
    // full batch, which leaves at the next tick (the requests take less than the 10 s interval). Counted in bytes,
    // they leave in batches of at most 1 MiB as they come, and the rest after the interval.
    let segment = "a".repeat(30);
    let template = format!("/{}/{{id}}", vec![segment.as_str(); 29].join("/"));
    assert!(template.len() > 880 && template.len() < 1000);
    let config = format!(
        r#"{{"routes":[{{"template":"{template}"}}],
            "report":{{"flush_interval_ms":10000,"max_batch":4500,"max_buffer":10000}}}}"#
    );
    let s = Stack::start(&config);
    let agent = Agent::start(&s.agent_socket, &[]);
    let mut c = Client::new(s.envoy.listener("ingress"));
    let path = template.replace("{id}", "");
    for n in 0..4500 {
        assert_eq!(c.get(&format!("{path}{n}"), &[]).status, 200, "request {n}");
    }
    let text = settled(&s.envoy, 4500);
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"produced\"} 4500");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"sent\"} 4500");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"dropped\"} 0");
    let m = agent_metrics(&agent);
    prom::assert_line(&m, "grayscope_agent_call_records_received_total 4500");
    prom::assert_line(&m, "grayscope_agent_grpc_messages_oversized_total 0");
}

#[test]
fn a_batch_budget_no_record_fits_in_is_refused_with_its_field() {
    let refused = Stack::try_start(r#"{"report":{"max_batch_bytes":1000}}"#)
        .err()
        .expect("Envoy refuses the plugin");
    assert!(
        refused.log.contains("report.max_batch_bytes: must be between"),
        "{}",
        refused.log
    );
}

#[test]
fn baggage_with_a_huge_gray_member_leaves_within_8192_bytes() {
    let s = Stack::start("{}");
    let mut c = Client::new(s.envoy.listener("ingress"));
    // The gray member already carries the version, with 9,000 bytes of properties: they no longer fit.
    let huge = format!("gray.version=v2;p={},other=1", "x".repeat(9000));
    let r = c.get(
        "/b/1",
        &[
            ("x-test-id", b"huge"),
            ("x-gray-version", b"v2"),
            ("baggage", huge.as_bytes()),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.http.request("huge").all("baggage"), ["gray.version=v2,other=1"]);
    // Properties that fit are kept, and charged: the next member that would cross 8192 bytes is dropped.
    let props = "y".repeat(5000);
    let big = format!("gray.version=v2;p={props},other={}", "z".repeat(4000));
    let r = c.get(
        "/b/2",
        &[
            ("x-test-id", b"big"),
            ("x-gray-version", b"v2"),
            ("baggage", big.as_bytes()),
        ],
    );
    assert_eq!(r.status, 200);
    let got = s.http.request("big").all("baggage");
    assert_eq!(got, [format!("gray.version=v2;p={props}")]);
    assert!(got[0].len() <= 8192);
    let text = s.envoy.prometheus();
    prom::assert_line(&text, "grayscope_baggage_members_dropped_total{cause=\"over_limit\"} 1");
}
