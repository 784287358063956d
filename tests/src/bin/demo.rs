//! `just demo`: the whole system on one machine. Envoy with the grayscope filter in front of a demo HTTP service
//! and a demo gRPC service; the agent with its eBPF programs next to it; demo clients (separate processes) sending
//! v1, v2 and unlabelled traffic through Envoy's inbound and outbound listeners. It shows a live
//! `grayscope-agent tail` of the linked calls, then the agent's method table, then the grayscope series from
//! Envoy's `/stats/prometheus` as a table.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use integration_tests::{agent::Agent, client::Client, grpc, paths, prom, stack::Stack};

const CONFIG: &str = r#"{
  "routes": [
    {"template": "/api/v1/orders/{order_id}", "method": "GET"},
    {"template": "/api/v1/orders", "method": "POST"}
  ],
  "gray": {"allowed_versions": ["v1", "v2"]},
  "report": {"flush_interval_ms": 100}
}"#;

fn main() {
    println!("grayscope demo: starting the demo services, Envoy with the filter, and the agent...");
    let s = Stack::start(CONFIG);
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|st| {
        st.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    // The agent loads eBPF programs: it needs root (CAP_BPF + CAP_PERFMON). Without it, the demo shows the filter.
    let agent = if root {
        Some(Agent::start(&s.agent_socket, &[]))
    } else {
        println!("  (not root: the agent cannot load its eBPF programs, so this demo shows the filter only)");
        None
    };
    let (ingress, egress) = (s.envoy.listener("ingress"), s.envoy.listener("egress"));
    println!("  Envoy admin        http://{}", s.envoy.admin);
    println!("  inbound listener   http://{ingress}  (HTTP/1.1 and gRPC over h2c)");
    println!("  outbound listener  http://{egress}");
    println!("  agent socket       {}", s.agent_socket.display());
    println!(
        "  plugin config      {}",
        CONFIG.split_whitespace().collect::<Vec<_>>().join(" ")
    );

    // A live `grayscope-agent tail`, as a user would run it beside the proxy.
    let mut tail = agent.as_ref().map(|a| {
        let mut child = Command::new(paths::agent())
            .args(["tail", "--socket"])
            .arg(&a.socket)
            .stdout(Stdio::piped())
            .spawn()
            .expect("grayscope-agent tail");
        let out = child.stdout.take().expect("tail stdout");
        let printer = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("  tail | {line}");
            }
        });
        (child, printer)
    });
    if tail.is_some() {
        println!("\n$ grayscope-agent tail --socket {}", s.agent_socket.display());
        thread::sleep(Duration::from_millis(500));
    }

    // Inbound: clients call the workload through Envoy; the agent names the process that served each call.
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
    grpc::call(
        ingress,
        "/shop.v1.Orders/Get",
        &[("x-gray-version", "v2"), ("x-want-status", "NOT_FOUND")],
        3,
    );
    // Outbound: client processes of the workload call out through Envoy; the agent names each calling process.
    grpc::call_with_pid(egress, "/shop.v1.Orders/Get", &[("x-gray-version", "v2")], 8);
    grpc::call_with_pid(egress, "/shop.v1.Payments/Charge", &[("baggage", "gray.version=v2")], 4);
    grpc::call_with_pid(egress, "/shop.v1.Payments/Charge", &[], 6);
    grpc::http_get_with_pid(egress, "/api/v1/orders/9", &[("x-gray-version", "v1")], 5);
    // A canary label the allowlist does not know, and a hostile one.
    http.get("/api/v1/orders/1", &[("x-gray-version", b"v3-experimental")]);
    http.get("/api/v1/orders/1", &[("x-gray-version", b"v2;rm -rf")]);

    if let Some((mut child, printer)) = tail.take() {
        // The filter flushes every 100 ms; give the last batch time to arrive, then stop tailing.
        thread::sleep(Duration::from_secs(2));
        let _ = child.kill();
        let _ = child.wait();
        let _ = printer.join();
    }
    if let Some(a) = &agent {
        println!("\n$ grayscope-agent methods --socket {}", a.socket.display());
        let out = Command::new(paths::agent())
            .args(["methods", "--socket"])
            .arg(&a.socket)
            .output();
        match out {
            Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => println!("  grayscope-agent methods: {e}"),
        }
    }

    let samples = prom::parse(&s.envoy.prometheus());
    print_calls(&samples);
    println!();
    for name in [
        "grayscope_gray_version_invalid_total",
        "grayscope_baggage_members_dropped_total",
        "grayscope_report_records_total",
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

/// (direction, rpc_system, service, method, gray_version)
type Row = (String, String, String, String, String);

fn print_calls(samples: &[prom::Sample]) {
    let label = |x: &prom::Sample, k: &str| x.labels.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    // Calls and errors (gRPC not OK, HTTP 5xx, no response) per series, summed over the status label.
    let mut rows: BTreeMap<Row, (f64, f64)> = BTreeMap::new();
    for x in samples.iter().filter(|x| x.name == "grayscope_interface_calls_total") {
        let key = (
            label(x, "direction"),
            label(x, "rpc_system"),
            label(x, "service"),
            label(x, "method"),
            label(x, "gray_version"),
        );
        let row = rows.entry(key).or_default();
        row.0 += x.value;
        let status = label(x, "status");
        if !(status == "OK" || status.starts_with('2') || status.starts_with('3') || status.starts_with('4')) {
            row.1 += x.value;
        }
    }
    println!("\ngrayscope_interface_calls_total from Envoy's /stats/prometheus (summed over status):\n");
    println!(
        "{:<9} {:<6} {:<18} {:<32} {:<16} {:>6} {:>7}",
        "direction", "system", "service", "method", "gray_version", "calls", "errors"
    );
    println!("{}", "-".repeat(100));
    for ((direction, system, service, method, version), (calls, errors)) in &rows {
        println!("{direction:<9} {system:<6} {service:<18} {method:<32} {version:<16} {calls:>6} {errors:>7}");
    }
}
