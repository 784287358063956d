//! The filter reports call records to the agent; with no agent listening, requests are unaffected and every
//! record is accounted for: produced == sent + dropped + buffered, exactly.

use std::time::{Duration, Instant};

use integration_tests::{client::Client, prom, stack::Stack};

fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no series {series}"));
    line[series.len()..].trim().parse().expect("value")
}

#[test]
fn with_no_agent_every_request_succeeds_and_every_record_is_counted_as_dropped() {
    let s = Stack::start(r#"{"report":{"flush_interval_ms":50,"max_batch":100,"max_buffer":500}}"#);
    assert!(!s.agent_socket.exists());
    let mut c = Client::new(s.envoy.listener("ingress"));
    for n in 0..10_000 {
        assert_eq!(
            c.get(&format!("/orders/{n}"), &[("x-gray-version", b"v2")]).status,
            200,
            "request {n}"
        );
    }
    // Wait until every call is accounted for (the report metrics are published by the filter's tick, so they lag
    // the calls by up to a tick) and nothing is buffered or in flight (the answers are UNAVAILABLE within
    // milliseconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = s.envoy.prometheus();
        let all = value(&text, "grayscope_report_records_total{outcome=\"produced\"}") == 10_000.0;
        if (all && value(&text, "grayscope_report_records_buffered{}") == 0.0) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"produced\"} 10000");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"sent\"} 0");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"dropped\"} 10000");
    assert_eq!(value(&text, "grayscope_report_records_buffered{}"), 0.0);
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 10_000.0);
    let log = s.envoy.log();
    assert!(log.contains("report to the agent failed"), "the failure is logged");
    assert!(
        log.lines().filter(|l| l.contains("report to the agent failed")).count() < 200,
        "but not per batch"
    );
}
