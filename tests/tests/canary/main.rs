//! Judging a canary per interface, end to end: the real Envoy with the built filter in front of a demo service, the
//! real agent (as root), and a real Prometheus scraping both every second and evaluating the shipped recording rules
//! every second. Traffic comes in three phases; in each, the shipped Flagger MetricTemplates (rendered as Flagger
//! renders them) and the Argo Rollouts AnalysisTemplate (args resolved, conditions evaluated as Argo does) are run
//! against that Prometheus at the phase's end, and so is every panel of the Grafana dashboard.
//!
//! Time is compressed: scrape and evaluation every 1 s, and an 8 s window where a cluster would use minutes (the
//! templates' `interval`/`window` variable, and `[1m]` of the recording rules rewritten to `[8s]` for this
//! Prometheus only). Each phase lasts 11 s, so its last 8 s hold only its own traffic.
//!
//! Every stream makes 20 calls/s, paced. The service answers after 30 ms, so each call lands in Envoy's (25, 50] ms
//! bucket with 20 ms of slack for a noisy machine. In the broken phase, `shop.v1.Payments/Charge` of `v2` answers
//! after 80 ms ((50, 100] bucket: 50 ms slower) and fails every 5th call with UNAVAILABLE (20 %, exactly).

mod argo;
mod flagger;
mod names;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use integration_tests::{
    agent::{self, Agent},
    envoy::Envoy,
    paths,
    prometheus::{Prometheus, Sample},
    stack,
};
use serde_json::json;

const WINDOW: &str = "8s";
const PHASE_SECONDS: f64 = 11.0;
const RATE: f64 = 20.0;
/// Calls an interface needs in the window, per version, for a verdict (the shipped default).
const MIN_CALLS: &str = "20";

/// The demo service (gRPC and HTTP, `tests/peers/canary_peer.py serve`); killed on drop.
struct Service {
    child: Child,
    grpc_port: u16,
    http_port: u16,
}

