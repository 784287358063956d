//! Plain HTTP through the real Envoy: per-route, per-version, per-status counts and latency, the headers the
//! upstream receives, and the filter state an access log reads.

use integration_tests::{client::Client, prom, stack::Stack};

const CONFIG: &str = r#"{"routes":[{"template":"/api/v1/orders/{id}","method":"GET"},{"template":"/v;./{id}"}]}"#;

#[test]
fn http_calls_are_counted_per_route_version_and_status() {
    let s = Stack::start(CONFIG);
    let mut ingress = Client::new(s.envoy.listener("ingress"));
    for n in 0..3 {
        assert_eq!(
            ingress
                .get(&format!("/api/v1/orders/{n}?expand=1"), &[("x-gray-version", b"v2")])
                .status,
            200
        );
    }
    for n in 0..2 {
        assert_eq!(
            ingress
                .get(&format!("/api/v1/orders/{}", 100 + n), &[("x-gray-version", b"v1")])
                .status,
            200
        );
    }
    assert_eq!(ingress.get("/api/v1/orders/7", &[]).status, 200);
    let failed = ingress.get(
        "/api/v1/orders/8",
        &[("x-gray-version", b"v2"), ("x-respond-status", b"503")],
    );
    assert_eq!(failed.status, 503);
    // No template: the normaliser replaces the identifier.
    let mut egress = Client::new(s.envoy.listener("egress"));
    assert_eq!(
        egress
            .get("/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301/cart", &[])
            .status,
        200
    );

    let text = s.envoy.prometheus();
    let calls = |dir: &str, method: &str, version: &str, status: &str, n: u32| {
        format!("grayscope_interface_calls_total{{direction=\"{dir}\",rpc_system=\"http\",service=\"upstream_http\",method=\"{method}\",gray_version=\"{version}\",status=\"{status}\"}} {n}")
    };
    let orders = "GET /api/v1/orders/{id}";
    prom::assert_line(&text, &calls("inbound", orders, "v2", "2xx", 3));
    prom::assert_line(&text, &calls("inbound", orders, "v2", "5xx", 1));
    prom::assert_line(&text, &calls("inbound", orders, "v1", "2xx", 2));
    prom::assert_line(&text, &calls("inbound", orders, "none", "2xx", 1));
    prom::assert_line(&text, &calls("outbound", "GET /users/{id}/cart", "none", "2xx", 1));
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 8.0);
    prom::assert_line(
        &text,
        "grayscope_interface_call_duration_milliseconds_count{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /api/v1/orders/{id}\",gray_version=\"v2\"} 4",
    );
    prom::assert_line(
        &text,
        "grayscope_interface_call_duration_milliseconds_bucket{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /api/v1/orders/{id}\",gray_version=\"v1\",le=\"+Inf\"} 2",
    );

    // The reference parser reads the same values, labels intact.
    let samples = prom::parse(&text);
    let v2_ok = samples
        .iter()
        .find(|x| {
            x.name == "grayscope_interface_calls_total"
                && x.labels["gray_version"] == "v2"
                && x.labels["status"] == "2xx"
                && x.labels["method"] == orders
        })
        .expect("parsed v2 series");
    assert_eq!(v2_ok.value, 3.0);
    assert_eq!(v2_ok.labels["service"], "upstream_http");
}

#[test]
fn the_version_reaches_the_upstream_as_header_and_baggage() {
    let s = Stack::start(CONFIG);
    let mut c = Client::new(s.envoy.listener("ingress"));
    c.get("/a", &[("x-test-id", b"h"), ("x-gray-version", b" v2 ")]);
    c.get(
        "/a",
        &[("x-test-id", b"b"), ("baggage", b"user=alice,gray.version=v3;ttl=5")],
    );
    c.get(
        "/a",
        &[
            ("x-test-id", b"both"),
            ("x-gray-version", b"v2"),
            ("baggage", b"gray.version=v1,k=v=w"),
        ],
    );
    c.get("/a", &[("x-test-id", b"none"), ("baggage", b"a=1")]);
    c.get(
        "/a",
        &[
            ("x-test-id", b"plain-dup"),
            ("x-gray-version", b"v1"),
            ("x-gray-version", b"v9"),
            ("baggage", b"gray.version=v4"),
        ],
    );

    let h = s.http.request("h");
    assert_eq!(h.all("x-gray-version"), ["v2"]);
    assert_eq!(h.all("baggage"), ["gray.version=v2"]);
    let b = s.http.request("b");
    assert_eq!(b.all("x-gray-version"), ["v3"]);
    // Already right: forwarded untouched, properties and all.
    assert_eq!(b.all("baggage"), ["user=alice,gray.version=v3;ttl=5"]);
    let both = s.http.request("both");
    assert_eq!(both.all("x-gray-version"), ["v2"]);
    assert_eq!(both.all("baggage"), ["gray.version=v2,k=v=w"]);
    let none = s.http.request("none");
    assert!(none.all("x-gray-version").is_empty());
    assert_eq!(none.all("baggage"), ["a=1"]);
    // A duplicated header is refused; the baggage member wins and replaces both values.
    let dup = s.http.request("plain-dup");
    assert_eq!(dup.all("x-gray-version"), ["v4"]);
}

