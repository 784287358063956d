//! What a hostile or careless client sends must never fail a request, crash the VM, or grow the metrics without
//! bound. Each case compares with the filterless `plain` listener of the same Envoy: same status, every time.

use integration_tests::{
    client::Client,
    envoy::FilterBuild,
    prom,
    stack::Stack,
    wasm_memory::{self, VmMemory},
};

/// A named request: its `x-test-id` and its headers.
type Case<'a> = (&'a str, Vec<(&'a str, &'a [u8])>);

fn invalid(text: &str, source: &str, reason: &str) -> f64 {
    let prefix = format!("grayscope_gray_version_invalid_total{{source=\"{source}\",reason=\"{reason}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no series {prefix}"));
    line[prefix.len()..].parse().expect("value")
}

/// Envoy's log must show no VM failure: no panic, no critical line, no failed stream.
fn assert_vm_healthy(log: &str) {
    for bad in ["panic", "[critical]", "wasm_fail_stream", "Failed to"] {
        assert!(
            !log.contains(bad),
            "Envoy log contains {bad:?}:\n{}",
            log.lines().filter(|l| l.contains(bad)).collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn hostile_gray_headers_are_refused_counted_and_never_fail_the_request() {
    let s = Stack::start("{}");
    let mut ingress = Client::new(s.envoy.listener("ingress"));
    let mut plain = Client::new(s.envoy.listener("plain"));
    let kib = vec![b'v'; 1024];
    let cases: Vec<Case<'_>> = vec![
        ("missing", vec![]),
        ("empty", vec![("x-gray-version", b"")]),
        ("1kib", vec![("x-gray-version", &kib)]),
        ("tab", vec![("x-gray-version", b"v\t2")]),
        ("control", vec![("x-gray-version", b"v2\x01")]),
        ("del", vec![("x-gray-version", b"v\x7f")]),
        ("non-utf8", vec![("x-gray-version", b"\xff\xfe")]),
        ("separators", vec![("x-gray-version", b"v2;x=1,v3")]),
        ("duplicated", vec![("x-gray-version", b"v1"), ("x-gray-version", b"v2")]),
    ];
    let mut reached = 0;
    for (id, headers) in &cases {
        let mut h = headers.clone();
        h.push(("x-test-id", id.as_bytes()));
        let with = ingress.get("/hostile", &h);
        let without = plain.get("/hostile", &h);
        assert_eq!(
            with.status, without.status,
            "{id}: status differs from the filterless baseline"
        );
        assert!(with.status < 500, "{id}: {}", with.status);
        if with.status == 200 {
            reached += 1;
            // Nothing invalid reaches the upstream; the first matching request is the filtered one.
            let seen = s.http.request(id);
            assert!(
                seen.all("x-gray-version").is_empty(),
                "{id}: forwarded {:?}",
                seen.all("x-gray-version")
            );
            assert!(
                seen.all("baggage").is_empty(),
                "{id}: baggage {:?}",
                seen.all("baggage")
            );
        }
    }
    // Envoy's codec answers 400 to control characters before any filter runs; everything else reached the filter.
    assert_eq!(reached, 7);

    let text = s.envoy.prometheus();
    assert_eq!(invalid(&text, "header", "empty"), 1.0);
    assert_eq!(invalid(&text, "header", "too_long"), 1.0);
    assert_eq!(invalid(&text, "header", "bad_char"), 3.0); // tab, non-UTF-8, separators
    assert_eq!(invalid(&text, "header", "duplicated"), 1.0);
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /hostile\",gray_version=\"none\",status=\"2xx\"} 7");
    // The 7 requests through the filter and their 7 twins through `plain` went upstream; each line names why it
    // was answered, which is where a failed filter shows (`details=wasm_fail_stream`).
    let log = s.access_log(14);
    assert!(
        log.iter().filter(|l| l.contains(" details=via_upstream ")).count() >= 14,
        "{log:#?}"
    );
    assert!(log.iter().all(|l| !l.contains("wasm_fail_stream")), "{log:#?}");
    assert_vm_healthy(&s.envoy.log());
}

#[test]
fn reserved_gray_versions_are_refused_like_any_invalid_version() {
    // `none`, `unknown` and `other` are the placeholders of `gray_version`: taken as versions, they would be
    // forwarded and counted in the series of unversioned traffic, of the allowlist's outsiders and of the overflow.
    let s = Stack::start("{}");
    let mut c = Client::new(s.envoy.listener("ingress"));
    let cases: Vec<Case<'_>> = vec![
        ("h-other", vec![("x-gray-version", b"other")]),
        ("h-none", vec![("x-gray-version", b"none")]),
        ("h-unknown", vec![("x-gray-version", b" unknown\t")]),
        ("b-other", vec![("baggage", b"a=1,gray.version=other")]),
        ("b-none", vec![("baggage", b"gray.version=%6Eone")]),
    ];
    for (id, headers) in &cases {
        let mut h = headers.clone();
        h.push(("x-test-id", id.as_bytes()));
        assert_eq!(c.get("/reserved", &h).status, 200, "{id}");
        let seen = s.http.request(id);
        assert!(
            seen.all("x-gray-version").is_empty(),
            "{id}: forwarded x-gray-version {:?}",
            seen.all("x-gray-version")
        );
        assert!(
            seen.all("baggage").iter().all(|b| !b.contains("gray.version")),
            "{id}: forwarded baggage {:?}",
            seen.all("baggage")
        );
    }
    assert_eq!(s.http.request("b-other").all("baggage"), ["a=1"]);
    // A refused header leaves the next source its turn, as for any invalid value.
    let h: Vec<(&str, &[u8])> = vec![
        ("x-gray-version", b"other"),
        ("baggage", b"gray.version=v2"),
        ("x-test-id", b"h-other-b-v2"),
    ];
    assert_eq!(c.get("/reserved", &h).status, 200);
    let seen = s.http.request("h-other-b-v2");
    assert_eq!(seen.all("x-gray-version"), ["v2"]);
    assert_eq!(seen.all("baggage"), ["gray.version=v2"]);
    // Versions keep their case, and so do labels: `Other` is a version like any other, not the overflow.
    let h: Vec<(&str, &[u8])> = vec![("x-gray-version", b"Other"), ("x-test-id", b"h-Other")];
    assert_eq!(c.get("/reserved", &h).status, 200);
    assert_eq!(s.http.request("h-Other").all("x-gray-version"), ["Other"]);

    let text = s.envoy.prometheus();
    prom::assert_line(
        &text,
        "grayscope_gray_version_invalid_total{source=\"header\",reason=\"reserved\"} 4",
    );
    prom::assert_line(
        &text,
        "grayscope_gray_version_invalid_total{source=\"baggage\",reason=\"reserved\"} 2",
    );
    prom::assert_line(
        &text,
        "grayscope_gray_version_invalid_total{source=\"header\",reason=\"bad_char\"} 0",
    );
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /reserved\",gray_version=\"none\",status=\"2xx\"} 5");
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /reserved\",gray_version=\"v2\",status=\"2xx\"} 1");
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /reserved\",gray_version=\"Other\",status=\"2xx\"} 1");
    let calls = prom::samples(&text, "grayscope_interface_calls_total");
    for placeholder in ["other", "unknown"] {
        let label = format!("gray_version=\"{placeholder}\"");
        assert!(calls.iter().all(|l| !l.contains(&label)), "{calls:#?}");
    }
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 7.0);
    assert_vm_healthy(&s.envoy.log());
}

