use prost::Message;
use proto::v1::{CallRecord, Direction, ReportRequest, SocketAddress};

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

fn http() -> Interface {
    Interface::Http {
        verb: "GET",
        route: "/orders/{id}".into(),
    }
}

/// The interface of [`rec`]'s records, which borrow it.
static HTTP: std::sync::LazyLock<Interface> = std::sync::LazyLock::new(http);

fn rec(n: u32) -> Record<'static> {
    let ctx = CallContext {
        http_status: Some(u64::from(n)),
        ..CallContext::default()
    };
    record(
        Side::Inbound,
        &HTTP,
        "svc",
        None,
        Status::http(Some(200)),
        None,
        None,
        &ctx,
    )
}

fn decode(batch: &Batch) -> ReportRequest {
    ReportRequest::decode(batch.message.as_slice()).unwrap()
}

fn ticked<H: MetricHost>(r: &mut Reporter, host: &mut H, ms: u64) -> Vec<Batch> {
    let (batches, result) = r.tick(host, ms);
    assert!(result.is_ok());
    batches
}

/// produced == sent + dropped + buffered, as the metrics say once published and as the reporter says.
fn assert_accounted(host: &mut Recorder, r: &mut Reporter) {
    r.publish(host).unwrap();
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
        r.push(rec(n));
    }
    let batches = ticked(&mut r, &mut host, 100);
    assert_eq!(batches.iter().map(|b| b.records).collect::<Vec<_>>(), [3, 3]);
    let decoded = decode(&batches[0]);
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
    assert_accounted(&mut host, &mut r);
    assert!(
        ticked(&mut r, &mut host, 100).is_empty(),
        "the last record waits for the interval"
    );
    let last = ticked(&mut r, &mut host, 800);
    assert_eq!(last.iter().map(|b| b.records).collect::<Vec<_>>(), [1]);
}

#[test]
fn answers_settle_the_accounting() {
    let mut host = Recorder::default();
    let mut r = Reporter::new(cfg(2, 100, 4), "t".into(), &mut host).unwrap();
    for n in 0..6 {
        r.push(rec(n));
    }
    let batches = ticked(&mut r, &mut host, 1000);
    assert_eq!(batches.len(), 3);
    r.dispatched(1, 2);
    r.dispatched(2, 2);
    r.dispatch_failed(&mut host, 2).unwrap();
    assert_accounted(&mut host, &mut r);
    assert_eq!(r.completed(&mut host, 1, 0).0, 2);
    assert_eq!(r.completed(&mut host, 2, 14).0, 2);
    assert_eq!(r.completed(&mut host, 99, 0).0, 0, "unknown token");
    assert_accounted(&mut host, &mut r);
    assert!(r.is_idle());
    assert_eq!(host.value("outcome=.=sent;.;grayscope_report_records_total"), 2);
    assert_eq!(host.value("outcome=.=dropped;.;grayscope_report_records_total"), 4);
}

#[test]
fn the_buffer_is_bounded_and_in_flight_calls_count_against_it() {
    let mut host = Recorder::default();
    let mut r = Reporter::new(cfg(5, 10, 1), "t".into(), &mut host).unwrap();
    for n in 0..10 {
        r.push(rec(n));
    }
    let batches = ticked(&mut r, &mut host, 1000);
    assert_eq!(batches.len(), 1, "max_in_flight");
    r.dispatched(7, 5);
    for n in 0..100 {
        r.push(rec(n));
    }
    assert_eq!(r.buffered(), 10);
    assert!(ticked(&mut r, &mut host, 1000).is_empty(), "still one call in flight");
    assert_accounted(&mut host, &mut r);
    assert_eq!(host.value("outcome=.=dropped;.;grayscope_report_records_total"), 100);
    r.completed(&mut host, 7, 4).1.unwrap();
    assert_eq!(ticked(&mut r, &mut host, 1000).len(), 1);
}