impl Service {
    fn start() -> Self {
        let child = Command::new(paths::python())
            .arg(paths::tests_file("peers/canary_peer.py"))
            .arg("serve")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn canary_peer serve");
        let mut s = Self {
            child,
            grpc_port: 0,
            http_port: 0,
        };
        let mut line = String::new();
        BufReader::new(s.child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read ports");
        let ports: Vec<u16> = line
            .trim()
            .strip_prefix("PORTS ")
            .map(|p| p.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        assert_eq!(ports.len(), 2, "canary_peer said {line:?}");
        (s.grpc_port, s.http_port) = (ports[0], ports[1]);
        s
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stream(name: &str, kind: &str, path: &str, version: &str, delay_ms: u32, fail_every: u32) -> serde_json::Value {
    json!({"name": name, "kind": kind, "path": path, "version": version, "delay_ms": delay_ms,
           "fail_every": fail_every, "rate": RATE, "threads": 2})
}

/// The streams of one phase: three interfaces; `v2` as given (None: no v2 traffic at all).
fn streams(v2_charge: Option<(u32, u32)>) -> Vec<serde_json::Value> {
    let mut s = vec![
        stream("get-v1", "grpc", "/shop.v1.Orders/Get", "v1", 30, 0),
        stream("charge-v1", "grpc", "/shop.v1.Payments/Charge", "v1", 30, 0),
        stream("http-v1", "http", "/api/v1/orders/42", "v1", 30, 0),
    ];
    if let Some((delay, fail_every)) = v2_charge {
        s.push(stream("get-v2", "grpc", "/shop.v1.Orders/Get", "v2", 30, 0));
        s.push(stream(
            "charge-v2",
            "grpc",
            "/shop.v1.Payments/Charge",
            "v2",
            delay,
            fail_every,
        ));
        s.push(stream("http-v2", "http", "/api/v1/orders/42", "v2", 30, 0));
    }
    s
}

/// Runs the traffic plan through Envoy; returns each phase's end (unix seconds) and the driver's report.
fn drive(envoy: &Envoy) -> Vec<(f64, serde_json::Value)> {
    let phase = |streams| json!({"seconds": PHASE_SECONDS, "streams": streams});
    let plan = json!({
        // For the dashboard's counters: an invalid version, and a malformed baggage member.
        "extras": [{"path": "/api/v1/orders/1", "headers": {"x-gray-version": "v 2"}},
                   {"path": "/api/v1/orders/1", "headers": {"baggage": "a=1,garbage"}}],
        "phases": [phase(streams(Some((80, 5)))), phase(streams(Some((30, 0)))), phase(streams(None))],
    });
    let out = Command::new(paths::python())
        .arg(paths::tests_file("peers/canary_peer.py"))
        .args([
            "drive",
            "--target",
            &envoy.listener("ingress").to_string(),
            "--plan",
            &plan.to_string(),
        ])
        .output()
        .expect("run canary_peer drive");
    assert!(
        out.status.success(),
        "driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("driver json");
            (v["start"].as_f64().expect("start") + PHASE_SECONDS, v)
        })
        .collect()
}

fn prometheus_config(envoy: &Envoy, agent: Option<&Agent>) -> String {
    // namespace and app: what Istio's Prometheus scrape configuration puts on a pod's series.
    let mut config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [grayscope-canary.rules.yml]\n\
         scrape_configs:\n\
         - job_name: envoy\n  metrics_path: /stats/prometheus\n\
         \x20 static_configs: [{{targets: ['{}'], labels: {{namespace: shop, app: orders}}}}]\n",
        envoy.admin
    );
    if let Some(a) = agent {
        config.push_str(&format!(
            "- job_name: grayscope-agent\n\
             \x20 static_configs: [{{targets: ['{}'], labels: {{namespace: shop, app: orders}}}}]\n",
            a.metrics_addr
        ));
    }
    config
}

fn read(rel: &str) -> String {
    fs::read_to_string(paths::root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The YAML documents of a manifest file, as JSON.
fn documents(rel: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(&read(rel))
        .map(|d| serde_json::Value::deserialize(d).expect("yaml"))
        .collect()
}

/// An instant query at `t` that must succeed and must not return NaN.
fn query(prom: &Prometheus, expr: &str, t: f64) -> Vec<Sample> {
    let samples = prom
        .query(expr, Some(t))
        .unwrap_or_else(|e| panic!("{e}\nquery: {expr}"));
    assert!(
        samples.iter().all(|s| !s.value.is_nan()),
        "NaN (Flagger would pass it) from\n{expr}\n{samples:?}"
    );
    samples
}

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

#[track_caller]
fn assert_within(what: &str, got: f64, lo: f64, hi: f64) {
    assert!((lo..=hi).contains(&got), "{what}: {got} not in [{lo}, {hi}]");
}

/// The shipped MetricTemplates and the example Canary's analysis, rendered for this test's window.
struct FlaggerCheck {
    name: String,
    query: String,
    min: Option<f64>,
    max: Option<f64>,
}

fn flagger_checks() -> Vec<FlaggerCheck> {
    let templates = documents("istio/canary/flagger/metric-templates.yaml");
    let canary = &documents("istio/canary/flagger/canary.yaml")[0];
    let canary_name = canary["metadata"]["name"].as_str().expect("canary name");
    let namespace = canary["metadata"]["namespace"].as_str().expect("canary namespace");
    let target = canary["spec"]["targetRef"]["name"].as_str().expect("targetRef");
    canary["spec"]["analysis"]["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .map(|m| {
            let tname = m["templateRef"]["name"].as_str().expect("templateRef");
            let template = templates
                .iter()
                .find(|t| t["metadata"]["name"] == tname)
                .unwrap_or_else(|| panic!("no MetricTemplate {tname}"));
            let mut variables: BTreeMap<String, String> =
                serde_json::from_value(m["templateVariables"].clone()).expect("templateVariables");
            // Time compression: the window, and the minimum calls for it.
            variables.insert("min_calls".into(), MIN_CALLS.into());
            let model = flagger::Model {
                name: canary_name,
                namespace,
                target,
                interval: WINDOW,
                variables,
            };
            FlaggerCheck {
                name: m["name"].as_str().expect("name").to_owned(),
                query: flagger::render(template["spec"]["query"].as_str().expect("query"), &model),
                min: m["thresholdRange"]["min"].as_f64(),
                max: m["thresholdRange"]["max"].as_f64(),
            }
        })
        .collect()
}

/// The shipped AnalysisTemplate's metrics, args resolved: (name, query, successCondition, failureCondition).
fn argo_metrics() -> Vec<(String, String, String, String)> {
    let t = &documents("istio/canary/argo-rollouts/analysis-template.yaml")[0];
    let mut args: Vec<(String, String)> = t["spec"]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| Some((a["name"].as_str()?.to_owned(), a["value"].as_str()?.to_owned())))
        .collect();
    for (k, v) in [
        ("namespace", "shop"),
        ("app", "orders"),
        ("canary-version", "v2"),
        ("baseline-version", "v1"),
        ("window", WINDOW),
        ("min-calls", MIN_CALLS),
    ] {
        args.retain(|(n, _)| n != k);
        args.push((k.to_owned(), v.to_owned()));
    }
    let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    t["spec"]["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .map(|m| {
            let s = |v: &serde_json::Value| argo::resolve(v.as_str().expect("string"), &args);
            (
                m["name"].as_str().expect("name").to_owned(),
                s(&m["provider"]["prometheus"]["query"]),
                s(&m["successCondition"]),
                s(&m["failureCondition"]),
            )
        })
        .collect()
}

/// The dashboard's expressions with its variables substituted as Grafana would for this selection.
fn dashboard_exprs(agent_running: bool) -> Vec<(String, String)> {
    let d: serde_json::Value = serde_json::from_str(&read("istio/canary/grafana/grayscope-canary.json")).expect("json");
    let subst = |e: &str| {
        e.replace("$__rate_interval", WINDOW)
            .replace("$service", "shop.v1.Payments")
            .replace("$method", "Charge")
            .replace("$canary", "v2")
            .replace("$baseline", "v1")
    };
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().expect("title");
        if title == "Agent health" && !agent_running {
            eprintln!("skipping the Agent health panel - no agent (GRAYSCOPE_SKIP_PRIVILEGED=1)");
            continue;
        }
        for t in p["targets"].as_array().expect("targets") {
            let expr = subst(t["expr"].as_str().expect("expr"));
            assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
            out.push((format!("{title} {}", t["refId"]), expr));
        }
    }
    out
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
        &prometheus_config(&envoy, agent.as_ref()),
        &[("grayscope-canary.rules.yml", &rules)],
    );
    prom.wait_for("up", Duration::from_secs(30), |s| {
        s.len() == 1 + usize::from(agent.is_some()) && s.iter().all(|s| s.value == 1.0)
    });

    let phases = drive(&envoy);
    assert_eq!(phases.len(), 3, "{phases:?}");
    let (broken, healthy, no_v2) = (phases[0].0, phases[1].0, phases[2].0);
    // Everything up to the last phase's end is scraped and evaluated once a rule has run 1 s past it.
    prom.wait_for("timestamp(grayscope:canary_min_calls)", Duration::from_secs(30), |s| {
        s.first().is_some_and(|s| s.value > no_v2 + 1.0)
    });
    let report = |i: usize| phases[i].1.to_string();

    // --- recording rules, at the end of the broken phase --------------------------------------------------------
    let calls = by_interface(&query(
        &prom,
        "interface_version:grayscope_interface_calls:rate1m",
        broken,
    ));
    assert_eq!(calls.len(), 6, "{calls:?}");
    for (k, rate) in &calls {
        // Paced at 20 calls/s; rate() over 8 s of 1 s scrapes.
        assert_within(
            &format!("calls/s of {k} ({})", report(0)),
            *rate,
            RATE * 0.8,
            RATE * 1.2,
        );
    }
    let errors = by_interface(&query(
        &prom,
        "interface_version:grayscope_interface_error_ratio:rate1m",
        broken,
    ));
    assert_eq!(errors.len(), 6, "{errors:?}");
    for (k, ratio) in &errors {
        if k == &format!("{CHARGE} v2") {
            // Every 5th call fails; the window holds ~160 calls, so the ratio is 0.2 within a call or two.
            assert_within(&format!("error ratio of {k}"), *ratio, 0.18, 0.22);
        } else {
            assert_eq!(*ratio, 0.0, "error ratio of {k}");
        }
    }
    for q in ["p50", "p90", "p99"] {
        let quantiles = by_interface(&query(
            &prom,
            &format!("interface_version:grayscope_interface_call_duration_milliseconds:{q}_rate1m"),
            broken,
        ));
        assert_eq!(quantiles.len(), 6, "{quantiles:?}");
        for (k, ms) in &quantiles {
            // Within the bucket of the service's delay: (25, 50] for 30 ms, (50, 100] for 80 ms.
            let (lo, hi) = if k == &format!("{CHARGE} v2") {
                (50.0, 100.0)
            } else {
                (25.0, 50.0)
            };
            assert_within(&format!("{q} of {k}"), *ms, lo, hi);
        }
    }
    let delta = by_interface(&query(
        &prom,
        "interface:grayscope_canary_error_ratio_delta:rate1m",
        broken,
    ));
    assert_eq!(delta.len(), 3, "{delta:?}");
    assert_within("error ratio delta of Charge", delta[CHARGE], 0.18, 0.22);
    assert_eq!((delta[GET], delta[HTTP]), (0.0, 0.0));
    let p99 = by_interface(&query(&prom, "interface:grayscope_canary_p99_ratio:rate1m", broken));
    assert_eq!(p99.len(), 3, "{p99:?}");
    // All in (50, 100] against all in (25, 50]: 99.5 / 49.75 = 2.
    assert_within("p99 ratio of Charge", p99[CHARGE], 1.5, 4.0);
    assert_within("p99 ratio of Get", p99[GET], 0.5, 1.5);
    assert_within("p99 ratio of HTTP", p99[HTTP], 0.5, 1.5);
    assert!(query(&prom, "interface:grayscope_canary_not_enough_data:rate1m", broken).is_empty());
    // Healthy: no delta; no v2: "not enough data" for every interface, and no delta at all.
    let delta = by_interface(&query(
        &prom,
        "interface:grayscope_canary_error_ratio_delta:rate1m",
        healthy,
    ));
    assert!(delta.values().all(|d| *d == 0.0) && delta.len() == 3, "{delta:?}");
    assert!(query(&prom, "interface:grayscope_canary_error_ratio_delta:rate1m", no_v2).is_empty());
    assert!(query(&prom, "interface:grayscope_canary_p99_ratio:rate1m", no_v2).is_empty());
    let not_enough = by_interface(&query(
        &prom,
        "interface:grayscope_canary_not_enough_data:rate1m",
        no_v2,
    ));
    assert_eq!(not_enough.len(), 3, "{not_enough:?}");

    // --- Flagger ------------------------------------------------------------------------------------------------
    let checks = flagger_checks();
    assert_eq!(checks.len(), 2);
    for c in &checks {
        let at = |t| flagger::judge(&query(&prom, &c.query, t), c.min, c.max);
        eprintln!(
            "Flagger {}: broken {:?}, healthy {:?}, no v2 {:?}",
            c.name,
            at(broken),
            at(healthy),
            at(no_v2)
        );
        match (c.name.contains("success-rate"), at(broken)) {
            // Only Charge fails, 20 %: the worst interface's success rate is 80 %.
            (true, flagger::Verdict::Fail(v)) => assert_within(&c.name, v, 78.0, 82.0),
            (false, flagger::Verdict::Fail(v)) => assert_within(&c.name, v, 1.5, 4.0),
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

    // --- Argo Rollouts ------------------------------------------------------------------------------------------
    let metrics = argo_metrics();
    assert_eq!(metrics.len(), 2);
    for (name, q, success, failure) in &metrics {
        let values = |t| query(&prom, q, t);
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

    // --- every query names only what exists, and every panel has data -------------------------------------------
    let mut exprs: Vec<(String, String)> = checks.iter().map(|c| (c.name.clone(), c.query.clone())).collect();
    exprs.extend(metrics.iter().map(|(n, q, ..)| (n.clone(), q.clone())));
    for doc in documents("istio/canary/prometheus/grayscope-canary.rules.yml") {
        for rule in doc["groups"][0]["rules"].as_array().expect("rules") {
            let expr = rule["expr"]
                .as_str()
                .expect("expr")
                .replace("[1m]", &format!("[{WINDOW}]"));
            exprs.push((rule["record"].as_str().expect("record").to_owned(), expr));
        }
    }
    let panels = dashboard_exprs(agent.is_some());
    exprs.extend(panels.iter().cloned());
    for (what, expr) in &exprs {
        let unknown = names::unknown(&prom, expr, 600);
        assert!(
            unknown.is_empty(),
            "{what} names what Prometheus never saw: {unknown:?}\n{expr}"
        );
    }
    for (what, expr) in &panels {
        assert!(
            !query(&prom, expr, broken).is_empty(),
            "dashboard panel {what} has no data:\n{expr}"
        );
    }
    // The check can fail: a misspelt metric, or a label the filter does not emit, is caught.
    assert_eq!(
        names::unknown(&prom, "sum(rate(grayscope_interface_call_total[8s]))", 600),
        ["metric grayscope_interface_call_total: no such series"]
    );
    assert_eq!(
        names::unknown(
            &prom,
            r#"sum by (version) (grayscope_interface_calls_total{gray_verison="v2"})"#,
            600
        ),
        [
            "label gray_verison of grayscope_interface_calls_total: on none of its series",
            "label version (by/on/ignoring/label_replace): on none of the selected series",
        ]
    );
}
