use super::*;
use crate::metrics::tests::Recorder;

fn cfg(max_batch: usize, max_buffer: usize, max_in_flight: usize) -> ReportConfig {
    ReportConfig {
        max_batch,
        max_buffer,
        max_in_flight,
        flush_interval_ms: 1000,
        ..ReportConfig::default()
    }
}

fn rec(n: u32) -> CallRecord {
    CallRecord {
        http_response_status_code: n,
        ..CallRecord::default()
    }
}

/// produced == sent + dropped + buffered, as the metrics say and as the reporter says.
fn assert_accounted(host: &Recorder, r: &Reporter) {
    let v = |o: &str| host.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", o)]));
    let buffered = host.value(BUFFERED);
    assert_eq!(buffered as usize, r.buffered());
    assert_eq!(v("produced"), v("sent") + v("dropped") + buffered);
}

#[test]
fn full_batches_leave_at_once_partial_ones_on_the_interval() {
    let mut host = Recorder::default();
    let mut r = Reporter::new(cfg(3, 100, 4), "test".into(), &mut host).unwrap();
    for n in 0..7 {
        r.push(&mut host, rec(n)).unwrap();
    }
    let batches = r.tick(100);
    assert_eq!(batches.iter().map(|b| b.records).collect::<Vec<_>>(), [3, 3]);
    let decoded = ReportRequest::decode(batches[0].message.as_slice()).unwrap();
    assert_eq!(decoded.reporter, "test");
    assert_eq!(
        decoded
            .calls
            .iter()
            .map(|c| c.http_response_status_code)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    for (token, b) in batches.iter().enumerate() {
        r.dispatched(token as u32, b.records);
    }
    assert_accounted(&host, &r);
    assert!(r.tick(100).is_empty(), "the last record waits for the interval");
    assert_eq!(r.tick(800).iter().map(|b| b.records).collect::<Vec<_>>(), [1]);
}

#[test]
fn answers_settle_the_accounting() {
    let mut host = Recorder::default();
    let mut r = Reporter::new(cfg(2, 100, 4), "t".into(), &mut host).unwrap();
    for n in 0..6 {
        r.push(&mut host, rec(n)).unwrap();
    }
    let batches = r.tick(1000);
    assert_eq!(batches.len(), 3);
    r.dispatched(1, 2);
    r.dispatched(2, 2);
    r.dispatch_failed(&mut host, 2).unwrap();
    assert_accounted(&host, &r);
    assert_eq!(r.completed(&mut host, 1, 0).unwrap(), 2);
    assert_eq!(r.completed(&mut host, 2, 14).unwrap(), 2);
    assert_eq!(r.completed(&mut host, 99, 0).unwrap(), 0, "unknown token");
    assert_accounted(&host, &r);
    assert_eq!(r.buffered(), 0);
    assert_eq!(host.value("outcome=.=sent;.;grayscope_report_records_total"), 2);
    assert_eq!(host.value("outcome=.=dropped;.;grayscope_report_records_total"), 4);
}

#[test]
fn the_buffer_is_bounded_and_in_flight_calls_count_against_it() {
    let mut host = Recorder::default();
    let mut r = Reporter::new(cfg(5, 10, 1), "t".into(), &mut host).unwrap();
    for n in 0..10 {
        r.push(&mut host, rec(n)).unwrap();
    }
    let batches = r.tick(1000);
    assert_eq!(batches.len(), 1, "max_in_flight");
    r.dispatched(7, 5);
    for n in 0..100 {
        r.push(&mut host, rec(n)).unwrap();
    }
    assert_eq!(r.buffered(), 10);
    assert!(r.tick(1000).is_empty(), "still one call in flight");
    assert_accounted(&host, &r);
    assert_eq!(host.value("outcome=.=dropped;.;grayscope_report_records_total"), 100);
    r.completed(&mut host, 7, 4).unwrap();
    assert_eq!(r.tick(1000).len(), 1);
}

#[test]
fn records_carry_the_call() {
    let iface = Interface::Grpc {
        service: "shop.v1.Orders".into(),
        method: "Get".into(),
    };
    let ctx = CallContext {
        start_time_unix_nano: 5,
        duration_ns: 1_500_000,
        http_status: Some(200),
        client: Some("10.0.0.7:41234"),
        server: Some("[::1]:15001"),
        upstream_local: Some("127.0.0.1:50000"),
        upstream_peer: None,
    };
    let r = record(
        Side::Outbound,
        &iface,
        "shop.v1.Orders",
        Some("v2"),
        Status::Grpc(5),
        Some("rid"),
        None,
        &ctx,
    );
    assert_eq!(r.direction, Direction::Outbound as i32);
    assert_eq!(
        (r.rpc_system_name.as_str(), r.rpc_method.as_str()),
        ("grpc", "shop.v1.Orders/Get")
    );
    assert_eq!(
        (r.status.as_str(), r.rpc_grpc_status_code, r.http_response_status_code),
        ("NOT_FOUND", 5, 200)
    );
    assert_eq!(
        r.client,
        Some(SocketAddress {
            address: "10.0.0.7".into(),
            port: 41234
        })
    );
    assert_eq!(
        r.server,
        Some(SocketAddress {
            address: "::1".into(),
            port: 15001
        })
    );
    assert_eq!(r.upstream_peer, None);
    assert_eq!((r.gray_version.as_str(), r.request_id.as_str()), ("v2", "rid"));
}

#[test]
fn traceparent_parsing() {
    let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(trace_id(tp).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(
        trace_id(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        None
    );
    assert_eq!(
        trace_id(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        None
    );
    assert_eq!(trace_id(b"garbage"), None);
    assert_eq!(socket_address("/var/run/agent.sock").port, 0);
}