#[test]
fn batches_are_split_by_bytes_and_a_budget_full_of_records_leaves_at_once() {
    let mut host = Recorder::default();
    let c = ReportConfig {
        max_batch_bytes: 20_000,
        ..cfg(10_000, 10_000, 64)
    };
    let mut r = Reporter::new(c, "grayscope/1".into(), &mut host).unwrap();
    let long = "/x".repeat(400);
    let iface = Interface::Http {
        verb: "GET",
        route: long.clone(),
    };
    for _ in 0..100 {
        let ctx = CallContext::default();
        let rec = record(Side::Inbound, &iface, "svc", None, Status::http(None), None, None, &ctx);
        r.push(rec);
    }
    // Not due, not 10,000 records: the bytes alone make the batches full.
    let batches = ticked(&mut r, &mut host, 10);
    assert!(batches.len() >= 4, "{} batches", batches.len());
    let mut total = 0;
    for b in &batches {
        assert!(b.message.len() <= 20_000, "{} bytes", b.message.len());
        let decoded = decode(b);
        assert_eq!(decoded.calls.len(), b.records);
        assert!(decoded.calls.iter().all(|c| c.http_route == long));
        total += b.records;
    }
    // What is left is less than a budget: it waits for the interval.
    let rest = ticked(&mut r, &mut host, 1000);
    total += rest.iter().map(|b| b.records).sum::<usize>();
    assert_eq!(total, 100);
}

#[test]
fn every_field_is_bounded_with_a_visible_marker_and_counted() {
    let mut host = Recorder::default();
    let mut r = Reporter::new(cfg(10, 10, 1), "t".into(), &mut host).unwrap();
    let long_id = "é".repeat(3000); // 6,000 bytes, two per char: the cut must land on a boundary
    let iface = Interface::Grpc {
        service: "s".repeat(2000),
        method: "M".into(),
    };
    let ctx = CallContext {
        client: Some("/a/very/long/pipe/path"),
        ..CallContext::default()
    };
    let service = "s".repeat(2000);
    let rec = record(
        Side::Outbound,
        &iface,
        &service,
        Some("v2"),
        Status::Grpc(0),
        Some(&long_id),
        None,
        &ctx,
    );
    assert_eq!(rec.truncated, 3);
    r.push(rec);
    let batch = r.drain(&mut host).0.pop().unwrap();
    assert_eq!(host.value(TRUNCATED_FIELDS), 3, "counted, and published by the drain");
    let call = &decode(&batch).calls[0];
    for text in [&call.request_id, &call.rpc_method, &call.service] {
        assert!(text.len() <= MAX_FIELD_BYTES, "{} bytes", text.len());
        assert!(text.ends_with(TRUNCATED), "{text:?}");
    }
    assert_eq!(call.client.as_ref().unwrap().address, "/a/very/long/pipe/path");
}

#[test]
fn the_largest_possible_record_is_within_max_record_bytes() {
    let big = "x".repeat(10_000);
    let iface = Interface::Http {
        verb: "_OTHER",
        route: big.clone(),
    };
    let ctx = CallContext {
        start_time_unix_nano: u64::MAX,
        duration_ns: u64::MAX,
        http_status: Some(u64::from(u32::MAX)),
        client: Some(&big),
        server: Some(&big),
        upstream_local: Some(&big),
        upstream_peer: Some(&big),
    };
    let rec = record(
        Side::Outbound,
        &iface,
        &big,
        Some(&big),
        Status::http(Some(599)),
        Some(&big),
        Some(&big),
        &ctx,
    )
    .with_tenant(Some(&big));
    let mut buf = Vec::new();
    rec.encode(&mut buf);
    assert_eq!(buf.len(), rec.encoded_len());
    assert!(buf.len() + 4 <= MAX_RECORD_BYTES, "{} bytes", buf.len());
    assert!(CallRecord::decode(buf.as_slice()).is_ok());
}

#[test]
fn records_carry_the_call_and_encode_as_prost_would() {
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
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        &ctx,
    );
    let mut buf = Vec::new();
    r.encode(&mut buf);
    assert_eq!(buf.len(), r.encoded_len());
    let want = CallRecord {
        direction: Direction::Outbound as i32,
        rpc_system_name: "grpc".into(),
        rpc_method: "shop.v1.Orders/Get".into(),
        http_request_method: String::new(),
        http_route: String::new(),
        service: "shop.v1.Orders".into(),
        gray_version: "v2".into(),
        status: "NOT_FOUND".into(),
        http_response_status_code: 200,
        rpc_grpc_status_code: 5,
        duration_ns: 1_500_000,
        start_time_unix_nano: 5,
        client: Some(SocketAddress {
            address: "10.0.0.7".into(),
            port: 41234,
        }),
        server: Some(SocketAddress {
            address: "::1".into(),
            port: 15001,
        }),
        upstream_local: Some(SocketAddress {
            address: "127.0.0.1".into(),
            port: 50000,
        }),
        upstream_peer: None,
        // No tenant dimension in this record.
        tenant: String::new(),
        request_id: "rid".into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    };
    assert_eq!(CallRecord::decode(buf.as_slice()).unwrap(), want);
    // The same call with the tenant dimension on: field 19 carries the bounded label, and the length agrees.
    let r = r.with_tenant(Some("t_5bc1a08d28e40fe7"));
    let mut buf = Vec::new();
    r.encode(&mut buf);
    assert_eq!(buf.len(), r.encoded_len());
    let want = CallRecord {
        tenant: "t_5bc1a08d28e40fe7".into(),
        ..want
    };
    assert_eq!(CallRecord::decode(buf.as_slice()).unwrap(), want);
    // And a plain HTTP call with nothing known: -1 for the gRPC code, no addresses.
    let h = rec(0);
    let mut buf = Vec::new();
    h.encode(&mut buf);
    let got = CallRecord::decode(buf.as_slice()).unwrap();
    assert_eq!(
        (
            got.rpc_system_name.as_str(),
            got.http_request_method.as_str(),
            got.http_route.as_str()
        ),
        ("http", "GET", "/orders/{id}")
    );
    assert_eq!((got.rpc_grpc_status_code, got.status.as_str()), (-1, "2xx"));
    assert_eq!(got.direction, Direction::Inbound as i32);
}

