//! From per-round samples to the published figures: `RESULTS.json` (the headline ratios, schema of issue 11) and
//! `RESULTS.md` (the same with context, per-configuration tables and the breakdown).
//!
//! Every ratio is the median of per-round ratios (or of per-round differences divided per round), never a ratio
//! of medians: rounds of one configuration drift with the machine's load, and within a round they drift together.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::{
    agent_cost::AgentCost,
    configs::{Config, OPS, STAGES},
    ebpf::EbpfResult,
    run::Sample,
    stats::Summary,
    vm_memory::VmReport,
    watch_delay::WatchDelay,
};

/// Per round: label -> sample.
fn by_round(samples: &[Sample]) -> BTreeMap<usize, BTreeMap<&str, &Sample>> {
    let mut rounds: BTreeMap<usize, BTreeMap<&str, &Sample>> = BTreeMap::new();
    for s in samples {
        rounds.entry(s.round).or_default().insert(&s.label, s);
    }
    rounds
}

/// A figure computed from the samples of one round, summarised over rounds; `None` when a label is missing.
pub fn per_round(samples: &[Sample], labels: &[&str], f: impl Fn(&[&Sample]) -> f64) -> Option<Summary> {
    let values: Vec<f64> = by_round(samples)
        .values()
        .filter_map(|r| {
            let got: Option<Vec<&Sample>> = labels.iter().map(|l| r.get(l).copied()).collect();
            got.map(|g| f(&g))
        })
        .collect();
    (!values.is_empty()).then(|| Summary::of(&values))
}

/// Throughput ratio X/Y.
pub fn rps_ratio(samples: &[Sample], x: &str, y: &str) -> Option<Summary> {
    per_round(samples, &[x, y], |s| s[0].rps / s[1].rps)
}

/// CPU ratio (X-Y)/(Z-W) per request.
pub fn cpu_ratio(samples: &[Sample], x: &str, y: &str, z: &str, w: &str) -> Option<Summary> {
    per_round(samples, &[x, y, z, w], |s| {
        ratio(s[0].cpu_us - s[1].cpu_us, s[2].cpu_us - s[3].cpu_us)
    })
}

/// One round's ratio of two CPU differences. A denominator that is not above zero (a reference cost that measured
/// ≤ 0 in that round: smaller than the round's noise) gives no quotient: −2.5 for 20/−8 would rank below every
/// measured ratio, where a smaller reference means a larger ratio. It counts as infinite, with the numerator's
/// sign (NaN, left out, when the numerator is 0 too), so the median still ranks it where it belongs and the
/// tables say in how many rounds it happened.
pub fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else if numerator > 0.0 {
        f64::INFINITY
    } else if numerator < 0.0 {
        f64::NEG_INFINITY
    } else {
        f64::NAN
    }
}

/// CPU difference X-Y in µs per request.
pub fn cpu_diff(samples: &[Sample], x: &str, y: &str) -> Option<Summary> {
    per_round(samples, &[x, y], |s| s[0].cpu_us - s[1].cpu_us)
}

pub fn summary(samples: &[Sample], label: &str, f: impl Fn(&Sample) -> Option<f64>) -> Option<Summary> {
    let v: Vec<f64> = samples.iter().filter(|s| s.label == label).filter_map(f).collect();
    (!v.is_empty()).then(|| Summary::of(&v))
}

fn num(s: Option<Summary>) -> Value {
    s.filter(|s| s.n > 0).map_or(Value::Null, |s| json!(s.median))
}

fn range(s: Option<Summary>) -> Value {
    s.filter(|s| s.n > 0).map_or(Value::Null, |s| json!(s))
}

/// How many extra times a `W1-x10-<op>` variant runs its operation per request (`EXTRA` in `wasm-filter`'s
/// `bench.rs`).
const EXTRA_REPEATS: f64 = 10.0;

