//! The shipped scrape job for the agent's own metrics (`istio/canary/prometheus/grayscope-agent.scrape.yml`), run by
//! a real Prometheus against a real agent. Kubernetes service discovery needs an API server, which this machine
//! cannot have (and Debian's Prometheus 2.42 is built without Kubernetes discovery: its `promtool check config`
//! refuses the field), so the job's `kubernetes_sd_configs` gives way to a file of the targets its pod role would
//! give for the injector's golden pods: one per declared port of every container and init container, with the
//! `__meta_kubernetes_*` labels Prometheus sets. The job's relabelling, which is what the manifest owns, runs
//! unchanged: it must keep the agent's port of each running pod (a regular container, and a native sidecar in a
//! Job's pod) and label it as the rules and dashboards expect, and drop every other port and the pods that are done.

use std::{fs, time::Duration};

use integration_tests::{
    agent::{self, Agent},
    paths,
    prometheus::Prometheus,
};
use serde_json::{json, Value};

const JOB: &str = "grayscope-agent";

/// The shipped job, with its Kubernetes discovery replaced by `targets.json` (read every second) and scraped every
/// second.
fn shipped_job_on_file_targets() -> serde_json::Value {
    let path = paths::root().join("istio/canary/prometheus/grayscope-agent.scrape.yml");
    let config: Value = serde_norway::from_str(&fs::read_to_string(&path).expect("scrape job")).expect("yaml");
    let jobs = config["scrape_configs"].as_array().expect("scrape_configs");
    assert_eq!(jobs.len(), 1, "one job");
    let mut job = jobs[0].clone();
    assert_eq!(job["job_name"], JOB);
    assert_eq!(job["kubernetes_sd_configs"], json!([{"role": "pod"}]));
    let object = job.as_object_mut().expect("job");
    object.remove("kubernetes_sd_configs");
    object.insert(
        "file_sd_configs".into(),
        json!([{"files": ["targets.json"], "refresh_interval": "1s"}]),
    );
    object.insert("scrape_interval".into(), json!("1s"));
    job
}

/// The pod role's targets for one golden pod of the injector, in `phase`: every declared port of every container
/// (and init container) is a target; the agent's port is `agent`, every other one a closed port, so a target the
/// job failed to drop would show as down.
fn pod_targets(golden: &str, phase: &str, agent: &str) -> Vec<Value> {
    let path = paths::root()
        .join("sidecar-agent/injector/testdata/inject")
        .join(golden);
    let pod: Value = serde_norway::from_str(&fs::read_to_string(&path).expect("golden pod")).expect("yaml");
    let meta = &pod["metadata"];
    let mut targets = Vec::new();
    for (field, init) in [("containers", "false"), ("initContainers", "true")] {
        for container in pod["spec"][field].as_array().into_iter().flatten() {
            for port in container["ports"].as_array().into_iter().flatten() {
                let name = port["name"].as_str().unwrap_or_default();
                let is_agent = container["name"] == "grayscope-agent" && name == "gs-metrics";
                let mut labels = json!({
                    "__meta_kubernetes_namespace": meta["namespace"],
                    "__meta_kubernetes_pod_name": meta["name"],
                    "__meta_kubernetes_pod_phase": phase,
                    "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_init": init,
                    "__meta_kubernetes_pod_container_port_name": name,
                    "__meta_kubernetes_pod_container_port_number": port["containerPort"].to_string(),
                });
                for (key, value) in meta["labels"].as_object().into_iter().flatten() {
                    let key: String = key
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    labels[format!("__meta_kubernetes_pod_label_{key}")] = value.clone();
                }
                let address = if is_agent { agent } else { "127.0.0.1:9" };
                targets.push(json!({"targets": [address], "labels": labels}));
            }
        }
    }
    targets
}

#[test]
fn the_shipped_job_scrapes_each_running_pods_agent_with_the_pods_labels_and_nothing_else() {
    if !agent::privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&dir.path().join("agent.sock"), &[]);
    // A Deployment's pod (the agent a regular container), a Job's pod (the agent a native sidecar) and the same Job's
    // pod once it is done.
    let mut targets = pod_targets("basic.yaml.injected", "Running", &agent.metrics_addr);
    targets.extend(pod_targets("job.yaml.injected", "Running", &agent.metrics_addr));
    let mut done = pod_targets("job.yaml.injected", "Succeeded", &agent.metrics_addr);
    for t in &mut done {
        t["labels"]["__meta_kubernetes_pod_name"] = json!("nightly-report-29034720-done");
    }
    targets.extend(done);
    let config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [shipped_job_on_file_targets()],
    });
    let prom = Prometheus::start(
        &serde_json::to_string(&config).expect("config"),
        &[("targets.json", &serde_json::to_string(&targets).expect("targets"))],
    );

    let up = prom.wait_for(&format!(r#"up{{job="{JOB}"}}"#), Duration::from_secs(30), |s| {
        s.len() == 2 && s.iter().all(|s| s.value == 1.0)
    });
    let mut seen: Vec<(String, String, String)> = up
        .iter()
        .map(|s| {
            (
                s.label("namespace").to_owned(),
                s.label("pod").to_owned(),
                s.label("app").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "shop".to_owned(),
                "nightly-report-29034720-q8x4z".to_owned(),
                String::new()
            ),
            ("shop".to_owned(), "orders-7d9c".to_owned(), "orders".to_owned()),
        ],
        "{up:?}"
    );
    for s in &up {
        assert_eq!(s.label("instance"), agent.metrics_addr, "{s:?}");
    }
    // The agent's own series come with the pod's labels.
    let series = prom.wait_for(
        &format!(r#"count by (namespace, pod) (grayscope_agent_kernel_programs_attached{{job="{JOB}"}})"#),
        Duration::from_secs(30),
        |s| s.len() == 2,
    );
    assert!(series.iter().all(|s| s.value == 1.0), "{series:?}");
    // Every other port of the running pods, and every port of the finished one, was dropped by the job.
    let all = targets.len();
    let dropped = prom
        .api("/api/v1/targets", &[("state", "dropped")])
        .expect("targets API");
    let dropped = dropped["droppedTargets"].as_array().map_or(0, Vec::len);
    assert_eq!(dropped, all - 2, "of {all} targets");
}