#[test]
fn the_trace_id_is_that_of_one_traceparent_a_tracer_would_join() {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let one = |h: &str| trace_id([h.as_bytes()]);
    assert_eq!(one(&format!("00-{trace}-00f067aa0ba902b7-01")).as_deref(), Some(trace));
    assert_eq!(
        one(&format!(" 00-{trace}-00f067aa0ba902b7-00\t")).as_deref(),
        Some(trace)
    );
    // A later version may add fields after the flags; version 00 may not.
    assert_eq!(
        one(&format!("cc-{trace}-00f067aa0ba902b7-01-future")).as_deref(),
        Some(trace)
    );
    for invalid in [
        format!("00-{trace}-00f067aa0ba902b7-01-future"),
        format!("00-{trace}-00f067aa0ba902b7-01-"),
        format!("00-{trace}-0000000000000000-01"),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
        format!("ff-{trace}-00f067aa0ba902b7-01"),
        format!("00-{}-00f067aa0ba902b7-01", trace.to_uppercase()),
        format!("00-{trace}-00f067aa0ba902b7-1"),
        format!("cc-{trace}-00f067aa0ba902b7-01.future"),
        format!("00-{trace}-00f067aa0ba902b7"),
    ] {
        assert_eq!(one(&invalid), None, "{invalid}");
    }
    let valid = format!("00-{trace}-00f067aa0ba902b7-01");
    assert_eq!(trace_id([valid.as_bytes(), valid.as_bytes()]), None, "two headers");
    assert_eq!(trace_id([]), None);
}

#[test]
fn a_call_never_answered_is_dropped_at_its_deadline_and_frees_its_slot() {
    let mut host = Recorder::default();
    let mut r = Reporter::new(cfg(2, 100, 1), "t".into(), &mut host).unwrap();
    for n in 0..4 {
        r.push(rec(n));
    }
    let batches = ticked(&mut r, &mut host, 1000);
    assert_eq!(batches.len(), 1);
    r.dispatched(1, 2);
    // The answer is lost (say the root was busy when it came): within the deadline nothing moves.
    let deadline = r.config().timeout_ms + DEADLINE_GRACE_MS;
    assert!(
        ticked(&mut r, &mut host, deadline).is_empty(),
        "the slot is still taken"
    );
    assert_eq!(r.in_flight(), 1);
    // Past it, the records are dropped and the slot serves the next batch.
    let next = ticked(&mut r, &mut host, 1000);
    assert_eq!(next.iter().map(|b| b.records).collect::<Vec<_>>(), [2]);
    assert_eq!(host.value("outcome=.=dropped;.;grayscope_report_records_total"), 2);
    r.dispatched(2, 2);
    assert_accounted(&mut host, &mut r);
    // A late answer to the expired call changes nothing.
    assert_eq!(r.completed(&mut host, 1, 0).0, 0);
    assert_accounted(&mut host, &mut r);
}

