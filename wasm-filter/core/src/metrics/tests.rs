use std::collections::HashMap;

use super::*;
use crate::config;

/// Stands in for Envoy's metric store: names by id, counter values and recorded samples.
#[derive(Default)]
pub(crate) struct Recorder {
    names: Vec<(Kind, String)>,
    values: HashMap<u32, u64>,
    samples: HashMap<u32, Vec<u64>>,
}

impl MetricHost for Recorder {
    type Error = String;
    fn define(&mut self, kind: Kind, name: &str) -> Result<u32, String> {
        if let Some(i) = self.names.iter().position(|(k, n)| *k == kind && n == name) {
            return Ok(i as u32);
        }
        self.names.push((kind, name.to_owned()));
        Ok(self.names.len() as u32 - 1)
    }
    fn increment(&mut self, id: u32, by: u64) -> Result<(), String> {
        *self.values.entry(id).or_default() += by;
        Ok(())
    }
    fn record(&mut self, id: u32, value: u64) -> Result<(), String> {
        self.samples.entry(id).or_default().push(value);
        Ok(())
    }
    fn add(&mut self, id: u32, delta: i64) -> Result<(), String> {
        let v = self.values.entry(id).or_default();
        *v = v.checked_add_signed(delta).ok_or("gauge below zero")?;
        Ok(())
    }
}

impl Recorder {
    /// The samples recorded in every series of `metric`, by series name.
    pub(crate) fn samples_of(&self, metric: &str) -> Vec<(String, Vec<u64>)> {
        let mut out: Vec<(String, Vec<u64>)> = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, (k, n))| *k == Kind::Histogram && n.ends_with(metric))
            .map(|(i, (_, n))| (n.clone(), self.samples.get(&(i as u32)).cloned().unwrap_or_default()))
            .collect();
        out.sort();
        out
    }
    pub(crate) fn value(&self, name: &str) -> u64 {
        let id = self
            .names
            .iter()
            .position(|(_, n)| n == name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        self.values.get(&(id as u32)).copied().unwrap_or(0)
    }
    pub(crate) fn sum_of(&self, metric: &str) -> u64 {
        self.names
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| n.ends_with(metric))
            .map(|(i, _)| self.values.get(&(i as u32)).copied().unwrap_or(0))
            .sum()
    }
    pub(crate) fn series_of(&self, metric: &str) -> usize {
        self.names.iter().filter(|(_, n)| n.ends_with(metric)).count()
    }
}

fn grpc(service: &str, method: &str) -> Interface {
    Interface::Grpc {
        service: service.into(),
        method: method.into(),
    }
}

fn call<'a>(iface: &'a Interface, version: Option<&'a str>, status: Status) -> Call<'a> {
    Call {
        side: Side::Inbound,
        interface: iface,
        http_service: "web",
        version,
        status,
        duration_ms: 7,
        tenant: None,
    }
}

#[test]
fn stat_names_follow_istio_tag_encoding() {
    assert_eq!(
        stat_name(
            CALLS,
            &[("direction", "inbound"), ("method", "GET /api/v1/orders/{id}")]
        ),
        "direction=.=inbound;.;method=.=GET /api/v1/orders/{id};.;grayscope_interface_calls_total"
    );
}

#[test]
fn escaping_touches_only_what_would_break_a_segment() {
    let esc = |v: &str| {
        let mut s = String::new();
        escape(v, &mut s);
        s
    };
    assert_eq!(esc("pkg.v1.Svc"), "pkg.v1.Svc");
    assert_eq!(esc("a;b c/{d}%"), "a;b c/{d}%");
    assert_eq!(esc("a;."), "a%3B.");
    assert_eq!(esc("a;.;b"), "a%3B.;b");
    assert_eq!(esc("x=.=y"), "x%3D.=y");
    assert_eq!(esc("a=b;"), "a=b;");
    assert_eq!(esc("l1\nl2\t\x7f"), "l1%0Al2%09%7F");
    assert_eq!(esc("ü"), "ü");
}

