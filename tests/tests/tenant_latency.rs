//! The tenant dimension through the real Envoy (and the real agent for the records): one latency histogram per
//! interface × bounded tenant label, the cap and `other`, refused ids, and no raw tenant id anywhere the filter
//! writes: not in `/stats/prometheus`, not in the filter's log (at debug level), not in the records the agent gets.
//! The tenant header and baggage reach the upstream exactly as sent.

use std::{collections::BTreeMap, time::Duration};

use integration_tests::{
    agent::{privileged, runtime, Agent},
    client::Client,
    prom,
    stack::Stack,
};
use proto::v1::WatchRequest;
use wasm_filter_core::tenant::{hashed_label, HashKey};

const KEY: &str = "k3y-for-the-tenant-hash-0123456789";
/// The raw ids; none of them may leave the filter.
const ACME: &str = "acme-corp-7731";
const INITECH: &str = "initech-5521";
const GLOBEX: &str = "globex-0042";
const UMBRELLA: &str = "umbrella-3310";
const HOSTILE: &str = "hostile;id=9931 <x>";

/// Buckets of the test bootstrap (`tests/fixtures/envoy/grayscope.yaml`), as Envoy prints them.
const BUCKETS: [&str; 28] = [
    "0.5", "1", "2", "3", "4", "5", "7", "10", "15", "20", "25", "30", "40", "50", "75", "100", "150", "200", "250",
    "300", "400", "500", "750", "1000", "2500", "5000", "10000", "+Inf",
];

fn config() -> String {
    format!(
        r#"{{"routes":[{{"template":"/api/v1/orders/{{id}}","method":"GET"}}],"service":"orders",
            "report":{{"flush_interval_ms":50}},
            "tenant":{{"header":"x-tenant-id","baggage_key":"tenant.id","tenants":{{"{ACME}":"enterprise"}},
                       "tier_header":"x-tenant-tier","max_tenants":2,"hash_key":"{KEY}"}}}}"#
    )
}

/// A request: its `x-test-id` and its headers.
type Request<'a> = (&'a str, Vec<(&'a str, &'a [u8])>);

fn series(metric: &str, tenant: &str, extra: &str) -> String {
    format!(
        "grayscope_tenant_call_duration_milliseconds_{metric}{{direction=\"inbound\",rpc_system=\"http\",\
         service=\"orders\",method=\"GET /api/v1/orders/{{id}}\",tenant=\"{tenant}\"{extra}}}"
    )
}

fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{series} ")))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"));
    line[series.len()..].trim().parse().expect("value")
}