#[test]
fn drain_hands_out_everything_whatever_the_interval_and_the_slots() {
    let mut host = Recorder::default();
    let mut r = Reporter::new(cfg(3, 100, 1), "t".into(), &mut host).unwrap();
    for n in 0..8 {
        r.push(rec(n));
    }
    r.dispatched(9, 0);
    let batches = r.drain(&mut host).0;
    assert_eq!(batches.iter().map(|b| b.records).collect::<Vec<_>>(), [3, 3, 2]);
    assert!(r.drain(&mut host).0.is_empty());
    for (token, b) in (10..).zip(&batches) {
        r.dispatched(token, b.records);
    }
    for token in 10..13 {
        r.completed(&mut host, token, 0).1.unwrap();
    }
    r.completed(&mut host, 9, 0).1.unwrap();
    assert!(r.is_idle());
    assert_accounted(&mut host, &mut r);
    assert_eq!(host.value("outcome=.=sent;.;grayscope_report_records_total"), 8);
}

/// A host whose every metric hostcall can be made to fail.
#[derive(Default)]
struct Failing {
    inner: Recorder,
    fail: bool,
    failures: usize,
    /// Every metric update tried, failed or not.
    calls: usize,
}

impl MetricHost for Failing {
    type Error = String;
    fn define(&mut self, kind: Kind, name: &str) -> Result<u32, String> {
        self.inner.define(kind, name)
    }
    fn increment(&mut self, id: u32, by: u64) -> Result<(), String> {
        self.calls += 1;
        if self.fail {
            self.failures += 1;
            return Err("increment failed".into());
        }
        self.inner.increment(id, by)
    }
    fn record(&mut self, id: u32, value: u64) -> Result<(), String> {
        if self.fail {
            self.failures += 1;
            return Err("record failed".into());
        }
        self.inner.record(id, value)
    }
    fn add(&mut self, id: u32, delta: i64) -> Result<(), String> {
        self.calls += 1;
        if self.fail {
            self.failures += 1;
            return Err("add failed".into());
        }
        self.inner.add(id, delta)
    }
}

#[test]
fn a_push_makes_no_hostcall_and_a_tick_one_update_per_series() {
    let mut host = Failing::default();
    let mut r = Reporter::new(cfg(1000, 50, 4), "t".into(), &mut host).unwrap();
    let long = Interface::Http {
        verb: "GET",
        route: "/x".repeat(1000),
    };
    for n in 0..100 {
        let ctx = CallContext::default();
        let iface = if n % 2 == 0 { long.clone() } else { http() };
        r.push(record(
            Side::Inbound,
            &iface,
            "svc",
            None,
            Status::http(None),
            None,
            None,
            &ctx,
        ));
    }
    assert_eq!(host.calls, 0, "pushing costs no metric update");
    let v = |h: &Failing, o: &str| h.inner.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", o)]));
    assert_eq!(v(&host, "produced"), 0, "nothing shows before the tick");
    assert!(ticked(&mut r, &mut host, 10).is_empty(), "not due");
    // produced, truncated, dropped and buffered moved; sent did not: four updates for a hundred calls.
    assert_eq!(host.calls, 4);
    assert_eq!(
        (v(&host, "produced"), v(&host, "dropped"), host.inner.value(BUFFERED)),
        (100, 50, 50)
    );
    assert_eq!(
        host.inner.value(TRUNCATED_FIELDS),
        50,
        "every long record counts its cut, kept or dropped"
    );
    assert!(ticked(&mut r, &mut host, 10).is_empty());
    assert_eq!(host.calls, 4, "nothing moved, nothing published");
}

#[test]
fn failing_hostcalls_cost_a_metric_update_never_a_slot_nor_a_record() {
    let mut host = Failing::default();
    let mut r = Reporter::new(cfg(2, 4, 1), "t".into(), &mut host).unwrap();
    host.fail = true;
    for n in 0..5 {
        r.push(rec(n));
    }
    assert_eq!(host.calls, 0, "a push makes no hostcall");
    assert_eq!(
        r.buffered(),
        4,
        "the records are buffered all the same, the fifth dropped"
    );
    let (batches, result) = r.tick(&mut host, 1000);
    assert!(result.is_err(), "the publishing failed, and says so");
    assert_eq!(batches.len(), 1);
    r.dispatched(1, 2);
    // Every path that settles records, with every hostcall failing: the state moves on regardless.
    assert!(r.dispatch_failed(&mut host, 0).is_ok(), "nothing to count, no hostcall");
    let (records, result) = r.completed(&mut host, 1, 0);
    assert_eq!(records, 2);
    assert!(result.is_err());
    assert_eq!(r.in_flight(), 0, "the slot came back");
    let (batches, _) = r.tick(&mut host, 1000);
    assert_eq!(batches.len(), 1, "and serves the next batch");
    r.dispatched(2, 2);
    let (_, result) = r.tick(&mut host, r.config().timeout_ms + DEADLINE_GRACE_MS + 1);
    assert!(result.is_err(), "the expiry's counting failed, and says so");
    assert!(r.is_idle(), "but the call is gone and its slot free");
    assert!(host.failures >= 5, "{} hostcalls failed", host.failures);
    // The host recovers: the reporter works as before, and what failed to show is published now.
    host.fail = false;
    r.push(rec(9));
    let (batches, result) = r.tick(&mut host, 1000);
    assert!(result.is_ok());
    assert_eq!(batches.len(), 1);
    r.dispatched(3, 1);
    assert_accounted(&mut host.inner, &mut r);
    let v = |o: &str| {
        host.inner
            .value(&crate::metrics::stat_name(PRODUCED, &[("outcome", o)]))
    };
    assert_eq!((v("produced"), v("sent"), v("dropped")), (6, 2, 3));
}

