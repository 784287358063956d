//! One AdmissionReview in, one out: the JSONPatch that turns the pod into the injected pod, nothing for pods
//! left alone, and a well-formed refusal (never a crash) for input that is not a pod-creation review.
//! `dryRun` requests get exactly the same answer: the webhook has no side effects (`sideEffects: None`).

use k8s_openapi::api::core::v1::Pod;
use kube_core::{
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    DynamicObject,
};

use crate::inject::{decide, Decision, Settings};

/// The answer to a request body as it goes on the wire: always a well-formed `admission.k8s.io/v1`
/// AdmissionReview, its `patch` base64-encoded.
pub fn handle(body: &[u8], settings: &Settings) -> serde_json::Value {
    wire(review(body, settings))
}

/// kube-core serialises `AdmissionResponse.patch` (a Go `[]byte`) as an array of numbers (kube-rs/kube#1781).
/// The API server's documented wire form for `[]byte` is a base64 string, so that is what we send.
fn wire(review: AdmissionReview<DynamicObject>) -> serde_json::Value {
    use base64::Engine as _;
    let mut answer = match serde_json::to_value(&review) {
        Ok(answer) => answer,
        Err(e) => return invalid(format!("the answer does not serialize: {e}")),
    };
    if let Some(patch) = answer.pointer_mut("/response/patch") {
        let Ok(bytes) = serde_json::from_value::<Vec<u8>>(patch.take()) else {
            return invalid("the patch is not a byte array".to_owned());
        };
        *patch = base64::engine::general_purpose::STANDARD.encode(bytes).into();
    }
    answer
}

/// A refusal that cannot fail to serialise (it carries no patch).
fn invalid(reason: String) -> serde_json::Value {
    serde_json::to_value(AdmissionResponse::invalid(reason).into_review()).unwrap_or_default()
}

fn review(body: &[u8], settings: &Settings) -> AdmissionReview<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(e) => {
            tracing::warn!(error = %e, "refused: not an AdmissionReview");
            return AdmissionResponse::invalid(format!("not an admission.k8s.io/v1 AdmissionReview: {e}"))
                .into_review();
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(error = %e, "refused: AdmissionReview without a request");
            return AdmissionResponse::invalid(format!("AdmissionReview without a usable request: {e}")).into_review();
        }
    };
    respond(&request, settings).into_review()
}

/// The response to one request (its uid echoed).
pub fn respond(request: &AdmissionRequest<DynamicObject>, settings: &Settings) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.operation != Operation::Create {
        // The webhook is only registered for pod creation; anything else passes unchanged.
        return response;
    }
    let Some(object) = &request.object else {
        return response.deny("pod creation review without an object");
    };
    let original = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(e) => return response.deny(format!("the object does not serialize: {e}")),
    };
    let pod: Pod = match serde_json::from_value(original.clone()) {
        Ok(pod) => pod,
        Err(e) => return response.deny(format!("the object is not a valid Pod: {e}")),
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    let name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("");
    let (changed, decision) = match decide(&pod, namespace, settings) {
        Decision::Skip(reason) => {
            tracing::info!(namespace, pod = name, dry_run = request.dry_run, reason, "not injected");
            return audit(response, format!("skipped: {reason}"));
        }
        Decision::Inject(injected) => {
            tracing::info!(namespace, pod = name, dry_run = request.dry_run, "injected");
            (injected, "injected".to_owned())
        }
        Decision::Amend(amended, reason) => {
            tracing::info!(namespace, pod = name, dry_run = request.dry_run, reason, "amended");
            (amended, format!("amended: {reason}"))
        }
    };
    // The patch is the difference between the typed pod before and after, both serialised the same way, so it
    // touches only what the webhook changed.
    let before = serde_json::to_value(&pod);
    let after = serde_json::to_value(&changed);
    let (Ok(before), Ok(after)) = (before, after) else {
        return response.deny("the pod does not serialize");
    };
    let patch = json_patch::diff(&before, &after);
    match response.clone().with_patch(patch) {
        Ok(patched) => audit(patched, decision),
        Err(e) => response.deny(format!("the patch does not serialize: {e}")),
    }
}

/// The audit annotation `decision` (the API server records it as `<webhook name>/decision` in the audit log), so
/// that why a pod was or was not injected can be looked up afterwards.
fn audit(mut response: AdmissionResponse, decision: String) -> AdmissionResponse {
    response.audit_annotations.insert("decision".to_owned(), decision);
    response
}
