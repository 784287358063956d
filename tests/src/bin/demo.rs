//! `just demo`: Envoy with the grayscope filter in front of a demo HTTP service and a demo gRPC service, a mix of
//! v1, v2 and unlabelled traffic, then the grayscope series from `/stats/prometheus` as a table.

use std::collections::BTreeMap;

use integration_tests::{client::Client, grpc, prom, stack::Stack};

const CONFIG: &str = r#"{
  "routes": [
    {"template": "/api/v1/orders/{order_id}", "method": "GET"},
    {"template": "/api/v1/orders", "method": "POST"}
  ],
  "gray": {"allowed_versions": ["v1", "v2"]}
}"#;

fn main() {
    println!("grayscope demo: starting the demo services and Envoy with the filter...");
    let s = Stack::start(CONFIG);
    let ingress = s.envoy.listener("ingress");
    println!("  Envoy admin      http://{}", s.envoy.admin);
    println!("  inbound listener http://{ingress}  (HTTP/1.1 and gRPC over h2c)");
    println!(
        "  plugin config    {}",
        CONFIG.split_whitespace().collect::<Vec<_>>().join(" ")
    );

    let mut http = Client::new(ingress);
    let versions: [&[u8]; 3] = [b"v1", b"v2", b""];
    for n in 0..60u32 {
        let version = versions[n as usize % 3];
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if !version.is_empty() {
            headers.push(("x-gray-version", version));
        }
        // v2 has a bug: one order in five fails.
        if version == b"v2" && n % 5 == 0 {
            headers.push(("x-respond-status", b"500"));
        }
        http.get(&format!("/api/v1/orders/{}", 1000 + n), &headers);
        if n % 4 == 0 {
            http.get(&format!("/static/img/{n}.png"), &headers);
        }
    }
    // The version can also arrive as W3C baggage, as it does from a service that propagates only baggage.
    for _ in 0..5 {
        http.get("/api/v1/orders/7", &[("baggage", b"tenant=acme,gray.version=v2")]);
    }
    grpc::call(ingress, "/shop.v1.Orders/Get", &[("x-gray-version", "v1")], 12);
    grpc::call(ingress, "/shop.v1.Orders/Get", &[("x-gray-version", "v2")], 8);
    grpc::call(
        ingress,
        "/shop.v1.Orders/Get",
        &[("x-gray-version", "v2"), ("x-want-status", "NOT_FOUND")],
        3,
    );
    grpc::call(
        ingress,
        "/shop.v1.Payments/Charge",
        &[("baggage", "gray.version=v2")],
        4,
    );
    grpc::call(ingress, "/shop.v1.Payments/Charge", &[], 6);
    // A canary label the allowlist does not know, and a hostile one.
    http.get("/api/v1/orders/1", &[("x-gray-version", b"v3-experimental")]);
    http.get("/api/v1/orders/1", &[("x-gray-version", b"v2;rm -rf")]);

    let samples = prom::parse(&s.envoy.prometheus());
    print_calls(&samples);
    println!();
    for name in [
        "grayscope_gray_version_invalid_total",
        "grayscope_baggage_members_dropped_total",
    ] {
        for x in samples.iter().filter(|x| x.name == name && x.value > 0.0) {
            println!("{name}{} {}", labels(&x.labels), x.value);
        }
    }
    let upstream = s.http.count();
    println!("\nThe HTTP upstream received {upstream} requests; labelled ones carried x-gray-version and baggage.");
    println!("Access log (filter state read with %FILTER_STATE(wasm.gray.version:PLAIN)% and friends):");
    for line in s.access_log(1).iter().rev().take(3) {
        println!("  {line}");
    }
}

fn labels(l: &serde_json::Map<String, serde_json::Value>) -> String {
    let inner: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// (rpc_system, service, method, gray_version)
type Row = (String, String, String, String);
/// (calls, errors, duration count, duration sum)
type Totals = (f64, f64, f64, f64);

fn print_calls(samples: &[prom::Sample]) {
    let label = |x: &prom::Sample, k: &str| x.labels.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let mut rows: BTreeMap<Row, Totals> = BTreeMap::new();
    for x in samples {
        let key = (
            label(x, "rpc_system"),
            label(x, "service"),
            label(x, "method"),
            label(x, "gray_version"),
        );
        match x.name.as_str() {
            "grayscope_interface_calls_total" => {
                let row = rows.entry(key).or_default();
                row.0 += x.value;
                let status = label(x, "status");
                if !(status == "OK" || status.starts_with('2') || status.starts_with('3') || status.starts_with('4')) {
                    row.1 += x.value;
                }
            }
            "grayscope_interface_call_duration_milliseconds_count" => rows.entry(key).or_default().2 += x.value,
            "grayscope_interface_call_duration_milliseconds_sum" => rows.entry(key).or_default().3 += x.value,
            _ => {}
        }
    }
    println!("\ngrayscope_interface_calls_total and _call_duration_milliseconds, from Envoy's /stats/prometheus:\n");
    println!(
        "{:<6} {:<18} {:<32} {:<8} {:>6} {:>7} {:>9}",
        "system", "service", "method", "version", "calls", "errors", "mean ms"
    );
    println!("{}", "-".repeat(92));
    for ((system, service, method, version), (calls, errors, n, sum)) in &rows {
        let mean = if *n > 0.0 {
            format!("{:.2}", sum / n)
        } else {
            "-".into()
        };
        println!("{system:<6} {service:<18} {method:<32} {version:<8} {calls:>6} {errors:>7} {mean:>9}");
    }
}