/// Records of every shape: gRPC and HTTP, each direction, cut fields, IPv4, IPv6 and pipe addresses, a tenant.
#[allow(clippy::type_complexity)]
fn golden_batch(host: &mut Recorder) -> Vec<Batch> {
    let mut r = Reporter::new(cfg(100, 100, 4), "grayscope/7".into(), host).unwrap();
    let grpc = Interface::Grpc {
        service: "shop.v1.Orders".into(),
        method: "Get".into(),
    };
    let long_grpc = Interface::Grpc {
        service: "s".repeat(1020),
        method: "Method".into(),
    };
    let long_route = Interface::Http {
        verb: "POST",
        route: format!("/{}", "é".repeat(700)),
    };
    let full = CallContext {
        start_time_unix_nano: 1_700_000_000_123_456_789,
        duration_ns: 1_500_000,
        http_status: Some(200),
        client: Some("10.0.0.7:41234"),
        server: Some("[::1]:15001"),
        upstream_local: Some("127.0.0.1:50000"),
        upstream_peer: Some("/var/run/agent.sock"),
    };
    let bare = CallContext::default();
    let rid = "r".repeat(2000);
    let cases: [(
        Side,
        &Interface,
        &str,
        Option<&str>,
        Status,
        Option<&str>,
        Option<&str>,
        &CallContext<'_>,
        Option<&str>,
    ); 5] = [
        (
            Side::Outbound,
            &grpc,
            "shop.v1.Orders",
            Some("v2"),
            Status::Grpc(5),
            Some("rid"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            &full,
            Some("t_5bc1a08d28e40fe7"),
        ),
        (
            Side::Inbound,
            &long_grpc,
            "svc",
            None,
            Status::NoResponse,
            Some(&rid),
            None,
            &bare,
            None,
        ),
        (
            Side::Unspecified,
            &long_route,
            "orders",
            Some("v1"),
            Status::http(Some(503)),
            None,
            None,
            &full,
            None,
        ),
        (
            Side::Inbound,
            &http(),
            "svc",
            None,
            Status::http(None),
            None,
            None,
            &bare,
            Some("other"),
        ),
        (
            Side::Outbound,
            &http(),
            "svc",
            None,
            Status::http(Some(404)),
            Some("x"),
            None,
            &full,
            None,
        ),
    ];
    for (side, iface, service, version, status, request_id, trace_id, ctx, tenant) in cases {
        r.push(record(side, iface, service, version, status, request_id, trace_id, ctx).with_tenant(tenant));
    }
    r.drain(host).0
}

/// The bytes the filter sent for [`golden_batch`]'s records before records were encoded at push time (the
/// encoder of commit fb72dab, which encoded whole batches in the tick).
const GOLDEN: &str = include_str!("golden-batch.hex");

#[test]
fn records_encoded_at_push_are_the_bytes_the_tick_used_to_send() {
    let mut host = Recorder::default();
    let batches = golden_batch(&mut host);
    assert_eq!(batches.len(), 1);
    let hex: String = batches[0].message.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, GOLDEN.trim());
    // And decoded with the proto types: the reporter, five calls, each field where it belongs.
    let decoded = decode(&batches[0]);
    assert_eq!(decoded.reporter, "grayscope/7");
    assert_eq!(decoded.calls.len(), 5);
    let first = &decoded.calls[0];
    assert_eq!(
        (first.rpc_method.as_str(), first.tenant.as_str(), first.status.as_str()),
        ("shop.v1.Orders/Get", "t_5bc1a08d28e40fe7", "NOT_FOUND")
    );
    let peer = first.upstream_peer.as_ref().unwrap();
    assert_eq!((peer.address.as_str(), peer.port), ("/var/run/agent.sock", 0));
    let cut = &decoded.calls[1];
    assert_eq!(cut.rpc_method.len(), MAX_FIELD_BYTES);
    assert_eq!(cut.rpc_method, format!("{}/{TRUNCATED}", "s".repeat(1020)));
    assert!(decoded.calls[2].http_route.ends_with(TRUNCATED));
    assert!(decoded.calls[2].http_route.len() <= MAX_FIELD_BYTES);
    assert_eq!(decoded.calls[3].tenant, "other");
    assert_eq!(host.value(TRUNCATED_FIELDS), 3);
}

