//! How many metric hostcalls the core asks of its host per request, counted by a host that only counts.
//!
//! Each hostcall crosses the V8 boundary in the wasm build (and enters Envoy's stats in the native one), and the
//! cost breakdown in `bench/RESULTS.md` shows the crossings, not the core's logic, dominate the filter's cost.
//! These counts are the core's share of the per-request hostcalls; the shells' share (header map, filter state,
//! properties or attributes) is listed in `bench/RESULTS.md`, "Cost cuts". A change that adds a metric hostcall
//! to the request path fails here first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use wasm_filter_core::{
    config,
    interface::Interface,
    metrics::{Call, Dropped, Kind, MetricHost, Metrics, Side},
    status::Status,
};

/// Counts each kind of hostcall; ids are handed out in order.
#[derive(Default, Debug, PartialEq)]
struct Counting {
    define: usize,
    increment: usize,
    record: usize,
    add: usize,
}

impl MetricHost for Counting {
    type Error = String;
    fn define(&mut self, _kind: Kind, _name: &str) -> Result<u32, String> {
        self.define += 1;
        Ok(u32::try_from(self.define).unwrap())
    }
    fn increment(&mut self, _id: u32, _by: u64) -> Result<(), String> {
        self.increment += 1;
        Ok(())
    }
    fn record(&mut self, _id: u32, _value: u64) -> Result<(), String> {
        self.record += 1;
        Ok(())
    }
    fn add(&mut self, _id: u32, _delta: i64) -> Result<(), String> {
        self.add += 1;
        Ok(())
    }
}

fn http(route: &str) -> Interface {
    Interface::Http {
        verb: "GET",
        route: route.to_owned(),
    }
}

#[test]
fn a_counted_call_costs_one_increment_and_one_record_once_its_series_exist() {
    let cfg = config::parse(b"{}").unwrap();
    let mut host = Counting::default();
    let mut metrics = Metrics::new(&cfg, &mut host).unwrap();
    let interface = http("/x");
    let call = Call {
        side: Side::Inbound,
        interface: &interface,
        http_service: "backend",
        version: None,
        status: Status::http(Some(200)),
        duration_ms: 3,
        // The tenant dimension off (the default): it must add no hostcall.
        tenant: None,
    };
    // The first call of a series defines its counter and histogram.
    host = Counting::default();
    metrics.call(&mut host, &call).unwrap();
    let first = Counting {
        define: 2,
        increment: 1,
        record: 1,
        add: 0,
    };
    assert_eq!(host, first);
    // Every later call of the same series: one increment, one record, nothing else.
    for _ in 0..100 {
        host = Counting::default();
        metrics.call(&mut host, &call).unwrap();
        assert_eq!(
            host,
            Counting {
                define: 0,
                increment: 1,
                record: 1,
                add: 0
            }
        );
    }
}

#[test]
fn request_headers_with_nothing_to_count_cost_no_metric_hostcall() {
    let cfg = config::parse(b"{}").unwrap();
    let mut host = Counting::default();
    let metrics = Metrics::new(&cfg, &mut host).unwrap();
    host = Counting::default();
    // What both shells do on the request headers of a plain request: no invalid version, no baggage dropped.
    metrics.baggage_dropped(&mut host, Dropped::Malformed, 0).unwrap();
    metrics.baggage_dropped(&mut host, Dropped::OverLimit, 0).unwrap();
    assert_eq!(host, Counting::default());
}