#[test]
fn a_call_counts_once_and_records_its_duration() {
    let mut host = Recorder::default();
    let mut m = Metrics::new(&Config::default(), &mut host).unwrap();
    let i = grpc("shop.v1.Orders", "Get");
    m.call(&mut host, &call(&i, Some("v2"), Status::Grpc(0))).unwrap();
    m.call(&mut host, &call(&i, Some("v2"), Status::Grpc(0))).unwrap();
    m.call(&mut host, &call(&i, None, Status::Grpc(5))).unwrap();
    let ok = "direction=.=inbound;.;rpc_system=.=grpc;.;service=.=shop.v1.Orders;.;method=.=Get;.;gray_version=.=v2;.;status=.=OK;.;grayscope_interface_calls_total";
    let nf = "direction=.=inbound;.;rpc_system=.=grpc;.;service=.=shop.v1.Orders;.;method=.=Get;.;gray_version=.=none;.;status=.=NOT_FOUND;.;grayscope_interface_calls_total";
    assert_eq!(host.value(ok), 2);
    assert_eq!(host.value(nf), 1);
    let hist = "direction=.=inbound;.;rpc_system=.=grpc;.;service=.=shop.v1.Orders;.;method=.=Get;.;gray_version=.=v2;.;grayscope_interface_call_duration_milliseconds";
    let id = host
        .names
        .iter()
        .position(|(k, n)| *k == Kind::Histogram && n == hist)
        .unwrap();
    assert_eq!(host.samples[&(id as u32)], vec![7, 7]);
}

#[test]
fn fixed_counters_exist_from_the_start() {
    let mut host = Recorder::default();
    let m = Metrics::new(&Config::default(), &mut host).unwrap();
    assert_eq!(host.value(INTERFACE_OVERFLOW), 0);
    assert_eq!(host.series_of(GRAY_INVALID), Source::ALL.len() * Invalid::ALL.len());
    assert_eq!(host.series_of(GRAY_INVALID), 12);
    m.gray_invalid(&mut host, Source::Header, Invalid::TooLong).unwrap();
    assert_eq!(
        host.value("source=.=header;.;reason=.=too_long;.;grayscope_gray_version_invalid_total"),
        1
    );
    m.baggage_dropped(&mut host, Dropped::OverLimit, 3).unwrap();
    assert_eq!(
        host.value("cause=.=over_limit;.;grayscope_baggage_members_dropped_total"),
        3
    );
}

#[test]
fn interfaces_past_the_cap_count_as_other_and_the_sum_stays_exact() {
    let cfg = config::parse(br#"{"max_interfaces":10}"#).unwrap();
    let mut host = Recorder::default();
    let mut m = Metrics::new(&cfg, &mut host).unwrap();
    for n in 0..1000 {
        let i = Interface::Http {
            verb: "GET",
            route: format!("/p{n}"),
        };
        m.call(&mut host, &call(&i, None, Status::HttpClass(2))).unwrap();
    }
    assert_eq!(host.series_of(CALLS), 11);
    assert_eq!(host.sum_of(CALLS), 1000);
    assert_eq!(host.value(INTERFACE_OVERFLOW), 990);
    let other = "direction=.=inbound;.;rpc_system=.=http;.;service=.=other;.;method=.=other;.;gray_version=.=none;.;status=.=2xx;.;grayscope_interface_calls_total";
    assert_eq!(host.value(other), 990);
}

#[test]
fn versions_are_bounded_by_allowlist_or_cap() {
    let i = grpc("s", "M");
    let mut host = Recorder::default();
    let cfg = config::parse(br#"{"gray":{"allowed_versions":["v1","v2"]}}"#).unwrap();
    let mut m = Metrics::new(&cfg, &mut host).unwrap();
    for v in ["v1", "v2", "v3", "evil"] {
        m.call(&mut host, &call(&i, Some(v), Status::Grpc(0))).unwrap();
    }
    assert!(host
        .names
        .iter()
        .any(|(_, n)| n.contains("gray_version=.=unknown;.;status=.=OK")));
    assert_eq!(host.series_of(CALLS), 3);

    let mut host = Recorder::default();
    let cfg = config::parse(br#"{"gray":{"max_versions":2}}"#).unwrap();
    let mut m = Metrics::new(&cfg, &mut host).unwrap();
    for n in 0..50 {
        m.call(&mut host, &call(&i, Some(&format!("v{n}")), Status::Grpc(0)))
            .unwrap();
    }
    assert_eq!(host.series_of(CALLS), 3);
    assert_eq!(host.sum_of(CALLS), 50);
    assert_eq!(host.value(GRAY_OVERFLOW), 48);
    // The 48 calls past the cap are in the `other` series: the counts above would also hold if they went to
    // another placeholder (`none`, say), which would pass them off as unversioned traffic.
    let other = "direction=.=inbound;.;rpc_system=.=grpc;.;service=.=s;.;method=.=M;.;gray_version=.=other;.;status=.=OK;.;grayscope_interface_calls_total";
    assert_eq!(host.value(other), 48);
}

#[test]
fn side_resolution() {
    assert_eq!(Side::resolve(Direction::Auto, || Some(1)), Side::Inbound);
    assert_eq!(Side::resolve(Direction::Auto, || Some(2)), Side::Outbound);
    assert_eq!(Side::resolve(Direction::Auto, || None), Side::Unspecified);
    assert_eq!(Side::resolve(Direction::Outbound, || Some(1)), Side::Outbound);
}
