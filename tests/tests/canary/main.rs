//! Judging a canary per interface, end to end: the real Envoy with the built filter in front of a demo service, the
//! real agent (as root), and a real Prometheus scraping both every second and evaluating the shipped recording rules
//! every second. Traffic comes in three phases; in each, the shipped Flagger MetricTemplates (rendered as Flagger
//! renders them) and the Argo Rollouts AnalysisTemplate (args resolved, conditions evaluated as Argo does) are run
//! against that Prometheus at the phase's end, and so is every panel of the Grafana dashboard.
//!
//! Time is compressed: scrape and evaluation every 1 s, and an 8 s window where a cluster would use minutes (the
//! templates' `interval`/`window` variable, and `[1m]` of the recording rules rewritten to `[8s]` for this
//! Prometheus only). Each phase lasts 11 s, so its last 8 s hold only its own traffic (see `traffic`).
//!
//! # Layout
//! - `traffic`: the demo service and the three phases of traffic.
//! - `shipped`: the files of `istio/canary/`, made ready to run (rendered, resolved, substituted).
//! - `flagger`, `argo`: how Flagger and Argo Rollouts render, resolve and judge, mirrored.
//! - `names`: every metric and label a query names must exist in Prometheus.

mod argo;
mod flagger;
mod names;
mod shipped;
mod traffic;

use std::{collections::BTreeMap, time::Duration};

use integration_tests::{
    agent::{self, Agent},
    envoy::Envoy,
    prometheus::{pod_scrape_config, Prometheus, Sample},
    stack,
};
use shipped::{argo_metrics, dashboard_exprs, dashboard_variables, documents, flagger_checks, read};
use traffic::{drive, Service, RATE};

/// The rate window of every query: minutes on a cluster, 8 s of 1 s scrapes here.
pub const WINDOW: &str = "8s";
/// Calls an interface needs in the window, per version, for a verdict (the shipped default).
pub const MIN_CALLS: &str = "20";

/// Samples keyed by `service/method gray_version` (gray_version omitted when absent).
fn by_interface(samples: &[Sample]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .map(|s| {
            let mut k = format!("{}/{}", s.label("service"), s.label("method"));
            if !s.label("gray_version").is_empty() {
                k = format!("{k} {}", s.label("gray_version"));
            }
            (k, s.value)
        })
        .collect()
}

const GET: &str = "shop.v1.Orders/Get";
const CHARGE: &str = "shop.v1.Payments/Charge";
const HTTP: &str = "orders/GET /api/v1/orders/{id}";