#[test]
fn a_record_carries_the_addresses_its_direction_is_joined_and_named_by() {
    let a = |client, server, upstream_local, upstream_peer| Addresses {
        client,
        server,
        upstream_local,
        upstream_peer,
    };
    // Outbound: the join's client -> server, and the upstream host as the peer.
    assert_eq!(Addresses::of(Side::Outbound), a(true, true, false, true));
    // Inbound: the join's upstream_peer -> upstream_local, and the downstream client as the peer.
    assert_eq!(Addresses::of(Side::Inbound), a(true, false, true, true));
    // Unspecified: the agent tries both joins.
    assert_eq!(Addresses::of(Side::Unspecified), a(true, true, true, true));
}

/// The defaults carry more than an Envoy worker serves: a tick (at most every 200 ms) hands out `max_in_flight`
/// full batches, 4 × 1,024 records, so one VM reports up to 20,480 records a second without dropping any.
#[test]
fn the_defaults_send_twenty_thousand_records_a_second_per_vm() {
    let mut host = Recorder::default();
    let mut r = Reporter::new(ReportConfig::default(), "test".into(), &mut host).unwrap();
    let (mut sent, mut token) = (0, 0);
    // One second at 20,480 calls/s: five ticks of 200 ms, each after 4,096 calls, every call answered in time.
    for _ in 0..5 {
        for n in 0..4096 {
            r.push(rec(n));
        }
        for batch in ticked(&mut r, &mut host, 200) {
            token += 1;
            r.dispatched(token, batch.records);
            sent += batch.records;
            let (records, result) = r.completed(&mut host, token, 0);
            assert!(result.is_ok());
            assert_eq!(records, 1024);
        }
    }
    assert_eq!(sent, 5 * 4096);
    assert_accounted(&mut host, &mut r);
    let v = |o: &str| host.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", o)]));
    assert_eq!((v("produced"), v("sent"), v("dropped")), (20480, 20480, 0));
}

#[test]
fn the_tick_divides_the_flush_interval() {
    let tick = |flush_interval_ms| {
        ReportConfig {
            flush_interval_ms,
            ..ReportConfig::default()
        }
        .tick_ms()
    };
    assert_eq!(tick(1000), 200);
    assert_eq!(tick(200), 200);
    assert_eq!(tick(50), 50);
    assert_eq!(tick(250), 125);
    assert_eq!(tick(500), 167);
    assert_eq!(tick(0), 1);
    // The partial batch leaves at the first tick at or past the interval: within a tick's rounding of it.
    for flush_interval_ms in [1, 10, 199, 201, 250, 333, 500, 999, 1000, 1234, 60_000] {
        let cfg = ReportConfig {
            flush_interval_ms,
            ..ReportConfig::default()
        };
        let t = cfg.tick_ms();
        assert!((1..=MAX_TICK_MS).contains(&t), "{flush_interval_ms}: {t}");
        let ticks = flush_interval_ms.max(1).div_ceil(t);
        assert!(
            ticks * t - flush_interval_ms.max(1) < ticks,
            "{flush_interval_ms}: {ticks} ticks of {t}"
        );
    }
}

#[test]
fn a_partial_batch_leaves_at_the_flush_interval_not_the_next_multiple_of_the_tick() {
    let cfg = ReportConfig {
        flush_interval_ms: 250,
        ..ReportConfig::default()
    };
    let tick = cfg.tick_ms();
    let mut host = Recorder::default();
    let mut r = Reporter::new(cfg, "test".into(), &mut host).unwrap();
    r.push(rec(0));
    let mut elapsed = 0;
    while ticked(&mut r, &mut host, tick).is_empty() {
        elapsed += tick;
        assert!(elapsed < 1000, "never flushed");
    }
    assert_eq!(elapsed + tick, 250);
}