#[test]
fn access_log_reads_the_interface_and_version_from_filter_state() {
    let s = Stack::start(CONFIG);
    let mut c = Client::new(s.envoy.listener("ingress"));
    c.get("/api/v1/orders/42", &[("x-gray-version", b"v2")]);
    c.get("/nothing/here", &[]);
    let log = s.access_log(2);
    assert!(
        log.contains(
            &"path=/api/v1/orders/42 code=200 details=via_upstream gray=v2 route=/api/v1/orders/{id} rpc=- header=v2"
                .to_owned()
        ),
        "{log:#?}"
    );
    assert!(
        log.contains(
            &"path=/nothing/here code=200 details=via_upstream gray=- route=/nothing/here rpc=- header=-".to_owned()
        ),
        "{log:#?}"
    );
}

#[test]
fn label_values_with_dots_slashes_braces_spaces_and_semicolons_survive() {
    let s = Stack::start(CONFIG);
    let mut c = Client::new(s.envoy.listener("ingress"));
    c.get("/v;./9", &[]);
    c.get("/m;x/a.b", &[]);
    let text = s.envoy.prometheus();
    // `;.` would end the tag early, so the `;` is percent-encoded; every other character comes out as sent.
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /v%3B./{id}\",gray_version=\"none\",status=\"2xx\"} 1");
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /m;x/a.b\",gray_version=\"none\",status=\"2xx\"} 1");
    let samples = prom::parse(&text);
    assert!(samples
        .iter()
        .any(|x| x.labels.get("method").and_then(|m| m.as_str()) == Some("GET /m;x/a.b")));
}

/// The README's "Judging a canary" tells how to give the interface histogram finer buckets: a
/// `stats_config.histogram_bucket_settings` entry with the match it names on the metric's name. That entry, as the
/// README writes it, must re-bucket the histogram in this build.
#[test]
fn the_readmes_finer_buckets_setting_rebuckets_the_interface_histogram() {
    const METRIC: &str = "grayscope_interface_call_duration_milliseconds";
    let readme = std::fs::read_to_string(integration_tests::paths::root().join("README.md")).expect("README");
    let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let advice = format!("` match on `{METRIC}`");
    let end = readme
        .find(&advice)
        .unwrap_or_else(|| panic!("the README names no match on {METRIC}"));
    let kind = readme[..end].rsplit('`').next().expect("match kind");
    let setting =
        format!("  histogram_bucket_settings:\n  - match: {{{kind}: {METRIC}}}\n    buckets: [0.5, 1, 2, 3, 5, 10]\n");
    let s = Stack::start_edited(CONFIG, |yaml| {
        assert!(yaml.contains("  histogram_bucket_settings:\n"), "{yaml}");
        yaml.replacen("  histogram_bucket_settings:\n", &setting, 1)
    });
    let mut c = Client::new(s.envoy.listener("ingress"));
    for n in 0..3 {
        assert_eq!(
            c.get(&format!("/api/v1/orders/{n}"), &[("x-gray-version", b"v2")])
                .status,
            200
        );
    }
    let text = s.envoy.prometheus();
    let series = |le: &str| {
        format!("{METRIC}_bucket{{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /api/v1/orders/{{id}}\",gray_version=\"v2\",le=\"{le}\"}}")
    };
    // `2` and `3` are not Envoy's default bounds: only the setting puts them there; `25` is, and must be gone.
    let buckets = prom::samples(&text, &format!("{METRIC}_bucket")).join("\n");
    for le in ["2", "3"] {
        assert!(
            text.contains(&format!("{} ", series(le))),
            "a {kind} match left the default buckets:\n{buckets}"
        );
    }
    assert!(
        !text.contains(&series("25")),
        "a {kind} match left the default buckets:\n{buckets}"
    );
    prom::assert_line(&text, &format!("{} 3", series("+Inf")));
}