/// A request whose baggage names the version twice carries two opinions about it, and neither is taken, even when
/// one of the two is malformed: as for a header sent twice, and as the tenant's baggage member already is.
#[test]
fn a_malformed_gray_member_beside_a_valid_one_is_refused_with_it() {
    let s = Stack::start("{}");
    let mut c = Client::new(s.envoy.listener("ingress"));
    let cases: Vec<Case<'_>> = vec![
        (
            "bad-escape-first",
            vec![("baggage", b"gray.version=v%ZZ,a=1,gray.version=v2")],
        ),
        (
            "bad-property-last",
            vec![("baggage", b"a=1,gray.version=v2"), ("baggage", b"gray.version=v3;;")],
        ),
    ];
    for (id, headers) in &cases {
        let mut h = headers.clone();
        h.push(("x-test-id", id.as_bytes()));
        assert_eq!(c.get("/two-opinions", &h).status, 200, "{id}");
        let seen = s.http.request(id);
        assert!(
            seen.all("x-gray-version").is_empty(),
            "{id}: forwarded x-gray-version {:?}",
            seen.all("x-gray-version")
        );
        assert_eq!(seen.all("baggage"), ["a=1"], "{id}");
    }
    let text = s.envoy.prometheus();
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /two-opinions\",gray_version=\"none\",status=\"2xx\"} 2");
    prom::assert_line(
        &text,
        "grayscope_gray_version_invalid_total{source=\"baggage\",reason=\"bad_encoding\"} 2",
    );
    assert_vm_healthy(&s.envoy.log());
}

