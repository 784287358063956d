//! The AdmissionReview contract beyond the golden pods: malformed input gets a well-formed refusal, requests the
//! webhook does not handle pass unchanged, and `dryRun` gets the same answer as a real creation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::{json, Value};
use sidecar_agent_injector::review;

fn answer(body: &[u8]) -> Value {
    serde_json::to_value(review::handle(body, &common::settings())).expect("answer json")
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orders-1", "namespace": "shop", "labels": {"grayscope.io/inject": "true"}},
        "spec": {"containers": [{"name": "orders", "image": "orders:1"}]}
    })
}

#[track_caller]
fn assert_refused(answer: &Value, uid: &str, says: &str) {
    let resp = common::response(answer);
    assert_eq!(resp["allowed"], false, "{answer:#}");
    assert_eq!(resp["uid"], uid, "{answer:#}");
    assert!(resp.get("patch").is_none(), "a refusal carries no patch: {answer:#}");
    let message = resp["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "message {message:?} should say {says:?}");
}

#[test]
fn malformed_bodies_get_a_well_formed_refusal() {
    assert_refused(
        &answer(b"not json at all"),
        "",
        "not an admission.k8s.io/v1 AdmissionReview",
    );
    assert_refused(&answer(b"[1,2,3]"), "", "not an admission.k8s.io/v1 AdmissionReview");
    assert_refused(
        &answer(&[0xff, 0xfe, 0x00]),
        "",
        "not an admission.k8s.io/v1 AdmissionReview",
    );
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    assert_refused(
        &answer(no_request.to_string().as_bytes()),
        "",
        "without a usable request",
    );
}

#[test]
fn an_object_that_is_not_a_pod_is_refused_with_the_request_uid() {
    let mut bad = pod();
    bad["spec"]["containers"] = json!("not a list");
    let review = common::create_review(&bad, false);
    assert_refused(
        &answer(review.to_string().as_bytes()),
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        "not a valid Pod",
    );
}

#[test]
fn requests_other_than_pod_creation_pass_unchanged() {
    let mut update = common::create_review(&pod(), false);
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = pod();
    let mut service = common::create_review(
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}),
        false,
    );
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    for review in [update, service] {
        let (out, patched) = common::apply(&pod(), &answer(review.to_string().as_bytes()));
        assert!(!patched);
        assert_eq!(out, pod());
    }
}

#[test]
fn dry_run_gets_the_same_answer_as_a_real_creation() {
    let real = answer(common::create_review(&pod(), false).to_string().as_bytes());
    let dry = answer(common::create_review(&pod(), true).to_string().as_bytes());
    assert!(common::apply(&pod(), &real).1, "the pod is injected");
    assert_eq!(dry, real);
}
