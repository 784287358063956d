//! grayscope-injector: the Kubernetes mutating admission webhook that adds the grayscope agent to the pods that opt
//! in. It needs no eBPF rights and no Kubernetes API access: everything it decides comes from the review itself.
//!
//! # Layout
//! - [`inject`]: the pure part: when a pod is left alone, and what an injected pod gets (agent container, socket
//!   volume, Istio annotations).
//! - [`names`]: the names of what the injector adds, and the pods left alone because they already use one.
//! - [`native`]: what pods that ask for the filter's native build get on top (the module copied into
//!   `istio-proxy` by an init container from the agent's image).
//! - [`proxy`]: who istio-proxy runs as, which the agent lets in on its socket, followed when Istio's injector adds
//!   the proxy after grayscope's.
//! - [`review`]: `admission.k8s.io/v1` AdmissionReview in, AdmissionReview with a JSONPatch out; malformed input
//!   gets a well-formed refusal.
//! - [`tls`]: the serving certificate, reloaded when its files change (cert-manager rotates them in place).
//! - [`server`]: HTTPS (rustls) with `POST /mutate` and `GET /healthz`.

pub mod inject;
pub mod names;
pub mod native;
pub mod proxy;
pub mod review;
pub mod server;
pub mod tls;
