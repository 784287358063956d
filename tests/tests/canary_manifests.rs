//! The files of `istio/canary/` on their own (no traffic): the rules (canary, per-tenant, and the silent-filter alert)
//! pass `promtool check rules` and their unit tests (`promtool test rules`); the Flagger and Argo Rollouts manifests
//! validate against the projects' CRDs in `shared/schemas/` (the `openAPIV3Schema` of the served version, with
//! `additionalProperties: false` added wherever Kubernetes would prune or, with strict field validation, refuse an
//! unknown field; the CRDs' CEL rules are not checked); the dashboards are current Grafana JSON with the variables
//! the README promises. `canary/main.rs` and `tenants/main.rs` run every query of these files on a real Prometheus,
//! and `vm_failure.rs` the silent-filter alert.

use std::{fs, path::PathBuf};

mod crd_support;

use crd_support::{schemas_dir, yaml_documents, CrdSchemas};
use integration_tests::{paths, prometheus};
use serde_json::{json, Value};

fn canary_dir() -> PathBuf {
    paths::root().join("istio/canary")
}

#[test]
fn recording_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = canary_dir().join("prometheus");
    for name in ["grayscope-canary", "grayscope-tenant", "grayscope-filter"] {
        let check = prometheus::promtool(&dir, &["check", "rules", &format!("{name}.rules.yml")]);
        let out = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
        assert!(
            check.status.success() && out.contains("SUCCESS"),
            "promtool check rules {name}:\n{out}"
        );
        let test = prometheus::promtool(&dir, &["test", "rules", &format!("{name}.test.yml")]);
        let out = String::from_utf8_lossy(&test.stdout).into_owned() + &String::from_utf8_lossy(&test.stderr);
        assert!(
            test.status.success() && out.contains("SUCCESS"),
            "promtool test rules {name}:\n{out}"
        );
    }
}

#[test]
fn flagger_and_argo_manifests_validate_against_their_crds() {
    let flagger = CrdSchemas::load([schemas_dir("flagger").join("crd.yaml")]);
    let argo = CrdSchemas::load([schemas_dir("argo-rollouts").join("analysis-template-crd.yaml")]);
    let files = [
        (
            "flagger/metric-templates.yaml",
            &flagger,
            vec!["MetricTemplate", "MetricTemplate"],
        ),
        ("flagger/canary.yaml", &flagger, vec!["Canary"]),
        ("argo-rollouts/analysis-template.yaml", &argo, vec!["AnalysisTemplate"]),
    ];
    for (file, crds, kinds) in files {
        let docs = yaml_documents(&canary_dir().join(file));
        let got: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap_or("")).collect();
        assert_eq!(got, kinds, "{file}");
        for doc in &docs {
            if let Err(problems) = crds.validate(doc) {
                panic!("{file} {}: {problems:#?}", doc["metadata"]["name"]);
            }
        }
    }

    // The validation can fail: a misspelt field, a missing required one, a wrong type.
    let template = &yaml_documents(&canary_dir().join("flagger/metric-templates.yaml"))[0];
    let mut typo = template.clone();
    typo["spec"]["querry"] = typo["spec"]["query"].take();
    typo["spec"].as_object_mut().map(|s| s.remove("query"));
    let problems = flagger.validate(&typo).expect_err("a misspelt field");
    assert!(problems.iter().any(|p| p.contains("querry")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("query")), "{problems:?}");
    let mut analysis = yaml_documents(&canary_dir().join("argo-rollouts/analysis-template.yaml"))[0].clone();
    analysis["spec"]["metrics"][0]["failureLimit"] = json!(true);
    assert!(
        argo.validate(&analysis).is_err(),
        "failureLimit: true must not validate"
    );
}

#[test]
fn dashboard_is_current_grafana_json_with_its_variables() {
    let d = dashboard("grayscope-canary.json");
    let vars = variables(&d);
    assert_eq!(
        vars,
        [
            ("datasource", "datasource"),
            ("service", "query"),
            ("method", "query"),
            ("canary", "query"),
            ("baseline", "query")
        ]
    );
    let panels = d["panels"].as_array().expect("panels");
    assert_eq!(panels.len(), 7);
    for p in panels {
        assert_queries_follow_the_datasource_and_scrape_interval(p);
    }
}

#[test]
fn tenant_dashboard_repeats_a_heat_map_per_interface_and_tenant() {
    let d = dashboard("grayscope-tenant.json");
    let vars = variables(&d);
    assert_eq!(
        vars,
        [
            ("datasource", "datasource"),
            ("service", "query"),
            ("method", "query"),
            ("tenant", "query")
        ]
    );
    let panels = d["panels"].as_array().expect("panels");
    let kinds: Vec<(&str, &str)> = panels
        .iter()
        .map(|p| (p["type"].as_str().unwrap_or(""), p["repeat"].as_str().unwrap_or("")))
        .collect();
    // The outliers, then a row per interface (method) holding the tenants' P99 heat map and one buckets heat map per
    // tenant.
    assert_eq!(
        kinds,
        [
            ("table", ""),
            ("stat", ""),
            ("row", "method"),
            ("heatmap", ""),
            ("heatmap", "tenant")
        ]
    );
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_queries_follow_the_datasource_and_scrape_interval(p);
    }
}

/// A shipped dashboard, parsed, in a current Grafana schema.
fn dashboard(file: &str) -> Value {
    let text = fs::read_to_string(canary_dir().join("grafana").join(file)).expect("dashboard");
    let d: Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "{file}: schemaVersion {}",
        d["schemaVersion"]
    );
    d
}

/// The dashboard's template variables as (name, type).
fn variables(d: &Value) -> Vec<(&str, &str)> {
    d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or(""), v["type"].as_str().unwrap_or("")))
        .collect()
}

/// Every query of `panel` uses the dashboard's datasource variable, and every range is Grafana's
/// `$__rate_interval`, so the panels follow the scrape interval.
fn assert_queries_follow_the_datasource_and_scrape_interval(panel: &Value) {
    let title = panel["title"].as_str().expect("title");
    assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
    for t in panel["targets"].as_array().expect("targets") {
        let expr = t["expr"].as_str().expect("expr");
        assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: {expr}");
        for (i, _) in expr.match_indices('[') {
            assert!(
                expr[i..].starts_with("[$__rate_interval]"),
                "{title}: fixed range in {expr}"
            );
        }
    }
}