/// Everything the report is made of.
pub struct Report<'a> {
    pub context: Value,
    pub configs: &'a [Config],
    pub samples: &'a [Sample],
    pub rss_kib: &'a [(String, u64)],
    pub breakdown: Option<(&'a [Config], &'a [Sample])>,
    pub ebpf: Option<&'a EbpfResult>,
    pub agent: Option<&'a AgentCost>,
    pub watch_delay: Option<&'a WatchDelay>,
    /// Each wasm VM's memory, per configuration.
    pub vm_memory: &'a [VmReport],
    /// The gRPC run: its configurations and samples.
    pub grpc: Option<(&'a [Config], &'a [Sample])>,
    /// Why each figure left null was not measured, keyed like the JSON (e.g. `agent.records_per_s`).
    pub not_measured: BTreeMap<String, String>,
}

const THROUGHPUT: [(&str, &str, &str); 6] = [
    ("W1/A", "W1", "A"),
    ("W2/A", "W2", "A"),
    ("W3/A", "W3", "A"),
    ("W1/W0", "W1", "W0"),
    ("D0/A", "D0", "A"),
    ("D1/A", "D1", "A"),
];
const CPU: [(&str, [&str; 4]); 8] = [
    ("(W1-A)/(W0-A)", ["W1", "A", "W0", "A"]),
    ("(W2-W1)/(W0-A)", ["W2", "W1", "W0", "A"]),
    // What tracing the connections adds to the proxy (W3's agent traces, W2's filters every event out).
    ("(W3-W2)/(W0-A)", ["W3", "W2", "W0", "A"]),
    ("(W1-A)/(C-A)", ["W1", "A", "C", "A"]),
    ("(W1d-W2)/(W0-A)", ["W1d", "W2", "W0", "A"]),
    // The native build (issue 16): against Envoy's own native equivalent, against the wasm build, and the
    // dynamic-module boundary against the V8 one.
    ("(D1-A)/(C-A)", ["D1", "A", "C", "A"]),
    ("(D1-A)/(W1-A)", ["D1", "A", "W1", "A"]),
    ("(D0-A)/(W0-A)", ["D0", "A", "W0", "A"]),
];
/// The p99 latencies beside W2's that tell where its excess comes from: W1 (no reporting), W1d (records built and
/// batched, no gRPC call), D1 (the native build).
const P99_CONTEXT: [&str; 3] = ["W1", "W1d", "D1"];

/// p99 latency X − Y per round, ms.
pub fn p99_diff(s: &[Sample], x: &str, y: &str) -> Option<Summary> {
    per_round(s, &[x, y], |r| match (r[0].p99_ms, r[1].p99_ms) {
        (Some(a), Some(b)) => a - b,
        _ => f64::NAN,
    })
}

/// Per-request CPU over the router alone, µs: the absolute costs the native section reports (`native` in JSON).
const OVER_A: [&str; 5] = ["D0", "D1", "W0", "W1", "C"];