/// Prometheus's `histogram_quantile` for one series of (upper bound, cumulative rate) buckets
/// (`bucketQuantile` in promql/quantile.go): sorted by bound, made monotonic, linear inside the bucket of the rank.
fn histogram_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut max = 0.0_f64;
    for b in &mut buckets {
        max = max.max(b.1);
        b.1 = max;
    }
    let n = buckets.len();
    if n < 2 || buckets[n - 1].0 != f64::INFINITY || buckets[n - 1].1 == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * buckets[n - 1].1;
    let b = buckets[..n - 1].iter().position(|b| b.1 >= rank).unwrap_or(n - 1);
    if b == n - 1 {
        return buckets[n - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[test]
fn histogram_quantile_interpolates_as_prometheus_does() {
    // The promtool unit tests' numbers: all calls in (10, 25], or all in (50, 100].
    let inf = f64::INFINITY;
    let low = vec![(10.0, 0.0), (25.0, 1.0), (50.0, 1.0), (inf, 1.0)];
    assert!((histogram_quantile(0.99, low) - 24.85).abs() < 1e-9);
    let high = vec![(inf, 2.0), (50.0, 0.0), (100.0, 2.0)];
    assert!((histogram_quantile(0.5, high) - 75.0).abs() < 1e-9);
    // Above the last finite bound: that bound. No calls: NaN.
    assert_eq!(histogram_quantile(0.99, vec![(50.0, 0.0), (inf, 1.0)]), 50.0);
    assert!(histogram_quantile(0.5, vec![(50.0, 0.0), (inf, 0.0)]).is_nan());
}

#[track_caller]
fn assert_within(what: &str, got: f64, lo: f64, hi: f64) {
    assert!((lo..=hi).contains(&got), "{what}: {got} not in [{lo}, {hi}]");
}

#[test]
fn flagger_argo_rules_and_dashboard_judge_each_interface_on_a_real_prometheus() {
    let service = Service::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let agent = agent::privileged().then(|| Agent::start(&socket, &[]));
    let envoy = Envoy::start(&stack::bootstrap(
        r#"{"service": "orders"}"#,
        service.http_port,
        service.grpc_port,
        &dir.path().join("access.log").display().to_string(),
        &socket.display().to_string(),
    ));
    let rules = read("istio/canary/prometheus/grayscope-canary.rules.yml");
    assert!(rules.contains("[1m]"));
    let rules = rules.replace("[1m]", &format!("[{WINDOW}]"));
    let prom = Prometheus::start(
        &pod_scrape_config(
            "grayscope-canary.rules.yml",
            envoy.admin,
            agent.as_ref().map(|a| a.metrics_addr.as_str()),
        ),
        &[("grayscope-canary.rules.yml", &rules)],
    );
    prom.wait_for("up", Duration::from_secs(30), |s| {
        s.len() == 1 + usize::from(agent.is_some()) && s.iter().all(|s| s.value == 1.0)
    });

    let phases = drive(&envoy);
    assert_eq!(phases.len(), 3, "{phases:?}");
    let at = Ends {
        broken: phases[0].0,
        healthy: phases[1].0,
        no_v2: phases[2].0,
    };
    // Everything up to the last phase's end is scraped and evaluated once a rule has run 1 s past it.
    prom.wait_for("timestamp(grayscope:canary_min_calls)", Duration::from_secs(30), |s| {
        s.first().is_some_and(|s| s.value > at.no_v2 + 1.0)
    });

    recording_rules(&prom, &at, &phases[0].1.to_string());
    let mut exprs = flagger_verdicts(&prom, &at);
    exprs.extend(argo_verdicts(&prom, &at));
    names_and_panels(&prom, &at, exprs, agent.is_some());
}

/// When each phase ended (unix seconds): the queries run at these instants.
#[derive(Clone, Copy)]
struct Ends {
    broken: f64,
    healthy: f64,
    no_v2: f64,
}

/// The recorded rates, error ratios, quantiles and deltas, against the traffic sent.
fn recording_rules(prom: &Prometheus, at: &Ends, report: &str) {
    let Ends { broken, healthy, no_v2 } = *at;
    let calls = by_interface(&prom.query_at("interface_version:grayscope_interface_calls:rate1m", broken));
    assert_eq!(calls.len(), 6, "{calls:?}");
    for (k, rate) in &calls {
        // Paced at RATE calls/s; rate() over 8 s of 1 s scrapes.
        assert_within(&format!("calls/s of {k} ({report})"), *rate, RATE * 0.8, RATE * 1.2);
    }
    let errors = by_interface(&prom.query_at("interface_version:grayscope_interface_error_ratio:rate1m", broken));
    assert_eq!(errors.len(), 6, "{errors:?}");
    for (k, ratio) in &errors {
        if k == &format!("{CHARGE} v2") {
            // Every 5th call of each thread fails; the window holds ~80 calls, so 0.2 within a call or two.
            assert_within(&format!("error ratio of {k}"), *ratio, 0.17, 0.23);
        } else {
            assert_eq!(*ratio, 0.0, "error ratio of {k}");
        }
    }
    // Quantiles: exactly what Prometheus's histogram_quantile makes of the recorded bucket rates of the same
    // evaluation, and within the bucket of the service's delay.
    let buckets = prom.query_at(
        "interface_version:grayscope_interface_call_duration_milliseconds_bucket:rate1m",
        broken,
    );
    for (q, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
        let quantiles = by_interface(&prom.query_at(
            &format!("interface_version:grayscope_interface_call_duration_milliseconds:{name}_rate1m"),
            broken,
        ));
        assert_eq!(quantiles.len(), 6, "{quantiles:?}");
        for (k, ms) in &quantiles {
            let mine: Vec<(f64, f64)> = buckets
                .iter()
                .filter(|b| by_interface(std::slice::from_ref(b)).contains_key(k))
                .map(|b| (b.label("le").to_ascii_lowercase().parse().expect("le"), b.value))
                .collect();
            let expected = histogram_quantile(q, mine.clone());
            assert!(
                (ms - expected).abs() < 1e-9,
                "{name} of {k}: {ms}, buckets say {expected}"
            );
            // The service's delay is a floor: 110 ms is in (100, 250], 300 ms in (250, 500]. A noisy machine can
            // only push calls up, so only the median is held to the bucket.
            let (lo, hi) = if k == &format!("{CHARGE} v2") {
                (250.0, 500.0)
            } else {
                (100.0, 250.0)
            };
            assert!(*ms >= lo, "{name} of {k}: {ms} < {lo}; buckets {mine:?}");
            if name == "p50" {
                assert_within(&format!("{name} of {k}"), *ms, lo, hi);
            }
        }
    }
    let delta = by_interface(&prom.query_at("interface:grayscope_canary_error_ratio_delta:rate1m", broken));
    assert_eq!(delta.len(), 3, "{delta:?}");
    assert_within("error ratio delta of Charge", delta[CHARGE], 0.17, 0.23);
    assert_eq!((delta[GET], delta[HTTP]), (0.0, 0.0));
    let p99 = by_interface(&prom.query_at("interface:grayscope_canary_p99_ratio:rate1m", broken));
    assert_eq!(p99.len(), 3, "{p99:?}");
    // All in (250, 500] against all in (100, 250]: 497.5 / 248.5 = 2.0.
    assert_within("p99 ratio of Charge", p99[CHARGE], 1.5, 5.0);
    assert_within("p99 ratio of Get", p99[GET], 0.4, 1.5);
    assert_within("p99 ratio of HTTP", p99[HTTP], 0.4, 1.5);
    assert!(prom
        .query_at("interface:grayscope_canary_not_enough_data:rate1m", broken)
        .is_empty());
    // Healthy: no delta; no v2: "not enough data" for every interface, and no delta at all.
    let delta = by_interface(&prom.query_at("interface:grayscope_canary_error_ratio_delta:rate1m", healthy));
    assert!(delta.values().all(|d| *d == 0.0) && delta.len() == 3, "{delta:?}");
    assert!(prom
        .query_at("interface:grayscope_canary_error_ratio_delta:rate1m", no_v2)
        .is_empty());
    assert!(prom
        .query_at("interface:grayscope_canary_p99_ratio:rate1m", no_v2)
        .is_empty());
    let not_enough = by_interface(&prom.query_at("interface:grayscope_canary_not_enough_data:rate1m", no_v2));
    assert_eq!(not_enough.len(), 3, "{not_enough:?}");
}

/// The Flagger checks' verdicts in each phase; returns their queries.
fn flagger_verdicts(prom: &Prometheus, at: &Ends) -> Vec<(String, String)> {
    let Ends { broken, healthy, no_v2 } = *at;
    let checks = flagger_checks();
    assert_eq!(checks.len(), 2);
    for c in &checks {
        let at = |t| flagger::judge(&prom.query_at(&c.query, t), c.min, c.max);
        eprintln!(
            "Flagger {}: broken {:?}, healthy {:?}, no v2 {:?}",
            c.name,
            at(broken),
            at(healthy),
            at(no_v2)
        );
        match (c.name.contains("success-rate"), at(broken)) {
            // Only Charge fails, 20 %: the worst interface's success rate is 80 %.
            (true, flagger::Verdict::Fail(v)) => assert_within(&c.name, v, 77.0, 83.0),
            (false, flagger::Verdict::Fail(v)) => assert_within(&c.name, v, 1.5, 5.0),
            (_, other) => panic!("{}: broken canary gave {other:?}\n{}", c.name, c.query),
        }
        assert!(
            matches!(at(healthy), flagger::Verdict::Pass(_)),
            "{}: healthy gave {:?}",
            c.name,
            at(healthy)
        );
        assert_eq!(at(no_v2), flagger::Verdict::NoData, "{}: no v2 traffic", c.name);
    }
    checks.into_iter().map(|c| (c.name, c.query)).collect()
}

/// The Argo measurements' phases in each phase, and which interface fails; returns their queries.
fn argo_verdicts(prom: &Prometheus, at: &Ends) -> Vec<(String, String)> {
    let Ends { broken, healthy, no_v2 } = *at;
    let metrics = argo_metrics();
    assert_eq!(metrics.len(), 2);
    for (name, q, success, failure) in &metrics {
        let values = |t| prom.query_at(q, t);
        let phase = |t| argo::evaluate(&values(t).iter().map(|s| s.value).collect::<Vec<_>>(), success, failure);
        eprintln!("Argo {name}: broken {:?} {:?}", phase(broken), values(broken));
        assert_eq!(phase(broken), argo::Phase::Failed, "{name}: broken");
        // Because of that one method: the only interface outside the condition is Charge.
        let mut culprits = Vec::new();
        for s in values(broken) {
            if argo::evaluate(&[s.value], success, failure) != argo::Phase::Successful {
                culprits.push(format!("{}/{}", s.label("service"), s.label("method")));
            }
        }
        assert_eq!(culprits, [CHARGE], "{name}: interfaces failing in the broken phase");
        assert_eq!(values(broken).len(), 3, "{name}: one value per interface");
        assert_eq!(phase(healthy), argo::Phase::Successful, "{name}: healthy");
        assert_eq!(phase(no_v2), argo::Phase::Inconclusive, "{name}: no v2 traffic");
    }
    metrics.into_iter().map(|(n, q, ..)| (n, q)).collect()
}

/// Every query names only what exists (and the check can fail), and every panel and variable has data.
fn names_and_panels(prom: &Prometheus, at: &Ends, mut exprs: Vec<(String, String)>, agent_running: bool) {
    for doc in documents("istio/canary/prometheus/grayscope-canary.rules.yml") {
        for rule in doc["groups"][0]["rules"].as_array().expect("rules") {
            let expr = rule["expr"]
                .as_str()
                .expect("expr")
                .replace("[1m]", &format!("[{WINDOW}]"));
            exprs.push((rule["record"].as_str().expect("record").to_owned(), expr));
        }
    }
    let panels = dashboard_exprs(agent_running);
    exprs.extend(panels.iter().cloned());
    for (what, expr) in &exprs {
        let unknown = names::unknown(prom, expr, 600);
        assert!(
            unknown.is_empty(),
            "{what} names what Prometheus never saw: {unknown:?}\n{expr}"
        );
    }
    for (what, expr) in &panels {
        assert!(
            !prom.query_at(expr, at.broken).is_empty(),
            "dashboard panel {what} has no data:\n{expr}"
        );
    }
    // The VM panel's two lines meet on a healthy proxy: each live VM's heartbeat reads as one VM, and this Envoy
    // (one worker) runs two.
    let vms = |ref_id: &str| -> f64 {
        let title = format!("Filter VMs per pod: live and expected \"{ref_id}\"");
        let (_, expr) = panels.iter().find(|(what, _)| *what == title).expect("the VM panel");
        prom.query_at(expr, at.broken).iter().map(|s| s.value).sum()
    };
    assert_eq!(vms("B"), 2.0, "expected VMs");
    assert!((vms("A") - 2.0).abs() < 0.5, "live VMs: {}", vms("A"));
    for (name, selector, label) in dashboard_variables() {
        let unknown = names::unknown(prom, &selector, 600);
        assert!(
            unknown.is_empty(),
            "variable {name} names what Prometheus never saw: {unknown:?}"
        );
        let values: Vec<String> = prom
            .query_at(&selector, at.broken)
            .iter()
            .map(|s| s.label(&label).to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        assert!(
            !values.is_empty(),
            "variable {name}: no values of {label} in {selector}"
        );
    }
    // The check can fail: a misspelt metric, or a label the filter does not emit, is caught.
    assert_eq!(
        names::unknown(prom, "sum(rate(grayscope_interface_call_total[8s]))", 600),
        ["metric grayscope_interface_call_total: no such series"]
    );
    assert_eq!(
        names::unknown(
            prom,
            r#"sum by (version) (grayscope_interface_calls_total{gray_verison="v2"})"#,
            600
        ),
        [
            "label gray_verison of grayscope_interface_calls_total: on none of its series",
            "label version (by/on/ignoring/label_replace): on none of the selected series",
        ]
    );
}