#[test]
fn tenants_get_bounded_labels_one_observation_per_call_and_no_raw_id_leaks() {
    if !privileged() {
        return;
    }
    // The filter's own log at debug level (Envoy's `http` debug log prints every request header, tenant ones
    // included, which is Envoy's choice, not the filter's; only the filter's components are raised here).
    let s = Stack::start_with_envoy_args(
        &config(),
        &["--component-log-level", "wasm:debug,dynamic_modules:debug"],
    );
    let agent = Agent::start(&s.agent_socket, &[]);
    let rt = runtime();
    let mut watch = rt.block_on(async {
        let request = WatchRequest::default();
        agent.client().await.watch(request).await.expect("watch").into_inner()
    });
    let key = HashKey::new(KEY.as_bytes()).expect("key");
    let globex = hashed_label(Some(&key), GLOBEX);

    let mut c = Client::new(s.envoy.listener("ingress"));
    let long = "l".repeat(200);
    let baggage = format!("tenant.id={GLOBEX},gray.version=v2");
    let requests: Vec<Request<'_>> = vec![
        // Allowlisted, 60 ms slower than the rest (the upstream waits).
        (
            "a1",
            vec![("x-tenant-id", ACME.as_bytes()), ("x-respond-delay-ms", b"60")],
        ),
        (
            "a2",
            vec![("x-tenant-id", ACME.as_bytes()), ("x-respond-delay-ms", b"60")],
        ),
        (
            "a3",
            vec![("x-tenant-id", ACME.as_bytes()), ("x-respond-delay-ms", b"60")],
        ),
        // Outside the allowlist, labelled by its tier.
        (
            "i1",
            vec![("x-tenant-id", INITECH.as_bytes()), ("x-tenant-tier", b"free")],
        ),
        (
            "i2",
            vec![("x-tenant-id", INITECH.as_bytes()), ("x-tenant-tier", b"free")],
        ),
        // By baggage only, hashed under the key.
        ("g1", vec![("baggage", baggage.as_bytes())]),
        ("g2", vec![("baggage", baggage.as_bytes())]),
        // Past max_tenants (2: `free` and the hash): `other`.
        ("u1", vec![("x-tenant-id", UMBRELLA.as_bytes())]),
        // No tenant, a hostile id, an overlong one.
        ("n1", vec![]),
        ("h1", vec![("x-tenant-id", HOSTILE.as_bytes())]),
        ("h2", vec![("x-tenant-id", long.as_bytes())]),
    ];
    for (id, headers) in &requests {
        let mut headers = headers.clone();
        headers.push(("x-test-id", id.as_bytes()));
        assert_eq!(c.get(&format!("/api/v1/orders/{id}"), &headers).status, 200, "{id}");
    }

    // The upstream received the tenant headers and baggage as sent.
    assert_eq!(s.http.request("a1").all("x-tenant-id"), [ACME]);
    assert_eq!(s.http.request("i1").all("x-tenant-tier"), ["free"]);
    assert_eq!(s.http.request("h1").all("x-tenant-id"), [HOSTILE]);
    assert_eq!(s.http.request("g1").all("baggage"), [baggage.as_str()]);

    let text = s.envoy.prometheus();
    let want: [(&str, u64); 6] = [
        ("enterprise", 3),
        ("free", 2),
        (&globex, 2),
        ("other", 1),
        ("none", 1),
        ("invalid", 2),
    ];
    for (tenant, n) in want {
        prom::assert_line(&text, &format!("{} {n}", series("count", tenant, "")));
        prom::assert_line(&text, &format!("{} {n}", series("bucket", tenant, ",le=\"+Inf\"")));
        // Every configured bucket is there, cumulative, and the histogram is the one configured.
        let les: Vec<f64> = BUCKETS
            .iter()
            .map(|le| value(&text, &series("bucket", tenant, &format!(",le=\"{le}\""))))
            .collect();
        assert!(les.windows(2).all(|w| w[0] <= w[1]), "{tenant}: {les:?}");
    }
    // The slow tenant's calls all took 60 ms or more: none at or below 50 ms, and the sum says as much.
    prom::assert_line(&text, &format!("{} 0", series("bucket", "enterprise", ",le=\"50\"")));
    assert!(value(&text, &series("sum", "enterprise", "")) >= 180.0);
    // Exact sums: one observation per call, as many as the interface counter counted.
    let observed = prom::sum(&text, "grayscope_tenant_call_duration_milliseconds_count");
    assert_eq!(observed, requests.len() as f64);
    assert_eq!(observed, prom::sum(&text, "grayscope_interface_calls_total"));
    prom::assert_line(&text, "grayscope_tenant_overflow_total{} 1");
    prom::assert_line(
        &text,
        "grayscope_tenant_invalid_total{source=\"header\",reason=\"bad_char\"} 1",
    );
    prom::assert_line(
        &text,
        "grayscope_tenant_invalid_total{source=\"header\",reason=\"too_long\"} 1",
    );

    // The records the agent received carry the bounded labels, never an id.
    let mut labels = BTreeMap::new();
    let records: Vec<String> = rt.block_on(async {
        let mut out = Vec::new();
        while out.len() < requests.len() {
            let msg = tokio::time::timeout(Duration::from_secs(30), watch.message())
                .await
                .expect("every call reaches the watcher")
                .expect("watch stream")
                .expect("a message");
            if let Some(call) = msg.call.and_then(|c| c.call) {
                *labels.entry(call.tenant.clone()).or_insert(0) += 1;
                out.push(format!("{call:?}"));
            }
        }
        out
    });
    let want_labels: BTreeMap<String, u64> = want.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect();
    assert_eq!(labels, want_labels);

    let prometheus = s.envoy.admin_get("/stats/prometheus");
    let log = s.envoy.log();
    let agent_log = agent.log();
    for raw in [ACME, INITECH, GLOBEX, UMBRELLA, "hostile", long.as_str()] {
        assert!(!prometheus.contains(raw), "{raw} in /stats/prometheus");
        assert!(!log.contains(raw), "{raw} in Envoy's log:\n{log}");
        assert!(!agent_log.contains(raw), "{raw} in the agent's log");
        for r in &records {
            assert!(!r.contains(raw), "{raw} in a record: {r}");
        }
    }
    // The key is no more printed than the ids; the configuration line says what is on by names and counts.
    assert!(!log.contains(KEY), "the hash key in Envoy's log");
    assert!(
        log.contains(
            "tenant dimension on: header \"x-tenant-id\", baggage key \"tenant.id\", 1 allowlisted ids, \
             tier header \"x-tenant-tier\", max_tenants 2, hash HMAC-SHA-256 (keyed)"
        ),
        "{log}"
    );
}