/// Shared data as Envoy keeps it: one map, a CAS token per write (never 0), 0 in a write meaning unconditional.
#[derive(Default)]
struct Shared {
    value: Option<(Vec<u8>, u32)>,
    next_cas: u32,
    /// Writes to refuse with a CAS mismatch (another root's write came first).
    lose: usize,
    gets: usize,
    sets: usize,
}

impl registry::SharedData for Shared {
    type Error = String;
    fn get(&mut self, _key: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
        self.gets += 1;
        Ok(self.value.clone())
    }
    fn set(&mut self, _key: &str, value: &[u8], cas: u32) -> Result<bool, String> {
        self.sets += 1;
        if self.lose > 0 {
            self.lose -= 1;
            return Ok(false);
        }
        if cas != 0 && self.value.as_ref().is_some_and(|(_, c)| *c != cas) {
            return Ok(false);
        }
        self.next_cas += 1;
        self.value = Some((value.to_vec(), self.next_cas));
        Ok(true)
    }
}

/// Two roots of one process (one set of metrics, one shared data), each registered.
fn two_roots(host: &mut Recorder) -> (Reporter, Reporter) {
    let mut a = Reporter::new(cfg(100, 1000, 4), "a".into(), host).unwrap();
    let mut b = Reporter::new(cfg(100, 1000, 4), "b".into(), host).unwrap();
    a.share_registry(1);
    b.share_registry(2);
    (a, b)
}

/// A tick as the wasm root does it: the reporter's tick, then the registry write and the metrics.
fn tick_commit(r: &mut Reporter, host: &mut Recorder, shared: &mut Shared, ms: u64) -> (Vec<Batch>, registry::Synced) {
    let batches = ticked(r, host, ms);
    let synced = r.commit(host, shared, false).unwrap();
    (batches, synced)
}

/// produced == sent + dropped + buffered in the metrics (the process-wide view), and what `buffered` is.
fn process_equation(host: &Recorder) -> u64 {
    let v = |o: &str| host.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", o)]));
    let buffered = host.value(BUFFERED);
    assert_eq!(v("produced"), v("sent") + v("dropped") + buffered);
    buffered
}

#[test]
fn the_share_of_a_root_whose_vm_was_destroyed_is_claimed_once_and_counted_as_dropped() {
    let (mut host, mut shared) = (Recorder::default(), Shared::default());
    let (mut a, mut b) = two_roots(&mut host);
    for n in 0..30 {
        a.push(rec(n));
    }
    tick_commit(&mut a, &mut host, &mut shared, 100);
    tick_commit(&mut b, &mut host, &mut shared, 100);
    assert_eq!(process_equation(&host), 30);
    // A's VM is destroyed: no drain, no more ticks. B claims A's share only past A's bound, once.
    drop(a);
    let bound = cfg(100, 1000, 4).timeout_ms + DEADLINE_GRACE_MS + 10 * 200;
    let mut waited = 0;
    let mut claimed = 0;
    while waited <= bound + 200 {
        let (_, synced) = tick_commit(&mut b, &mut host, &mut shared, 200);
        waited += 200;
        if synced.roots_claimed > 0 {
            assert!(waited > bound, "claimed after {waited} ms, bound {bound}");
            claimed += synced.orphans_claimed;
        }
    }
    assert_eq!(claimed, 30);
    assert_eq!(process_equation(&host), 0);
    assert_eq!(
        host.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", "dropped")])),
        30
    );
    // Much later: nothing is claimed again, and the marker is eventually pruned.
    for _ in 0..(registry::MARKER_LIFE_MS / 200 + 2) {
        tick_commit(&mut b, &mut host, &mut shared, 200);
    }
    assert_eq!(process_equation(&host), 0);
    let entries = registry::decode(&shared.value.as_ref().unwrap().0).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.owner).collect::<Vec<_>>(),
        [2],
        "only B's entry is left"
    );
}

#[test]
fn a_root_that_drains_and_leaves_is_never_claimed() {
    let (mut host, mut shared) = (Recorder::default(), Shared::default());
    let (mut a, mut b) = two_roots(&mut host);
    for n in 0..10 {
        a.push(rec(n));
    }
    tick_commit(&mut a, &mut host, &mut shared, 100);
    tick_commit(&mut b, &mut host, &mut shared, 100);
    // A's plugin is done: it drains, its call is answered, it removes its entry.
    let (batches, _) = a.drain(&mut host);
    a.commit(&mut host, &mut shared, false).unwrap();
    a.dispatched(7, batches.iter().map(|b| b.records).sum());
    let _ = a.completed(&mut host, 7, 0);
    assert!(a.is_idle());
    a.commit(&mut host, &mut shared, true).unwrap();
    drop(a);
    for _ in 0..100 {
        let (_, synced) = tick_commit(&mut b, &mut host, &mut shared, 200);
        assert_eq!(synced.roots_claimed, 0);
    }
    assert_eq!(process_equation(&host), 0);
    assert_eq!(
        host.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", "sent")])),
        10
    );
    assert_eq!(
        host.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", "dropped")])),
        0
    );
}

