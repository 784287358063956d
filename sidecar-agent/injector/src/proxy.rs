//! Who `istio-proxy` runs as, so that the agent lets it in: its uid in `--allowed-uids`, its gid as the agent's
//! group (the socket's group, mode 0660, so the proxy can open it at all). Istio's injector runs the proxy as 1337
//! unless told otherwise; on OpenShift it takes the top of the namespace's uid range
//! (`openshift.io/sa.scc.uid-range`), which only the API server's view of the namespace says, not the pod.
//!
//! So the pod decides where it can: istio-proxy's `securityContext.runAsUser` and `runAsGroup`, when the pod has
//! that container (Istio's injector ran first, or the pod customizes `istio-proxy`, which Istio merges into its
//! own). When Istio's injector runs after grayscope's, as the webhook's name makes it, the proxy is not there yet:
//! the agent gets 1337, and the API server calls grayscope again once Istio has added the proxy
//! (`reinvocationPolicy: IfNeeded`), when [`follow`] amends the agent to what the proxy runs as.
//!
//! Whether Istio gives the pod a proxy at all is the namespace's say (which the pod does not carry) and the
//! pod's: [`opted_out`] reads the pod's.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use crate::inject::{self, AGENT_CONTAINER, ISTIO_PROXY_UID};

/// Istio's proxy container, a regular container or a native sidecar (an init container).
pub const PROXY_CONTAINER: &str = "istio-proxy";

/// Istio's per-pod switch of its sidecar injection: a label, or the older annotation of the same name.
pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";

/// Why Istio's injector gives `pod` no proxy, by the pod's own `sidecar.istio.io/inject`: Istio prefers the label
/// to the annotation, and takes any value but `y`, `yes`, `true` or `on` (in any case) as "no" (`injectRequired`
/// in istio/pkg/kube/inject). Such a pod would have no filter to report to the agent. `None` when the pod leaves
/// it to the namespace or asks for the proxy.
pub fn opted_out(pod: &Pod) -> Option<String> {
    let meta = &pod.metadata;
    let (what, value) = match meta.labels.as_ref().and_then(|l| l.get(SIDECAR_INJECT)) {
        Some(value) => ("label", value),
        None => ("annotation", meta.annotations.as_ref()?.get(SIDECAR_INJECT)?),
    };
    let yes = ["y", "yes", "true", "on"].iter().any(|y| value.eq_ignore_ascii_case(y));
    (!value.is_empty() && !yes).then(|| {
        format!(
            "Istio injects no proxy into this pod ({what} {SIDECAR_INJECT}={value:?}), so no filter would report \
             to the agent"
        )
    })
}

/// The uid and gid of istio-proxy's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyIds {
    pub uid: i64,
    pub gid: i64,
}

impl ProxyIds {
    /// The agent's `--allowed-uids`: itself (uid 0, for `grayscope-agent` commands run in its container) and the
    /// proxy.
    pub fn allowed_uids(self) -> String {
        format!("self,{}", self.uid)
    }
}

/// What `spec` says istio-proxy runs as; Istio's default, 1337, for what it does not say. Only the container's
/// own settings count: Istio's template sets both, which override the pod's.
pub fn ids(spec: &PodSpec) -> ProxyIds {
    let context = find(spec, PROXY_CONTAINER).and_then(|c| c.security_context.as_ref());
    ProxyIds {
        uid: context.and_then(|sc| sc.run_as_user).unwrap_or(ISTIO_PROXY_UID),
        gid: context.and_then(|sc| sc.run_as_group).unwrap_or(ISTIO_PROXY_UID),
    }
}

/// An injected pod whose agent does not let in the istio-proxy the pod now has, amended so that it does (its
/// `--allowed-uids` and its group), with what the proxy runs as; `None` when there is no proxy yet, nothing to
/// change, or no agent as the injector makes it (nothing else of the pod is touched).
pub fn follow(pod: &Pod) -> Option<(Pod, ProxyIds)> {
    let spec = pod.spec.as_ref()?;
    find(spec, PROXY_CONTAINER)?;
    let ids = ids(spec);
    let mut out = pod.clone();
    let out_spec = out.spec.as_mut()?;
    let agent = out_spec
        .containers
        .iter_mut()
        .chain(out_spec.init_containers.iter_mut().flatten())
        .find(|c| c.name == AGENT_CONTAINER)?;
    let args = agent.args.as_mut()?;
    let at = args.iter().position(|a| a == "--allowed-uids")? + 1;
    let allowed = args.get_mut(at)?;
    let group = &mut agent.security_context.as_mut()?.run_as_group;
    if *allowed == ids.allowed_uids() && *group == Some(ids.gid) {
        return None;
    }
    *allowed = ids.allowed_uids();
    *group = Some(ids.gid);
    Some((out, ids))
}

fn find<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a Container> {
    inject::containers(spec).find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pod(label: Option<&str>, annotation: Option<&str>) -> Pod {
        let map = |v: Option<&str>| v.map(|v| BTreeMap::from([(SIDECAR_INJECT.to_owned(), v.to_owned())]));
        let mut pod = Pod::default();
        pod.metadata.labels = map(label);
        pod.metadata.annotations = map(annotation);
        pod
    }

    #[test]
    fn istio_reads_the_label_first_and_any_value_but_yes_as_no() {
        assert_eq!(opted_out(&pod(None, None)), None);
        for yes in ["true", "TRUE", "y", "Yes", "on"] {
            assert_eq!(opted_out(&pod(Some(yes), None)), None, "{yes}");
        }
        for no in ["false", "n", "off", "disabled"] {
            assert!(opted_out(&pod(Some(no), None)).is_some(), "{no}");
        }
        // An empty value leaves it to the namespace.
        assert_eq!(opted_out(&pod(Some(""), None)), None);
        // The label wins over the annotation, either way.
        assert_eq!(opted_out(&pod(Some("true"), Some("false"))), None);
        assert!(opted_out(&pod(Some("false"), Some("true"))).unwrap().contains("label"));
        assert!(opted_out(&pod(None, Some("false"))).unwrap().contains("annotation"));
    }
}
