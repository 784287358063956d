//! The files of `istio/canary/` on their own (no traffic): the recording rules pass `promtool check rules` and their
//! unit tests (`promtool test rules`); the Flagger and Argo Rollouts manifests validate against the projects' CRDs
//! in `shared/schemas/` (the `openAPIV3Schema` of the served version, with `additionalProperties: false` added
//! wherever Kubernetes would prune or, with strict field validation, refuse an unknown field; the CRDs' CEL rules are
//! not checked); the dashboard is current Grafana JSON with the variables the README promises.
//! `canary/main.rs` runs every query of these files on a real Prometheus.

use std::{fs, path::PathBuf};

use integration_tests::{paths, prometheus};
use serde::Deserialize;
use serde_json::{json, Value};

fn canary_dir() -> PathBuf {
    paths::root().join("istio/canary")
}

fn documents(path: &std::path::Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// `shared/schemas/<project>`, beside the workspace or beside one of its parents (worktrees sit deeper).
fn schemas(project: &str) -> PathBuf {
    let root = paths::root().canonicalize().expect("root");
    root.ancestors()
        .map(|a| a.join("shared/schemas").join(project))
        .find(|p| p.join("SOURCE.md").exists())
        .unwrap_or_else(|| {
            panic!(
                "shared/schemas/{project} not found beside {} or its parents",
                root.display()
            )
        })
}

#[test]
fn recording_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = canary_dir().join("prometheus");
    let check = prometheus::promtool(&dir, &["check", "rules", "grayscope-canary.rules.yml"]);
    let out = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success() && out.contains("SUCCESS"),
        "promtool check rules:\n{out}"
    );
    let test = prometheus::promtool(&dir, &["test", "rules", "grayscope-canary.test.yml"]);
    let out = String::from_utf8_lossy(&test.stdout).into_owned() + &String::from_utf8_lossy(&test.stderr);
    assert!(
        test.status.success() && out.contains("SUCCESS"),
        "promtool test rules:\n{out}"
    );
}

/// Adds `additionalProperties: false` to every object schema that lists its properties and does not keep unknown
/// fields on purpose, so a misspelt field fails as it does with strict field validation.
fn strictify(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if map.contains_key("properties") && !preserve && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".to_owned(), json!(false));
    }
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(props)) = map.get_mut(key) {
            props.values_mut().for_each(strictify);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = map.get_mut(key) {
            strictify(sub);
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(Value::Array(subs)) = map.get_mut(key) {
            subs.iter_mut().for_each(strictify);
        }
    }
}

/// Validates `doc` against the CRD of its kind and version among `crds`; every problem, with its path.
fn validate(doc: &Value, crds: &[Value]) -> Result<(), Vec<String>> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (group, version) = doc["apiVersion"]
        .as_str()
        .and_then(|a| a.split_once('/'))
        .unwrap_or_default();
    let crd = crds
        .iter()
        .find(|c| c["spec"]["names"]["kind"] == kind && c["spec"]["group"] == group)
        .ok_or_else(|| vec![format!("no CRD for {group} {kind}")])?;
    let served = crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == version && v["served"] == true))
        .ok_or_else(|| vec![format!("{group}/{version} {kind} is not a served version")])?;
    let mut schema = served["schema"]["openAPIV3Schema"].clone();
    strictify(&mut schema);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .map_err(|e| vec![format!("schema does not compile: {e}")])?;
    let problems: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[test]
fn flagger_and_argo_manifests_validate_against_their_crds() {
    let flagger = documents(&schemas("flagger").join("crd.yaml"));
    let argo = documents(&schemas("argo-rollouts").join("analysis-template-crd.yaml"));
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
        let docs = documents(&canary_dir().join(file));
        let got: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap_or("")).collect();
        assert_eq!(got, kinds, "{file}");
        for doc in &docs {
            if let Err(problems) = validate(doc, crds) {
                panic!("{file} {}: {problems:#?}", doc["metadata"]["name"]);
            }
        }
    }

    // The validation can fail: a misspelt field, a missing required one, a wrong type.
    let template = &documents(&canary_dir().join("flagger/metric-templates.yaml"))[0];
    let mut typo = template.clone();
    typo["spec"]["querry"] = typo["spec"]["query"].take();
    typo["spec"].as_object_mut().map(|s| s.remove("query"));
    let problems = validate(&typo, &flagger).expect_err("a misspelt field");
    assert!(problems.iter().any(|p| p.contains("querry")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("query")), "{problems:?}");
    let mut analysis = documents(&canary_dir().join("argo-rollouts/analysis-template.yaml"))[0].clone();
    analysis["spec"]["metrics"][0]["failureLimit"] = json!(true);
    assert!(
        validate(&analysis, &argo).is_err(),
        "failureLimit: true must not validate"
    );
}

#[test]
fn dashboard_is_current_grafana_json_with_its_variables() {
    let text = fs::read_to_string(canary_dir().join("grafana/grayscope-canary.json")).expect("dashboard");
    let d: Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    let vars: Vec<(&str, &str)> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or(""), v["type"].as_str().unwrap_or("")))
        .collect();
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
    assert_eq!(panels.len(), 6);
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: {expr}");
            // Every range is Grafana's $__rate_interval, so the panels follow the scrape interval.
            for (i, _) in expr.match_indices('[') {
                assert!(
                    expr[i..].starts_with("[$__rate_interval]"),
                    "{title}: fixed range in {expr}"
                );
            }
        }
    }
}