impl Report<'_> {
    pub fn json(&self) -> Value {
        let s = self.samples;
        let mut ratios = Map::new();
        let mut ranges = Map::new();
        for (name, x, y) in THROUGHPUT {
            ratios.insert(name.into(), num(rps_ratio(s, x, y)));
            ranges.insert(name.into(), range(rps_ratio(s, x, y)));
        }
        for (name, [x, y, z, w]) in CPU {
            ratios.insert(name.into(), num(cpu_ratio(s, x, y, z, w)));
            ranges.insert(name.into(), range(cpu_ratio(s, x, y, z, w)));
        }
        let p99 = |l: &str| summary(s, l, |x| x.p99_ms);
        let w2_p99 = p99_diff(s, "W2", "A");
        let mut latency = Map::new();
        latency.insert("p99_W2_minus_A_ms".into(), num(w2_p99));
        latency.insert("p99_W2_minus_A_ms_range".into(), range(w2_p99));
        for x in P99_CONTEXT {
            latency.insert(format!("p99_{x}_minus_A_ms_range"), range(p99_diff(s, x, "A")));
        }
        let mut configs = Map::new();
        for c in self.configs {
            configs.insert(
                c.label.clone(),
                json!({
                    "what": c.what,
                    "cpu_us_per_request": range(summary(s, &c.label, |x| Some(x.cpu_us))),
                    "requests_per_s": range(summary(s, &c.label, |x| Some(x.rps))),
                    "p50_ms": range(summary(s, &c.label, |x| x.p50_ms)),
                    "p99_ms": range(p99(&c.label)),
                    "requests": s.iter().filter(|x| x.label == c.label).map(|x| x.requests).sum::<u64>(),
                    "errors": s.iter().filter(|x| x.label == c.label).map(|x| x.errors).sum::<u64>(),
                    "rss_kib_after": self.rss_kib.iter().find(|(l, _)| *l == c.label).map(|(_, v)| *v),
                }),
            );
        }
        let breakdown = self.breakdown.map(|(cfgs, bs)| {
            let mut m = Map::new();
            for c in cfgs
                .iter()
                .filter(|c| c.label.starts_with("W1-") || c.label == "W2-record")
            {
                let base = if c.label == "W2-record" { "W2" } else { "W1" };
                m.insert(
                    c.label.clone(),
                    json!({
                        "what": c.what,
                        "saved_us_per_request": range(cpu_diff(bs, base, &c.label)),
                        "saved_over_boundary": range(cpu_ratio(bs, base, &c.label, "W0", "A")),
                    }),
                );
            }
            m.insert("W1-W0_us".into(), range(cpu_diff(bs, "W1", "W0")));
            m.insert("W0-A_us".into(), range(cpu_diff(bs, "W0", "A")));
            Value::Object(m)
        });
        let ebpf = self.ebpf.map_or_else(
            || json!({"connect_ratio": null, "lost": null, "ns_per_event": null}),
            |e| {
                json!({
                    "connect_ratio": e.connect_ratio.median,
                    "lost": e.lost,
                    "ns_per_event": e.ns_per_event,
                    "connect_ratio_range": e.connect_ratio,
                    "connects_per_s_with": e.with_per_s,
                    "connects_per_s_without": e.without_per_s,
                    "events_produced": e.produced,
                    "programs": e.programs.iter().map(|(n, r, ns)| json!({"program": n, "runs": r, "ns_per_run": ns})).collect::<Vec<_>>(),
                })
            },
        );
        let native: Map<String, Value> = OVER_A
            .iter()
            .map(|l| (format!("{l}-A_us"), range(cpu_diff(s, l, "A"))))
            .collect();
        // The tenant dimension's extra cost (issue 15): with − without, per build.
        let tenant: Map<String, Value> = [("W1t", "W1"), ("D1t", "D1")]
            .iter()
            .map(|(x, y)| (format!("{x}-{y}_us"), range(cpu_diff(s, x, y))))
            .collect();
        json!({
            "context": self.context,
            "ratios": ratios,
            "native": native,
            "tenant": tenant,
            "ratios_range": ranges,
            "latency": latency,
            "ebpf": ebpf,
            "agent": {
                "records_per_s": self.agent.map(|a| a.records_per_s),
                "cpu_pct_at_10k_calls_per_s": self.agent.map(|a| a.cpu_pct_at_10k.median),
                "cpu_pct_at_10k_calls_per_s_windows": self.agent.map(|a| a.cpu_pct_at_10k),
                "rss_mib_100k": self.agent.map(|a| a.rss_mib_100k),
                "connections_tracked_at_rss": self.agent.map(|a| a.tracked_at_rss),
                "cpu_pct_idle": self.agent.map(|a| a.cpu_pct_idle),
                "rss_mib_empty": self.agent.map(|a| a.rss_mib_empty),
                "bytes_per_table_entry": self.agent.map(|a| a.bytes_per_entry),
                "watch_delay_p99_ms": self.watch_delay.map(|w| w.p99_ms),
                "watch_delay_p50_ms": self.watch_delay.map(|w| w.p50_ms),
                "watch_delay_calls_linked": self.watch_delay.map(|w| json!({"calls": w.calls, "linked": w.linked})),
            },
            "configs": configs,
            "wasm_vm_memory": if self.vm_memory.is_empty() { Value::Null } else { json!(self.vm_memory) },
            "grpc": self.grpc.map_or(Value::Null, |(c, g)| crate::results_grpc::json(c, g)),
            "breakdown": breakdown,
            "samples": s.iter().map(|x| json!({
                "round": x.round, "config": x.label, "cpu_us_per_request": x.cpu_us, "requests_per_s": x.rps,
                "p50_ms": x.p50_ms, "p99_ms": x.p99_ms,
            })).collect::<Vec<_>>(),
            "not_measured": self.not_measured,
        })
    }

    pub fn markdown(&self, notes: &str) -> String {
        let s = self.samples;
        let c = &self.context;
        let mut md = String::new();
        md.push_str("# grayscope benchmark results\n\n");
        md.push_str("Written by `just bench` (`bench/src`); the figures below the last heading are hand-written notes the harness keeps.\n\n");
        md.push_str(&format!(
            "- Date: {}\n- Machine: {}\n- Envoy: {}\n- Crates: {}\n- Run: {} interleaved rounds of {} s per configuration after a {} s warm-up, `wrk -t1 -c{}` HTTP/1.1 `GET /x`, no gray header; proxies `--concurrency 1` pinned to CPU {}, a fresh one per configuration every {} rounds (each set started in list order, the next in reverse), wrk, upstream and agent pinned to CPU {}{}.\n- Load on the machine: {}\n\n",
            c["date"].as_str().unwrap_or("?"),
            c["machine"].as_str().unwrap_or("?"),
            c["envoy"].as_str().unwrap_or("?"),
            c["crates"].as_str().unwrap_or("?"),
            c["rounds"], c["duration_s"], c["warmup_s"], c["connections"], c["proxy_cpu"], c["rounds_per_set"], c["load_cpu"],
            latency_method(c),
            c["load_note"].as_str().unwrap_or("?"),
        ));
        if let Some(phases) = c["phases_s"].as_object().filter(|p| !p.is_empty()) {
            let total: f64 = phases.values().filter_map(Value::as_f64).sum();
            let each: Vec<String> = phases.iter().map(|(k, v)| format!("{k} {v} s")).collect();
            md.push_str(&format!(
                "- Time: {:.1} min of measuring ({}); building comes on top.\n\n",
                total / 60.0,
                each.join(", ")
            ));
        }
        md.push_str("Method: the primary figure is proxy CPU per request, the change of utime+stime in `/proc/<pid>/stat` divided by the change of the admin counter `http.bench.downstream_rq_total` over the round. Every ratio is the median of per-round ratios, with min–max over the rounds; absolute figures are context only. A round with any failed request (a non-2xx answer or a socket error) stops the run. A round in which a CPU ratio's denominator (a reference cost such as W0 − A) measured ≤ 0, below the round's noise, counts as ∞ (−∞ when the numerator is negative): it ranks above every measured ratio instead of giving a negative quotient that would rank below them; the tables then say in how many rounds (`infinite` in RESULTS.json, where an infinite median, min or max is null).\n\n");
        md.push_str("## Headline ratios\n\n| ratio | median (min–max) | target |\n|---|---|---|\n");
        let targets: BTreeMap<&str, &str> = [
            ("W1/W0", "≥ 0.90"),
            ("(W1-A)/(W0-A)", "≤ 2.0"),
            ("(W2-W1)/(W0-A)", "≤ 0.25"),
            (
                "(W1d-W2)/(W0-A)",
                "≤ 0 (`{}` without agent cluster costs no more than W2)",
            ),
            ("(D1-A)/(C-A)", "≤ 1.5"),
            ("(D1-A)/(W1-A)", "≤ 0.3"),
        ]
        .into_iter()
        .collect();
        for (name, x, y) in THROUGHPUT {
            md.push_str(&format!(
                "| throughput {name} | {} | {} |\n",
                show(rps_ratio(s, x, y), 3),
                targets.get(name).unwrap_or(&"")
            ));
        }
        for (name, [x, y, z, w]) in CPU {
            md.push_str(&format!(
                "| CPU/request {name} | {} | {} |\n",
                show(cpu_ratio(s, x, y, z, w), 2),
                targets.get(name).unwrap_or(&"")
            ));
        }
        md.push_str(&format!(
            "| p99 latency W2 − A at {} req/s (ms) | {} | ≤ 0.2 |\n",
            c["latency_rate"],
            show(p99_diff(s, "W2", "A"), 3)
        ));
        for x in P99_CONTEXT {
            if let Some(d) = p99_diff(s, x, "A").filter(|d| d.n > 0) {
                md.push_str(&format!("| p99 latency {x} − A (ms) | {} |  |\n", d.show(3)));
            }
        }
        md.push('\n');
        let befores: Vec<&str> = ["W1", "W2", "D1"]
            .into_iter()
            .filter(|x| self.configs.iter().any(|c| c.label == format!("{x}-before")))
            .collect();
        if !befores.is_empty() {
            md.push_str("Before/after in this run (an earlier build in the `-before` configurations), medians of per-round differences (min–max):\n\n| X | X − X-before, CPU µs/request | (X − A)/(W0 − A) | (X-before − A)/(W0 − A) | p99 X − X-before, ms |\n|---|---|---|---|---|\n");
            for x in befores {
                let before = format!("{x}-before");
                let p99 = p99_diff(s, x, &before).filter(|d| d.n > 0);
                md.push_str(&format!(
                    "| {x} | {} | {} | {} | {} |\n",
                    show(cpu_diff(s, x, &before), 1),
                    show(cpu_ratio(s, x, "A", "W0", "A"), 2),
                    show(cpu_ratio(s, &before, "A", "W0", "A"), 2),
                    show(p99, 3)
                ));
            }
            md.push('\n');
        }
        let amplified: Vec<&Config> = self.configs.iter().filter(|c| c.label.starts_with("W1-x10-")).collect();
        if !amplified.is_empty() {
            md.push_str(&format!(
                "## Per-operation costs (`just bench-ops`)\n\nEach variant is W1 with one operation repeated ten extra times per request (cargo feature `bench-x10-<op>` of `wasm-filter`). The operation's marginal cost is a tenth of the variant's CPU per request over W1, the median of per-round values (min–max); repeated, it is measured warm, so a single first call can cost more (its code and data out of the caches). W0 − A, the V8 boundary of an empty filter, in this run: {} µs/request.\n\n| operation | what | µs per operation | / (W0 − A) |\n|---|---|---|---|\n",
                show(cpu_diff(s, "W0", "A"), 1)
            ));
            for cfg in amplified {
                let op = cfg.label.trim_start_matches("W1-x10-");
                let what = OPS.iter().find(|(o, _)| *o == op).map_or("", |(_, w)| w);
                let each = per_round(s, &[&cfg.label, "W1"], |r| (r[0].cpu_us - r[1].cpu_us) / EXTRA_REPEATS);
                let share = per_round(s, &[&cfg.label, "W1", "W0", "A"], |r| {
                    ratio((r[0].cpu_us - r[1].cpu_us) / EXTRA_REPEATS, r[2].cpu_us - r[3].cpu_us)
                });
                md.push_str(&format!("| {op} | {what} | {} | {} |\n", show(each, 2), show(share, 3)));
            }
            md.push('\n');
        }
        if self.configs.iter().any(|c| c.label.starts_with('D')) {
            md.push_str("## The native build (dynamic module)\n\nProxy CPU per request over the router alone (X − A), µs, median of per-round differences (min–max):\n\n| X | what | X − A µs/request |\n|---|---|---|\n");
            for l in OVER_A {
                if let Some(cfg) = self.configs.iter().find(|c| c.label == l) {
                    md.push_str(&format!("| {l} | {} | {} |\n", cfg.what, show(cpu_diff(s, l, "A"), 1)));
                }
            }
            md.push('\n');
        }
        let tenant_pairs: Vec<(&str, &str)> = [("W1t", "W1"), ("D1t", "D1")]
            .into_iter()
            .filter(|(x, y)| [x, y].iter().all(|l| self.configs.iter().any(|c| c.label == **l)))
            .collect();
        if !tenant_pairs.is_empty() {
            md.push_str("## The tenant dimension\n\nExtra proxy CPU per request of the tenant dimension (a tenant header on every request, hashed with a key), median of per-round differences (min–max):\n\n| with − without | µs/request | over the filter's own cost (X − A) |\n|---|---|---|\n");
            for (x, y) in tenant_pairs {
                md.push_str(&format!(
                    "| {x} − {y} | {} | {} |\n",
                    show(cpu_diff(s, x, y), 2),
                    show(cpu_ratio(s, x, y, y, "A"), 3)
                ));
            }
            md.push('\n');
        }
        md.push_str("## Configurations\n\n| config | what | proxy CPU µs/request | requests/s at saturation | p50 ms | p99 ms | RSS after (MiB) |\n|---|---|---|---|---|---|---|\n");
        for cfg in self.configs {
            let l = cfg.label.as_str();
            md.push_str(&format!(
                "| {l} | {} | {} | {} | {} | {} | {} |\n",
                cfg.what,
                show(summary(s, l, |x| Some(x.cpu_us)), 1),
                show(summary(s, l, |x| Some(x.rps)), 0),
                show(summary(s, l, |x| x.p50_ms), 3),
                show(summary(s, l, |x| x.p99_ms), 3),
                self.rss_kib
                    .iter()
                    .find(|(k, _)| k == l)
                    .map_or("".into(), |(_, v)| format!("{:.0}", *v as f64 / 1024.0)),
            ));
        }
        if let Some((cfgs, bs)) = self.breakdown {
            let rounds = bs.iter().map(|x| x.round).max().map_or(0, |r| r + 1);
            md.push_str(&format!(
                "\n## Cost breakdown (separate interleaved run, {rounds} rounds)\n\n"
            ));
            md.push_str("Each variant is the filter built with one stage skipped (cargo feature `bench-skip-<stage>` of `wasm-filter`); the stage's cost is the median per-round CPU difference to the full filter, also as a multiple of the V8 boundary (W0 − A).\n\n");
            md.push_str(&format!(
                "Full filter over the empty one, W1 − W0: {} µs/request; the boundary, W0 − A: {} µs/request.\n\n",
                show(cpu_diff(bs, "W1", "W0"), 1),
                show(cpu_diff(bs, "W0", "A"), 1)
            ));
            md.push_str("| variant | stage skipped | saved µs/request | saved / (W0 − A) |\n|---|---|---|---|\n");
            for cfg in cfgs
                .iter()
                .filter(|c| c.label.starts_with("W1-") || c.label == "W2-record")
            {
                let base = if cfg.label == "W2-record" { "W2" } else { "W1" };
                let stage = cfg.label.split_once('-').map_or("", |(_, s)| s);
                let what = STAGES.iter().find(|(s, _)| *s == stage).map_or("", |(_, w)| w);
                md.push_str(&format!(
                    "| {} | {what} | {} | {} |\n",
                    cfg.label,
                    show(cpu_diff(bs, base, &cfg.label), 1),
                    show(cpu_ratio(bs, base, &cfg.label, "W0", "A"), 2)
                ));
            }
        }
        if let Some((cfgs, g)) = self.grpc {
            md.push_str(&crate::results_grpc::markdown(cfgs, g, &c["latency_rate"]));
        }
        md.push_str("\n## Kernel side (eBPF)\n\n");
        match self.ebpf {
            Some(e) => {
                md.push_str(&format!(
                    "Loopback connect + accept + close cycles per second, generator pinned to one CPU and the agent to the other, interleaved rounds with the agent running (programs attached, as deployed: no run statistics) and stopped. The programs' run times come from one more round with `--program-stats true` (`BPF_ENABLE_STATS`), not counted in the ratio.\n\n| figure | median (min–max) |\n|---|---|\n| connects/s without | {} |\n| connects/s with | {} |\n| ratio with/without (target ≥ 0.95) | {} |\n| events produced / lost (target 0 lost) | {} / {} |\n| program run time per emitted event (ns) | {} |\n\n",
                    e.without_per_s.show(0), e.with_per_s.show(0), e.connect_ratio.show(3), e.produced, e.lost,
                    e.ns_per_event.map_or("n/a (no kernel run statistics)".into(), |v| format!("{v:.0}")),
                ));
                if !e.programs.is_empty() {
                    md.push_str("| program | runs (statistics round) | ns per run |\n|---|---|---|\n");
                    for (n, r, ns) in &e.programs {
                        md.push_str(&format!("| {n} | {r} | {ns:.0} |\n"));
                    }
                }
            }
            None => md.push_str("Not measured in this run.\n"),
        }
        md.push_str("\n## The agent\n\n");
        match self.agent {
            Some(a) => md.push_str(&format!(
                "One run each (the CPU at 10,000 calls/s: several windows of one agent), the agent pinned to one CPU and the gRPC client (`grayscope-bench report-loop`, batches of {} records naming one real connection, so each is linked through the table) to the other.\n\n| figure | value | target |\n|---|---|---|\n| `Report` ingestion, records/s (4 concurrent calls) | {:.0} | ≥ 200,000 |\n| agent CPU at 10,000 linked calls/s, % of a core (CPU time of all its threads per record accepted, × 10,000), median (min–max) of {} windows of {} s | {} (idle: {:.2}) | ≤ 2 |\n| agent RSS after ≥ 100,000 connections opened and closed within the grace period, MiB | {:.1} ({:.0} table entries, both ends of each connection, the table bound 200,000; {:.1} MiB with the table empty, {:.0} bytes per entry) | ≤ 64 |\n",
                crate::agent_cost::batch_size(), a.records_per_s, crate::agent_cost::CPU_WINDOWS, crate::agent_cost::WINDOW_S, a.cpu_pct_at_10k.show(2), a.cpu_pct_idle, a.rss_mib_100k, a.tracked_at_rss, a.rss_mib_empty, a.bytes_per_entry
            )),
            None => md.push_str("Not measured in this run.\n"),
        }
        if !self.vm_memory.is_empty() {
            md.push_str(&crate::vm_memory::markdown(self.vm_memory));
        }
        if let Some(w) = self.watch_delay {
            md.push_str(&format!(
                "\nDelay from a call's end (its answer read by the client) to its linked record on `Watch`, through a W3 Envoy (the filter's default flush interval, 1 s) and the tracing agent: {} calls on fresh connections at 50/s, {} linked records arrived (a call whose record had not arrived 6 s after the last call counts as ∞). p50 {:.1} ms, **p99 {:.1} ms** (target ≤ flush interval + 50 ms = 1050 ms).\n",
                w.calls, w.linked, w.p50_ms, w.p99_ms
            ));
        }
        if !self.not_measured.is_empty() {
            md.push_str("\n## Not measured (null in RESULTS.json)\n\n");
            for (k, why) in &self.not_measured {
                md.push_str(&format!("- `{k}`: {why}\n"));
            }
        }
        md.push_str(NOTES_HEADING);
        md.push_str(notes);
        md
    }
}

