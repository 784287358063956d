//! Shared by the injector's tests: AdmissionReviews as the API server sends them, and their patches applied.

#![allow(dead_code)]

use serde_json::{json, Value};
use sidecar_agent_injector::inject::Settings;

pub fn settings() -> Settings {
    Settings {
        agent_image: "registry.example/grayscope/agent:0.1.0".to_owned(),
        own_namespace: "grayscope-system".to_owned(),
    }
}

/// An `admission.k8s.io/v1` AdmissionReview for creating `pod` (its namespace from its metadata).
pub fn create_review(pod: &Value, dry_run: bool) -> Value {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": pod,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// The `response` of an answer, checked for the fields every answer must have.
pub fn response(answer: &Value) -> &Value {
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer:#}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer:#}");
    &answer["response"]
}

/// The JSONPatch of a response (`None` when it has none). On the wire `patch` is a `[]byte`, which the API
/// server's JSON decoding (and the admission API reference) takes as a base64 string.
pub fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    use base64::Engine as _;
    let text = response.get("patch")?.as_str().expect("patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("patch is valid base64");
    assert_eq!(response["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&bytes).expect("patch is a JSONPatch"))
}

/// `pod` as the API server stores it after applying the answer's patch.
pub fn apply(pod: &Value, answer: &Value) -> (Value, bool) {
    let resp = response(answer);
    assert_eq!(resp["allowed"], true, "{answer:#}");
    let mut out = pod.clone();
    match patch_of(resp) {
        Some(patch) if !patch.0.is_empty() => {
            json_patch::patch(&mut out, &patch).expect("patch applies to the pod");
            (out, true)
        }
        _ => (out, false),
    }
}