#[test]
fn a_root_claimed_while_stalled_does_not_count_its_records_again() {
    let (mut host, mut shared) = (Recorder::default(), Shared::default());
    let (_, mut b) = two_roots(&mut host);
    let mut a = Reporter::new(cfg(10, 1000, 4), "a".into(), &mut host).unwrap();
    a.share_registry(1);
    for n in 0..20 {
        a.push(rec(n));
    }
    // 20 records in flight in two calls, all written to the registry.
    tick_commit(&mut a, &mut host, &mut shared, 100);
    a.dispatched(1, 10);
    a.dispatched(2, 10);
    tick_commit(&mut b, &mut host, &mut shared, 100);
    // A stalls (no tick) while B claims it; meanwhile one of A's calls is answered, and A takes a new record.
    let mut claimed = 0;
    for _ in 0..60 {
        claimed += tick_commit(&mut b, &mut host, &mut shared, 200).1.orphans_claimed;
    }
    assert_eq!(claimed, 20);
    let _ = a.completed(&mut host, 1, 0);
    a.push(rec(99));
    // A resumes: it finds the marker; the other call is answered, the new record goes and is answered.
    let (_, synced) = tick_commit(&mut a, &mut host, &mut shared, 200);
    assert_eq!(synced.own_share_claimed, Some(20));
    assert_eq!(process_equation(&host), 1, "only the new record is still buffered");
    let _ = a.completed(&mut host, 2, 0);
    let (batches, _) = a.drain(&mut host);
    a.commit(&mut host, &mut shared, false).unwrap();
    assert_eq!(batches.iter().map(|b| b.records).sum::<usize>(), 1);
    a.dispatched(3, 1);
    let _ = a.completed(&mut host, 3, 0);
    a.commit(&mut host, &mut shared, true).unwrap();
    assert_eq!(process_equation(&host), 0);
    let v = |o: &str| host.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", o)]));
    assert_eq!((v("produced"), v("sent"), v("dropped")), (21, 1, 20));
}

#[test]
fn an_entry_lost_to_the_keys_creation_is_written_again_and_nothing_is_counted() {
    let (mut host, mut shared) = (Recorder::default(), Shared::default());
    let (mut a, mut b) = two_roots(&mut host);
    for n in 0..5 {
        a.push(rec(n));
    }
    tick_commit(&mut a, &mut host, &mut shared, 100);
    // Another root that had read no key writes its own registry unconditionally: A's entry is gone, no marker.
    shared.value = Some((registry::encode(&[]), 99));
    for _ in 0..60 {
        tick_commit(&mut a, &mut host, &mut shared, 200);
        assert_eq!(tick_commit(&mut b, &mut host, &mut shared, 200).1.roots_claimed, 0);
    }
    assert_eq!(process_equation(&host), 5);
    let v = |o: &str| host.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", o)]));
    assert_eq!(v("dropped"), 0);
}

#[test]
fn a_lost_write_publishes_nothing_and_a_tick_costs_two_shared_data_hostcalls() {
    let (mut host, mut shared) = (Recorder::default(), Shared::default());
    let (mut a, _b) = two_roots(&mut host);
    a.push(rec(0));
    shared.lose = registry::ATTEMPTS;
    ticked(&mut a, &mut host, 100);
    assert!(a.commit(&mut host, &mut shared, false).is_err(), "every attempt lost");
    assert_eq!(
        host.value(BUFFERED),
        0,
        "nothing published: the gauge never holds a share the registry does not"
    );
    let v = |o: &str| host.value(&crate::metrics::stat_name(PRODUCED, &[("outcome", o)]));
    assert_eq!(v("produced"), 0);
    let (gets, sets) = (shared.gets, shared.sets);
    tick_commit(&mut a, &mut host, &mut shared, 100);
    assert_eq!(
        (shared.gets - gets, shared.sets - sets),
        (1, 1),
        "one read and one write per tick"
    );
    assert_eq!(process_equation(&host), 1);
}