/// The hand-written part of RESULTS.md starts here; the harness keeps whatever follows.
pub const NOTES_HEADING: &str = "\n## Notes (hand-written, kept by the harness)\n";

/// The hand-written notes of an existing RESULTS.md.
pub fn existing_notes(md: &str) -> String {
    md.split_once(NOTES_HEADING)
        .map(|(_, n)| n.to_owned())
        .unwrap_or_else(|| "\n".to_owned())
}

fn show(s: Option<Summary>, digits: usize) -> String {
    s.map_or("n/a".into(), |s| s.show(digits))
}

/// The fixed-rate latency's part of the "Run:" line (none when the run measured no latency).
fn latency_method(c: &Value) -> String {
    match c["latency_rate"].as_u64() {
        Some(rate) if rate > 0 => format!(
            "; latency at {rate} requests/s in all over {} connections for {} s, {} s after the round's saturating load on the same proxy",
            crate::run::LATENCY_CLIENTS,
            c["latency_duration_s"],
            c["latency_settle_s"]
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_line_states_the_latency_method_only_when_latency_was_measured() {
        let measured = serde_json::json!({"latency_rate": 1000, "latency_duration_s": 2.0, "latency_settle_s": 0.5});
        assert_eq!(
            latency_method(&measured),
            "; latency at 1000 requests/s in all over 4 connections for 2.0 s, 0.5 s after the round's saturating load on the same proxy"
        );
        assert_eq!(latency_method(&serde_json::json!({"latency_rate": 0})), "");
    }

    fn sample(round: usize, label: &str, cpu_us: f64, rps: f64) -> Sample {
        Sample {
            round,
            label: label.into(),
            cpu_us,
            rps,
            requests: 1,
            errors: 0,
            p50_ms: None,
            p99_ms: None,
        }
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios() {
        let s = vec![
            sample(0, "A", 50.0, 100.0),
            sample(0, "W0", 60.0, 80.0),
            sample(0, "W1", 80.0, 60.0),
            sample(1, "A", 100.0, 50.0),
            sample(1, "W0", 110.0, 40.0),
            sample(1, "W1", 120.0, 40.0),
            sample(2, "A", 50.0, 100.0),
            sample(2, "W0", 60.0, 80.0),
        ];
        // Round 2 lacks W1 and is left out of every ratio that needs it.
        let r = cpu_ratio(&s, "W1", "A", "W0", "A").unwrap();
        assert_eq!((r.median, r.min, r.max, r.n), (2.5, 2.0, 3.0, 2));
        assert_eq!(rps_ratio(&s, "W1", "W0").unwrap().median, 0.875);
        assert!(rps_ratio(&s, "W2", "A").is_none());
    }

    #[test]
    fn native_ratios_are_per_round_too() {
        let s = vec![
            sample(0, "A", 50.0, 100.0),
            sample(0, "C", 60.0, 90.0),
            sample(0, "W1", 90.0, 60.0),
            sample(0, "D1", 62.0, 90.0),
            sample(1, "A", 100.0, 50.0),
            sample(1, "C", 120.0, 45.0),
            sample(1, "W1", 180.0, 30.0),
            sample(1, "D1", 130.0, 40.0),
        ];
        let r = cpu_ratio(&s, "D1", "A", "C", "A").unwrap();
        assert!((r.median - 1.35).abs() < 1e-12 && (r.min, r.max) == (1.2, 1.5), "{r:?}");
        let r = cpu_ratio(&s, "D1", "A", "W1", "A").unwrap();
        assert_eq!((r.min, r.max), (0.3, 0.375));
        assert_eq!(cpu_diff(&s, "D1", "A").unwrap().median, 21.0);
    }

    /// W1 − A is 20 µs in every round; W0 − A is 10, 5 and 4 µs, then −5 and −8 µs: two rounds in which the empty
    /// filter measured cheaper than the router alone (noise larger than the boundary's cost).
    fn rounds_with_a_negative_boundary() -> Vec<Sample> {
        [10.0, 5.0, 4.0, -5.0, -8.0]
            .iter()
            .enumerate()
            .flat_map(|(r, boundary)| {
                [
                    sample(r, "A", 50.0, 100.0),
                    sample(r, "W0", 50.0 + boundary, 90.0),
                    sample(r, "W1", 70.0, 80.0),
                ]
            })
            .collect()
    }

    #[test]
    fn a_round_whose_denominator_is_not_above_zero_ranks_above_every_measured_ratio() {
        // Per round 2, 4 and 5, then 20/−5 and 20/−8. Those two are not ratios of costs: the smaller the boundary
        // measured, the larger the ratio, so they belong above 5, not below 2 (where −4 and −2.5 would sort, and
        // put the median at 2).
        let r = cpu_ratio(&rounds_with_a_negative_boundary(), "W1", "A", "W0", "A").unwrap();
        assert_eq!((r.median, r.min, r.max, r.n), (5.0, 2.0, f64::INFINITY, 5));
    }

    #[test]
    fn the_tables_say_in_how_many_rounds_a_ratio_was_unbounded() {
        let s = rounds_with_a_negative_boundary();
        let report = Report {
            context: serde_json::json!({"latency_rate": 0}),
            configs: &[],
            samples: &s,
            rss_kib: &[],
            breakdown: None,
            ebpf: None,
            agent: None,
            watch_delay: None,
            vm_memory: &[],
            grpc: None,
            not_measured: BTreeMap::new(),
        };
        let md = report.markdown("");
        let row = md
            .lines()
            .find(|l| l.starts_with("| CPU/request (W1-A)/(W0-A) |"))
            .unwrap_or_else(|| panic!("no (W1-A)/(W0-A) row:\n{md}"));
        assert!(row.contains("| 5.00 (2.00–∞; ∞ in 2 of 5 rounds) |"), "{row}");
        let json = report.json();
        assert_eq!(
            json["ratios_range"]["(W1-A)/(W0-A)"]["infinite"], 2,
            "{}",
            json["ratios_range"]
        );
    }

    #[test]
    fn notes_survive_a_rewrite() {
        let md = format!("generated{NOTES_HEADING}my notes\n");
        assert_eq!(existing_notes(&md), "my notes\n");
        assert_eq!(existing_notes("no notes yet"), "\n");
    }
}