#[test]
fn off_by_default_no_tenant_series() {
    let s = Stack::start(r#"{"service":"orders"}"#);
    let mut c = Client::new(s.envoy.listener("ingress"));
    assert_eq!(
        c.get("/api/v1/orders/1", &[("x-tenant-id", ACME.as_bytes())]).status,
        200
    );
    let text = s.envoy.prometheus();
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 1.0);
    assert!(!text.contains("grayscope_tenant_"), "{text}");
    assert!(!text.contains(ACME));
}

#[test]
fn a_bad_tenant_section_is_refused_with_the_field_named() {
    Stack::refused(
        r#"{"tenant":{"header":"x-tenant-id","max_tenants":0}}"#,
        "tenant.max_tenants: must be between 1 and 1000, got 0",
    );
    let (line, log) = Stack::refused(
        r#"{"tenant":{"header":"x-tenant-id","hash_key":"tooshort"}}"#,
        "tenant.hash_key: must be 16 to 1024 bytes",
    );
    assert!(line.contains("got 8 bytes"), "{line}");
    assert!(!log.contains("tooshort"), "the key in Envoy's log:\n{log}");
}

#[test]
fn a_flood_of_distinct_ids_stays_within_the_cap_with_an_exact_sum() {
    let s = Stack::start(
        r#"{"service":"orders","report":{"enabled":false},"tenant":{"header":"x-tenant-id","max_tenants":4}}"#,
    );
    let mut c = Client::new(s.envoy.listener("ingress"));
    for n in 0..500 {
        let id = format!("flood-tenant-{n}");
        assert_eq!(c.get("/api/v1/orders/1", &[("x-tenant-id", id.as_bytes())]).status, 200);
    }
    let text = s.envoy.prometheus();
    let counts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("grayscope_tenant_call_duration_milliseconds_count{"))
        .collect();
    // The first four ids keep their hashed label, the 496 others are `other`.
    assert_eq!(counts.len(), 5, "{counts:#?}");
    for n in 0..4 {
        let label = hashed_label(None, &format!("flood-tenant-{n}"));
        prom::assert_line(
            &text,
            &format!(
                "grayscope_tenant_call_duration_milliseconds_count{{direction=\"inbound\",rpc_system=\"http\",\
                 service=\"orders\",method=\"GET /api/v1/orders/{{id}}\",tenant=\"{label}\"}} 1"
            ),
        );
    }
    prom::assert_line(
        &text,
        "grayscope_tenant_call_duration_milliseconds_count{direction=\"inbound\",rpc_system=\"http\",\
         service=\"orders\",method=\"GET /api/v1/orders/{id}\",tenant=\"other\"} 496",
    );
    prom::assert_line(&text, "grayscope_tenant_overflow_total{} 496");
    assert!(!text.contains("flood-tenant"));
}