#[test]
fn hostile_baggage_is_cleaned_member_by_member() {
    let s = Stack::start("{}");
    let mut c = Client::new(s.envoy.listener("ingress"));
    let at_limit: String = (0..64)
        .map(|i| format!("k{i:02}={}", "x".repeat(123)))
        .collect::<Vec<_>>()
        .join(",")
        + "y";
    assert_eq!(at_limit.len(), 8192);
    let over_a: String = (0..40)
        .map(|i| format!("k{i:02}={}", "x".repeat(123)))
        .collect::<Vec<_>>()
        .join(",");
    let over_b: String = (40..64)
        .map(|i| format!("k{i:02}={}", "x".repeat(123)))
        .collect::<Vec<_>>()
        .join(",")
        + ",z=1";
    let cases: Vec<Case<'_>> = vec![
        ("malformed", vec![("baggage", b"a=1,garbage,=x,b=%ZZ,c=2")]),
        ("equals", vec![("baggage", b"k=v=w")]),
        ("utf8", vec![("baggage", b"k=%C3%28,ok=%C3%A9")]),
        ("at-limit", vec![("baggage", at_limit.as_bytes())]),
        (
            "over-limit",
            vec![("baggage", over_a.as_bytes()), ("baggage", over_b.as_bytes())],
        ),
        (
            "with-version",
            vec![("x-gray-version", b"v2"), ("baggage", at_limit.as_bytes())],
        ),
    ];
    for (id, headers) in &cases {
        let mut h = headers.clone();
        h.push(("x-test-id", id.as_bytes()));
        assert_eq!(c.get("/b", &h).status, 200, "{id}");
    }
    assert_eq!(s.http.request("malformed").all("baggage"), ["a=1,c=2"]);
    assert_eq!(s.http.request("equals").all("baggage"), ["k=v=w"]);
    assert_eq!(s.http.request("utf8").all("baggage"), ["ok=%C3%A9"]);
    assert_eq!(
        s.http.request("at-limit").all("baggage"),
        std::slice::from_ref(&at_limit)
    );
    let over = s.http.request("over-limit").all("baggage");
    assert_eq!(over.len(), 1, "several baggage headers are forwarded as one");
    assert!(
        over[0].len() <= 8192 && over[0].split(',').count() == 64,
        "{} bytes",
        over[0].len()
    );
    assert!(
        over[0].split(',').all(|m| m.len() == 127),
        "a partial member was forwarded"
    );
    let with_version = s.http.request("with-version").all("baggage");
    assert!(with_version[0].ends_with(",gray.version=v2") && with_version[0].len() <= 8192);
    assert_eq!(with_version[0].split(',').count(), 64);

    let text = s.envoy.prometheus();
    prom::assert_line(&text, "grayscope_baggage_members_dropped_total{cause=\"malformed\"} 4");
    prom::assert_line(&text, "grayscope_baggage_members_dropped_total{cause=\"over_limit\"} 2");
    assert_vm_healthy(&s.envoy.log());
}

