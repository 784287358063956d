//! Golden tests in the manner of Istio's injector: every `testdata/inject/<name>.yaml` pod, sent as an
//! AdmissionReview, with the answer's patch applied, equals `<name>.yaml.injected`. Pods named `skip-*` must come
//! back unchanged (no patch). Each input's `# decision:` comment is the audit annotation the answer must carry, so
//! every skip case is skipped for its own reason. No patched pod has a name the API server would refuse as a duplicate.
//! Each injected pod, reviewed again, gets an empty patch (idempotency). A golden file
//! without its input, or an input without its golden, fails the run. `REFRESH_GOLDEN=1` rewrites the golden files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{fs, path::PathBuf};

use serde_json::Value;
use sidecar_agent_injector::review;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/inject")
}

/// The patched pod, whether there was a patch, and the answer's `decision` audit annotation.
fn review_pod(pod: &Value) -> (Value, bool, String) {
    let body = serde_json::to_vec(&common::create_review(pod, false)).expect("review json");
    let answer = serde_json::to_value(review::handle(&body, &common::settings())).expect("answer json");
    let response = common::response(&answer);
    assert_eq!(
        response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002",
        "the answer echoes the request's uid"
    );
    let decision = response["auditAnnotations"]["decision"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (out, patched) = common::apply(pod, &answer);
    (out, patched, decision)
}

/// What in `pod` the API server's validation refuses as a duplicate: a container name used twice across
/// containers and init containers, a volume name used twice, a mount path used twice in one container.
fn names_the_api_server_refuses(pod: &Value) -> Vec<String> {
    fn repeated<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        names
            .filter(|n| !seen.insert(*n))
            .map(|n| format!("{what} {n:?} twice"))
            .collect()
    }
    let spec = &pod["spec"];
    let list = |field: &str| spec[field].as_array().cloned().unwrap_or_default();
    let containers: Vec<Value> = list("containers").into_iter().chain(list("initContainers")).collect();
    let mut found = repeated("container", containers.iter().filter_map(|c| c["name"].as_str()));
    found.extend(repeated(
        "volume",
        list("volumes").iter().filter_map(|v| v["name"].as_str()),
    ));
    for c in &containers {
        let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
        let paths = mounts.iter().filter_map(|m| m["mountPath"].as_str());
        found.extend(repeated(&format!("container {} mount path", c["name"]), paths));
    }
    found
}

#[test]
fn every_input_pod_patched_equals_its_golden_pod_and_injection_is_idempotent() {
    let refresh = std::env::var("REFRESH_GOLDEN").is_ok_and(|v| v == "1" || v == "true");
    let mut names = Vec::new();
    let mut problems = Vec::new();
    for entry in fs::read_dir(dir()).expect("testdata/inject") {
        let file = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(".yaml.injected") {
            if !dir().join(format!("{name}.yaml")).exists() {
                problems.push(format!("{file}: stale golden file, no {name}.yaml input (delete it)"));
            }
        } else if let Some(name) = file.strip_suffix(".yaml") {
            names.push(name.to_owned());
        } else {
            problems.push(format!("{file}: unexpected file in testdata/inject"));
        }
    }
    names.sort();
    assert!(names.len() >= 7, "inputs: {names:?}");
    for name in &names {
        let text = fs::read_to_string(dir().join(format!("{name}.yaml"))).expect("input");
        let input: Value = serde_norway::from_str(&text).expect("input yaml");
        // Each input says why it is (not) injected, in a `# decision: ...` comment.
        let want = text
            .lines()
            .find_map(|l| l.strip_prefix("# decision: "))
            .unwrap_or_else(|| panic!("{name}.yaml: no `# decision:` line"));
        let (output, patched, decision) = review_pod(&input);
        problems.extend(
            names_the_api_server_refuses(&output)
                .into_iter()
                .map(|p| format!("{name}: {p}")),
        );
        if decision != want {
            problems.push(format!("{name}: decision {decision:?}, the input says {want:?}"));
        }
        let golden_path = dir().join(format!("{name}.yaml.injected"));
        if refresh {
            fs::write(&golden_path, serde_norway::to_string(&output).expect("yaml")).expect("write golden");
        }
        match fs::read_to_string(&golden_path) {
            Err(_) => problems.push(format!("{name}.yaml: no golden file (run with REFRESH_GOLDEN=1)")),
            Ok(text) => {
                let golden: Value = serde_norway::from_str(&text).expect("golden yaml");
                if golden != output {
                    problems.push(format!(
                        "{name}: the patched pod differs from {name}.yaml.injected (REFRESH_GOLDEN=1 rewrites it)\n--- got:\n{}",
                        serde_norway::to_string(&output).unwrap_or_default()
                    ));
                }
            }
        }
        let skip = name.starts_with("skip-");
        if skip {
            // Recorded rather than asserted, so that one run names every pod that is not left alone, and why.
            if patched || output != input {
                problems.push(format!(
                    "{name}: a skipped pod must get no patch and come back unchanged"
                ));
            }
        } else {
            assert!(patched, "{name}: an injected pod must get a patch");
        }
        // Idempotency: the webhook may be called again (reinvocationPolicy: IfNeeded) on its own output.
        let (again, patched_again, decision_again) = review_pod(&output);
        if !skip {
            assert_eq!(decision_again, "skipped: already injected", "{name}");
        }
        assert!(
            !patched_again,
            "{name}: reviewing the injected pod again must give an empty patch"
        );
        assert_eq!(again, output, "{name}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
