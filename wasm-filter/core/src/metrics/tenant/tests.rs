use crate::{
    config::{self, Config},
    interface::Interface,
    metrics::{tests::Recorder, Call, Metrics, Side, CALLS},
    status::Status,
    tenant::{hashed_label, Invalid, Source, Tenant},
};

use super::*;

fn cfg(max_tenants: usize) -> Config {
    config::parse(
        format!(
            r#"{{"tenant":{{"header":"x-tenant-id","tenants":{{"acme":"enterprise","umbrella":"enterprise"}},
                "max_tenants":{max_tenants}}}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn hashed(id: &str) -> Tenant {
    Tenant::Hashed(crate::tenant::digest(None, id.as_bytes()))
}

fn grpc() -> Interface {
    Interface::Grpc {
        service: "shop.v1.Orders".into(),
        method: "Get".into(),
    }
}

fn observe(
    m: &mut Metrics,
    host: &mut Recorder,
    iface: &Interface,
    tenant: Option<&Tenant>,
    ms: u64,
) -> Option<String> {
    let call = Call {
        side: Side::Inbound,
        interface: iface,
        http_service: "web",
        version: None,
        status: Status::grpc(Some(0), Some(200)),
        duration_ms: ms,
        tenant,
    };
    m.call(host, &call).unwrap().map(|l| l.to_string())
}

fn series(tenant: &str) -> String {
    format!(
        "direction=.=inbound;.;rpc_system=.=grpc;.;service=.=shop.v1.Orders;.;method=.=Get;.;tenant=.={tenant};.;\
         {TENANT_DURATION}"
    )
}

#[test]
fn one_observation_per_call_under_its_bounded_label() {
    let mut host = Recorder::default();
    let c = cfg(2);
    let mut m = Metrics::new(&c, &mut host).unwrap();
    let iface = grpc();
    let calls: Vec<(Tenant, u64)> = vec![
        (Tenant::Allowed("enterprise".into()), 3),
        (Tenant::Allowed("enterprise".into()), 4),
        (Tenant::Tier("free".into()), 41),
        (hashed("globex"), 1),
        // Past the cap of 2: a new hash and a new tier go to `other`; labels already seen keep theirs.
        (hashed("initech"), 2),
        (Tenant::Tier("gold".into()), 5),
        (hashed("globex"), 6),
        (Tenant::None, 0),
        (Tenant::Invalid, 9),
    ];
    let mut labels = Vec::new();
    for (t, ms) in &calls {
        labels.push(observe(&mut m, &mut host, &iface, Some(t), *ms).unwrap());
    }
    let g = hashed_label(None, "globex");
    assert_eq!(
        labels,
        [
            "enterprise",
            "enterprise",
            "free",
            &g,
            "other",
            "other",
            &g,
            "none",
            "invalid"
        ]
    );
    assert_eq!(host.samples_of(TENANT_DURATION), {
        let mut v = vec![
            (series("enterprise"), vec![3, 4]),
            (series("free"), vec![41]),
            (series(&g), vec![1, 6]),
            (series("other"), vec![2, 5]),
            (series("none"), vec![0]),
            (series("invalid"), vec![9]),
        ];
        v.sort();
        v
    });
    assert_eq!(host.value(TENANT_OVERFLOW), 2);
    // Exact sums: as many observations as calls counted.
    let observed: usize = host.samples_of(TENANT_DURATION).iter().map(|(_, s)| s.len()).sum();
    assert_eq!(observed as u64, host.sum_of(CALLS));
    assert_eq!(observed, calls.len());
}

#[test]
fn allowlisted_labels_are_never_pushed_out_by_the_cap() {
    let mut host = Recorder::default();
    let mut m = Metrics::new(&cfg(1), &mut host).unwrap();
    let iface = grpc();
    for id in ["a", "b", "c", "d"] {
        observe(&mut m, &mut host, &iface, Some(&hashed(id)), 1);
    }
    let label = observe(
        &mut m,
        &mut host,
        &iface,
        Some(&Tenant::Allowed("enterprise".into())),
        1,
    );
    assert_eq!(label.as_deref(), Some("enterprise"));
    assert_eq!(host.value(TENANT_OVERFLOW), 3);
    // a, other, enterprise.
    assert_eq!(host.series_of(TENANT_DURATION), 3);
}

#[test]
fn off_means_no_tenant_metric_at_all() {
    let mut host = Recorder::default();
    let mut m = Metrics::new(&Config::default(), &mut host).unwrap();
    let iface = grpc();
    assert_eq!(observe(&mut m, &mut host, &iface, None, 1), None);
    // Even a tenant handed in by mistake is not observed without the configuration.
    assert_eq!(observe(&mut m, &mut host, &iface, Some(&hashed("x")), 1), None);
    assert_eq!(host.series_of(TENANT_DURATION), 0);
    assert_eq!(host.series_of(TENANT_INVALID), 0);
    assert_eq!(host.series_of(TENANT_OVERFLOW), 0);
    m.tenant_invalid(&mut host, Source::Header, Invalid::BadChar).unwrap();
}

#[test]
fn invalid_counters_exist_from_the_start_and_count_by_source_and_reason() {
    let mut host = Recorder::default();
    let m = Metrics::new(&cfg(4), &mut host).unwrap();
    let name = |s: &str, r: &str| format!("source=.={s};.;reason=.={r};.;{TENANT_INVALID}");
    assert_eq!(host.series_of(TENANT_INVALID), Source::ALL.len() * Invalid::ALL.len());
    assert_eq!(host.value(&name("header", "bad_char")), 0);
    m.tenant_invalid(&mut host, Source::Header, Invalid::BadChar).unwrap();
    m.tenant_invalid(&mut host, Source::TierHeader, Invalid::Reserved)
        .unwrap();
    assert_eq!(host.value(&name("header", "bad_char")), 1);
    assert_eq!(host.value(&name("tier_header", "reserved")), 1);
    assert_eq!(host.value(TENANT_OVERFLOW), 0);
}

#[test]
fn calls_past_the_interface_cap_are_observed_under_the_other_interface() {
    let mut host = Recorder::default();
    let c = config::parse(br#"{"max_interfaces":1,"tenant":{"header":"x-tenant-id"}}"#).unwrap();
    let mut m = Metrics::new(&c, &mut host).unwrap();
    let other = Interface::Grpc {
        service: "shop.v1.Carts".into(),
        method: "Add".into(),
    };
    let t = Tenant::Tier("free".into());
    observe(&mut m, &mut host, &grpc(), Some(&t), 1);
    observe(&mut m, &mut host, &other, Some(&t), 2);
    let want = format!(
        "direction=.=inbound;.;rpc_system=.=grpc;.;service=.=other;.;method=.=other;.;tenant=.=free;.;{TENANT_DURATION}"
    );
    assert_eq!(
        host.samples_of(TENANT_DURATION),
        vec![(want, vec![2]), (series("free"), vec![1])]
    );
    assert_eq!(host.sum_of(CALLS), 2);
}