/// A `baggage` list of thousands of tiny members costs the VM no more memory than any other header of its size.
/// At most 64 members can leave the filter, so it keeps no more than those (and the first two of each key it
/// reads); the rest are only counted. A wasm VM's memory never shrinks: whatever one request makes it allocate, the
/// VM holds until it is replaced.
#[test]
fn thousands_of_tiny_baggage_members_cost_the_vm_no_more_than_any_header_of_their_size() {
    if FilterBuild::current() != FilterBuild::Wasm {
        return; // the native build's heap is freed after each request; the bound itself is unit-tested in the core
    }
    let s = Stack::start("{}");
    let mut c = Client::new(s.envoy.listener("ingress"));
    const MEMBERS: usize = 14_000;
    let tiny = "a=1,".repeat(MEMBERS);
    let total = |vms: &[VmMemory]| vms.iter().map(|m| m.size_kib).sum::<u64>();
    let vms = || wasm_memory::vms(s.envoy.pid()).expect("smaps");
    // First a header of the same size that the filter does not parse: what any large request grows the VM by.
    for _ in 0..3 {
        assert_eq!(c.get("/pad", &[("x-pad", tiny.as_bytes())]).status, 200);
    }
    let padded = vms();
    assert!(!padded.is_empty(), "no wasm memory found in Envoy's smaps");
    for i in 0..3 {
        let id = format!("tiny-{i}");
        let h: Vec<(&str, &[u8])> = vec![("baggage", tiny.as_bytes()), ("x-test-id", id.as_bytes())];
        assert_eq!(c.get("/b", &h).status, 200);
    }
    let after = vms();
    assert!(
        total(&after) <= total(&padded) + 128,
        "the baggage requests grew the VMs from {padded:?} to {after:?} KiB"
    );
    // Still exact: the first 64 members leave, every other one is counted as dropped.
    assert_eq!(s.http.request("tiny-2").all("baggage"), [vec!["a=1"; 64].join(",")]);
    let text = s.envoy.prometheus();
    prom::assert_line(
        &text,
        &format!(
            "grayscope_baggage_members_dropped_total{{cause=\"over_limit\"}} {}",
            3 * (MEMBERS - 64)
        ),
    );
    assert_vm_healthy(&s.envoy.log());
}

#[test]
fn ten_thousand_distinct_paths_stay_within_the_interface_cap() {
    let s = Stack::start(r#"{"max_interfaces":100}"#);
    let mut c = Client::new(s.envoy.listener("ingress"));
    for n in 0..10_000 {
        assert_eq!(c.get(&format!("/c/p{n}"), &[]).status, 200);
    }
    let text = s.envoy.prometheus();
    let series = prom::samples(&text, "grayscope_interface_calls_total");
    assert_eq!(series.len(), 101, "100 interfaces plus the overflow series");
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 10_000.0);
    prom::assert_line(&text, "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"http\",service=\"other\",method=\"other\",gray_version=\"none\",status=\"2xx\"} 9900");
    prom::assert_line(&text, "grayscope_interface_overflow_total{} 9900");
    assert_eq!(
        prom::parse(&text)
            .iter()
            .filter(|x| x.name == "grayscope_interface_calls_total")
            .count(),
        101
    );
}

#[test]
fn versions_beyond_the_cap_count_as_other() {
    let s = Stack::start(r#"{"gray":{"max_versions":3}}"#);
    let mut c = Client::new(s.envoy.listener("ingress"));
    for n in 0..50 {
        let r = c.get("/v", &[("x-gray-version", format!("build-{n}").as_bytes())]);
        assert_eq!(r.status, 200, "build-{n}");
    }
    let text = s.envoy.prometheus();
    assert_eq!(prom::samples(&text, "grayscope_interface_calls_total").len(), 4);
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 50.0);
    prom::assert_line(&text, "grayscope_gray_version_overflow_total{} 47");
    // The 47 calls past the cap are in the `other` series (4 series and a sum of 50 would also hold with them
    // under any other label, `none` say), and the first three versions keep their own.
    let calls = |version: &str, n: u32| {
        format!("grayscope_interface_calls_total{{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",method=\"GET /v\",gray_version=\"{version}\",status=\"2xx\"}} {n}")
    };
    prom::assert_line(&text, &calls("other", 47));
    for n in 0..3 {
        prom::assert_line(&text, &calls(&format!("build-{n}"), 1));
    }
}

#[test]
fn headers_near_envoys_limit_behave_as_without_the_filter() {
    let s = Stack::start("{}");
    let mut ingress = Client::new(s.envoy.listener("ingress"));
    let mut plain = Client::new(s.envoy.listener("plain"));
    // Envoy's default limit is 60 KiB of request headers. Just under it, the filter adds `baggage` on the way up.
    let under = vec![b'a'; 60 * 1024 - 200];
    let over = vec![b'a'; 60 * 1024 + 10];
    for (pad, want) in [(&under, 200), (&over, 431)] {
        let h: Vec<(&str, &[u8])> = vec![("x-pad", pad), ("x-gray-version", b"v2")];
        let with = ingress.get("/big", &h);
        let without = plain.get("/big", &h);
        assert_eq!((with.status, without.status), (want, want), "{} byte header", pad.len());
    }
    assert_vm_healthy(&s.envoy.log());
}
