//! The shipped files of `istio/canary/`, turned into what Flagger, Argo Rollouts, Prometheus and Grafana would run
//! against this test's Prometheus: templates rendered, args resolved, variables substituted, windows compressed.

use std::{collections::BTreeMap, fs};

use integration_tests::paths;

use crate::{argo, flagger, MIN_CALLS, WINDOW};

pub fn read(rel: &str) -> String {
    fs::read_to_string(paths::root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The YAML documents of a manifest file, as JSON.
pub fn documents(rel: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(&read(rel))
        .map(|d| serde_json::Value::deserialize(d).expect("yaml"))
        .collect()
}

/// The shipped MetricTemplates and the example Canary's analysis, rendered for this test's window.
pub struct FlaggerCheck {
    pub name: String,
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

pub fn flagger_checks() -> Vec<FlaggerCheck> {
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
pub fn argo_metrics() -> Vec<(String, String, String, String)> {
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

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("istio/canary/grafana/grayscope-canary.json")).expect("dashboard json")
}

/// Grafana's substitution for this selection: one service and method (a single value goes in as it is), the two
/// versions, and the window for `$__rate_interval`.
fn substitute(e: &str) -> String {
    let out = e
        .replace("$__rate_interval", WINDOW)
        .replace("$service", "shop.v1.Payments")
        .replace("$method", "Charge")
        .replace("$canary", "v2")
        .replace("$baseline", "v1");
    assert!(!out.contains('$'), "unsubstituted variable in {out}");
    out
}

/// The dashboard's query variables, `label_values(SELECTOR, LABEL)`: (name, selector substituted, label).
pub fn dashboard_variables() -> Vec<(String, String, String)> {
    let d = dashboard();
    d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"].as_str().expect("variable query");
            let args = q
                .strip_prefix("label_values(")
                .and_then(|a| a.strip_suffix(')'))
                .and_then(|a| a.rsplit_once(','))
                .unwrap_or_else(|| panic!("variable {}: not label_values(selector, label): {q}", v["name"]));
            (
                v["name"].as_str().unwrap_or("").to_owned(),
                substitute(args.0.trim()),
                args.1.trim().to_owned(),
            )
        })
        .collect()
}

/// The dashboard's panel expressions with its variables substituted: (panel and refId, expression).
pub fn dashboard_exprs(agent_running: bool) -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().expect("title");
        if title == "Agent health" && !agent_running {
            eprintln!("skipping the Agent health panel - no agent (GRAYSCOPE_SKIP_PRIVILEGED=1)");
            continue;
        }
        for t in p["targets"].as_array().expect("targets") {
            let expr = substitute(t["expr"].as_str().expect("expr"));
            out.push((format!("{title} {}", t["refId"]), expr));
        }
    }
    out
}
