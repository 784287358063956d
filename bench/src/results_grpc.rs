//! The gRPC run's figures (h2load over h2c, unary calls of an empty message): `grpc` in RESULTS.json and its
//! section of RESULTS.md. Same method as the HTTP/1.1 run: medians of per-round ratios and differences.

use serde_json::{json, Map, Value};

use crate::{
    configs::Config,
    results::{cpu_diff, cpu_ratio, p99_diff, rps_ratio, summary},
    run::Sample,
    stats::Summary,
};

const THROUGHPUT: [(&str, &str, &str); 4] = [
    ("W1/A", "W1", "A"),
    ("W2/A", "W2", "A"),
    ("W3/A", "W3", "A"),
    ("W1/W0", "W1", "W0"),
];
const OVER: [(&str, &str); 6] = [
    ("W0-A_us", "W0"),
    ("W1-A_us", "W1"),
    ("W2-A_us", "W2"),
    ("W3-A_us", "W3"),
    ("C-A_us", "C"),
    ("D1-A_us", "D1"),
];
/// Against Envoy's own native per-method gRPC statistics (`grpc_stats` in C), on calls it counts.
const CPU: [(&str, [&str; 4]); 2] = [
    ("(D1-A)/(C-A)", ["D1", "A", "C", "A"]),
    ("(W1-A)/(C-A)", ["W1", "A", "C", "A"]),
];

fn range(s: Option<Summary>) -> Value {
    s.filter(|s| s.n > 0).map_or(Value::Null, |s| json!(s))
}

/// `grpc` in RESULTS.json.
pub fn json(configs: &[Config], s: &[Sample]) -> Value {
    let mut ratios = Map::new();
    for (name, x, y) in THROUGHPUT {
        ratios.insert(name.into(), range(rps_ratio(s, x, y)));
    }
    let mut over_a = Map::new();
    for (name, x) in OVER {
        over_a.insert(name.into(), range(cpu_diff(s, x, "A")));
    }
    let mut cpu = Map::new();
    for (name, [x, y, z, w]) in CPU {
        cpu.insert(name.into(), range(cpu_ratio(s, x, y, z, w)));
    }
    let mut per_config = Map::new();
    for c in configs {
        per_config.insert(
            c.label.clone(),
            json!({
                "cpu_us_per_request": range(summary(s, &c.label, |x| Some(x.cpu_us))),
                "requests_per_s": range(summary(s, &c.label, |x| Some(x.rps))),
                "p50_ms": range(summary(s, &c.label, |x| x.p50_ms)),
                "p99_ms": range(summary(s, &c.label, |x| x.p99_ms)),
                "errors": s.iter().filter(|x| x.label == c.label).map(|x| x.errors).sum::<u64>(),
            }),
        );
    }
    json!({
        "throughput": ratios,
        "cpu_over_A": over_a,
        "cpu": cpu,
        "p99_W2_minus_A_ms": range(p99_diff(s, "W2", "A")),
        "configs": per_config,
    })
}

fn show(s: Option<Summary>, digits: usize) -> String {
    s.map_or("n/a".into(), |s| s.show(digits))
}

/// The gRPC section of RESULTS.md.
pub fn markdown(configs: &[Config], s: &[Sample], latency_rate: &Value) -> String {
    let rounds = s.iter().map(|x| x.round).max().map_or(0, |r| r + 1);
    let clients = crate::run::LATENCY_CLIENTS;
    let mut md = format!(
        "\n## gRPC (h2load)\n\nA separate interleaved run of {rounds} rounds: `h2load -t1 -c16 -m1` unary calls (`POST /bench.Bench/Call`, an empty message, `content-type: application/grpc`) over h2c to Envoy, which routes them over HTTP/2 to the gRPC upstream; latency at {latency_rate} calls/s in all with `h2load -c{clients} --rps` (per-request durations from its `--log-file`).\n\n| figure | median (min–max) |\n|---|---|\n"
    );
    for (name, x, y) in THROUGHPUT {
        if let Some(r) = rps_ratio(s, x, y) {
            md.push_str(&format!("| throughput {name} | {} |\n", r.show(3)));
        }
    }
    for (name, x) in OVER {
        if let Some(d) = cpu_diff(s, x, "A") {
            md.push_str(&format!(
                "| CPU/request {} µs | {} |\n",
                name.trim_end_matches("_us"),
                d.show(1)
            ));
        }
    }
    for (name, [x, y, z, w]) in CPU {
        if let Some(r) = cpu_ratio(s, x, y, z, w) {
            md.push_str(&format!("| CPU/request {name} | {} |\n", r.show(2)));
        }
    }
    md.push_str(&format!(
        "| p99 latency W2 − A (ms) | {} |\n\n| config | proxy CPU µs/request | calls/s at saturation | p50 ms | p99 ms |\n|---|---|---|---|---|\n",
        show(p99_diff(s, "W2", "A"), 3)
    ));
    for c in configs {
        let l = c.label.as_str();
        md.push_str(&format!(
            "| {l} | {} | {} | {} | {} |\n",
            show(summary(s, l, |x| Some(x.cpu_us)), 1),
            show(summary(s, l, |x| Some(x.rps)), 0),
            show(summary(s, l, |x| x.p50_ms), 3),
            show(summary(s, l, |x| x.p99_ms), 3),
        ));
    }
    md
}
